//! Rootless unpacking: a non-root user cannot give files the image's
//! owners, and `mkfs.ext4 -d` copies owners from the tree it reads. So the
//! commands that create or delete such trees run again, as a child, inside
//! a user namespace where the caller is root and ids 1..N are the caller's
//! subordinate ids (`/etc/subuid`, `/etc/subgid`, mapped by Debian's
//! `newuidmap`/`newgidmap` from the `uidmap` package).
//!
//! ```text
//! parent (uid 1000)                     child (same binary, same args)
//! socketpair; spawn ------------------> unshare(NEWUSER), first thing in main
//!        <----------------------------- 1 byte: ready to be mapped
//! newuidmap PID 0 1000 1 1 S N
//! newgidmap PID 0 1000 1 1 S N
//! 1 byte ------------------------------> now uid 0 inside, carries on
//! wait, exit with the child's code
//! ```
//!
//! The child unshares after exec, not between fork and exec: capabilities
//! are recomputed at exec, and an exec while still unmapped would leave it
//! root in name only.
//!
//! Inside, ids the map lacks cannot be given to a file: the unpacker turns
//! that `EINVAL` into [`crate::unpack::UnpackError::IdNotMapped`].

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

/// Set in the child: the number of its end of the socket pair.
const SYNC_ENV: &str = "BULKHEAD_USERNS_SYNC";

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("{user} has no subordinate {kind} ids in {file}: add a range (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}` as root) or run as root")]
    NoRange {
        user: String,
        kind: &'static str,
        file: &'static str,
    },
    #[error("{file}")]
    Read {
        file: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} is missing: install Debian's `uidmap` package (apt-get install uidmap), or run as root")]
    NoTool { tool: &'static str },
    #[error("{tool} failed ({status}): {stderr}")]
    Map {
        tool: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("start the user-namespace child (does this kernel allow unprivileged user namespaces? sysctl kernel.unprivileged_userns_clone)")]
    Spawn(#[source] std::io::Error),
    #[error("in the user namespace: {0}")]
    Child(String),
}

/// One line of /etc/subuid or /etc/subgid that belongs to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The first range in `text` (subuid/subgid format: `name-or-id:start:count`)
/// owned by `name` or `id`. Malformed lines are ignored, as shadow's tools do.
pub fn parse_subids(text: &str, name: &str, id: u32) -> Option<SubRange> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || !(owner == name || owner.parse::<u32>().ok() == Some(id)) {
            return None;
        }
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (count > 0 && start.checked_add(count).is_some()).then_some(SubRange { start, count })
    })
}

/// True in the child this module started (after the id maps are in place).
pub fn inside() -> bool {
    std::env::var_os(SYNC_ENV).is_some()
}

/// Call first thing in `main` (while the process has one thread) of a
/// binary that uses [`rerun_inside`]: in the child, enters the new user
/// namespace and waits until the parent has written its id maps.
pub fn child_wait() -> Result<(), UsernsError> {
    let Some(fd) = std::env::var(SYNC_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    if fd < 3 {
        return Err(UsernsError::Child(format!("bad {SYNC_ENV}")));
    }
    // SAFETY: the parent put this fd here for us alone (see rerun_inside) and nothing else in this process owns it.
    let mut sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| {
        UsernsError::Child(format!(
            "unshare(CLONE_NEWUSER): {e} (are unprivileged user namespaces allowed here?)"
        ))
    })?;
    sock.write_all(b"r")
        .map_err(|e| UsernsError::Child(format!("tell the parent: {e}")))?;
    let mut byte = [0u8; 1];
    match sock.read(&mut byte) {
        Ok(1) if nix::unistd::geteuid().is_root() => Ok(()),
        Ok(1) => Err(UsernsError::Child(
            "the id maps did not make us root".into(),
        )),
        _ => Err(UsernsError::Child(
            "the parent did not set up the id maps".into(),
        )),
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn range_for(
    file: &'static str,
    kind: &'static str,
    user: &str,
    id: u32,
) -> Result<SubRange, UsernsError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(UsernsError::Read { file, source }),
    };
    parse_subids(&text, user, id).ok_or_else(|| UsernsError::NoRange {
        user: user.to_string(),
        kind,
        file,
    })
}

fn write_map(tool: &'static str, pid: u32, own: u32, range: SubRange) -> Result<(), UsernsError> {
    let out = Command::new(tool)
        .args([
            pid.to_string(),
            "0".into(),
            own.to_string(),
            "1".into(),
            "1".into(),
            range.start.to_string(),
            range.count.to_string(),
        ])
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsernsError::NoTool { tool }),
        Err(e) => Err(UsernsError::Map {
            tool,
            status: ExitStatus::default(),
            stderr: e.to_string(),
        }),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(UsernsError::Map {
            tool,
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
    }
}

/// Runs `exe args` as root of a new user namespace (our id as 0, our
/// subordinate ids from 1), with `env` added, stdio inherited; returns its
/// exit status once it is done. `exe` must call [`child_wait`] first.
pub fn rerun_inside(
    exe: &Path,
    args: &[OsString],
    env: &[(&str, &Path)],
) -> Result<ExitStatus, UsernsError> {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let user = user_name(uid);
    let uids = range_for("/etc/subuid", "user", &user, uid)?;
    let gids = range_for("/etc/subgid", "group", &user, uid)?;
    let (mut ours, theirs) = UnixStream::pair().map_err(UsernsError::Spawn)?;
    let child_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args).env(SYNC_ENV, child_fd.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: between fork and exec this only makes raw syscalls (fcntl,
    // prctl), which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Keep the child's end open across exec; die with the parent.
            if libc::fcntl(child_fd, libc::F_SETFD, 0) < 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(UsernsError::Spawn)?;
    drop(theirs);
    let mut ready = [0u8; 1];
    let mapped = match ours.read(&mut ready) {
        Ok(1) => write_map("newuidmap", child.id(), uid, uids)
            .and_then(|()| write_map("newgidmap", child.id(), gid, gids)),
        _ => Err(UsernsError::Child(
            "the child did not enter its user namespace (its error is above)".into(),
        )),
    };
    if let Err(e) = mapped {
        drop(ours); // the child sees EOF and gives up
        let _ = child.wait();
        return Err(e);
    }
    ours.write_all(b"1")
        .map_err(|e| UsernsError::Child(format!("release the child: {e}")))?;
    drop(ours);
    child
        .wait()
        .map_err(|e| UsernsError::Child(format!("wait: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines_by_name_or_id_and_malformed_ones_ignored() {
        let text = "root:100000:65536\n\nbob:x:1\nbob:5:0\nbob:4294967295:2\nbob:1:2:3\n 1001:200000:1000\nbob:300000:65536\n";
        assert_eq!(
            parse_subids(text, "bob", 1001),
            Some(SubRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(
            parse_subids(text, "bob", 7),
            Some(SubRange {
                start: 300000,
                count: 65536
            })
        );
        assert_eq!(parse_subids(text, "alice", 7), None);
        assert_eq!(parse_subids("", "bob", 1), None);
        assert_eq!(parse_subids("bob", "bob", 1), None);
        assert_eq!(
            parse_subids("bob:-1:5\nbob:1:-5\nbob:1:99999999999", "bob", 1),
            None
        );
    }
}
