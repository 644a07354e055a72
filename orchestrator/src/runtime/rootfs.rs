//! A container's root: the image's tree (unpacked once per image, shared),
//! seen through an idmapped mount with the container's ids, under an
//! overlay whose upper layer lives on a tmpfs of the container's own, at
//! `/run/bulkhead/ct/<id12>/rootfs`; reading the image's files inside it
//! without leaving it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use bulkhead_images::store::{Digest, Store};

use super::container::{io, PrepareError};
use super::limits;
use crate::state::paths::Paths;
use crate::state::record::WorkloadConfig;

/// The image's unpacked root, shared read-only by its containers:
/// `<data>/trees/<manifest hex>`, built once (unpacked aside, renamed in).
pub fn ensure_tree(
    store: &Store,
    paths: &Paths,
    manifest: &Digest,
) -> Result<PathBuf, PrepareError> {
    let tree = paths.trees().join(manifest.hex());
    // Unpacked trees keep their images' modes (setuid files too): no one
    // else may enter the directory above them.
    bulkhead_images::private::dir(&paths.trees())
        .map_err(io(format_args!("create {}", paths.trees().display())))?;
    if tree.is_dir() {
        return Ok(tree);
    }
    let work = store.temp_dir("tree-").map_err(PrepareError::Store)?;
    let dest = work.path().join("root");
    std::fs::create_dir(&dest).map_err(io(format_args!("create {}", dest.display())))?;
    bulkhead_images::rootdisk::unpack_tree(
        store,
        manifest,
        &dest,
        Default::default(),
        &mut |_, _| {},
    )
    .map_err(PrepareError::Unpack)?;
    match std::fs::rename(&dest, &tree) {
        Ok(()) => Ok(tree),
        Err(_) if tree.is_dir() => Ok(tree), // another run won the race
        Err(e) => Err(io(format_args!("publish {}", tree.display()))(e)),
    }
}

/// A container's mounted root: where it is, the dir that holds it, the
/// bundle dir, and the user namespace's base (when it has one).
#[derive(Debug)]
pub struct Root {
    pub rootfs: PathBuf,
    pub dir: PathBuf,
    pub bundle: PathBuf,
    pub base: Option<u32>,
}

/// Mounts the container's writable tmpfs and its overlay over `tree`
/// (through an idmapped bind when `userns` is given). On failure nothing
/// stays mounted.
pub fn mount_root(
    cfg: &WorkloadConfig,
    paths: &Paths,
    tree: &Path,
    userns: Option<&OwnedFd>,
) -> Result<Root, PrepareError> {
    mount_layers(cfg, paths, tree, userns).inspect_err(|_| unmount_layers(paths, &cfg.id))
}

fn mount_layers(
    cfg: &WorkloadConfig,
    paths: &Paths,
    tree: &Path,
    userns: Option<&OwnedFd>,
) -> Result<Root, PrepareError> {
    let dir = paths.workload_dir(&cfg.id);
    // The writable layer lives on a tmpfs of its own size: filling it
    // fills that, never the node's disk.
    let rw = dir.join("rw");
    std::fs::create_dir_all(&rw).map_err(io(format_args!("create {}", rw.display())))?;
    let size = format!("size={}m,mode=0700", limits::CONTAINER_WRITABLE_MIB);
    nix::mount::mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(size.as_str()),
    )
    .map_err(|e| PrepareError::Tmpfs(rw.clone(), e))?;
    let ids = userns.and(cfg.userns).map(|u| u.base);
    let ct = container_dir(&cfg.id, ids)?;
    let (upper, work, rootfs, bundle) = (
        rw.join("upper"),
        rw.join("work"),
        ct.join("rootfs"),
        dir.join("bundle"),
    );
    for d in [&upper, &work, &rootfs, &bundle] {
        std::fs::create_dir_all(d).map_err(io(format_args!("create {}", d.display())))?;
    }
    // The image's tree stays shared and unchanged: the container sees
    // it through an idmapped mount (its owners 0..65535 as base+id),
    // and its own writes land in an upper dir its root owns.
    let lower = match (userns, ids) {
        (Some(ns), Some(base)) => {
            let lower = dir.join("lower");
            std::fs::create_dir_all(&lower)
                .map_err(io(format_args!("create {}", lower.display())))?;
            idmapped_bind(tree, &lower, ns, false)
                .map_err(|e| PrepareError::Idmap(lower.clone(), e))?;
            let mode = std::fs::metadata(tree)
                .map_err(io(format_args!("read {}", tree.display())))?
                .permissions();
            std::os::unix::fs::chown(&upper, Some(base), Some(base))
                .and_then(|()| std::fs::set_permissions(&upper, mode))
                .map_err(io(format_args!(
                    "give {} to the container",
                    upper.display()
                )))?;
            lower
        }
        _ => tree.to_path_buf(),
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mounted = nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    );
    if lower != tree {
        // The overlay holds its own reference to the layer.
        let _ = nix::mount::umount2(&lower, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&lower);
    }
    if let Err(e) = mounted {
        return Err(PrepareError::Overlay(rootfs.clone(), e));
    }
    Ok(Root {
        rootfs,
        dir: ct,
        bundle,
        base: ids,
    })
}

/// Detaches a container's overlay, then the tmpfs that holds its writable
/// layer (and an idmapped tree a crash left), and removes its dir under
/// [`Paths::container_base`]: entry by entry, never recursing into a mount.
pub fn unmount_layers(paths: &Paths, id: &str) {
    let (ct, dir) = (Paths::container_dir(id), paths.workload_dir(id));
    // `<workload>/rootfs`: where the overlay of a container recorded
    // before containers had a user namespace is.
    for m in [
        ct.join("rootfs"),
        dir.join("rootfs"),
        dir.join("rw"),
        dir.join("lower"),
    ] {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(dir.join("lower"));
    super::volumes::unbind_all(&ct);
    let _ = std::fs::remove_dir(ct.join("rootfs"));
    for f in ["hostname", "hosts", "resolv.conf"] {
        let _ = std::fs::remove_file(ct.join("etc").join(f));
    }
    let _ = std::fs::remove_dir(ct.join("etc"));
    let _ = std::fs::remove_dir(ct);
}

/// `<container base>/<id12>`: the base passable by anyone (0711, like
/// /var/lib/docker's for remapped roots), the dir itself only by root and,
/// with a user namespace, the container's root group (0710 root:BASE).
pub(super) fn container_dir(id: &str, base: Option<u32>) -> Result<PathBuf, PrepareError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let top = Paths::container_base();
    for d in [top.parent().unwrap_or(&top), top.as_path()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(d)
            .and_then(|()| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)))
            .map_err(io(format_args!("create {}", d.display())))?;
    }
    let ct = Paths::container_dir(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&ct)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .and_then(|()| std::os::unix::fs::chown(&ct, Some(0), base.or(Some(0))))
        .and_then(|()| {
            let mode = if base.is_some() { 0o710 } else { 0o700 };
            std::fs::set_permissions(&ct, std::fs::Permissions::from_mode(mode))
        })
        .map_err(io(format_args!("create {}", ct.display())))?;
    Ok(ct)
}

/// Binds `tree` at `at` through an idmapped mount: files the image owns as
/// N show as the user namespace's N (base+N on the host); `read_only`
/// makes the bind itself read-only (the host's mount, not the runtime's
/// flag, refuses the writes).
pub(super) fn idmapped_bind(
    tree: &Path,
    at: &Path,
    userns: &OwnedFd,
    read_only: bool,
) -> std::io::Result<()> {
    let c =
        |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other);
    let (tree, at, empty) = (c(tree)?, c(at)?, CString::default());
    // SAFETY: open_tree reads the NUL-terminated path; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            tree.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    let fd = std::os::fd::RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: a new fd that nothing else owns.
    let clone = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP
            | if read_only {
                libc::MOUNT_ATTR_RDONLY
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(std::io::Error::other)?,
    };
    // SAFETY: mount_setattr reads `attr` (of the size given) and the empty path; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            clone.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: move_mount reads the two NUL-terminated paths; it changes no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            clone.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            at.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `rel` inside `root` as if `root` were `/` (`openat2` with
/// RESOLVE_IN_ROOT, no magic links): symlinks and `..` in the image cannot
/// reach the host's files. `None` when it is not there.
pub fn open_in_root(root: &Path, rel: &str, flags: libc::c_int) -> Option<OwnedFd> {
    let dir = std::fs::File::open(root).ok()?;
    let path = CString::new(rel).ok()?;
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags).ok()?;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `how` (of the size given) and the NUL-terminated path; both outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = std::os::fd::RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Reads `rel` (at most 1 MiB) inside `root` as if `root` were `/`: symlinks
/// and `..` in the image cannot reach the host's files.
pub fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    use std::io::Read;
    // Non-blocking: a FIFO the image put there opens at once (and is then
    // refused as not a file) instead of hanging the supervisor.
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    let f = std::fs::File::from(open_in_root(root, rel, flags)?);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_inside_a_root_never_leaves_it() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.path().join("secret"), "host secret").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("secret"), "image file").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/secret", root.join("etc/passwd"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("../../../secret", root.join("etc/group"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_in_root(&root, "etc/passwd").as_deref(),
            Some("image file"),
            "absolute links resolve inside"
        );
        assert_eq!(
            read_in_root(&root, "etc/group").as_deref(),
            Some("image file"),
            "dot-dot stops at the root"
        );
        assert_eq!(
            read_in_root(&root, "etc"),
            None,
            "a directory is not a file"
        );
        assert_eq!(read_in_root(&root, "nope"), None);
    }
}
