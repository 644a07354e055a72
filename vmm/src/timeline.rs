//! Boot timestamps: the VMM's own milestones and the codes the guest writes
//! to the boot-stage port, each with its time since the process started.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_agent_proto::BootStage;

/// Most events kept: the guest may write the port in a loop.
const MAX_EVENTS: usize = 64;

static PROCESS_START: OnceLock<(Instant, u64)> = OnceLock::new();

/// Marks the process start; call first thing in `main`.
pub fn mark_process_start() -> Instant {
    PROCESS_START
        .get_or_init(|| (Instant::now(), monotonic_us()))
        .0
}

/// The process start on CLOCK_MONOTONIC (microseconds): the one clock every
/// process on the host shares, so a caller can place the timeline on its own.
pub fn process_start_monotonic_us() -> u64 {
    mark_process_start();
    PROCESS_START.get().map_or(0, |s| s.1)
}

/// CLOCK_MONOTONIC now, in microseconds.
pub fn monotonic_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000),
        Err(_) => 0,
    }
}

/// Prefix of the lines `--boot-timeline` prints at exit.
pub const TIMELINE_PREFIX: &str = "bulkhead-vmm: boot-timeline ";
/// Prefix of the line with the process start on CLOCK_MONOTONIC.
pub const CLOCK_PREFIX: &str = "bulkhead-vmm: boot-clock monotonic_start_us=";

/// Prefix of the lines with the VM's exits to us, by kind and device.
pub const EXITS_PREFIX: &str = "bulkhead-vmm: exits ";

/// Most exit lines a report holds (a few devices, four kinds each).
const MAX_EXIT_LINES: usize = 64;

/// What `--boot-timeline` printed, read back from the VMM's stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The process start on CLOCK_MONOTONIC, µs.
    pub monotonic_start_us: Option<u64>,
    /// Milestone names with µs since the process start, in order.
    pub marks: Vec<(String, u64)>,
    /// Exits to the VMM over the VM's life: `KIND DEVICE` (`io-in serial`,
    /// `mmio-write ioapic`, ...) and how many.
    pub exits: Vec<(String, u64)>,
}

/// The exit lines `--boot-timeline` prints: every port I/O and MMIO access
/// of the guest is an exit to us, counted by the device it went to.
pub fn exit_lines(
    io: &[crate::devices::bus::AccessCount],
    mmio: &[crate::devices::bus::AccessCount],
) -> Vec<String> {
    let mut v = Vec::new();
    for (read, write, counts) in [("io-in", "io-out", io), ("mmio-read", "mmio-write", mmio)] {
        for c in counts {
            for (kind, n) in [(read, c.reads), (write, c.writes)] {
                if n > 0 {
                    v.push(format!("{EXITS_PREFIX}{kind} {} {n}", c.device));
                }
            }
        }
    }
    v
}

fn exit_line(rest: &str) -> Option<(String, u64)> {
    let mut words = rest.split(' ');
    let (Some(kind), Some(device), Some(n), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    let kind_ok = ["io-in", "io-out", "mmio-read", "mmio-write"].contains(&kind);
    let device_ok = !device.is_empty()
        && device.len() <= 32
        && device
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (kind_ok && device_ok)
        .then(|| n.parse().ok())
        .flatten()
        .map(|n| (format!("{kind} {device}"), n))
}

/// Reads the timeline lines out of the VMM's stderr. Anything else (other
/// messages, malformed or oversized lines) is skipped: the log may hold text
/// a guest influenced.
pub fn parse_report(stderr: &str) -> Report {
    let mut r = Report::default();
    for line in stderr.lines() {
        if let Some(v) = line.strip_prefix(CLOCK_PREFIX) {
            r.monotonic_start_us = v.trim().parse().ok().or(r.monotonic_start_us);
        } else if let Some(rest) = line.strip_prefix(EXITS_PREFIX) {
            if let Some(e) = exit_line(rest).filter(|_| r.exits.len() < MAX_EXIT_LINES) {
                r.exits.push(e);
            }
        } else if let Some(rest) = line.strip_prefix(TIMELINE_PREFIX) {
            let mut words = rest.split(' ');
            let (Some(name), Some(at), None) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if let (true, Some(Ok(us))) = (valid_name, at.strip_suffix("us").map(str::parse::<u64>))
            {
                if r.marks.len() < MAX_EVENTS + 1 {
                    r.marks.push((name.to_string(), us));
                }
            }
        }
    }
    r
}

/// Time since [`mark_process_start`] (or since the first call to this).
pub fn since_start() -> Duration {
    mark_process_start().elapsed()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The boot vCPU's first KVM_RUN: the kernel's first instruction.
    KernelEntry,
    /// A code the guest wrote to the boot-stage port.
    Guest(u8),
}

impl Milestone {
    pub fn name(&self) -> String {
        match self {
            Milestone::KernelEntry => "kernel-entry".into(),
            Milestone::Guest(c) => match BootStage::from_code(*c) {
                Some(BootStage::AgentStarted) => "init-started".into(),
                Some(BootStage::AgentReady) => "agent-ready".into(),
                Some(BootStage::WorkloadStarted) => "workload-started".into(),
                None => format!("guest-code-{c}"),
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct Timeline {
    events: Mutex<Vec<(Milestone, Duration)>>,
}

impl Timeline {
    pub fn record(&self, m: Milestone) {
        let at = since_start();
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if ev.len() < MAX_EVENTS {
            ev.push((m, at));
        }
    }

    pub fn events(&self) -> Vec<(Milestone, Duration)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `name<TAB>microseconds` lines.
    pub fn render(&self) -> String {
        self.events()
            .iter()
            .map(|(m, t)| format!("{}\t{}\n", m.name(), t.as_micros()))
            .collect()
    }

    /// The `--boot-timeline` report: the clock line, each milestone, then
    /// `exit` (now); [`parse_report`] reads it back.
    pub fn report_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("{CLOCK_PREFIX}{}", process_start_monotonic_us())];
        lines.extend(
            self.events()
                .iter()
                .map(|(m, t)| format!("{TIMELINE_PREFIX}{} {}us", m.name(), t.as_micros())),
        );
        lines.push(format!(
            "{TIMELINE_PREFIX}exit {}us",
            since_start().as_micros()
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_caps() {
        let t = Timeline::default();
        t.record(Milestone::KernelEntry);
        for _ in 0..100 {
            t.record(Milestone::Guest(2));
        }
        let ev = t.events();
        assert_eq!(ev.len(), MAX_EVENTS);
        assert_eq!(ev[0].0, Milestone::KernelEntry);
        assert!(ev.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(t.render().starts_with("kernel-entry\t"));
        assert_eq!(Milestone::Guest(2).name(), "agent-ready");
        assert_eq!(Milestone::Guest(200).name(), "guest-code-200");
    }

    #[test]
    fn report_round_trips_and_the_clock_is_monotonic() {
        let t = Timeline::default();
        t.record(Milestone::KernelEntry);
        t.record(Milestone::Guest(2));
        let text = format!("some other message\n{}\n", t.report_lines().join("\n"));
        let r = parse_report(&text);
        assert_eq!(r.monotonic_start_us, Some(process_start_monotonic_us()));
        let names: Vec<&str> = r.marks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["kernel-entry", "agent-ready", "exit"]);
        assert!(r.marks.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(process_start_monotonic_us() > 0 && process_start_monotonic_us() <= monotonic_us());
    }

    #[test]
    fn malformed_report_lines_are_skipped() {
        let long = "x".repeat(100);
        let text = [
            "bulkhead-vmm: boot-timeline".to_string(),
            "bulkhead-vmm: boot-timeline kernel-entry".into(),
            "bulkhead-vmm: boot-timeline kernel-entry 12".into(),
            "bulkhead-vmm: boot-timeline kernel-entry -5us".into(),
            "bulkhead-vmm: boot-timeline kernel-entry 99999999999999999999999us".into(),
            "bulkhead-vmm: boot-timeline kernel entry 5us".into(),
            "bulkhead-vmm: boot-timeline kernel\u{0}entry 5us".into(),
            format!("bulkhead-vmm: boot-timeline {long} 5us"),
            "bulkhead-vmm: boot-clock monotonic_start_us=soon".into(),
            "bulkhead-vmm: boot-timeline agent-ready 7us".into(),
        ]
        .join("\n");
        let r = parse_report(&text);
        assert_eq!(r.monotonic_start_us, None);
        assert_eq!(r.marks, vec![("agent-ready".to_string(), 7)]);
        let flood = "bulkhead-vmm: boot-timeline guest-code-9 1us\n".repeat(1000);
        assert_eq!(parse_report(&flood).marks.len(), MAX_EVENTS + 1);
        assert_eq!(parse_report(""), Report::default());
    }

    #[test]
    fn exits_are_printed_and_read_back_and_malformed_lines_are_not() {
        use crate::devices::bus::AccessCount;
        let io = [AccessCount {
            device: "serial",
            reads: 0,
            writes: 1500,
        }];
        let mmio = [AccessCount {
            device: "virtio-blk",
            reads: 7,
            writes: 9,
        }];
        let lines = exit_lines(&io, &mmio);
        assert_eq!(lines.len(), 3, "no line for a count of 0: {lines:?}");
        let text = [
            lines.join("\n"),
            "bulkhead-vmm: exits io-out serial".into(),
            "bulkhead-vmm: exits io-sideways serial 3".into(),
            "bulkhead-vmm: exits io-out Serial 3".into(),
            "bulkhead-vmm: exits io-out serial -3".into(),
            "bulkhead-vmm: exits io-out serial 3 4".into(),
            format!("bulkhead-vmm: exits io-out {} 3", "x".repeat(33)),
        ]
        .join("\n");
        assert_eq!(
            parse_report(&text).exits,
            [
                ("io-out serial".to_string(), 1500),
                ("mmio-read virtio-blk".to_string(), 7),
                ("mmio-write virtio-blk".to_string(), 9)
            ]
        );
        let flood = "bulkhead-vmm: exits io-in serial 1\n".repeat(1000);
        assert_eq!(parse_report(&flood).exits.len(), MAX_EXIT_LINES);
    }
}
