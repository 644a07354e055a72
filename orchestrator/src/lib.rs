//! bulkhead: the CLI and (as it grows) the local runtime and control plane.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod network;
pub mod runtime;
pub mod state;
