//! The descriptor limit of long-running daemons. systemd starts services
//! with a soft `RLIMIT_NOFILE` of 1024 (for select(2) users) and a high hard
//! limit; the node daemon and the server hold a connection per peer and
//! per workload, so they raise the soft limit to the hard one at start, as
//! Go's runtime does. The workloads they start get the limit back that the
//! daemon started with: raising ours must not change theirs.

use std::sync::atomic::{AtomicU64, Ordering};

/// The soft limit this process started with; `u64::MAX` until raised.
static STARTED_WITH: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises this process's soft descriptor limit to its hard limit and
/// remembers the one it had. Returns (before, after).
pub fn raise() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let _ = STARTED_WITH.compare_exchange(u64::MAX, soft, Ordering::SeqCst, Ordering::SeqCst);
    Ok((soft, hard))
}

/// In a forked child before exec: puts back the soft limit the daemon
/// started with (nothing if it never raised it). Async-signal-safe: an
/// atomic load and two system calls.
pub fn restore_in_child() -> std::io::Result<()> {
    let soft = STARTED_WITH.load(Ordering::SeqCst);
    if soft == u64::MAX {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = soft.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_limit_is_given_back_to_children() {
        let res = nix::sys::resource::Resource::RLIMIT_NOFILE;
        let (soft0, hard0) = nix::sys::resource::getrlimit(res).unwrap();
        // Start below the hard limit, as systemd does, to see both moves.
        let low = 256.min(hard0);
        nix::sys::resource::setrlimit(res, low, hard0).unwrap();
        let (before, after) = raise().unwrap();
        assert_eq!((before, after), (low, hard0));
        assert_eq!(nix::sys::resource::getrlimit(res).unwrap(), (hard0, hard0));
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "ulimit -Sn"]);
        // SAFETY: restore_in_child is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, restore_in_child);
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), low.to_string());
        nix::sys::resource::setrlimit(res, soft0, hard0).unwrap();
    }
}
