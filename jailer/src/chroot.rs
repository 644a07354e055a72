//! The jail's directory: `<base>/<id>/root`, made fresh (a directory that
//! is already there is refused, never reused) and empty on the host; the
//! jail mounts a tmpfs over `root` in its own mount namespace and makes
//! there the mount points for what is bound in and the two device nodes
//! the VMM needs. And its removal.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("{0} exists already: another jail with this id, or what a crashed one left (remove it, or use another --id)")]
    Exists(PathBuf),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ChrootError + 'a {
    move |source| ChrootError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The jail dir's lock: held by its jailer for as long as the jail lives
/// (a sweep, `cleanup::unheld`, leaves a held jail alone).
pub type Held = nix::fcntl::Flock<std::fs::File>;

fn lock(path: &Path, how: nix::fcntl::FlockArg) -> Result<Held, ChrootError> {
    let f = std::fs::File::open(path).map_err(io("open", path))?;
    nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| io("lock", path)(e.into()))
}

/// `<base>/<id>` (created, 0700, and locked) and its `root` (0755, so the
/// VMM's uid can walk it). `base` was checked symlink-free by the caller.
/// Made under a shared lock on `base`, which a sweep takes exclusively:
/// no sweep sees the dir between its making and its locking.
pub fn create(base: &Path, id: &str) -> Result<(PathBuf, PathBuf, Held), ChrootError> {
    let making = lock(base, nix::fcntl::FlockArg::LockShared)?;
    let jail = base.join(id);
    match std::fs::DirBuilder::new().mode(0o700).create(&jail) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ChrootError::Exists(jail))
        }
        Err(e) => return Err(io("create", &jail)(e)),
    }
    let held = lock(&jail, nix::fcntl::FlockArg::LockExclusiveNonblock)?;
    drop(making);
    let root = jail.join("root");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&root)
        .map_err(io("create", &root))?;
    Ok((jail, root, held))
}

/// Whether jail dir `jail` is held by a live jailer.
pub fn is_held(jail: &Path) -> bool {
    matches!(
        lock(jail, nix::fcntl::FlockArg::LockExclusiveNonblock),
        Err(ChrootError::Io { what: "lock", .. })
    )
}

/// The exclusive lock on `base` a sweep holds while it decides (see `create`).
pub fn lock_base(base: &Path) -> Result<Held, ChrootError> {
    lock(base, nix::fcntl::FlockArg::LockExclusive)
}

/// Where `host` appears inside `root`: the same absolute path.
pub fn inside(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// An empty file or directory at `host`'s path inside `root` to bind onto.
pub fn mount_point(root: &Path, host: &Path) -> Result<PathBuf, ChrootError> {
    let target = inside(root, host);
    if let Some(parent) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("create", parent))?;
    }
    let meta = std::fs::metadata(host).map_err(io("stat", host))?;
    if meta.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&target)
            .map_err(io("create", &target))?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io("create", &target))?;
    }
    Ok(target)
}

/// `root/dev/<name>`: a character device with the host node's numbers,
/// owned by the VMM's uid:gid, 0600.
pub fn device(root: &Path, host: &Path, uid: u32, gid: u32) -> Result<(), ChrootError> {
    let meta = std::fs::metadata(host).map_err(io("stat", host))?;
    let target = inside(root, host);
    if let Some(parent) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("create", parent))?;
    }
    nix::sys::stat::mknod(
        &target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        meta.rdev(),
    )
    .map_err(|e| io("mknod", &target)(e.into()))?;
    nix::unistd::chown(&target, Some(uid.into()), Some(gid.into()))
        .map_err(|e| io("chown", &target)(e.into()))?;
    Ok(())
}

/// Removes `<base>/<id>`. The tmpfs and the binds lived only in the
/// jail's own mount namespace, gone with it: here `root` is empty.
pub fn remove(jail: &Path) -> Result<(), ChrootError> {
    match std::fs::remove_dir_all(jail) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", jail)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dirs_only_and_mount_points_at_the_same_path() {
        let base = tempfile::tempdir().unwrap();
        let (jail, root, held) = create(base.path(), "j1").unwrap();
        assert!(matches!(
            create(base.path(), "j1"),
            Err(ChrootError::Exists(_))
        ));
        assert!(is_held(&jail), "its jailer holds it");
        drop(held);
        assert!(!is_held(&jail), "and no more once it is gone");
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("kernel");
        std::fs::write(&file, "k").unwrap();
        let mp = mount_point(&root, &file).unwrap();
        assert_eq!(mp, root.join(file.strip_prefix("/").unwrap()));
        assert_eq!(std::fs::read(&mp).unwrap(), b"");
        assert!(
            mount_point(&root, src.path()).is_err(),
            "the file's parent dir is there already"
        );
        remove(&jail).unwrap();
        assert!(!jail.exists() && src.path().join("kernel").exists());
        remove(&jail).unwrap();
    }
}
