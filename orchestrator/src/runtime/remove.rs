//! Stopping and removing a workload, written once: `bulkhead stop|rm`, the
//! node daemon and a supervisor's `--rm` all come here.

use std::time::Duration;

use super::attach::Request;
use super::client;
use crate::network::NetError;
use crate::state::paths::Paths;
use crate::state::procs::ProcId;
use crate::state::record::{Record, RuntimeKind, Status};
use crate::state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{name} is {status}: stop it first, or `bulkhead rm -f`")]
    Live { name: String, status: Status },
    #[error(
        "{name} may have processes left ({status}): `bulkhead rm -f` kills them and removes it"
    )]
    MaybeLive { name: String, status: Status },
    #[error("remove the network of {0}")]
    Network(String, #[source] NetError),
    #[error("remove the files of {0}")]
    Files(String, #[source] std::io::Error),
    #[error("ask the supervisor of {0}")]
    Supervisor(String, #[source] client::ClientError),
    #[error("start an async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Asks a running workload's supervisor to stop it: the stop signal, then
/// SIGKILL after `timeout_s`. A workload that is not running is left as it is.
pub fn stop(r: &Record, timeout_s: u64) -> Result<(), RemoveError> {
    if r.status() != Status::Running {
        return Ok(());
    }
    runtime()
        .map_err(RemoveError::Runtime)?
        .block_on(client::request(
            &Paths::ctl_socket(&r.config.id),
            &Request::Stop { timeout_s },
        ))
        .map_err(|e| RemoveError::Supervisor(r.config.name.clone(), e))
}

/// Removes the workload `r` (it must have ended, unless `force`: then it
/// is killed first, also after a dead supervisor): its network, its files
/// and jail, then its record, last, so that a crash midway leaves a record
/// `rm` removes again.
pub fn remove(state: &State, r: &Record, force: bool) -> Result<(), RemoveError> {
    let status = r.status();
    if status.is_live() || matches!(&status, Status::Failed(_)) && r.exit.is_none() {
        if !force {
            let name = r.config.name.clone();
            return Err(if status.is_live() {
                RemoveError::Live { name, status }
            } else {
                RemoveError::MaybeLive { name, status }
            });
        }
        force_end(r);
    }
    // The network lock, then the store, once for the whole removal.
    let _net = crate::network::lifecycle::lock(state)
        .map_err(|e| RemoveError::Network(r.config.name.clone(), e))?;
    let _db = state.hold()?;
    crate::network::lifecycle::detach(state, &r.config.id)
        .map_err(|e| RemoveError::Network(r.config.name.clone(), e))?;
    remove_files(state.paths(), &r.config.id)
        .map_err(|e| RemoveError::Files(r.config.name.clone(), e))?;
    state.remove(&r.config.id)?;
    Ok(())
}

/// Removes the workload's files: a jail its jailer left (with anything
/// still in its cgroups), the overlay mount (if still there), its data dir,
/// its runtime dir.
pub fn remove_files(paths: &Paths, id: &str) -> std::io::Result<()> {
    super::jail::remove(id).map_err(|e| std::io::Error::other(bulkhead_agent_proto::report(&e)))?;
    let dir = paths.workload_dir(id);
    super::rootfs::unmount_layers(paths, id);
    // Its host-wide id claims (stale once the dir is gone, but tidy).
    if let Ok(h) =
        crate::state::hostids::HostIds::lock(&crate::state::hostids::default_dir(), paths.data())
    {
        h.release(id);
    }
    let _ = std::fs::remove_dir_all(Paths::run_dir(id));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Blocks until `p` has exited (pidfd poll), at most `limit`.
fn wait_gone(p: &ProcId, limit: Duration) -> bool {
    let Some(fd) = p.pidfd() else { return true };
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms))
        .map(|n| n > 0)
        .unwrap_or(false)
}

/// Kills the workload: through its supervisor if alive, else (an orphan)
/// the VMM or OCI runtime directly, and the runtime's state.
fn force_end(r: &Record) {
    let sup = r.running.as_ref().map(|x| x.supervisor);
    if let Some(s) = sup.filter(|s| s.alive()) {
        if let Ok(rt) = runtime() {
            let _ = rt.block_on(client::request(
                &Paths::ctl_socket(&r.config.id),
                &Request::Signal {
                    signal: libc::SIGKILL,
                },
            ));
        }
        if !wait_gone(&s, Duration::from_secs(30)) {
            s.signal(libc::SIGKILL);
            wait_gone(&s, Duration::from_secs(5));
        }
    }
    if let Some(p) = r.running.as_ref().and_then(|x| x.runtime) {
        if p.signal(libc::SIGKILL) {
            wait_gone(&p, Duration::from_secs(10));
        }
    }
    if r.config.runtime == RuntimeKind::Container {
        for rt in ["crun", "runc"] {
            let _ = std::process::Command::new(rt)
                .args(["delete", "-f", &r.config.id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
