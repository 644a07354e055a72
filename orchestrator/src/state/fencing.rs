//! Self-fencing: a workload started by `bulkhead node` runs only while its
//! lease deadline lies ahead. The node daemon moves the deadline forward
//! each time the server hears from it; the supervisor (not the node daemon)
//! stops the workload once the deadline has passed, so a node cut off from
//! the server, or a stopped or dead node daemon, leaves no copy running
//! after the server has placed a replacement elsewhere.
//!
//! The deadline is a file holding CLOCK_MONOTONIC milliseconds (the host's
//! clock that never steps), written whole by rename. A missing, empty or
//! damaged file means the deadline has passed: the safe reading.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the supervisor of a fenced workload is told (in its config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fencing {
    /// Holds the deadline (see the module).
    pub deadline_file: PathBuf,
    /// After the deadline: the stop signal, then SIGKILL this much later.
    pub kill_after_ms: u64,
}

pub use bulkhead_jailer::deadline::{monotonic_ms, parse, read};

/// Sets the deadline (whole or not at all: a temp file renamed over it).
pub fn write(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    // Not synced: a deadline on CLOCK_MONOTONIC means nothing after a
    // reboot, and this runs for every workload at every heartbeat.
    bulkhead_images::private::replace(path, format!("{deadline_ms}\n").as_bytes())
}

/// Resolves once the deadline in `path` has passed (re-read each time the
/// last one it saw comes, so renewals keep it waiting).
pub async fn passed(path: PathBuf) {
    loop {
        let now = monotonic_ms();
        match read(&path) {
            Some(deadline) if deadline > now => {
                tokio::time::sleep(Duration::from_millis(deadline - now)).await
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_parse_strictly_and_anything_odd_has_passed() {
        assert_eq!(parse("12345\n"), Some(12345));
        assert_eq!(parse("0"), Some(0));
        for bad in [
            "",
            "\n",
            "-5",
            "12 ",
            " 12",
            "1e9",
            "0x10",
            "12\n\n",
            "99999999999999999999999",
            "१२",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("deadline");
        assert_eq!(read(&f), None, "no file: passed");
        write(&f, 42).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&f), Some(42));
        std::fs::write(&f, vec![b'7'; 4096]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(&f),
            None,
            "a long file is read no further than 64 bytes, and refused"
        );
    }

    #[test]
    fn waits_while_renewed_and_ends_once_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("deadline");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            write(&f, monotonic_ms() + 1000).unwrap_or_else(|e| panic!("{e}"));
            let waiter = tokio::spawn(passed(f.clone()));
            // Renew three times, each before the last deadline.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                write(&f, monotonic_ms() + 1000).unwrap_or_else(|e| panic!("{e}"));
                assert!(!waiter.is_finished(), "renewed in time: still waiting");
            }
            let last = read(&f).unwrap_or(0);
            let _ = waiter.await;
            assert!(
                monotonic_ms() >= last,
                "ends at the last deadline, not before"
            );
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&f).unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(passed(f)); // no file: at once
    }
}
