//! bulkhead-vmm: the microVM monitor.
//!
//! Firecracker's shape on the rust-vmm crates: [`builder`] is the only place
//! that wires memory, kernel, devices and vCPUs together; [`vstate`] holds
//! thin KVM wrappers; devices sit on a two-method [`devices::BusDevice`]
//! range map; the vCPU loop's exit handling is the plain function
//! [`vstate::vcpu::handle_exit`]; [`runner`] runs the threads.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod config;
pub mod convert;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod firecracker;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod host;
pub mod layout;
pub mod memory_report;
pub mod runner;
pub mod seccomp;
pub mod timeline;
pub mod tiny_guest;
pub mod vstate;
