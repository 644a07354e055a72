//! The cache directory shared by every bulkhead tool.

use std::path::PathBuf;

/// `$BULKHEAD_CACHE`, else `$XDG_CACHE_HOME/bulkhead`, else `~/.cache/bulkhead`.
///
/// `$HOME` is read from the environment only: no passwd lookup (static
/// binaries must not load NSS).
pub fn cache_root() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("BULKHEAD_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("bulkhead")))
        .or_else(|| env("HOME").map(|p| p.join(".cache/bulkhead")))
}
