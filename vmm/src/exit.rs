//! Why the VMM stops, and the exit code each reason gives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit codes of `bulkhead-vmm` (also in `--help`).
pub mod code {
    /// The guest powered off (ACPI S5) or rebooted (i8042 or ACPI reset).
    pub const GUEST_STOPPED: u8 = 0;
    /// The VMM failed: bad configuration, unreadable kernel, a KVM error.
    pub const VMM_ERROR: u8 = 1;
    /// Bad command-line usage.
    pub const USAGE: u8 = 2;
    /// The guest kernel panicked (reported through pvpanic).
    pub const GUEST_PANIC: u8 = 3;
    /// The guest crashed in a way KVM saw: triple fault, internal or
    /// emulation error, failed VM entry.
    pub const GUEST_CRASH: u8 = 4;
    /// Stopped by SIGINT (128 + 2) or SIGTERM (128 + 15).
    pub const SIGINT: u8 = 130;
    pub const SIGTERM: u8 = 143;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    PowerOff,
    Reset,
    Panic,
    /// One line on what KVM reported.
    Crash(String),
    /// Stopped by this signal.
    Signal(i32),
}

impl ExitReason {
    pub fn code(&self) -> u8 {
        match self {
            ExitReason::PowerOff | ExitReason::Reset => code::GUEST_STOPPED,
            ExitReason::Panic => code::GUEST_PANIC,
            ExitReason::Crash(_) => code::GUEST_CRASH,
            ExitReason::Signal(libc::SIGINT) => code::SIGINT,
            ExitReason::Signal(_) => code::SIGTERM,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => f.write_str("guest powered off"),
            ExitReason::Reset => f.write_str("guest rebooted"),
            ExitReason::Panic => f.write_str("guest kernel panicked"),
            ExitReason::Crash(why) => write!(f, "guest crashed: {why}"),
            ExitReason::Signal(s) => write!(f, "stopped by signal {s}"),
        }
    }
}

/// Set once by whoever first sees the VM end (a device, a vCPU, a signal);
/// wakes the main thread through an eventfd.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    /// Checked by vCPUs after every exit: an atomic, not the mutex.
    requested: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            requested: AtomicBool::new(false),
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless one is already recorded; wakes the main thread.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.requested.store(true, Ordering::Release);
        let _ = self.evt.write(1);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_are_distinct() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_requested());
        s.request(ExitReason::Panic);
        s.request(ExitReason::PowerOff);
        assert_eq!(s.reason(), Some(ExitReason::Panic));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        let codes = [
            ExitReason::PowerOff.code(),
            ExitReason::Panic.code(),
            ExitReason::Crash("x".into()).code(),
            ExitReason::Signal(libc::SIGINT).code(),
            ExitReason::Signal(libc::SIGTERM).code(),
        ];
        let mut sorted = codes.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert_eq!(ExitReason::Reset.code(), 0);
    }
}
