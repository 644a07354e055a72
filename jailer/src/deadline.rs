//! The lease deadline of a fenced workload, as bulkhead's node daemon
//! writes it: a file holding CLOCK_MONOTONIC milliseconds (the host's
//! clock that never steps), replaced whole by rename. A missing, empty or
//! damaged file means the deadline has passed: the safe reading. The
//! supervisor stops its workload by it; the jailer (for a VMM) and the
//! fence watcher (for a container) enforce it again if the supervisor is
//! gone.

use std::path::Path;

/// Milliseconds on CLOCK_MONOTONIC.
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            // The monotonic clock is never negative.
            u64::try_from(t.tv_sec())
                .unwrap_or(0)
                .saturating_mul(1000)
                .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000)
        })
        .unwrap_or(0)
}

/// The deadline in `text`; `None` for anything but one decimal number.
pub fn parse(text: &str) -> Option<u64> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// The deadline in the file; `None` (passed) when it cannot be read.
pub fn read(path: &Path) -> Option<u64> {
    let mut text = String::new();
    let f = std::fs::File::open(path).ok()?;
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 64), &mut text).ok()?;
    parse(&text)
}
