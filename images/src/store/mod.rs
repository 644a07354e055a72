//! The content store: blobs by sha256 (verified while written, published
//! by rename), the raw manifest and config bytes as they came, image
//! references (`name:tag` -> manifest digest), garbage collection.
//!
//! ```text
//! <data>/blobs/sha256/<hex>     blobs, read-only once published
//! <data>/tmp/                   files being written (same filesystem)
//! <data>/refs.json              {"name:tag": "sha256:..."}
//! <data>/disks/<hex>.<format>   root disks by manifest digest (rootdisk.rs)
//! <data>/trees/<hex>/           unpacked images for the container runtime
//! ```

pub mod digest;
pub mod healthcheck;
pub mod import;
pub mod oci;
pub mod pull;

pub use import::Imported;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

pub use digest::Digest;
use oci::{ImageConfig, Index, Manifest};

/// Largest manifest, index or config we read (they are JSON the image author wrote).
pub const MAX_JSON: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{0}")]
    Bad(String),
    #[error("no image {0:?} in the store (`bulkhead image ls` lists them)")]
    NotFound(String),
    #[error("not enough disk space for {what}: it needs {} MiB and {dir} has {} MiB free, of which {} MiB stay for the node (free some: `bulkhead image rm`, `bulkhead system prune`)", need.div_ceil(1 << 20), free >> 20, pull::DISK_RESERVE >> 20)]
    NoSpace {
        what: String,
        need: u64,
        free: u64,
        dir: String,
    },
    #[error(transparent)]
    Digest(#[from] digest::BadDigest),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// An image as stored: its manifest and config, parsed, plus the raw
/// config bytes (digests are over bytes, never re-serialised JSON).
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
}

/// A temp dir in the store's `tmp/`, removed on drop; the open lock on it
/// tells `gc` it is in use.
#[derive(Debug)]
pub struct TempDir {
    dir: tempfile::TempDir,
    _lock: File,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An exclusive flock held as long as `f`'s open file description lives.
fn hold_lock(f: &File) -> Result<(), StoreError> {
    try_lock(f).map_err(io("lock a temp entry"))
}

fn try_lock(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub disks_removed: u64,
    /// Entries in `tmp/` that crashed writers left.
    pub temp_removed: u64,
    /// Unpacked image trees (`trees/<manifest>`) no name reaches.
    pub trees_removed: u64,
}

impl Store {
    /// `$BULKHEAD_DATA`, else /var/lib/bulkhead as root, else
    /// `~/.local/share/bulkhead` (HOME from the environment only).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("BULKHEAD_DATA").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/bulkhead");
        }
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/bulkhead")
    }

    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        // Closed to other users: image content may be a tenant's own.
        crate::private::data_root(&root).map_err(io(format!("the data dir {}", root.display())))?;
        for d in ["blobs", "blobs/sha256", "tmp", "disks"] {
            crate::private::dir(&root.join(d))
                .map_err(io(format!("create {}", root.join(d).display())))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A temp file in the store's filesystem, removed unless persisted.
    /// It holds a lock while open, so `gc` leaves it alone.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let _creating = self.tmp_guard(nix::fcntl::FlockArg::LockShared)?;
        let f = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io("create a temp file in the store"))?;
        hold_lock(f.as_file())?;
        Ok(f)
    }

    /// A temp dir in the store, locked (see [`TempDir`]) so `gc` leaves it alone.
    pub fn temp_dir(&self, prefix: &str) -> Result<TempDir, StoreError> {
        let _creating = self.tmp_guard(nix::fcntl::FlockArg::LockShared)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.root.join("tmp"))
            .map_err(io("create a temp dir in the store"))?;
        let lock = File::open(dir.path()).map_err(io("open the temp dir"))?;
        hold_lock(&lock)?;
        Ok(TempDir { dir, _lock: lock })
    }

    /// Creating a temp entry and locking it happen under this lock, shared;
    /// `gc` takes it exclusively, so it never sees one created but not yet locked.
    fn tmp_guard(&self, how: nix::fcntl::FlockArg) -> Result<nix::fcntl::Flock<File>, StoreError> {
        let f = std::os::unix::fs::OpenOptionsExt::mode(
            File::options().create(true).truncate(false).write(true),
            0o600,
        )
        .open(self.root.join(".tmp.lock"))
        .map_err(io("open the temp lock"))?;
        nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| io("lock the temp lock")(e.into()))
    }

    /// Removes what crashed writers left in `tmp/`: every entry nobody holds
    /// a lock on. Root disk trees in there can be owned by the image's ids,
    /// so a rootless caller runs this inside its user namespace.
    pub fn sweep_tmp(&self) -> Result<u64, StoreError> {
        let _sweeping = self.tmp_guard(nix::fcntl::FlockArg::LockExclusive)?;
        let mut removed = 0;
        for e in std::fs::read_dir(self.root.join("tmp"))
            .map_err(io("list tmp"))?
            .flatten()
        {
            use std::os::unix::fs::OpenOptionsExt;
            let path = e.path();
            let Ok(f) = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            else {
                continue;
            };
            if try_lock(&f).is_err() {
                continue; // someone is still writing it
            }
            let res = if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            res.map_err(io(format!("remove {}", path.display())))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Streams `r` into the store, hashing as it goes; with `expected`, a
    /// mismatch leaves nothing behind. Returns the digest and size.
    pub fn put_blob(
        &self,
        mut r: impl Read,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64), StoreError> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                // Already here (verified when it was written): drain nothing.
                let size = std::fs::metadata(self.blob_path(d))
                    .map_err(io(what))?
                    .len();
                return Ok((d.clone(), size));
            }
        }
        let mut tmp = self.temp_file()?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(io(format!("read {what}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(io(format!("write {what} to the store")))?;
            size += n as u64;
        }
        let actual = Digest::from_hasher(hasher);
        if let Some(exp) = expected {
            if *exp != actual {
                return Err(StoreError::DigestMismatch {
                    what: what.to_string(),
                    expected: exp.clone(),
                    actual,
                });
            }
        }
        tmp.as_file()
            .sync_all()
            .map_err(io(format!("sync {what}")))?;
        let dest = self.blob_path(&actual);
        tmp.persist(&dest).map_err(|e| StoreError::Io {
            what: format!("publish {}", dest.display()),
            source: e.error,
        })?;
        Ok((actual, size))
    }

    pub fn put_bytes(&self, bytes: &[u8], what: &str) -> Result<Digest, StoreError> {
        self.put_blob(bytes, None, what).map(|(d, _)| d)
    }

    /// Reads a JSON blob, at most [`MAX_JSON`] bytes.
    pub fn read_json_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let f = File::open(self.blob_path(d)).map_err(io(format!("blob {d}")))?;
        let mut v = Vec::new();
        f.take(MAX_JSON + 1)
            .read_to_end(&mut v)
            .map_err(io(format!("blob {d}")))?;
        if v.len() as u64 > MAX_JSON {
            return Err(StoreError::Bad(format!(
                "blob {d} is over {MAX_JSON} bytes: not a manifest or config"
            )));
        }
        Ok(v)
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub fn refs(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        match std::fs::read(self.refs_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::Bad(format!("{}: {e}", self.refs_path().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io("read refs.json")(e)),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<(), StoreError> {
        let mut tmp = self.temp_file()?;
        serde_json::to_writer_pretty(&mut tmp, refs).map_err(|e| StoreError::Bad(e.to_string()))?;
        tmp.as_file().sync_all().map_err(io("sync refs.json"))?;
        tmp.persist(self.refs_path()).map_err(|e| StoreError::Io {
            what: "publish refs.json".into(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Holds the store's lock while `f` runs (ref updates and gc).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let lock = std::os::unix::fs::OpenOptionsExt::mode(
            File::options().create(true).truncate(false).write(true),
            0o600,
        )
        .open(self.root.join(".lock"))
        .map_err(io("open the store lock"))?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("lock the store")(e.into()))?;
        f()
    }

    pub fn set_ref(&self, name: &str, d: &Digest) -> Result<(), StoreError> {
        check_ref_name(name)?;
        self.locked(|| {
            let mut refs = self.refs()?;
            refs.insert(normalise(name), d.clone());
            self.write_refs(&refs)
        })
    }

    pub fn remove_ref(&self, name: &str) -> Result<Digest, StoreError> {
        self.locked(|| {
            let mut refs = self.refs()?;
            let d = refs
                .remove(&normalise(name))
                .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
            self.write_refs(&refs)?;
            Ok(d)
        })
    }

    /// `name[:tag]` (tag defaults to latest) or a manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<Digest, StoreError> {
        if reference.starts_with("sha256:") {
            let d = Digest::parse(reference)?;
            return if self.has_blob(&d) {
                Ok(d)
            } else {
                Err(StoreError::NotFound(reference.to_string()))
            };
        }
        self.refs()?
            .get(&normalise(reference))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))
    }

    /// The image whose manifest is `d` (an index is resolved to linux/amd64).
    pub fn image(&self, d: &Digest) -> Result<Image, StoreError> {
        let bytes = self.read_json_blob(d)?;
        let manifest: Manifest = match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) => m,
            Err(_) => {
                let index: Index = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Bad(format!("{d} is neither a manifest nor an index: {e}"))
                })?;
                let pick = index.pick().ok_or_else(|| {
                    StoreError::Bad(format!("{d}: no linux/amd64 manifest in the index"))
                })?;
                return self.image(&pick.digest);
            }
        };
        let config_bytes = self.read_json_blob(&manifest.config.digest)?;
        let config = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::Bad(format!("config {}: {e}", manifest.config.digest)))?;
        Ok(Image {
            manifest_digest: d.clone(),
            manifest,
            config,
            config_bytes,
        })
    }

    /// Removes blobs no reference reaches, and disks of unreferenced images.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        self.locked(|| {
            let mut keep: BTreeSet<String> = BTreeSet::new();
            let mut manifests: BTreeSet<String> = BTreeSet::new();
            for d in self.refs()?.values() {
                keep.insert(d.hex().to_string());
                let bytes = self.read_json_blob(d)?;
                let mut todo = vec![(d.clone(), bytes)];
                while let Some((md, bytes)) = todo.pop() {
                    if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                        manifests.insert(md.hex().to_string());
                        keep.insert(m.config.digest.hex().to_string());
                        keep.extend(m.layers.iter().map(|l| l.digest.hex().to_string()));
                    } else if let Ok(i) = serde_json::from_slice::<Index>(&bytes) {
                        for m in &i.manifests {
                            keep.insert(m.digest.hex().to_string());
                            if let Ok(b) = self.read_json_blob(&m.digest) {
                                todo.push((m.digest.clone(), b));
                            }
                        }
                    }
                }
            }
            let mut report = GcReport::default();
            let dir = self.root.join("blobs/sha256");
            for e in std::fs::read_dir(&dir).map_err(io("list blobs"))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(e.path()).map_err(io(format!("remove blob {name}")))?;
                    report.blobs_removed += 1;
                }
            }
            for e in std::fs::read_dir(self.root.join("disks"))
                .map_err(io("list disks"))?
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.split('.').next().unwrap_or_default().to_string();
                if !manifests.contains(&hex) && !keep.contains(&hex) {
                    std::fs::remove_file(e.path()).map_err(io(format!("remove disk {name}")))?;
                    report.disks_removed += 1;
                }
            }
            // Unpacked trees (the container runtime's lower layers), unless a
            // mount still uses one.
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for e in std::fs::read_dir(self.root.join("trees"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let in_use = mounts.contains(&e.path().display().to_string());
                if !manifests.contains(&name) && !keep.contains(&name) && !in_use {
                    std::fs::remove_dir_all(e.path()).map_err(io(format!("remove tree {name}")))?;
                    report.trees_removed += 1;
                }
            }
            report.temp_removed = self.sweep_tmp()?;
            Ok(report)
        })
    }
}

/// `name` gets `:latest` when it has no tag; Docker Hub's implicit prefix
/// goes (`docker.io/library/busybox` is `busybox`, as the docker CLI shows it).
pub fn normalise(name: &str) -> String {
    let name = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn check_ref_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !name.starts_with('/');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Bad(format!("bad image name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        (d, s)
    }

    #[test]
    fn blobs_are_verified_and_a_mismatch_leaves_nothing() {
        let (_d, s) = store();
        let good = Digest::of(b"hello");
        assert_eq!(
            s.put_blob(&b"hello"[..], Some(&good), "t")
                .unwrap_or_else(|e| panic!("{e}")),
            (good.clone(), 5)
        );
        let wrong = Digest::of(b"other");
        assert!(matches!(
            s.put_blob(&b"hello!"[..], Some(&wrong), "t"),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!s.has_blob(&wrong));
        assert_eq!(
            std::fs::read_dir(s.root().join("tmp"))
                .map(|d| d.count())
                .unwrap_or(99),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn refs_resolve_normalise_and_gc_keeps_only_what_they_reach() {
        let (_d, s) = store();
        let config = s
            .put_bytes(
                br#"{"architecture":"amd64","os":"linux","config":{}}"#,
                "config",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let layer = s
            .put_bytes(b"layer", "layer")
            .unwrap_or_else(|e| panic!("{e}"));
        let orphan = s
            .put_bytes(b"orphan", "orphan")
            .unwrap_or_else(|e| panic!("{e}"));
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},"layers":[{{"digest":"{layer}","size":5}}]}}"#
        );
        let m = s
            .put_bytes(manifest.as_bytes(), "manifest")
            .unwrap_or_else(|e| panic!("{e}"));
        s.set_ref("busybox", &m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.resolve("busybox:latest")
                .unwrap_or_else(|e| panic!("{e}")),
            m
        );
        assert_eq!(
            s.resolve("docker.io/library/busybox")
                .unwrap_or_else(|e| panic!("{e}")),
            m
        );
        assert_eq!(
            s.image(&m)
                .unwrap_or_else(|e| panic!("{e}"))
                .manifest
                .layers
                .len(),
            1
        );
        let r = s.gc().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.blobs_removed, 1);
        assert!(!s.has_blob(&orphan) && s.has_blob(&layer) && s.has_blob(&config));
        s.remove_ref("busybox").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.gc().unwrap_or_else(|e| panic!("{e}")).blobs_removed, 3);
        assert!(matches!(s.resolve("busybox"), Err(StoreError::NotFound(_))));
        assert!(
            s.set_ref("bad name", &m).is_err()
                && s.set_ref("/abs", &m).is_err()
                && s.set_ref("", &m).is_err()
        );
    }

    #[test]
    fn gc_sweeps_temp_entries_nobody_holds_and_keeps_the_ones_in_use() {
        let (_d, s) = store();
        let busy_dir = s.temp_dir("busy-").unwrap_or_else(|e| panic!("{e}"));
        let busy_file = s.temp_file().unwrap_or_else(|e| panic!("{e}"));
        let crashed = s.root().join("tmp/rootdisk-crashed");
        std::fs::create_dir_all(crashed.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(s.root().join("tmp/.tmpXYZ"), b"half a blob")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = s.gc().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.temp_removed, 2, "{r:?}");
        assert!(!crashed.exists() && busy_dir.path().is_dir() && busy_file.path().is_file());
        drop(busy_dir);
        drop(busy_file);
        assert_eq!(
            s.gc().unwrap_or_else(|e| panic!("{e}")).temp_removed,
            0,
            "dropped temp entries remove themselves"
        );
    }
}
