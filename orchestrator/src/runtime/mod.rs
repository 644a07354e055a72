//! The local runtime: workloads started by `bulkhead run`, each owned by a
//! supervisor process (`supervisor.rs`, like conmon) that survives the CLI.
//!
//! ```text
//! <data>/state.redb + state.lock     workload records (redb, opened per
//!                                    transaction under the flock)
//! <data>/workloads/<id>/config.json  what to run (written by `run`)
//!                       log, log.1   the workload's output (rotated)
//!                       console.log  the VM's serial console (microvm)
//!                       running.json supervisor + runtime pids (supervisor)
//!                       exit.json    how it ended (supervisor; folded in
//!                                    by the CLI)
//!                       upper/ work/ rootfs/ bundle/  (container runtime)
//! <data>/volumes/<name>/disk.ext4    a named volume (`volumes.rs`); mnt/:
//!                                    a dir volume's host mount, bound into
//!                                    containers at /run/bulkhead/ct/<id12>/
//!                                    vols/N with their ids
//! <data>/boot/<owner>/               each owner's own copy of the guest
//!                                    kernel and initramfs, mapped into its
//!                                    VMs (`boot_copies.rs`)
//! /run/bulkhead/<id12>/ctl.sock      the supervisor's control socket
//!                       vm/vsock*    the VM's vsock sockets (microvm; vm/ is
//!                                    the jailed VMM's, owned by its uid)
//! /run/bulkhead/jail/<id>/root       the VMM's jail (bulkhead-jailer), with
//!                                    cgroups bulkhead/<id>
//! ```

pub mod attach;
pub mod boot_copies;
pub mod client;
pub mod console;
pub mod container;
pub mod copy;
pub mod create;
pub mod fence_watch;
pub mod health;
pub mod jail;
pub mod limits;
pub mod microvm;
pub mod remove;
pub mod rootfs;
pub mod seccomp;
pub mod supervisor;
pub mod volumes;
pub mod workload;

/// A binary bulkhead ships (`bulkhead-vmm`, `bulkhead-jailer`, ...): the
/// static build beside ours (`<target>/x86_64-unknown-linux-gnu/release`),
/// else our own dir.
pub fn shipped_binary(name: &str) -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    [
        dir.join("../x86_64-unknown-linux-gnu/release").join(name),
        dir.join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no {name} next to {} (build it: `make static`)",
                exe.display()
            ),
        )
    })
}
