//! bulkhead-vmm: the microVM monitor.
//!
//! [`host`] tells what kind of KVM this machine offers; the VMM proper
//! (builder, vCPUs, devices) is built on the rust-vmm crates pinned in the
//! workspace.

pub mod host;
