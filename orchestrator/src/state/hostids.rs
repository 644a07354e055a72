//! Ids that must be unique on the host, not only in one store: jailed
//! VMMs' uids and containers' user namespace blocks. Two data dirs on one
//! host (two `bulkhead node`s side by side, a test beside a node) draw from
//! the same ranges, so each id a store hands out is also claimed here, as
//! a file `<dir>/<kind>-<id>` naming the data dir and the workload:
//! written under a host-wide lock in the store's insert transaction,
//! removed with the workload. A claim whose workload dir is gone (its data
//! dir removed, a crash between the two) is stale and may be taken over.
//! The dir is under /run: after a reboot no workload runs, and each store
//! still skips the ids of the records it keeps.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where claims live by default.
pub fn default_dir() -> PathBuf {
    Path::new(super::paths::RUN_ROOT).join("ids")
}

/// The claims dir, locked for as long as this lives.
#[derive(Debug)]
pub struct HostIds {
    dir: PathBuf,
    data: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl HostIds {
    /// Locks `dir` (made 0700 if missing) for the data dir `data`.
    pub fn lock(dir: &Path, data: &Path) -> std::io::Result<Self> {
        bulkhead_images::private::dir(dir)?;
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            data: std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf()),
            _lock: lock,
        })
    }

    /// The ids of `kind` other data dirs' live workloads hold. Stale claims
    /// met on the way (their workload dir is gone: a removed test data dir,
    /// a crash) are removed, so later reads do not pay for them again.
    pub fn held_by_others(&self, kind: &str) -> BTreeSet<u32> {
        let prefix = format!("{kind}-");
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let n: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                let (data, id) = read_claim(&e.path())?;
                // The workload dir is made before its claim and removed after
                // its release: a claim without one is left over.
                if !data.join("workloads").join(&id).exists() {
                    let _ = std::fs::remove_file(e.path());
                    return None;
                }
                (data != self.data).then_some(n)
            })
            .collect()
    }

    /// Claims id `n` of `kind` for workload `id` of this data dir.
    pub fn claim(&self, kind: &str, n: u32, id: &str) -> std::io::Result<()> {
        let mut text = self.data.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        text.extend_from_slice(id.as_bytes());
        let path = self.dir.join(format!("{kind}-{n}"));
        let tmp = self.dir.join(format!(".{kind}-{n}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Removes every claim of workload `id` of this data dir.
    pub fn release(&self, id: &str) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if read_claim(&e.path()).is_some_and(|(d, i)| d == self.data && i == id) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A claim's data dir and workload id (at most 4 KiB read: the files are ours).
fn read_claim(path: &Path) -> Option<(PathBuf, String)> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut text)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let (data, id) = text.split_once('\n')?;
    Some((PathBuf::from(data), id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_data_dirs_live_claims_are_held_and_stale_ones_are_not() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (claims, a, b) = (d.path().join("ids"), d.path().join("a"), d.path().join("b"));
        for data in [&a, &b] {
            std::fs::create_dir_all(data.join("workloads")).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir(a.join("workloads/wa")).unwrap_or_else(|e| panic!("{e}"));
        {
            let ids = HostIds::lock(&claims, &a).unwrap_or_else(|e| panic!("{e}"));
            ids.claim("jail", 7, "wa").unwrap_or_else(|e| panic!("{e}"));
            ids.claim("jail", 8, "gone")
                .unwrap_or_else(|e| panic!("{e}"));
            ids.claim("userns", 65536, "wa")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ids.held_by_others("jail").is_empty(),
                "its own are not others'"
            );
        }
        let ids = HostIds::lock(&claims, &b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ids.held_by_others("jail"),
            BTreeSet::from([7]),
            "8's workload dir is gone: stale"
        );
        assert!(
            !claims.join("jail-8").exists(),
            "a stale claim is removed when met"
        );
        assert!(claims.join("jail-7").exists());
        assert_eq!(ids.held_by_others("userns"), BTreeSet::from([65536]));
        drop(ids);
        let ids = HostIds::lock(&claims, &a).unwrap_or_else(|e| panic!("{e}"));
        ids.release("wa");
        drop(ids);
        let ids = HostIds::lock(&claims, &b).unwrap_or_else(|e| panic!("{e}"));
        assert!(ids.held_by_others("jail").is_empty());
        assert!(ids.held_by_others("userns").is_empty());
        // A claim file that is not one is ignored, never trusted.
        std::fs::write(claims.join("jail-9"), b"no newline").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(claims.join("jail-x"), b"/a\nwa").unwrap_or_else(|e| panic!("{e}"));
        assert!(ids.held_by_others("jail").is_empty());
    }
}
