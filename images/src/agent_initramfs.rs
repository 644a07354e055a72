//! The guest's initramfs: the static agent as `/init`, the mount points it
//! needs and `/dev/console`, nothing else. Built once per agent binary and
//! cached by the binary's digest.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::initramfs::CpioWriter;

#[derive(Debug, thiserror::Error)]
pub enum AgentInitramfsError {
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no cache directory: set BULKHEAD_CACHE or HOME")]
    NoCache,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentInitramfsError {
    let what = what.into();
    move |source| AgentInitramfsError::Io { what, source }
}

/// The archive for `agent` (a static binary).
pub fn build(agent: &Path) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    w.host_file("/init", 0o755, agent)?;
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    w.char_device("/dev/console", 0o600, 5, 1)?;
    for d in ["/proc", "/sys", "/run", "/tmp"] {
        w.dir(d, 0o755)?;
    }
    w.finish()
}

/// `<cache>/initramfs/agent-<digest>.cpio`, built if missing.
pub fn cached(agent: &Path) -> Result<PathBuf, AgentInitramfsError> {
    let mut hasher = Sha256::new();
    let mut f =
        std::fs::File::open(agent).map_err(io(format!("open the agent {}", agent.display())))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", agent.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hex::encode(hasher.finalize());
    let dir = crate::cache::cache_root()
        .ok_or(AgentInitramfsError::NoCache)?
        .join("initramfs");
    let path = dir.join(format!("agent-{}.cpio", &digest[..16]));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let image = build(agent).map_err(io("pack the agent initramfs"))?;
    // Written aside and renamed: a reader never sees half an archive.
    let tmp = dir.join(format!(
        ".agent-{}.{}.tmp",
        &digest[..16],
        std::process::id()
    ));
    std::fs::write(&tmp, image)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_init_console_and_mount_points_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fake = dir.path().join("agent");
        std::fs::write(&fake, b"\x7fELF pretend").unwrap_or_else(|e| panic!("{e}"));
        let image = build(&fake).unwrap_or_else(|e| panic!("{e}"));
        let mut names = Vec::new();
        let mut rest = image.as_slice();
        loop {
            let entry = cpio::NewcReader::new(rest).unwrap_or_else(|e| panic!("{e}"));
            if entry.entry().is_trailer() {
                break;
            }
            names.push(entry.entry().name().to_string());
            rest = entry.finish().unwrap_or_else(|e| panic!("{e}"));
        }
        names.sort();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "proc", "run", "sys", "tmp"]
        );
    }
}
