//! The data dir is closed to other local users: its root and the
//! directories that hold image content, workloads' files and state are
//! 0700 (made so, or tightened when an older bulkhead left them open), and
//! files that hold state, tenant configuration, logs, tokens and secrets
//! are 0600. Image trees and writable layers keep the modes their images
//! give them, under directories no one else can enter. A jailed VMM never
//! walks these paths: the jailer binds the files it needs into its root.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes `dir` (and missing parents, 0700) and closes it to group and
/// others if it is open to them.
pub fn dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    tighten(dir, 0o700)
}

/// Makes the data dir `root` (0700), or closes one that exists and is
/// open to others, but only when it is bulkhead's (it holds what a data
/// dir holds) or empty: a directory like /tmp or /srv given as
/// `BULKHEAD_DATA` is refused with the reason, never changed.
pub fn data_root(root: &Path) -> std::io::Result<()> {
    let m = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return dir(root),
        Err(e) => return Err(e),
    };
    if m.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    const OURS: [&str; 9] = [
        "state.redb",
        "state.lock",
        "blobs",
        "workloads",
        "trees",
        "disks",
        "refs.json",
        "node",
        "cluster.redb",
    ];
    let mut entries = std::fs::read_dir(root)?;
    let empty = entries.next().is_none();
    let ours = OURS.iter().any(|e| root.join(e).symlink_metadata().is_ok());
    if m.permissions().mode() & 0o1000 == 0 && (empty || ours) {
        return tighten(root, 0o700);
    }
    Err(std::io::Error::other(format!(
        "{} is open to other users (mode {:o}) and is not a bulkhead data dir: bulkhead keeps tenants' images, configs and secrets there, so give it a directory of its own (BULKHEAD_DATA; it is made 0700)",
        root.display(),
        m.permissions().mode() & 0o7777
    )))
}

/// Drops group and other permission bits from `path` beyond `mode`'s
/// (a symlink is left alone: it is not ours to follow).
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    let now = m.permissions().mode() & 0o7777;
    let want = now & !0o077 | (mode & 0o077 & now);
    if want != now {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` as a 0600 file, whole or not at all: written
/// aside, synced, and renamed into place, so neither a crash nor a power
/// cut leaves a torn file (state, configs, tokens, keys).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_aside(path, bytes, true)
}

/// The same without the sync, for files that a reboot makes meaningless
/// anyway (a lease deadline on CLOCK_MONOTONIC, rewritten every
/// heartbeat): readers still see the old file or the new one, never half.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_aside(path, bytes, false)
}

fn write_aside(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?; // a tmp an older run left keeps its mode otherwise
    f.write_all(bytes)?;
    if sync {
        // On disk before it takes the name.
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Opens `path` for appending, made 0600 (logs).
pub fn append(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    tighten(path, 0o600)?;
    Ok(f)
}

/// Creates (truncating) `path` as a 0600 file.
pub fn create(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    tighten(path, 0o600)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    }

    #[test]
    fn dirs_and_files_are_closed_to_others_and_open_ones_are_tightened() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = d.path().join("a/b/data");
        dir(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        dir(&data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            mode(&data),
            0o700,
            "an open data dir an older version made is closed"
        );
        let f = data.join("config.json");
        std::fs::write(format!("{}.tmp", f.display()), b"stale").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(
            format!("{}.tmp", f.display()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        write(&f, b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (mode(&f), std::fs::read(&f).ok()),
            (0o600, Some(b"{}".to_vec()))
        );
        let log = data.join("log");
        std::fs::write(&log, b"old\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(append(&log).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(mode(&log), 0o600);
        let disk = data.join("disk");
        std::fs::write(&disk, b"").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o4755))
            .unwrap_or_else(|e| panic!("{e}"));
        tighten(&disk, 0o644).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            mode(&disk),
            0o4744,
            "group and other lose what the mode does not give; the owner's bits stay"
        );
    }

    /// A shared directory given as the data dir is refused and left as it
    /// was; an empty one, or an older bulkhead's, is closed.
    #[test]
    fn only_a_data_dir_of_its_own_is_closed() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let open = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let shared = d.path().join("srv");
        std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(shared.join("someone-elses"), b"x").unwrap_or_else(|e| panic!("{e}"));
        open(&shared, 0o755);
        let e = data_root(&shared)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("not a bulkhead data dir") && mode(&shared) == 0o755,
            "{e}"
        );
        let tmp_like = d.path().join("tmp");
        std::fs::create_dir(&tmp_like).unwrap_or_else(|e| panic!("{e}"));
        open(&tmp_like, 0o1777);
        assert!(
            data_root(&tmp_like).is_err() && mode(&tmp_like) == 0o1777,
            "a sticky, shared dir: never"
        );
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap_or_else(|e| panic!("{e}"));
        open(&empty, 0o755);
        data_root(&empty).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&empty), 0o700);
        let older = d.path().join("older");
        std::fs::create_dir_all(older.join("workloads")).unwrap_or_else(|e| panic!("{e}"));
        open(&older, 0o755);
        data_root(&older).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&older), 0o700);
        data_root(&d.path().join("new/data")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&d.path().join("new/data")), 0o700);
    }
}
