//! Root disks: an image's layers unpacked (hostile input, see `unpack`) and
//! turned into a read-only filesystem image the guest mounts, without
//! mounting anything on the host. Cached by manifest digest and format.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::store::{Digest, Store, StoreError};
use crate::unpack::{Limits, Report, UnpackError, Unpacker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
    Erofs,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Ext4 => "ext4",
            Format::Erofs => "erofs",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(Format::Ext4),
            "erofs" => Ok(Format::Erofs),
            other => Err(format!("{other:?}: use ext4 or erofs")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootDiskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unpacking layer {layer}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("{0}")]
    Tool(String),
    #[error("unpacking keeps the image's file owners, which needs root: run as root, or inside a user namespace (`bulkhead image disk` sets one up itself, see `userns`)")]
    NeedsRoot,
}

/// Where the disk for `manifest` in `format` is (or will be).
pub fn disk_path(store: &Store, manifest: &Digest, format: Format) -> PathBuf {
    store
        .root()
        .join("disks")
        .join(format!("{}.{}", manifest.hex(), format.ext()))
}

/// Applies every layer of the image in order into `dest` (an empty directory).
pub fn unpack_tree(
    store: &Store,
    manifest: &Digest,
    dest: &Path,
    limits: Limits,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, RootDiskError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RootDiskError::NeedsRoot);
    }
    let image = store.image(manifest)?;
    let mut u = Unpacker::new(dest, limits).map_err(|source| RootDiskError::Unpack {
        layer: manifest.clone(),
        source,
    })?;
    let n = image.manifest.layers.len();
    for (i, layer) in image.manifest.layers.iter().enumerate() {
        progress(i, n);
        let f =
            std::fs::File::open(store.blob_path(&layer.digest)).map_err(|e| StoreError::Io {
                what: format!("layer {}", layer.digest),
                source: e,
            })?;
        u.apply_blob(std::io::BufReader::new(f), layer.digest.as_str())
            .map_err(|source| RootDiskError::Unpack {
                layer: layer.digest.clone(),
                source,
            })?;
    }
    progress(n, n);
    Ok(u.report().clone())
}

/// The cached disk if there is one, else unpack + mkfs, published by rename.
pub fn build(
    store: &Store,
    manifest: &Digest,
    format: Format,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, RootDiskError> {
    let path = disk_path(store, manifest, format);
    if path.is_file() {
        return Ok(path);
    }
    let work = store.temp_dir("rootdisk-")?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).map_err(|e| StoreError::Io {
        what: "create the unpack dir".into(),
        source: e,
    })?;
    let report = unpack_tree(store, manifest, &tree, Limits::default(), &mut |i, n| {
        if i < n {
            progress(&format!("unpacking layer {}/{n}", i + 1));
        }
    })?;
    for s in &report.skipped {
        progress(&format!("skipped {s}"));
    }
    progress(&format!(
        "building {} ({} entries, {} MiB)",
        format.ext(),
        report.entries,
        report.bytes >> 20
    ));
    let out = work.path().join(format!("disk.{}", format.ext()));
    let status = match format {
        Format::Ext4 => {
            // Content plus a quarter and 16 MiB of headroom; inodes for every entry and then some.
            let size = (report.bytes + report.bytes / 4 + (16 << 20) + report.entries * 4096)
                .div_ceil(1 << 20);
            let inodes = (report.entries + report.entries / 4 + 1024).to_string();
            std::fs::File::create(&out).map_err(|e| StoreError::Io {
                what: "create the disk".into(),
                source: e,
            })?;
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^has_journal", "-N", &inodes, "-d"])
                .arg(&tree)
                .arg(&out)
                .arg(format!("{size}M"))
                .status()
        }
        Format::Erofs => Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&out)
            .arg(&tree)
            .status(),
    };
    let tool = match format {
        Format::Ext4 => "mkfs.ext4 (e2fsprogs)",
        Format::Erofs => "mkfs.erofs (erofs-utils)",
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(RootDiskError::Tool(format!("{tool} failed: {s}"))),
        Err(e) => return Err(RootDiskError::Tool(format!("{tool}: {e}"))),
    }
    // On disk before it is published: a crash never leaves a torn disk
    // under the name later runs use.
    std::fs::File::open(&out)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Io {
            what: format!("sync {}", out.display()),
            source: e,
        })?;
    std::fs::rename(&out, &path).map_err(|e| StoreError::Io {
        what: format!("publish {}", path.display()),
        source: e,
    })?;
    Ok(path)
}
