//! Each owner's own copy of the guest kernel and initramfs, so that
//! bulkhead-vmm can map them into guest memory (`share_boot_files`) instead
//! of copying them at every start.
//!
//! A mapped file's page cache is shared by every VM that maps it, until a
//! VM writes a page: VMs of different tenants sharing physical pages is a
//! Flush+Reload channel between them (docs/DESIGN.md, SECURITY.md). The
//! page cache belongs to an inode, so one copy of the files per owner (a
//! tenant on a node; the local user for `bulkhead run`) keeps the sharing
//! inside that owner, whose VMs trust each other anyway:
//!
//! ```text
//! <data>/boot/<owner key>/<source key>-vmlinux|-initrd
//! ```
//!
//! The owner key is a hash of the owner's name (any string a tenant has is
//! safe there); the source key hashes where the source file is and which
//! version it is (device, inode, size, change time), so a rebuilt kernel
//! gets new copies. A copy is written aside, flushed and renamed: it is
//! never seen half written, and never truncated once there (a VM's
//! mapping would fault). Copies stay until the owner's dir is removed.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The owner of workloads `bulkhead run` makes on this data dir.
pub const LOCAL_OWNER: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum BootCopyError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} changed while it was copied (size {expected}, copied {got})", .source_path.display())]
    Changed {
        source_path: PathBuf,
        expected: u64,
        got: u64,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootCopyError {
    let what = what.into();
    move |source| BootCopyError::Io { what, source }
}

/// Where `owner`'s copies live under the data dir `data`.
pub fn owner_dir(data: &Path, owner: &str) -> PathBuf {
    data.join("boot").join(key(&["owner", owner]))
}

/// 16 hex digits of a hash of `parts` (each length-prefixed: no two lists
/// give the same input).
fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// `owner`'s copy of `source` (made now if it has none for this version of
/// it), named `<source key>-<name>`.
pub fn owner_copy(
    data: &Path,
    owner: &str,
    source: &Path,
    name: &str,
) -> Result<PathBuf, BootCopyError> {
    let what = || source.display().to_string();
    let meta = std::fs::metadata(source).map_err(io(what()))?;
    let version = format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let source_str = source.to_string_lossy();
    let dir = owner_dir(data, owner);
    let path = dir.join(format!(
        "{}-{name}",
        key(&["source", &source_str, &version])
    ));
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() == meta.len() => return Ok(path),
        // Not what was published (no one truncates them): made again.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path.display().to_string())(e)),
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(&dir)
        .map_err(io(format!("a temporary file in {}", dir.display())))?;
    let mut from = File::open(source).map_err(io(what()))?;
    let copied = std::io::copy(&mut from, &mut tmp.as_file()).map_err(io(format!(
        "copy {} to {}",
        what(),
        dir.display()
    )))?;
    if copied != meta.len() {
        return Err(BootCopyError::Changed {
            source_path: source.to_path_buf(),
            expected: meta.len(),
            got: copied,
        });
    }
    // Readable by the jailed VMMs' uids (a temporary file is 0600);
    // written by no one.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o444))
        .map_err(io(format!("make the copy of {} readable", what())))?;
    // Flushed before it is published: after a crash the name holds the
    // whole file or nothing.
    tmp.as_file()
        .flush()
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io(format!("flush the copy of {}", what())))?;
    tmp.persist(&path)
        .map_err(|e| io(format!("publish {}", path.display()))(e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("flush {}", dir.display())))?;
    Ok(path)
}

/// `owner`'s copies of the guest kernel and initramfs.
pub fn kernel_and_initrd(
    data: &Path,
    owner: &str,
    kernel: &Path,
    initrd: &Path,
) -> Result<(PathBuf, PathBuf), BootCopyError> {
    Ok((
        owner_copy(data, owner, kernel, "vmlinux")?,
        owner_copy(data, owner, initrd, "initrd")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn one_copy_per_owner_and_version_never_the_source_or_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel one").unwrap();

        let acme = owner_copy(&data, "acme", &kernel, "vmlinux").unwrap();
        let again = owner_copy(&data, "acme", &kernel, "vmlinux").unwrap();
        let evil = owner_copy(&data, "evil", &kernel, "vmlinux").unwrap();
        let local = owner_copy(&data, LOCAL_OWNER, &kernel, "vmlinux").unwrap();
        assert_eq!(acme, again);
        assert_eq!(ino(&acme), ino(&again), "the owner's VMs share one inode");
        // Different inodes: no page of one owner's copy is another's.
        let inodes = [ino(&kernel), ino(&acme), ino(&evil), ino(&local)];
        for (i, a) in inodes.iter().enumerate() {
            for b in &inodes[i + 1..] {
                assert_ne!(a, b, "{inodes:?}");
            }
        }
        for p in [&acme, &evil, &local] {
            assert_eq!(std::fs::read(p).unwrap(), b"kernel one");
            // A jailed VMM's uid reads it; no one writes it.
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o444, "{}", p.display());
            assert!(p.starts_with(data.join("boot")), "{}", p.display());
        }

        // A rebuilt kernel (published by rename, as bulkhead's are) gets a
        // new copy; the old one stays for the VMs that still map it.
        let next = dir.path().join("vmlinux.new");
        std::fs::write(&next, b"kernel two, longer").unwrap();
        std::fs::rename(&next, &kernel).unwrap();
        let acme2 = owner_copy(&data, "acme", &kernel, "vmlinux").unwrap();
        assert_ne!(acme2, acme);
        assert_eq!(std::fs::read(&acme2).unwrap(), b"kernel two, longer");
        assert_eq!(std::fs::read(&acme).unwrap(), b"kernel one");
    }

    #[test]
    fn hostile_owner_names_stay_inside_the_boot_dir_and_apart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let names = ["../../etc", "/", "", "a/b", "local\0", "x\ny"];
        let mut dirs = Vec::new();
        for n in names {
            let d = owner_dir(&data, n);
            assert_eq!(d.parent(), Some(data.join("boot").as_path()), "{n:?}");
            let copy = owner_copy(&data, n, &kernel, "vmlinux").unwrap();
            assert!(copy.starts_with(&d));
            dirs.push(d);
        }
        dirs.sort();
        dirs.dedup();
        assert_eq!(dirs.len(), names.len(), "every owner has its own dir");
        // Length-prefixed: ("ab", "c") and ("a", "bc") are different keys.
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
    }

    #[test]
    fn a_damaged_copy_is_made_again_and_a_missing_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"the whole kernel").unwrap();
        let copy = owner_copy(&data, "acme", &kernel, "vmlinux").unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&copy, b"half").unwrap();
        let again = owner_copy(&data, "acme", &kernel, "vmlinux").unwrap();
        assert_eq!(again, copy);
        assert_eq!(std::fs::read(&again).unwrap(), b"the whole kernel");
        // No temporary files left beside it.
        let names: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let err = owner_copy(&data, "acme", &dir.path().join("nope"), "vmlinux").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
