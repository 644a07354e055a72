//! Every VMM bulkhead starts runs inside `bulkhead-jailer`: its own uid and
//! gid, a chroot holding only the kernel, initrd, disk and its vsock dir,
//! new mount/pid/ipc/uts namespaces, cgroups `bulkhead/<id>` sized to the
//! VM, rlimits, no capabilities. This module builds that command, finds the
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
/// appends the VMM's own arguments. `tap`: fd 3 is the VM's TAP.
pub fn command(
    jail: &Jail,
    cfg: &WorkloadConfig,
    files: &VmFiles,
    vm_dir: &Path,
    vcpus: u32,
    memory_mib: u64,
    tap: bool,
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
    .arg(&jail.chroot_base);
    for ro in [&files.kernel, &files.initrd, &files.disk.path] {
        c.arg("--bind").arg(ro);
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
        .arg(format!("FSIZE={FSIZE_BYTES}"));
    if tap {
        c.args(["--keep-fd", "3"]);
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
