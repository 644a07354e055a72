//! Boot timestamps: the VMM's own milestones and the codes the guest writes
//! to the boot-stage port, each with its time since the process started.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_agent_proto::BootStage;

/// Most events kept: the guest may write the port in a loop.
const MAX_EVENTS: usize = 64;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Marks the process start; call first thing in `main`.
pub fn mark_process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
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
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `name<TAB>microseconds` lines.
    pub fn render(&self) -> String {
        self.events().iter().map(|(m, t)| format!("{}\t{}\n", m.name(), t.as_micros())).collect()
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
}
