//! Every VMM bulkhead starts runs inside `bulkhead-jailer`: its own uid and
//! gid, a chroot holding only the kernel, initrd and its vsock dir (the
//! root disk comes open, as a descriptor),
//! new mount/pid/ipc/uts namespaces, one shared network namespace with
//! nothing in it (the VMM needs only its TAP's fd, which works from
//! anywhere: a VMM taken over finds no interface, route or socket of the
//! host's), cgroups `bulkhead/<id>` sized to the VM, rlimits, no
//! capabilities. This module builds that command, finds the
//! VMM under it, and removes what a killed jailer left.

use std::collections::BTreeSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use tokio::process::Command;

use crate::state::paths::Paths;
use crate::state::procs::{children_of, ProcId};
use crate::state::record::{Jail, VmFiles, WorkloadConfig};
use crate::state::{State, StateError};

/// The VMM writes no file but its log (stderr): this caps it.
pub const FSIZE_BYTES: u64 = 16 << 20;
/// The VMM's open files: the disk, KVM's fds, sockets, the TAP.
pub const NOFILE: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cleanup(#[from] bulkhead_jailer::cleanup::CleanupError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The run dir's `vm/`: the one writable dir the jailed VMM sees, owned
/// by its uid (the supervisor's control socket beside it stays out of
/// reach); and the jails' base dir.
pub fn make_vm_dir(vm_dir: &Path, jail: Option<&Jail>) -> Result<(), JailError> {
    let io = |source| JailError::Io {
        path: vm_dir.display().to_string(),
        source,
    };
    let _ = std::fs::remove_dir_all(vm_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(vm_dir)
        .map_err(io)?;
    if let Some(j) = jail {
        nix::unistd::chown(vm_dir, Some(j.uid.into()), Some(j.gid.into()))
            .map_err(|e| io(e.into()))?;
        let base = |source| JailError::Io {
            path: j.chroot_base.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&j.chroot_base)
            .map_err(base)?;
    }
    Ok(())
}

/// The network namespace every jailed VMM joins: empty (not even
/// loopback up), made once and kept by a bind mount at this path.
pub fn vmm_netns_path() -> std::path::PathBuf {
    Path::new(crate::state::paths::RUN_ROOT).join("netns/vmm")
}

/// Makes the VMMs' empty network namespace if it is not there yet (under
/// a lock, so two supervisors starting at once make one); its path.
pub fn vmm_netns() -> Result<std::path::PathBuf, JailError> {
    let path = vmm_netns_path();
    let io = |what: &str, source: std::io::Error| JailError::Io {
        path: format!("{what} {}", path.display()),
        source,
    };
    let is_netns =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC);
    if is_netns(&path) {
        return Ok(path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(
            path.parent()
                .unwrap_or(Path::new(crate::state::paths::RUN_ROOT)),
        )
        .map_err(|e| io("create the dir of", e))?;
    let lock = std::fs::File::create(path.with_extension("lock")).map_err(|e| io("lock", e))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock", e.into()))?;
    if is_netns(&path) {
        return Ok(path);
    }
    std::fs::File::create(&path).map_err(|e| io("create", e))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare on this short-lived thread only; it touches no memory.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked")));
    made.map_err(|e| io("make the VMMs' network namespace at", e))?;
    Ok(path)
}

/// statfs(2)'s magic number of nsfs, where namespace files live.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Lets the jailed VMM connect to a socket the supervisor listens on.
pub fn hand_over(socket: &Path, jail: Option<&Jail>) -> Result<(), JailError> {
    if let Some(j) = jail {
        nix::unistd::chown(socket, Some(j.uid.into()), Some(j.gid.into())).map_err(|e| {
            JailError::Io {
                path: socket.display().to_string(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// `bulkhead-jailer ... --` with the VM's binds and limits; the caller
/// appends the VMM's own arguments. `tap`: fd 3 is the VM's TAP;
/// `netns`: the namespace the VMM joins ([`vmm_netns`]).
#[allow(clippy::too_many_arguments)]
pub fn command(
    jail: &Jail,
    cfg: &WorkloadConfig,
    files: &VmFiles,
    vm_dir: &Path,
    vcpus: u32,
    memory_mib: u64,
    tap: bool,
    volumes: &[super::volumes::VolumeDisk],
    netns: &Path,
) -> Command {
    let mut c = Command::new(&jail.jailer);
    c.args([
        "--id",
        &cfg.id,
        "--uid",
        &jail.uid.to_string(),
        "--gid",
        &jail.gid.to_string(),
    ])
    .arg("--chroot-base")
    .arg(&jail.chroot_base)
    .arg("--netns")
    .arg(netns);
    // Our VMM gets the root disk open as fd 4 (`microvm::DISK_FD`), so
    // its path is not bound; Firecracker opens it by path.
    let disk_fd = files.flavor == crate::state::record::VmmFlavor::Bulkhead;
    for ro in [&files.kernel, &files.initrd] {
        c.arg("--bind").arg(ro);
    }
    if !disk_fd {
        c.arg("--bind").arg(&files.disk.path);
    }
    c.arg("--bind").arg(format!("{},rw", vm_dir.display()));
    let memory = memory_mib
        .saturating_add(super::limits::VMM_OVERHEAD_MIB)
        .saturating_mul(1 << 20);
    for limit in bulkhead_jailer::cgroup::limits(
        memory,
        cfg.cpus,
        vcpus.saturating_add(super::limits::VMM_EXTRA_PIDS),
    ) {
        c.arg("--cgroup").arg(limit);
    }
    c.arg("--resource-limit")
        .arg(format!("NOFILE={NOFILE}"))
        .arg("--resource-limit")
        .arg(format!("FSIZE={}", fsize_for(volumes)));
    if tap {
        c.args(["--keep-fd", "3"]);
    }
    if disk_fd {
        c.args(["--keep-fd", &super::microvm::DISK_FD.to_string()]);
        for fd in (super::microvm::VOLUME_FD_BASE..).take(volumes.len()) {
            c.args(["--keep-fd", &fd.to_string()]);
        }
    }
    // Fencing below the supervisor: the jailer kills the VMM by the lease
    // deadline too, if the supervisor is gone by then.
    if let Some(f) = &cfg.fencing {
        c.arg("--deadline-file")
            .arg(&f.deadline_file)
            .arg("--deadline-kill-after-ms")
            .arg(f.kill_after_ms.to_string());
    }
    c.arg("--").arg(&files.vmm);
    c
}

/// The VMM's file size limit: its log's cap, or a writable volume's size
/// (RLIMIT_FSIZE bounds every write's offset, a disk's too).
fn fsize_for(volumes: &[super::volumes::VolumeDisk]) -> u64 {
    volumes
        .iter()
        .filter(|v| !v.read_only)
        .map(|v| v.size)
        .fold(FSIZE_BYTES, u64::max)
}

/// The VMM under a running jailer: its one child.
pub fn vmm_under(jailer: i32) -> Option<ProcId> {
    ProcId::of(*children_of(jailer).first()?)
}

/// Removes workload `id`'s jail dir and cgroups if its jailer did not
/// (killed with the supervisor, or the host went down mid-run).
pub fn remove(id: &str) -> Result<Vec<String>, JailError> {
    Ok(bulkhead_jailer::cleanup::remove(&Paths::jail_base(), id)?)
}

/// Removes the jails of workloads the store no longer has. The jail ids
/// are read before the records: a jail made meanwhile belongs to a record
/// inserted before it, so it is in the list.
pub fn sweep(state: &State) -> Result<Vec<String>, JailError> {
    let base = Paths::jail_base();
    // Only jail dirs, with ids bulkhead makes (64 hex digits): other jails on
    // this host are not ours, and a bulkhead cgroup without a jail dir may be
    // a container's of another store on this host (`bulkhead node`s side by
    // side): sweeping it would kill that container.
    let ids: Vec<String> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|i| i.len() == 64 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let known: BTreeSet<String> = state.list()?.into_iter().map(|r| r.config.id).collect();
    let unknown: Vec<String> = ids.into_iter().filter(|i| !known.contains(i)).collect();
    // Of those, only jails no live jailer holds: another store's running
    // VMs on this host (another data dir, a second `bulkhead node`) keep theirs.
    let mut removed = Vec::new();
    for id in bulkhead_jailer::cleanup::unheld(&base, &unknown) {
        removed.extend(remove(&id)?);
    }
    Ok(removed)
}
