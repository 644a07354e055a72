//! Applying image layers to a directory: OCI whiteouts, owners, modes,
//! mtimes, symlinks, hardlinks, xattrs — with the layer treated as hostile.
//!
//! Every path is walked one component at a time from a directory fd we
//! hold, with `O_NOFOLLOW`: a symlink anywhere in an entry's parent path is
//! an error ([`UnpackError::ThroughSymlink`]), never followed, so nothing is
//! ever written outside the target. An entry's last component is never
//! followed either: whatever is there (a symlink from an earlier entry
//! included) is removed and the entry created in its place. Device nodes are
//! skipped and reported (a container gets its devices from the guest's
//! devtmpfs, not from its image). Sizes, entry counts and name lengths are
//! capped ([`Limits`]). Duplicate entries: the later one wins.

mod fsops;
pub mod path;

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use sha2::{Digest, Sha256};

use fsops::{DirFd, Meta};
use path::Whiteout;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed layer tarball: {0}")]
    Tar(String),
    #[error("absolute path in layer: {0:?}")]
    AbsolutePath(String),
    #[error("path climbs out of the root: {0:?}")]
    Escape(String),
    #[error("path goes through a symlink: {0:?}")]
    ThroughSymlink(String),
    #[error("a parent of {0:?} is not a directory")]
    NotADirectory(String),
    #[error("hardlink {link:?} -> {target:?}: {why}")]
    Hardlink {
        link: String,
        target: String,
        why: String,
    },
    #[error("bad whiteout {0:?}")]
    BadWhiteout(String),
    #[error("name too long: {0:?}")]
    NameTooLong(String),
    #[error("more than {0} entries in the image")]
    TooManyEntries(u64),
    #[error("the image unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("not enough disk space to unpack {path}: {} MiB free, {} MiB of which stay for the node (free some: `bulkhead image rm`, `bulkhead system prune`)", free >> 20, reserve >> 20)]
    NoSpace {
        path: String,
        free: u64,
        reserve: u64,
    },
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("entry {0:?} is outside the copied file or directory")]
    OutsideCopy(String),
    #[error("{path} is owned by {uid}:{gid}, outside the ids this user may hand out (its /etc/subuid and /etc/subgid ranges, mapped from 1): widen the ranges or run as root")]
    IdNotMapped { path: String, uid: u32, gid: u32 },
}

/// Caps on what an image may unpack to (all layers together).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
    /// Free space left on the target's disk: a file that would leave less
    /// stops the unpacking. Checked before a file once 64 MiB (or half this
    /// reserve, if less) were written since the last check, so smaller
    /// files between checks never eat through the reserve. 0: unchecked.
    pub min_free: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 30,
            max_entries: 2_000_000,
            min_free: 512 << 20,
        }
    }
}

/// How much may be written between two looks at the disk's free space.
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// What was unpacked, and what was skipped on purpose.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes and unsupported entry types, not created.
    pub skipped: Vec<String>,
    /// Extended attributes not applied (only `user.*` and
    /// `security.capability` are).
    pub skipped_xattrs: u64,
}

/// Unpacks layers into one root directory, keeping the running totals the
/// limits apply to.
#[derive(Debug)]
pub struct Unpacker {
    root: DirFd,
    limits: Limits,
    report: Report,
    /// Bytes written since the free space was last looked at.
    unchecked: u64,
    landing: Option<Landing>,
}

/// A `bulkhead cp` stream landing on the host ([`Unpacker::for_copy`]):
/// every entry must sit under `top`, which lands as `to` (`None`: the top
/// entry is the target itself, its children land in it); owners are
/// `owner` when given. No whiteouts (a `.wh.` name is just a name), and
/// never a setuid or setgid bit or a file capability: a tenant's file does
/// not become a privileged program on the node.
#[derive(Debug, Clone)]
pub struct Landing {
    /// Empty: a bare stream, entries land as they are.
    pub top: Vec<u8>,
    pub to: Option<Vec<u8>>,
    pub owner: Option<(u32, u32)>,
}

impl Landing {
    /// The components an entry lands at; empty is the target itself.
    fn place<'a>(&'a self, comps: Vec<&'a [u8]>, raw: &[u8]) -> Result<Vec<&'a [u8]>, UnpackError> {
        if self.top.is_empty() {
            return Ok(comps);
        }
        match comps.split_first() {
            Some((first, rest)) if *first == self.top.as_slice() => Ok(self
                .to
                .as_deref()
                .into_iter()
                .chain(rest.iter().copied())
                .collect()),
            _ => Err(UnpackError::OutsideCopy(lossy(raw))),
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Unpacker {
    /// `root` must exist and be a directory (normally empty).
    pub fn new(root: &Path, limits: Limits) -> Result<Self, UnpackError> {
        Ok(Self {
            root: DirFd::open_root(root)?,
            limits,
            report: Report::default(),
            unchecked: u64::MAX,
            landing: None,
        })
    }

    /// Unpacks a `bulkhead cp` stream into `target` (an existing
    /// directory) as [`Landing`] says.
    pub fn for_copy(target: &Path, limits: Limits, landing: Landing) -> Result<Self, UnpackError> {
        let mut u = Self::new(target, limits)?;
        u.landing = Some(landing);
        Ok(u)
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Refuses a file of `size` bytes that would leave the disk with less
    /// than `min_free`.
    fn check_space(&mut self, size: u64, raw_path: &[u8]) -> Result<(), UnpackError> {
        let st = nix::sys::statvfs::fstatvfs(self.root.fd()).map_err(|e| UnpackError::Io {
            path: "statvfs of the unpack target".into(),
            source: e.into(),
        })?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if size.saturating_add(self.limits.min_free) > free {
            return Err(UnpackError::NoSpace {
                path: lossy(raw_path),
                free,
                reserve: self.limits.min_free,
            });
        }
        self.unchecked = 0;
        Ok(())
    }

    /// Applies one uncompressed layer tarball.
    pub fn apply(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let (bounded, budget) = crate::tarbound::BoundedReader::new(layer);
        let mut archive = tar::Archive::new(bounded);
        // Paths this layer created, as keyed hashes: a layer of millions of
        // long names must not cost gigabytes here (a collision would only
        // keep a lower-layer file an opaque whiteout should hide).
        let keyed = std::collections::hash_map::RandomState::new();
        let mut created: HashSet<u64> = HashSet::new();
        let mut dir_times: Vec<(Vec<u8>, Meta)> = Vec::new();
        let mut dir_times_bytes = 0usize;
        let landing = self.landing.clone();
        let mut entries = archive
            .entries()
            .map_err(|e| UnpackError::Tar(e.to_string()))?;
        loop {
            budget.arm();
            let Some(entry) = entries.next() else { break };
            budget.disarm();
            let mut entry = entry.map_err(|e| UnpackError::Tar(e.to_string()))?;
            'entry: {
                self.report.entries += 1;
                if self.report.entries > self.limits.max_entries {
                    return Err(UnpackError::TooManyEntries(self.limits.max_entries));
                }
                let raw_path = entry.path_bytes().into_owned();
                let comps = path::components(&raw_path)?;
                let comps = match &landing {
                    Some(l) => l.place(comps, &raw_path)?,
                    None => comps,
                };
                let Some((name, parents)) = comps.split_last() else {
                    break 'entry; // the root itself: its metadata is ours
                };
                let kind = entry.header().entry_type();
                let mut meta = Meta::from_header(entry.header())?;
                let whiteout = match &landing {
                    Some(l) => {
                        meta = meta.for_copy(l.owner);
                        Whiteout::None
                    }
                    None => path::whiteout(name)?,
                };
                match whiteout {
                    Whiteout::Remove(target) => {
                        let dir = self.root.walk(parents, false, &raw_path)?;
                        if let Some(dir) = dir {
                            dir.remove(target, &raw_path)?;
                        }
                        break 'entry;
                    }
                    Whiteout::Opaque => {
                        let prefix = parents.join(&b'/');
                        if let Some(dir) = self.root.walk(parents, true, &raw_path)? {
                            dir.clear_except(
                                &prefix,
                                &|full: &[u8]| created.contains(&keyed.hash_one(full)),
                                &raw_path,
                            )?;
                        }
                        break 'entry;
                    }
                    Whiteout::None => {}
                }
                let Some(dir) = self.root.walk(parents, true, &raw_path)? else {
                    break 'entry;
                };
                let full = comps.join(&b'/');
                created.insert(keyed.hash_one(&full[..]));
                match kind {
                    tar::EntryType::Directory => {
                        dir.make_dir(name, &meta, &raw_path)?;
                        // Bounded: past 64 MiB of names, later directories keep
                        // the time of their unpacking.
                        if dir_times_bytes < 64 << 20 {
                            dir_times_bytes += full.len();
                            dir_times.push((full, meta));
                        }
                    }
                    tar::EntryType::Regular
                    | tar::EntryType::Continuous
                    | tar::EntryType::GNUSparse => {
                        let size = entry.size();
                        self.report.bytes = self.report.bytes.saturating_add(size);
                        if self.report.bytes > self.limits.max_bytes {
                            return Err(UnpackError::TooLarge(self.limits.max_bytes));
                        }
                        self.unchecked = self.unchecked.saturating_add(size);
                        let every = SPACE_CHECK_EVERY.min(self.limits.min_free / 2);
                        if self.limits.min_free > 0 && self.unchecked >= every {
                            self.check_space(size, &raw_path)?;
                        }
                        let mut xattrs = xattrs(&mut entry, &mut self.report);
                        if landing.is_some() {
                            xattrs.retain(|(n, _)| n.starts_with(b"user."));
                        }
                        let file: OwnedFd = dir.create_file(name, &raw_path)?;
                        let copied = std::io::copy(
                            &mut (&mut entry).take(size),
                            &mut std::fs::File::from(file.try_clone().map_err(io(&raw_path))?),
                        )
                        .map_err(|e| UnpackError::Tar(format!("{}: {e}", lossy(&raw_path))))?;
                        if copied != size {
                            return Err(UnpackError::Tar(format!(
                                "{}: {copied} of {size} bytes",
                                lossy(&raw_path)
                            )));
                        }
                        fsops::finish_file(&file, &meta, &xattrs, &raw_path)?;
                    }
                    tar::EntryType::Symlink => {
                        let target = entry
                            .link_name_bytes()
                            .ok_or_else(|| {
                                UnpackError::Tar(format!(
                                    "{}: symlink without target",
                                    lossy(&raw_path)
                                ))
                            })?
                            .into_owned();
                        dir.make_symlink(name, &target, &meta, &raw_path)?;
                    }
                    tar::EntryType::Link => {
                        let target = entry
                            .link_name_bytes()
                            .ok_or_else(|| {
                                UnpackError::Tar(format!(
                                    "{}: hardlink without target",
                                    lossy(&raw_path)
                                ))
                            })?
                            .into_owned();
                        let tcomps = path::components(&target)
                            .and_then(|c| match &landing {
                                Some(l) => l.place(c, &target),
                                None => Ok(c),
                            })
                            .map_err(|e| UnpackError::Hardlink {
                                link: lossy(&raw_path),
                                target: lossy(&target),
                                why: e.to_string(),
                            })?;
                        let Some((tname, tparents)) = tcomps.split_last() else {
                            return Err(UnpackError::Hardlink {
                                link: lossy(&raw_path),
                                target: lossy(&target),
                                why: "points at the root".into(),
                            });
                        };
                        let tdir = self.root.walk(tparents, false, &target)?.ok_or_else(|| {
                            UnpackError::Hardlink {
                                link: lossy(&raw_path),
                                target: lossy(&target),
                                why: "target does not exist".into(),
                            }
                        })?;
                        dir.make_hardlink(name, &tdir, tname, &raw_path, &target)?;
                    }
                    tar::EntryType::Fifo => dir.make_fifo(name, &meta, &raw_path)?,
                    other => {
                        // Devices and anything exotic: not created, reported.
                        if self.report.skipped.len() < 1000 {
                            self.report
                                .skipped
                                .push(format!("{} ({other:?})", lossy(&raw_path)));
                        }
                        created.remove(&keyed.hash_one(&full[..]));
                    }
                }
            }
            // Whatever the entry holds that we did not read (a directory
            // with data, a skipped device) is drained here, uncounted:
            // only headers and metadata count against the budget.
            std::io::copy(&mut entry, &mut std::io::sink())
                .map_err(|e| UnpackError::Tar(e.to_string()))?;
        }
        // Directory times last: creating their children changed them.
        for (full, meta) in dir_times.iter().rev() {
            let comps = path::components(full)?;
            if let Some((name, parents)) = comps.split_last() {
                if let Some(dir) = self.root.walk(parents, false, full)? {
                    dir.set_times(name, meta, full)?;
                }
            }
        }
        Ok(())
    }

    /// Applies a layer blob as stored: checks its sha256 (of the bytes as
    /// stored, compressed or not) against `digest` (`sha256:<hex>`) and
    /// decompresses gzip or zstd by their magic bytes (media types are the
    /// image author's claim; the bytes are what we read).
    pub fn apply_blob(&mut self, blob: impl Read, digest: &str) -> Result<(), UnpackError> {
        let mut hashing = HashingReader {
            inner: blob,
            hasher: Sha256::new(),
        };
        let mut magic = [0u8; 4];
        let n =
            read_up_to(&mut hashing, &mut magic).map_err(|e| UnpackError::Tar(e.to_string()))?;
        let chained = std::io::Read::chain(&magic[..n], &mut hashing);
        let result = if magic[..n].starts_with(&[0x1f, 0x8b]) {
            self.apply(flate2::read::GzDecoder::new(chained))
        } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
            match zstd::stream::read::Decoder::new(chained) {
                Ok(d) => self.apply(d),
                Err(e) => Err(UnpackError::Tar(format!("zstd: {e}"))),
            }
        } else {
            self.apply(chained)
        };
        // Hash what the tar reader did not need (padding, trailing blocks).
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| UnpackError::Tar(e.to_string()))?;
        let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        if actual != digest {
            return Err(UnpackError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        result
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The entry's `SCHILY.xattr.*` pax records we apply; the rest are counted.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, report: &mut Report) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return out;
    };
    for ext in exts.flatten() {
        if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            if name.starts_with(b"user.") || name == b"security.capability" {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else {
                report.skipped_xattrs += 1;
            }
        }
    }
    out
}

fn io(path: &[u8]) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: lossy(path),
        source,
    }
}
