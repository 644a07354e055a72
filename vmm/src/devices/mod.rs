//! Devices the guest reaches through port I/O and MMIO.

pub mod bus;
pub mod ioapic;
pub mod legacy;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
