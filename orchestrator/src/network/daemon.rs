//! The host's small network daemons (a network's resolver, a tenant's
//! userspace tunnel): `bulkhead __NAME` started by whoever changes the
//! network, holding a lock file (flock) that records its pid and start time
//! for as long as it runs. The spawner waits for `READY` on its stdout; the
//! daemon forks away (a session of its own) before it says so, so the
//! spawner returns and the daemon outlives it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::NetError;
use crate::state::procs::ProcId;

/// What a daemon prints once it serves (its spawner waits for it).
pub const READY: &str = "ready";

fn host(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::host(what.to_string(), e)
}

/// The running daemon holding `lock`, if any.
pub fn holder(lock: &Path) -> Result<Option<ProcId>, NetError> {
    let mut f = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(host("open a daemon's lock", e)),
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| host("read a daemon's lock", e))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_free) => Ok(None),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut it = text.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(pid)), Some(Ok(start))) => Ok(Some(ProcId {
                    pid: i32::try_from(pid).unwrap_or(0),
                    start,
                })),
                // Locked, pid not written yet: it is starting.
                _ => Ok(Some(ProcId { pid: 0, start: 0 })),
            }
        }
        Err((_, e)) => Err(host("check a daemon's lock", e)),
    }
}

/// Kills the daemon holding `lock` and waits (2 s at most) until it is gone.
pub fn kill(lock: &Path) -> Result<(), NetError> {
    if let Some(p) = holder(lock)? {
        if let Some(fd) = p.pidfd() {
            p.signal(libc::SIGKILL);
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(2000u16));
        }
    }
    Ok(())
}

/// Runs `bulkhead ARGS` (stderr to `log`) and waits for its `READY`.
pub fn spawn(what: &str, args: &[&str], log: &Path) -> Result<(), NetError> {
    let exe = std::env::current_exe().map_err(|e| host(what, e))?;
    let err = bulkhead_images::private::append(log).map_err(|e| host(what, e))?;
    let out = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(err)
        .output()
        .map_err(|e| host(what, e))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && said.lines().any(|l| l == READY) {
        return Ok(());
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    Err(host(
        what,
        format!(
            "{} ({})",
            out.status,
            tail.lines().last().unwrap_or("no message")
        ),
    ))
}

/// The daemon's side: takes `lock` (`None`: another one holds it, and the
/// caller says `READY` and ends).
pub fn take_lock(lock: &Path) -> Result<Option<nix::fcntl::Flock<File>>, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock)
        .map_err(|e| format!("open the lock: {e}"))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(format!("lock: {e}")),
    }
}

/// The daemon's side, while it has one thread: forks; the parent ends at
/// once (its spawner goes on reading the child's stdout), the child leads
/// a session of its own and records itself in the lock.
pub fn detach(lock: &mut nix::fcntl::Flock<File>) -> Result<(), String> {
    // SAFETY: called while the process has one thread (no runtime yet);
    // the parent side only calls _exit, which runs nothing of ours (the
    // lock stays with the child).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => {
            // SAFETY: _exit ends this process at once; no destructor runs
            // (one would release the flock the child now holds).
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Child => {}
    }
    let _ = nix::unistd::setsid();
    let me = ProcId::current();
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{} {}", me.pid, me.start))
        .map_err(|e| format!("record the pid: {e}"))
}

/// The daemon's side: says `READY` and lets go of stdout (the spawner's
/// read then ends).
pub fn ready() -> Result<(), String> {
    // Not println!: a spawner that stopped listening must not kill us.
    let _ = writeln!(std::io::stdout(), "{READY}");
    let _ = std::io::stdout().flush();
    let null = File::open("/dev/null").map_err(|e| e.to_string())?;
    nix::unistd::dup2_stdout(&null).map_err(|e| format!("stdout: {e}"))
}
