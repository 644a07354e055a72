//! `bulkhead cp` inside a workload: the end that reads the workload's files
//! into a tar stream ([`send`]) and the end that writes a stream into them
//! ([`receive`]), both placing things as `docker cp` does ([`placement`]).
//!
//! They run in a process confined to the workload: in a microVM a child of
//! the agent in the container's mount namespace; for a running container a
//! helper in the container's user and mount namespaces; for a stopped one a
//! helper chrooted into its root. So a symlink can only ever lead to another
//! of the workload's own files; and one that leads above the workload's root
//! (`..` past `/`) is refused outright, as a path written that way is.
//!
//! A stream is a [`CopyHeader`] line, then a tar whose entries all sit under
//! the header's name. The host side of a copy out does not use [`receive`]:
//! it unpacks with the image unpacker, which treats the stream as hostile.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bulkhead_agent_proto::CopyHeader;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: the path leads out of the workload's root (`..` above `/`, written or through a symlink): refused")]
    Escapes(String),
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: cannot copy a directory onto a file")]
    DirOntoFile(String),
    #[error("{0}: the destination directory does not exist")]
    NoDestDir(String),
    #[error("{0}: cannot replace a directory with a file")]
    FileOntoDir(String),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("copy stream: {0}")]
    Stream(String),
    #[error("{path}: owner {id} has no id inside the workload (it maps 0 to 65535)")]
    IdOutOfRange { path: String, id: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How the ids on the files the copy sees relate to the ids inside the
/// workload: the same (in the guest, or inside the container's user
/// namespace), or shifted by a stopped container's base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdShift(pub u32);

/// Ids a container's user namespace maps (from its base).
pub const MAPPED_IDS: u32 = 65536;
/// The id an unmapped owner shows as (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

impl IdShift {
    /// A file's owner as the workload numbers it.
    pub fn outward(self, id: u32) -> u32 {
        if self.0 == 0 {
            return id;
        }
        id.checked_sub(self.0)
            .filter(|i| *i < MAPPED_IDS)
            .unwrap_or(OVERFLOW_ID)
    }

    /// The id to put on a file for the workload's `id`.
    pub fn inward(self, id: u64, path: &Path) -> Result<u32, CopyError> {
        let out_of_range = || CopyError::IdOutOfRange {
            path: path.display().to_string(),
            id,
        };
        let id = u32::try_from(id).map_err(|_| out_of_range())?;
        if self.0 == 0 {
            return Ok(id);
        }
        if id >= MAPPED_IDS {
            return Err(out_of_range());
        }
        Ok(self.0 + id)
    }
}

/// The path's components, `""` and `.` dropped.
fn components(path: &[u8]) -> VecDeque<OsString> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

/// Most symlinks one resolution follows (Linux's own limit).
const MAX_LINKS: u32 = 40;

/// `path` (inside the workload) as a path under `root`: symlinks followed
/// inside the root (an absolute target starts again at the root), the last
/// component only when `follow_last`. `..` above the root, written or
/// reached through a symlink, is refused. A missing last component is fine
/// (a destination to make); a missing directory before it is not.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, CopyError> {
    let mut todo = components(path.as_bytes());
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if done.pop().is_none() {
                return Err(CopyError::Escapes(path.into()));
            }
            continue;
        }
        done.push(c);
        let last = todo.is_empty();
        let here = join(root, &done);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(CopyError::Loop(path.into()));
                }
                let target = std::fs::read_link(&here).map_err(io(&here))?;
                done.pop();
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    done.clear();
                }
                let mut next = components(target);
                next.extend(todo.drain(..));
                todo = next;
            }
            Ok(m) if !last && !m.is_dir() => return Err(CopyError::NotADirectory(path.into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && last => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CopyError::NotFound(path.into()))
            }
            Err(e) => return Err(io(&here)(e)),
        }
    }
    Ok(join(root, &done))
}

/// What is at a copy's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestState {
    Dir,
    /// Anything that is not a directory.
    File,
    Missing,
}

impl DestState {
    /// Looks (following a symlink at the end: it was resolved already).
    pub fn of(path: &Path) -> Result<Self, CopyError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(DestState::Dir),
            Ok(_) => Ok(DestState::File),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DestState::Missing),
            Err(e) => Err(io(path)(e)),
        }
    }
}

/// Where a stream lands, as `docker cp` places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Inside the destination directory, under the stream's own name.
    Into,
    /// The stream's top entry's contents straight into the destination
    /// directory (a source ending in `/.`, or a bare tar).
    Contents,
    /// Beside: in the destination's parent, under the destination's name
    /// (a file overwritten, or a new file or directory made).
    As,
}

/// docker's rules: a file goes into a directory, over a file, or to a new
/// name (not under a path that ends in `/`: that must be a directory); a
/// directory goes into a directory (its contents only with `/.`), or to a
/// new name, never onto a file.
pub fn placement(h: &CopyHeader, dest: &str, state: DestState) -> Result<Placement, CopyError> {
    let must_be_dir = dest.ends_with('/') || dest.ends_with("/.");
    if h.name.is_empty() {
        return match state {
            DestState::Dir => Ok(Placement::Contents),
            DestState::File => Err(CopyError::NotADirectory(dest.into())),
            DestState::Missing => Err(CopyError::NoDestDir(dest.into())),
        };
    }
    Ok(match (h.dir, state) {
        (true, DestState::Dir) if h.contents_only => Placement::Contents,
        (_, DestState::Dir) => Placement::Into,
        (false, DestState::File) if must_be_dir => {
            return Err(CopyError::NotADirectory(dest.into()))
        }
        (false, DestState::File) => Placement::As,
        (true, DestState::File) => return Err(CopyError::DirOntoFile(dest.into())),
        (false, DestState::Missing) if must_be_dir => {
            return Err(CopyError::NoDestDir(dest.into()))
        }
        (_, DestState::Missing) => Placement::As,
    })
}

/// The name the top entry takes at its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rename {
    Keep,
    To(Vec<u8>),
    /// The top entry is the destination itself: its children land in it.
    Drop,
}

/// Where `dest` (resolved) puts a stream: the directory to unpack into and
/// what its top entry is called there.
pub fn target_of(resolved: &Path, place: Placement) -> Result<(PathBuf, Rename), CopyError> {
    match place {
        Placement::Into => Ok((resolved.to_path_buf(), Rename::Keep)),
        Placement::Contents => Ok((resolved.to_path_buf(), Rename::Drop)),
        Placement::As => {
            let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) else {
                return Err(CopyError::NoDestDir(resolved.display().to_string()));
            };
            match DestState::of(parent)? {
                DestState::Dir => Ok((parent.to_path_buf(), Rename::To(name.as_bytes().to_vec()))),
                _ => Err(CopyError::NoDestDir(parent.display().to_string())),
            }
        }
    }
}

/// A stream entry's name where it lands: its components (checked: none is
/// `..`, the name is not absolute), the first one `top` (unless the stream
/// is bare) and renamed as asked. `None`: the top entry itself, dropped.
pub fn land(raw: &[u8], top: &str, rename: &Rename) -> Result<Option<PathBuf>, CopyError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.starts_with(b"/") || raw.contains(&0) {
        return Err(CopyError::Stream(format!(
            "entry {:?} is absolute",
            shown()
        )));
    }
    let mut comps = components(raw);
    if comps.iter().any(|c| c == "..") {
        return Err(CopyError::Stream(format!(
            "entry {:?} climbs with ..",
            shown()
        )));
    }
    if !top.is_empty() {
        if comps.front().map(|c| c.as_bytes()) != Some(top.as_bytes()) {
            return Err(CopyError::Stream(format!(
                "entry {:?} is outside the copied {top:?}",
                shown()
            )));
        }
        match rename {
            Rename::Keep => {}
            Rename::To(n) => comps[0] = OsString::from_vec(n.clone()),
            Rename::Drop => {
                comps.pop_front();
            }
        }
    }
    Ok((!comps.is_empty()).then(|| comps.iter().collect()))
}

/// Reads exactly `left` bytes: a file that shrank while it was sent is
/// padded with zeros (the tar header already promised its size).
struct Exactly<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = match self.inner.read(&mut buf[..want])? {
            0 => {
                self.short = true;
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Kernel filesystems a copy does not descend into (`/proc`, `/sys`, ...):
/// their files are not data, and some never end.
fn is_pseudo(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes one struct into `st`, which lives across the call; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as libc::c_long;
    [
        libc::PROC_SUPER_MAGIC,
        libc::SYSFS_MAGIC,
        libc::CGROUP_SUPER_MAGIC,
        libc::CGROUP2_SUPER_MAGIC,
        libc::DEVPTS_SUPER_MAGIC,
        libc::DEBUGFS_MAGIC,
        libc::SECURITYFS_MAGIC,
        libc::TRACEFS_MAGIC,
    ]
    .contains(&t)
}

/// The name a copy of `path` travels under: its last component as written
/// (a symlink keeps its own name, as with docker), `rootfs` for the root.
/// The receiving host expects exactly this name, so a workload cannot pick
/// where its stream lands.
pub fn top_name(path: &str) -> String {
    let trimmed = path.trim_end_matches("/.").trim_end_matches('/');
    match components(trimmed.as_bytes()).back() {
        Some(c) if c != ".." => c.to_string_lossy().into_owned(),
        _ => "rootfs".into(),
    }
}

/// Whether a copy of `path` sends a directory's contents (`/.`, or `/`).
pub fn contents_only(path: &str) -> bool {
    path.ends_with("/.") || components(path.as_bytes()).is_empty()
}

/// Writes the stream for `path` (inside the workload, under `root`): its
/// header line, then a tar of it (recursively, symlinks kept as links,
/// owners as the workload numbers them). Sockets and device nodes are
/// skipped, and said so through `note`. Returns the bytes of file content
/// sent.
pub fn send(
    root: &Path,
    path: &str,
    follow_link: bool,
    ids: IdShift,
    mut out: impl Write,
    note: &mut dyn FnMut(String),
) -> Result<u64, CopyError> {
    let contents_only = contents_only(path);
    let must_be_dir = path.ends_with('/') || contents_only;
    let src = resolve(root, path, follow_link || must_be_dir)?;
    let meta = std::fs::symlink_metadata(&src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CopyError::NotFound(path.into()),
        _ => io(&src)(e),
    })?;
    if must_be_dir && !meta.is_dir() {
        return Err(CopyError::NotADirectory(path.into()));
    }
    let name = OsString::from(top_name(path));
    let header = CopyHeader {
        name: top_name(path),
        dir: meta.is_dir(),
        contents_only,
    };
    header
        .validate()
        .map_err(|e| CopyError::Stream(format!("{}: {e}", src.display())))?;
    out.write_all(&header.to_line()).map_err(io(&src))?;
    let mut tar = tar::Builder::new(out);
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(src, PathBuf::from(name))];
    let mut sent = 0u64;
    while let Some((fs_path, name)) = stack.pop() {
        let m = std::fs::symlink_metadata(&fs_path).map_err(io(&fs_path))?;
        let ft = m.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        h.set_uid(u64::from(ids.outward(m.uid())));
        h.set_gid(u64::from(ids.outward(m.gid())));
        h.set_mode(m.mode() & 0o7777);
        h.set_size(0);
        let put = |e: std::io::Error| io(&fs_path)(e);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(put)?;
            if is_pseudo(&fs_path) {
                note(format!(
                    "{}: a kernel filesystem, not copied",
                    name.display()
                ));
                continue;
            }
            let mut children: Vec<OsString> = std::fs::read_dir(&fs_path)
                .map_err(io(&fs_path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io(&fs_path))?;
            children.sort_unstable_by(|a, b| b.cmp(a)); // popped in name order
            stack.extend(
                children
                    .into_iter()
                    .map(|c| (fs_path.join(&c), name.join(&c))),
            );
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&fs_path).map_err(io(&fs_path))?;
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, &name, &target).map_err(put)?;
        } else if ft.is_file() {
            // Not following a symlink put here since, nor blocking on a
            // fifo: only a regular file is read.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&fs_path)
                .map_err(io(&fs_path))?;
            if !f.metadata().map_err(io(&fs_path))?.is_file() {
                note(format!("{}: changed while copied, skipped", name.display()));
                continue;
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            let mut body = Exactly {
                inner: f,
                left: m.len(),
                short: false,
            };
            tar.append_data(&mut h, &name, &mut body).map_err(put)?;
            sent += m.len();
            if body.short {
                note(format!(
                    "{}: shrank while copied, padded with zeros",
                    name.display()
                ));
            }
        } else if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(put)?;
        } else {
            let what = if ft.is_socket() {
                "a socket"
            } else {
                "a device node"
            };
            note(format!("{}: {what}, not copied", name.display()));
        }
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| CopyError::Stream(format!("writing: {e}")))?;
    Ok(sent)
}

/// Unpacks a stream into the workload at `path` (under `root`), placed as
/// [`placement`] says. Owners as the stream says with `keep_owners`, else
/// the workload's root; modes as the stream says.
pub fn receive(
    root: &Path,
    path: &str,
    keep_owners: bool,
    ids: IdShift,
    mut input: impl Read,
    note: &mut dyn FnMut(String),
) -> Result<(), CopyError> {
    let h = CopyHeader::read_from(&mut input).map_err(CopyError::Stream)?;
    let dest = resolve(root, path, true)?;
    let place = placement(&h, path, DestState::of(&dest)?)?;
    let (dir, rename) = target_of(&dest, place)?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let stream = |e: std::io::Error| CopyError::Stream(e.to_string());
    for entry in archive.entries().map_err(stream)? {
        let mut entry = entry.map_err(stream)?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = land(&raw, &h.name, &rename)? else {
            continue;
        };
        let target = dir.join(&rel);
        let kind = entry.header().entry_type();
        use tar::EntryType as E;
        if !matches!(
            kind,
            E::Directory | E::Regular | E::Continuous | E::Symlink | E::Link | E::Fifo
        ) {
            note(format!("{}: a {kind:?} entry, not copied", rel.display()));
            continue;
        }
        make_room(&target, kind == tar::EntryType::Directory)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if kind == tar::EntryType::Link {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| {
                    CopyError::Stream(format!("{}: hard link without target", rel.display()))
                })?
                .into_owned();
            let Some(to) = land(&link, &h.name, &rename)? else {
                return Err(CopyError::Stream(format!(
                    "{}: hard link to the copied directory",
                    rel.display()
                )));
            };
            std::fs::hard_link(dir.join(to), &target).map_err(io(&target))?;
            continue;
        }
        if kind == E::Fifo {
            nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| io(&target)(e.into()))?;
        } else {
            entry.unpack(&target).map_err(io(&target))?;
        }
        let header = entry.header();
        let (uid, gid) = if keep_owners {
            (header.uid().map_err(stream)?, header.gid().map_err(stream)?)
        } else {
            (0, 0)
        };
        std::os::unix::fs::lchown(
            &target,
            Some(ids.inward(uid, &target)?),
            Some(ids.inward(gid, &target)?),
        )
        .map_err(io(&target))?;
        // chown cleared any setuid bit: the mode again, last.
        if kind != tar::EntryType::Symlink {
            let mode = header.mode().map_err(stream)? & 0o7777;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(io(&target))?;
        }
    }
    Ok(())
}

/// Clears the way for an entry: a non-directory already there goes (a
/// directory entry merges into a directory); a directory is never replaced
/// by a file.
fn make_room(target: &Path, entry_is_dir: bool) -> Result<(), CopyError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() && entry_is_dir => Ok(()),
        Ok(m) if m.is_dir() => Err(CopyError::FileOntoDir(target.display().to_string())),
        Ok(_) => std::fs::remove_file(target).map_err(io(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(target)(e)),
    }
}

#[cfg(test)]
mod tests;
