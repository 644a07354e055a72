//! The parts of bulkhead-agent that are plain logic (tested and fuzzed on
//! the host); the binary holds the PID 1 side.

pub mod copy;
#[doc(hidden)]
pub mod fuzzing;
pub mod netlink;
pub mod passwd;
