//! Named volumes on this host (their rows: `state::volumes`). Each is an
//! ext4 image `<data>/volumes/NAME/disk.ext4`, sparse, its size the
//! volume's limit, made by this host before any workload writes it:
//!
//! - filled, on first use, from the image's content at the path it is
//!   mounted at (as docker does), by `mkfs.ext4 -d` reading the image's tree
//!   through a descriptor opened inside it: never a mount, and a symlink in
//!   the image cannot point the copy at the host's files;
//! - a *dir* volume is then loop-mounted by the host (`NAME/mnt`, nosuid,
//!   nodev) and bound into each container that uses it through an idmapped
//!   mount with that container's ids (`ct/vols/N`, read-only on the host's
//!   side for `:ro`), so files keep the ids they have inside, as image trees
//!   do, and two containers with different id blocks see the same owners;
//! - a *block* volume is never mounted here: only guests do.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::state::paths::Paths;
use crate::state::record::WorkloadConfig;
use crate::state::volumes::{self, Volume, VolumeKind};
use crate::state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    State(#[from] StateError),
    /// Asked for something this volume cannot do: nothing was changed.
    #[error("{0}")]
    Input(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Tool { what: String, detail: String },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.to_string();
    move |source| VolumeError::Io { what, source }
}

/// The volume's filesystem image.
pub fn disk_path(paths: &Paths, name: &str) -> PathBuf {
    paths.volume_dir(name).join("disk.ext4")
}

/// Where the host mounts a dir volume.
pub fn mount_point(paths: &Paths, name: &str) -> PathBuf {
    paths.volume_dir(name).join("mnt")
}

/// Makes volume `name`: its row first (the name is claimed, atomically),
/// then its filesystem. On a failure neither stays.
pub fn create(
    state: &State,
    name: &str,
    kind: VolumeKind,
    size_bytes: u64,
) -> Result<Volume, VolumeError> {
    let v = Volume {
        name: name.to_string(),
        kind,
        size_bytes,
        created_ms: crate::state::record::now_ms(),
        used: false,
    };
    // Sparse, but promised: a volume larger than what the data dir's
    // filesystem has free would fail its workload's writes later instead.
    if let Ok(fs) = nix::sys::statvfs::statvfs(state.paths().data()) {
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        if size_bytes > free {
            return Err(VolumeError::Input(format!(
                "volume {name:?} of {} MiB does not fit: {} has {} MiB free (--size, or `bulkhead volume create --size SIZE {name}` first)",
                size_bytes >> 20,
                state.paths().data().display(),
                free >> 20
            )));
        }
    }
    volumes::insert(state, &v)?;
    if let Err(e) = make_fs(state.paths(), &v, None) {
        let _ = std::fs::remove_dir_all(state.paths().volume_dir(name));
        let _ = volumes::remove_row(state, name);
        return Err(e);
    }
    Ok(v)
}

/// Writes the volume's ext4 image aside, then renames it into place: a
/// journal (a workload killed mid-write leaves what the journal replays),
/// no reserved blocks, the root owned as `fill`'s root is (else 0:0, the
/// workload's root), with `fill`'s content.
fn make_fs(paths: &Paths, v: &Volume, fill: Option<&OwnedFd>) -> Result<(), VolumeError> {
    let dir = paths.volume_dir(&v.name);
    bulkhead_images::private::dir(&paths.data().join("volumes"))
        .and_then(|()| bulkhead_images::private::dir(&dir))
        .map_err(io(format_args!("create {}", dir.display())))?;
    let tmp = dir.join(".disk.ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    let f = std::fs::File::create(&tmp).map_err(io(format_args!("create {}", tmp.display())))?;
    f.set_len(v.size_bytes)
        .map_err(io(format_args!("size {}", tmp.display())))?;
    let (owner, mode) = match fill {
        Some(fd) => {
            let m = std::fs::File::from(fd.try_clone().map_err(io("the image's directory"))?)
                .metadata()
                .map_err(io("the image's directory"))?;
            ((m.uid(), m.gid()), m.mode() & 0o7777)
        }
        None => ((0, 0), 0o755),
    };
    // mkfs reads the image's directory through our descriptor (a magic
    // link it may follow: it was opened inside the tree).
    let source = fill.map(|fd| format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()));
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-m", "0", "-t", "ext4", "-L"])
        .arg(label(&v.name))
        .arg("-E")
        .arg(format!("root_owner={}:{}", owner.0, owner.1));
    if let Some(s) = &source {
        mkfs.arg("-d").arg(s);
    }
    mkfs.arg(&tmp);
    tool(&mut mkfs, "mkfs.ext4 (apt-get install e2fsprogs)")?;
    if mode != 0o755 {
        // The root's mode as the image has it (a database's 0700 data dir).
        let set = format!("set_inode_field / mode 0{:o}", 0o040_000 | mode);
        tool(
            Command::new("debugfs").args(["-w", "-R", &set]).arg(&tmp),
            "debugfs (e2fsprogs)",
        )?;
    }
    f.sync_all()
        .and_then(|()| std::fs::rename(&tmp, disk_path(paths, &v.name)))
        .and_then(|()| std::fs::File::open(&dir)?.sync_all())
        .map_err(io(format_args!(
            "write {}",
            disk_path(paths, &v.name).display()
        )))
}

/// An ext4 label (16 bytes at most) from the volume's name.
fn label(name: &str) -> String {
    name.chars().take(16).collect()
}

fn tool(c: &mut Command, what: &str) -> Result<(), VolumeError> {
    let out = c.output().map_err(io(what))?;
    if out.status.success() {
        return Ok(());
    }
    Err(VolumeError::Tool {
        what: what.to_string(),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Before a workload first mounts `v` at `target`: the image's content
/// there (read inside `tree`, the image's unpacked root) goes into it when
/// the image has any, then `v` is marked used, so later workloads find
/// what the earlier ones left. Returns whether it was filled.
pub fn first_use(
    state: &State,
    v: &Volume,
    tree: Option<&Path>,
    target: &str,
) -> Result<bool, VolumeError> {
    if v.used {
        return Ok(false);
    }
    let fill = tree.and_then(|t| {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let fd = super::rootfs::open_in_root(t, target, flags)?;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let has_entries = std::fs::read_dir(path).ok()?.next().is_some();
        has_entries.then_some(fd)
    });
    if let Some(fd) = &fill {
        make_fs(state.paths(), v, Some(fd))?;
    }
    volumes::mark_used(state, &v.name)?;
    Ok(fill.is_some())
}

/// A dir volume mounted on the host (loop, ext4, nosuid, nodev), mounted
/// now if it is not yet (first use, or after a reboot).
pub fn host_mount(paths: &Paths, v: &Volume) -> Result<PathBuf, VolumeError> {
    if v.kind != VolumeKind::Dir {
        return Err(VolumeError::Input(format!(
            "volume {:?} is a block volume: only microVMs mount it",
            v.name
        )));
    }
    let mnt = mount_point(paths, &v.name);
    // One mount at a time per volume (two read-only users may start at once).
    let lock = std::fs::File::create(paths.volume_dir(&v.name).join(".lock"))
        .map_err(io(format_args!("lock volume {:?}", v.name)))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(format_args!("lock volume {:?}", v.name))(e.into()))?;
    if is_mounted(&mnt) {
        return Ok(mnt);
    }
    bulkhead_images::private::dir(&mnt).map_err(io(format_args!("create {}", mnt.display())))?;
    tool(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
            .arg(disk_path(paths, &v.name))
            .arg(&mnt),
        &format!("mount volume {:?}", v.name),
    )?;
    Ok(mnt)
}

/// `path` is a mount point: another device than its parent's.
fn is_mounted(path: &Path) -> bool {
    let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev()).ok();
    match (dev(path), path.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

/// Lets go of a dir volume's host mount (nothing if it is not mounted).
fn host_unmount(paths: &Paths, name: &str) -> Result<(), VolumeError> {
    let mnt = mount_point(paths, name);
    if !is_mounted(&mnt) {
        return Ok(());
    }
    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).map_err(|e| {
        io(format_args!(
            "unmount volume {name:?} from {} (a workload still holds it?)",
            mnt.display()
        ))(e.into())
    })
}

/// A container's volumes, bound under its dir `ct` (`vols/N`) through
/// idmapped mounts with its user namespace: (source, target, read-only)
/// for the spec's mounts. On a failure the binds made so far go again.
pub fn bind_for_container(
    cfg: &WorkloadConfig,
    state: &State,
    ct: &Path,
    userns: Option<&OwnedFd>,
) -> Result<Vec<(PathBuf, String, bool)>, VolumeError> {
    if cfg.volumes.is_empty() {
        return Ok(Vec::new());
    }
    let (Some(ns), Some(ids)) = (userns, cfg.userns) else {
        return Err(VolumeError::Input(
            "volumes need the container's own user namespace".into(),
        ));
    };
    let binds = bind_each(cfg, state, ct, ns, ids.base);
    if binds.is_err() {
        unbind_all(ct);
    }
    binds
}

fn bind_each(
    cfg: &WorkloadConfig,
    state: &State,
    ct: &Path,
    ns: &OwnedFd,
    base: u32,
) -> Result<Vec<(PathBuf, String, bool)>, VolumeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let vols = ct.join("vols");
    // As the container dir: root's, passable by the container's root group.
    std::fs::DirBuilder::new()
        .mode(0o710)
        .create(&vols)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .and_then(|()| std::os::unix::fs::chown(&vols, Some(0), Some(base)))
        .and_then(|()| std::fs::set_permissions(&vols, std::fs::Permissions::from_mode(0o710)))
        .map_err(io(format_args!("create {}", vols.display())))?;
    let mut out = Vec::new();
    for (i, m) in cfg.volumes.iter().enumerate() {
        let v = volumes::get(state, &m.volume)?
            .ok_or_else(|| VolumeError::Input(format!("volume {:?} is gone", m.volume)))?;
        let mnt = host_mount(state.paths(), &v)?;
        let at = vols.join(i.to_string());
        std::fs::create_dir_all(&at).map_err(io(format_args!("create {}", at.display())))?;
        super::rootfs::idmapped_bind(&mnt, &at, ns, m.read_only).map_err(io(format_args!(
            "bind volume {:?} with the container's ids",
            m.volume
        )))?;
        out.push((at, m.target.clone(), m.read_only));
    }
    Ok(out)
}

/// Detaches a container's volume binds (`ct/vols/N`) and removes their dirs.
pub fn unbind_all(ct: &Path) {
    let vols = ct.join("vols");
    for e in std::fs::read_dir(&vols).into_iter().flatten().flatten() {
        let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(e.path());
    }
    let _ = std::fs::remove_dir(vols);
}

/// Removes volume `name` when no workload's record names it (ended ones
/// included: `rm` them first): its host mount, its row, its files.
pub fn remove(state: &State, name: &str) -> Result<(), VolumeError> {
    let _db = state.hold()?;
    if volumes::get(state, name)?.is_none() {
        return Err(VolumeError::Input(format!(
            "no volume {name:?} (`bulkhead volume ls` lists them)"
        )));
    }
    let records = state.list()?;
    let users = volumes::users(&records, name);
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|r| r.config.name.clone()).collect();
        return Err(VolumeError::Input(format!(
            "volume {name:?} is in use by {} (`bulkhead rm` them first)",
            names.join(", ")
        )));
    }
    host_unmount(state.paths(), name)?;
    volumes::remove_row(state, name)?;
    let dir = state.paths().volume_dir(name);
    std::fs::remove_dir_all(&dir).or_else(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(io(format_args!("remove {}", dir.display()))(e)),
    })
}

/// A block volume as a microVM gets it: a disk of its own after the root's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    pub path: PathBuf,
    pub read_only: bool,
    /// Its length (the jailed VMM may write files this large).
    pub size: u64,
}

/// A microVM's volume disks, in the order its record names them (the
/// guest's /dev/vdb, /dev/vdc, ...).
pub fn disks_of(cfg: &WorkloadConfig, paths: &Paths) -> Vec<VolumeDisk> {
    cfg.volumes
        .iter()
        .map(|m| {
            let path = disk_path(paths, &m.volume);
            let size = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
            VolumeDisk {
                path,
                read_only: m.read_only,
                size,
            }
        })
        .collect()
}

/// Space the volume's image takes on the host's disk (it is sparse).
pub fn allocated_bytes(paths: &Paths, name: &str) -> Option<u64> {
    std::fs::metadata(disk_path(paths, name))
        .ok()
        .map(|m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fit_ext4() {
        assert_eq!(label("a-very-long-volume-name"), "a-very-long-volu");
        assert_eq!(label("db"), "db");
    }
}
