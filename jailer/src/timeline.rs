//! The jailer's one start mark: when the jail is made (namespaces, root,
//! cgroup, ids) and the VMM is about to be exec'd. One line on stderr
//! (the VMM's log), read back by the supervisor for `bulkhead bench boot`.

/// Prefix of the line; CLOCK_MONOTONIC µs follow.
pub const JAIL_READY_PREFIX: &str = "bulkhead-jailer: jail-ready monotonic_us=";

/// CLOCK_MONOTONIC in µs (0 if the clock cannot be read).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1000
        })
        .unwrap_or(0)
}

/// The mark's line, as printed.
pub fn jail_ready_line() -> String {
    format!("{JAIL_READY_PREFIX}{}", monotonic_us())
}

/// The mark out of a log the guest may also have influenced (the VMM's
/// stderr): only a whole line of the exact form counts, the first one.
pub fn jail_ready_at(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(JAIL_READY_PREFIX))
        .and_then(|v| v.parse().ok())
}

/// Whether a log line is the mark (left out where the log is shown).
pub fn is_mark(line: &str) -> bool {
    line.starts_with(JAIL_READY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_reads_back_and_malformed_ones_do_not() {
        let line = jail_ready_line();
        let at = jail_ready_at(&format!("noise\n{line}\nmore\n")).unwrap();
        assert!(at > 0 && at <= monotonic_us());
        for bad in [
            "bulkhead-jailer: jail-ready monotonic_us=",
            "bulkhead-jailer: jail-ready monotonic_us=-1",
            "bulkhead-jailer: jail-ready monotonic_us=12 13",
            "bulkhead-jailer: jail-ready monotonic_us=99999999999999999999999",
            " bulkhead-jailer: jail-ready monotonic_us=5",
            "",
        ] {
            assert_eq!(jail_ready_at(bad), None, "{bad:?}");
        }
        assert!(is_mark(&line) && !is_mark("bulkhead-vmm: boot-timeline x 1us"));
    }
}
