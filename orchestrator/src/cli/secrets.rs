//! How a command gets a secret (a token, registry credentials): from a
//! file or the environment, never from argv, which every user of the host
//! reads (ps, /proc/PID/cmdline).

use anyhow::{bail, Context, Result};

/// A secret from `--X-file` (first line, trimmed), else `$VAR`. Refuses a
/// world-readable file, as ssh refuses a private key.
pub fn secret(file: Option<&std::path::Path>, var: &str) -> Result<Option<String>> {
    if let Some(f) = file {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(f).with_context(|| format!("{}", f.display()))?;
        if meta.mode() & 0o004 != 0 {
            bail!(
                "{}: anyone on this host can read it; chmod o-r it first",
                f.display()
            );
        }
        let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        if first.is_empty() {
            bail!("{}: empty", f.display());
        }
        return Ok(Some(first));
    }
    Ok(std::env::var(var).ok().filter(|s| !s.is_empty()))
}

/// The refusal of a secret given as an argument.
pub fn no_secret_in_argv(flag: &str, var: &str, file_flag: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{flag} would put the secret in this command's arguments, which every user of this host can read (ps, /proc): set {var}, or give {file_flag} FILE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_private_files_or_the_environment() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = dir.path().join("t");
        std::fs::write(&f, "bh_abc\n").unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            secret(Some(&f), "BULKHEAD_TEST_NONE")
                .ok()
                .flatten()
                .as_deref(),
            Some("bh_abc")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            secret(Some(&f), "BULKHEAD_TEST_NONE").is_err(),
            "world-readable"
        );
        assert!(secret(Some(&dir.path().join("none")), "X").is_err());
        assert_eq!(secret(None, "BULKHEAD_TEST_UNSET_VAR").ok().flatten(), None);
    }
}
