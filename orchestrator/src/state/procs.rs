//! Processes named so that a recycled pid is never mistaken for them: the
//! pid plus its start time (field 22 of /proc/PID/stat), signalled through
//! a pidfd opened before the start time is checked.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// Field 22 (starttime) of a /proc/PID/stat line; the command name in
/// parentheses may hold spaces and parentheses, so count from the last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The parent pid in a /proc/PID/stat line (field 4).
fn parse_parent(stat: &str) -> Option<i32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A pid from std (`u32`) as the kernel's `pid_t`: pids stop at
/// `PID_MAX_LIMIT` (2^22), so this never wraps.
#[allow(clippy::cast_possible_wrap)]
pub const fn pid_t(pid: u32) -> i32 {
    pid as i32
}

/// The processes whose parent is `pid` (a scan of /proc: works without
/// CONFIG_PROC_CHILDREN).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_parent)
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

impl ProcId {
    pub fn of(pid: i32) -> Option<Self> {
        Some(Self {
            pid,
            start: start_time(pid)?,
        })
    }

    pub fn current() -> Self {
        let pid = pid_t(std::process::id());
        Self {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// A pidfd for this very process, or `None` if it is gone.
    pub fn pidfd(&self) -> Option<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return None;
        }
        let fd = std::os::fd::RawFd::try_from(fd).ok()?;
        // SAFETY: the kernel just handed us this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        (start_time(self.pid) == Some(self.start)).then_some(fd)
    }

    /// Still running (not gone, not a zombie, not a recycled pid).
    pub fn alive(&self) -> bool {
        self.pidfd().is_some() && !is_zombie(self.pid)
    }

    /// Sends `signal`; false when the process is gone.
    pub fn signal(&self, signal: i32) -> bool {
        let Some(fd) = self.pidfd() else { return false };
        // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_command_names_and_rejects_garbage() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        assert_eq!(parse_start_time("no paren"), None);
        assert_eq!(parse_start_time(""), None);
        assert_eq!(parse_parent(line), Some(1));
        assert_eq!(parse_parent("42 (x)"), None);
        assert_eq!(parse_parent("42 (x) S notapid"), None);
    }

    #[test]
    fn children_of_finds_a_child_we_started() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let kids = children_of(pid_t(std::process::id()));
        let _ = c.kill();
        let _ = c.wait();
        assert!(kids.contains(&pid_t(c.id())), "{kids:?}");
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not_it() {
        let me = ProcId::current();
        assert!(me.alive() && me.start > 0);
        assert!(!ProcId {
            pid: me.pid,
            start: me.start + 1
        }
        .alive());
        assert!(!ProcId {
            pid: i32::MAX,
            start: 1
        }
        .alive());
    }
}
