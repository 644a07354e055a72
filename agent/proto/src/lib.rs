//! What the guest agent and the host agree on.
//!
//! Only the fixed points live here so far: where the agent finds the host and
//! how it marks boot stages for the VMM. The request/response types arrive with
//! the agent protocol itself.

/// Version of the host <-> agent protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// vsock port on the host (CID 2) that the agent dials as soon as it starts.
/// The VMM forwards it to the Unix socket `<uds>_<port>`.
pub const AGENT_VSOCK_PORT: u32 = 1024;

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
        for stage in [BootStage::AgentStarted, BootStage::AgentReady, BootStage::WorkloadStarted] {
            assert_eq!(BootStage::from_code(stage as u8), Some(stage));
        }
        for junk in [0u8, 4, 0x7f, 0xff] {
            assert_eq!(BootStage::from_code(junk), None);
        }
    }
}
