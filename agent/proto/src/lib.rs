//! What the guest agent and the host agree on: the frame format, the
//! control messages, flow control, and (feature `client`) the host's async
//! client.
//!
//! The connection: the agent dials the host (vsock port
//! [`AGENT_VSOCK_PORT`], or a Unix socket in tests) and sends
//! [`FromAgent::Hello`]. The host sends requests ([`ToAgent`]) with ids and
//! gets one [`FromAgent::Reply`] each. Stdio travels in data frames on
//! per-process streams, each direction under credit ([`flow`]). Each started
//! process ends with exactly one [`FromAgent::Exited`].

pub mod flow;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod messages;

#[cfg(feature = "client")]
pub mod client;

pub use frame::{Fd, Frame, FrameDecoder, FrameError, StreamId};
pub use messages::*;

/// An error with its causes, one after another (`what: why: root cause`).
/// No error's own message repeats its cause (cloud-hypervisor's rule: the
/// cause is only its `source()`), so this, or anyhow's `{:#}` at the CLI
/// edge, is how every binary prints one: each cause once.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Version of the host <-> agent protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The PATH a process gets when its environment has none (docker's):
/// the agent, the container runtime's processes and execs, and the config
/// of an image made from a directory all use this one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// vsock port on the host (CID 2) that the agent dials as soon as it starts.
/// The VMM forwards it to the Unix socket `<uds>_<port>`.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Kernel command-line key that overrides [`AGENT_VSOCK_PORT`]; the only
/// thing the agent takes from the command line.
pub const PORT_CMDLINE_KEY: &str = "bulkhead.port";

/// I/O port the guest writes one-byte boot-stage codes to; the VMM timestamps
/// each write (same idea as Firecracker's boot-time device).
pub const BOOT_STAGE_PORT: u16 = 0x03f0;

/// Boot stages the guest reports through [`BOOT_STAGE_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BootStage {
    /// The agent's `main` started (first userspace instruction we control).
    AgentStarted = 1,
    /// The agent is connected to the host and ready for requests.
    AgentReady = 2,
    /// The workload's process was started.
    WorkloadStarted = 3,
}

impl BootStage {
    /// Decodes a byte written by the guest; unknown codes are `None`
    /// (the guest is untrusted, any byte can arrive).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::AgentStarted),
            2 => Some(Self::AgentReady),
            3 => Some(Self::WorkloadStarted),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_stage_codes_round_trip_and_reject_unknown() {
        for stage in [
            BootStage::AgentStarted,
            BootStage::AgentReady,
            BootStage::WorkloadStarted,
        ] {
            assert_eq!(BootStage::from_code(stage as u8), Some(stage));
        }
        for junk in [0u8, 4, 0x7f, 0xff] {
            assert_eq!(BootStage::from_code(junk), None);
        }
    }
}

#[cfg(test)]
mod report_tests {
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("open /k")]
        Open(#[source] std::io::Error),
        #[error(transparent)]
        Same(std::io::Error),
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(super::report(&Outer::Open(io())), "open /k: gone");
        assert_eq!(super::report(&Outer::Same(io())), "gone");
    }
}
