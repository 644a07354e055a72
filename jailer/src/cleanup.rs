//! What a jail leaves when its jailer could not finish (killed, a crash, a
//! reboot mid-run): the jail dir and the cgroups, with any process still in
//! them. `bulkhead rm` and bulkhead's sweep call this; so can an operator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::validate;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("remove {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: processes {pids:?} still there after SIGKILL")]
    Busy { path: PathBuf, pids: Vec<i32> },
}

/// How long killed processes may take to leave their cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process in the cgroup `dir` until it is empty (what
/// forks meanwhile is killed on the next pass); `Busy` if some are left
/// after 10 s.
pub fn kill_all(dir: &Path) -> Result<(), CleanupError> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let left = procs(dir);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CleanupError::Busy {
                path: dir.to_path_buf(),
                pids: left,
            });
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Bounded poll: the kernel gives no event for "cgroup empty" on v1.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs what is left in the group, waits for it to be gone, removes it.
fn remove_cgroup(dir: &Path) -> Result<bool, CleanupError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    kill_all(dir)?;
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CleanupError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes jail `id`'s cgroups (killing what runs in them first) and its
/// dir under `base`; what was there, for the caller to report.
pub fn remove(base: &Path, id: &str) -> Result<Vec<String>, CleanupError> {
    let mut removed = Vec::new();
    if validate::id(id).is_err() {
        return Ok(removed); // never a path outside the jail dirs
    }
    for dir in crate::cgroup::candidate_dirs(id) {
        if remove_cgroup(&dir)? {
            removed.push(format!("cgroup {}", dir.display()));
        }
    }
    let jail = base.join(id);
    // The jail's tmpfs and binds lived in its own mount namespace: here
    // `root` is empty (jails from older versions held mount points).
    match std::fs::remove_dir_all(&jail) {
        Ok(()) => removed.push(format!("jail dir {}", jail.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CleanupError::Io { path: jail, source }),
    }
    Ok(removed)
}

/// Every jail id with a dir under `base` or a bulkhead cgroup.
pub fn ids(base: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    ids.extend(crate::cgroup::ids());
    ids.retain(|i| validate::id(i).is_ok());
    ids.sort();
    ids.dedup();
    ids
}

/// Of `ids`, those with a dir under `base` that no live jailer holds: what
/// a sweep may remove. Jailers make and lock their dirs under a shared lock
/// on `base`; this takes it exclusively while it looks, so a jail being
/// made is never taken for a dead one. Another store's live jails on this
/// host (two `bulkhead node`s side by side) are held, so left alone.
pub fn unheld(base: &Path, ids: &[String]) -> Vec<String> {
    let Ok(_looking) = crate::chroot::lock_base(base) else {
        return Vec::new();
    };
    ids.iter()
        .filter(|id| {
            validate::id(id).is_ok()
                && base.join(id).is_dir()
                && !crate::chroot::is_held(&base.join(id))
        })
        .cloned()
        .collect()
}

/// Removes every jail dir (with its cgroups) not `keep` and not held by a
/// live jailer; what went. A bulkhead cgroup without a jail dir is left:
/// it may be a container's.
pub fn sweep(base: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, CleanupError> {
    let candidates: Vec<String> = ids(base).into_iter().filter(|i| !keep(i)).collect();
    let mut removed = Vec::new();
    for id in unheld(base, &candidates) {
        removed.extend(remove(base, &id)?);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_dirs_of_its_ids_only_and_twice_is_fine() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("j1").join("root");
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(base.path().join("j2")).unwrap();
        std::fs::create_dir_all(base.path().join("bad name")).unwrap();
        let (_, _, held) = crate::chroot::create(base.path(), "j3").unwrap();
        // Keeps every other id: the host's own bulkhead cgroups are not this test's.
        assert!(
            ids(base.path()).iter().any(|i| i == "j1")
                && !ids(base.path()).iter().any(|i| i == "bad name")
        );
        let gone = sweep(base.path(), |id| id != "j1" && id != "j3").unwrap();
        assert_eq!(
            gone,
            [format!("jail dir {}", base.path().join("j1").display())]
        );
        assert!(base.path().join("j2").exists() && base.path().join("bad name").exists());
        assert!(
            base.path().join("j3").exists(),
            "a live jailer's jail is left alone"
        );
        drop(held);
        assert_eq!(
            unheld(base.path(), &["j3".into()]),
            ["j3"],
            "its jailer gone, it may go"
        );
        assert!(remove(base.path(), "j1").unwrap().is_empty());
        assert!(
            remove(base.path(), "../j2").unwrap().is_empty() && base.path().join("j2").exists()
        );
    }
}
