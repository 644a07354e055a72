//! What the hostile-layer tests share: a tar written header by header,
//! and a scene with a canary beside the unpack target.

// Each test file uses part of it.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bulkhead_images::unpack::{Limits, UnpackError, Unpacker};
use sha2::{Digest, Sha256};
use tar::EntryType;

/// A layer tarball written header by header, names and link targets as
/// raw bytes (the tar crate's safe setters refuse what we need to send).
#[derive(Default)]
pub struct Layer(pub Vec<u8>);

impl Layer {
    pub fn raw(
        mut self,
        name: &[u8],
        kind: EntryType,
        body: &[u8],
        link: &[u8],
        mode: u32,
        size: Option<u64>,
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name);
            g.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size.unwrap_or(body.len() as u64));
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(body);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    pub fn file(self, name: &str, body: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Regular,
            body.as_bytes(),
            b"",
            0o644,
            None,
        )
    }
    pub fn dir(self, name: &str) -> Self {
        self.raw(name.as_bytes(), EntryType::Directory, b"", b"", 0o755, None)
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            b"",
            target.as_bytes(),
            0o777,
            None,
        )
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            b"",
            target.as_bytes(),
            0o644,
            None,
        )
    }
    pub fn pax_path(mut self, path: &[u8]) -> Self {
        let mut record = b" path=".to_vec();
        record.extend_from_slice(path);
        record.push(b'\n');
        let mut len = record.len() + 1;
        while format!("{len}").len() + record.len() != len {
            len = format!("{len}").len() + record.len();
        }
        let mut body = format!("{len}").into_bytes();
        body.extend_from_slice(&record);
        self = self.raw(
            b"././@PaxHeader",
            EntryType::XHeader,
            &body,
            b"",
            0o644,
            None,
        );
        self
    }
    pub fn end(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

pub struct Scene {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub canary: PathBuf,
}

impl Scene {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let canary = dir.path().join("canary");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(canary.join("sub")).unwrap();
        std::fs::write(canary.join("secret"), "do not touch").unwrap();
        std::fs::write(canary.join("sub/file"), "nor this").unwrap();
        Scene {
            _dir: dir,
            root,
            canary,
        }
    }
    pub fn c(&self) -> String {
        self.canary.display().to_string()
    }
}

pub fn tree_hash(dir: &Path) -> String {
    let mut h = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut all = Vec::new();
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            all.push((e.path(), md.mode(), md.len(), md.uid(), md.mtime()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    all.sort();
    for (p, mode, len, uid, mtime) in all {
        h.update(format!("{} {mode} {len} {uid} {mtime}\n", p.display()));
        if std::fs::symlink_metadata(&p).unwrap().is_file() {
            h.update(std::fs::read(&p).unwrap());
        }
    }
    hex::encode(h.finalize())
}

/// Applies `layers` in order with `limits`; checks the canary is intact.
pub fn apply(scene: &Scene, layers: &[Vec<u8>], limits: Limits) -> Result<(), UnpackError> {
    let before = tree_hash(&scene.canary);
    let mut u = Unpacker::new(&scene.root, limits).unwrap();
    let mut r = Ok(());
    for l in layers {
        r = u.apply(&l[..]);
        if r.is_err() {
            break;
        }
    }
    assert_eq!(tree_hash(&scene.canary), before, "the canary changed");
    r
}

pub fn run(layers: &[Vec<u8>]) -> (Scene, Result<(), UnpackError>) {
    let s = Scene::new();
    let r = apply(&s, layers, Limits::default());
    (s, r)
}

#[macro_export]
macro_rules! expect_err {
    ($r:expr, $pat:pat) => {
        match $r {
            Err($pat) => {}
            other => panic!("expected {}, got {other:?}", stringify!($pat)),
        }
    };
}
