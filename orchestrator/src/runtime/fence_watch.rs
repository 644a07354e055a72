//! Fencing below the supervisor, for containers: a small process of its
//! own session that outlives the supervisor only to stop the container
//! once its lease deadline (plus the kill delay) has passed. A microVM
//! gets the same from its jailer (`bulkhead-jailer --deadline-file`).
//!
//! It watches the container's cgroups (`bulkhead/<id>`, as crun makes
//! them): gone means the container ended and was removed, and it exits;
//! past the deadline it SIGKILLs every process in them with the jailer's
//! cleanup, and exits. It never touches anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_jailer::deadline;

/// How often the deadline and the cgroups are looked at.
const POLL: Duration = Duration::from_millis(250);
/// How long the container's cgroups may take to appear after the start.
const APPEAR: Duration = Duration::from_secs(60);

/// `bulkhead __fence-watch`: see the module.
pub fn main(id: &str, deadline_file: &Path, kill_after_ms: u64) -> ExitCode {
    if bulkhead_jailer::validate::id(id).is_err() {
        eprintln!("bulkhead fence-watch: bad id {id:?}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let mut seen = false;
    loop {
        let dirs: Vec<PathBuf> = bulkhead_jailer::cgroup::candidate_dirs(id)
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        if dirs.is_empty() {
            if seen || started.elapsed() > APPEAR {
                return ExitCode::SUCCESS;
            }
        } else {
            seen = true;
            let by = deadline::read(deadline_file).map_or(0, |d| d.saturating_add(kill_after_ms));
            if deadline::monotonic_ms() >= by {
                eprintln!(
                    "bulkhead fence-watch: {id}: the lease deadline in {} passed with no supervisor stopping it: killing the container",
                    deadline_file.display()
                );
                let mut left = false;
                for d in &dirs {
                    if let Err(e) = bulkhead_jailer::cleanup::kill_all(d) {
                        eprintln!("bulkhead fence-watch: {id}: {e}");
                        left = true;
                    }
                }
                return if left {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Starts the watcher for container `id`, in a session of its own so that
/// whatever ends the supervisor (its process group included) leaves it.
pub fn spawn(id: &str, f: &crate::state::fencing::Fencing) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut c = std::process::Command::new(exe);
    c.args(["__fence-watch", "--id", id, "--deadline-file"])
        .arg(&f.deadline_file)
        .args(["--kill-after-ms", &f.kill_after_ms.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    // Not waited for: it ends on its own (reaped by init once we are gone,
    // or by our SIGCHLD handling while we run).
    c.spawn().map(drop)
}
