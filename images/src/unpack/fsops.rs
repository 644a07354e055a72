//! The filesystem side of unpacking, all relative to directory fds we hold
//! and never following a symlink (see the module above).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::{lossy, UnpackError};

/// Owner, mode and mtime of an entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl Meta {
    pub fn from_header(h: &tar::Header) -> Result<Self, UnpackError> {
        let bad = |what: &str| UnpackError::Tar(format!("bad {what} in a tar header"));
        let uid = u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?;
        let gid = u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?;
        let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mtime = i64::try_from(h.mtime().map_err(|_| bad("mtime"))?).unwrap_or(i64::MAX);
        Ok(Self {
            uid,
            gid,
            mode,
            mtime,
        })
    }

    /// For a copy landing on the host: the owner replaced when given, the
    /// setuid and setgid bits gone.
    pub fn for_copy(self, owner: Option<(u32, u32)>) -> Self {
        let (uid, gid) = owner.unwrap_or((self.uid, self.gid));
        Self {
            uid,
            gid,
            mode: self.mode & !0o6000,
            ..self
        }
    }

    fn times(&self) -> (TimeSpec, TimeSpec) {
        let t = TimeSpec::new(self.mtime, 0);
        (t, t)
    }
}

/// A directory inside the target, held open.
#[derive(Debug)]
pub struct DirFd(OwnedFd);

fn sys(path: &[u8]) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        path: lossy(path),
        source: std::io::Error::from(e),
    }
}

/// chown's error: `EINVAL` means the id has no mapping in our user namespace.
fn chown_err<'a>(path: &'a [u8], meta: &'a Meta) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| match e {
        Errno::EINVAL => UnpackError::IdNotMapped {
            path: lossy(path),
            uid: meta.uid,
            gid: meta.gid,
        },
        e => UnpackError::Io {
            path: lossy(path),
            source: std::io::Error::from(e),
        },
    }
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

impl DirFd {
    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }

    pub fn open_root(root: &Path) -> Result<Self, UnpackError> {
        nix::fcntl::open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map(DirFd)
        .map_err(|e| UnpackError::Io {
            path: root.display().to_string(),
            source: e.into(),
        })
    }

    fn kind(&self, name: &[u8]) -> Result<Option<SFlag>, Errno> {
        match nix::sys::stat::fstatat(self.0.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(SFlag::from_bits_truncate(
                st.st_mode & SFlag::S_IFMT.bits(),
            ))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_child(&self, name: &[u8]) -> Result<DirFd, Errno> {
        nix::fcntl::openat(self.0.as_fd(), name, DIR_FLAGS, Mode::empty()).map(DirFd)
    }

    /// Opens the directory at `comps` below this one, one component at a
    /// time. Missing directories are created (mode 0755) when `create`,
    /// else the answer is `None`. A symlink or a non-directory on the way
    /// is an error.
    pub fn walk(
        &self,
        comps: &[&[u8]],
        create: bool,
        raw: &[u8],
    ) -> Result<Option<DirFd>, UnpackError> {
        let mut cur = DirFd(self.0.try_clone().map_err(|e| UnpackError::Io {
            path: lossy(raw),
            source: e,
        })?);
        for c in comps {
            let next = match cur.open_child(c) {
                Ok(d) => d,
                Err(Errno::ENOENT) if create => {
                    nix::sys::stat::mkdirat(cur.0.as_fd(), *c, Mode::from_bits_truncate(0o755))
                        .map_err(sys(raw))?;
                    cur.open_child(c).map_err(sys(raw))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(match cur.kind(c) {
                        Ok(Some(SFlag::S_IFLNK)) => UnpackError::ThroughSymlink(lossy(raw)),
                        _ => UnpackError::NotADirectory(lossy(raw)),
                    })
                }
                Err(e) => return Err(sys(raw)(e)),
            };
            cur = next;
        }
        Ok(Some(cur))
    }

    /// Removes `name` whatever it is (a directory with everything in it);
    /// absent is fine.
    pub fn remove(&self, name: &[u8], raw: &[u8]) -> Result<(), UnpackError> {
        match self.kind(name).map_err(sys(raw))? {
            None => Ok(()),
            Some(SFlag::S_IFDIR) => {
                let child = self.open_child(name).map_err(sys(raw))?;
                child.clear_except(b"", &|_| false, raw)?;
                nix::unistd::unlinkat(self.0.as_fd(), name, UnlinkatFlags::RemoveDir)
                    .map_err(sys(raw))
            }
            Some(_) => nix::unistd::unlinkat(self.0.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .map_err(sys(raw)),
        }
    }

    /// Removes every child whose full path (`prefix/child`) `keep` refuses.
    pub fn clear_except(
        &self,
        prefix: &[u8],
        keep: &dyn Fn(&[u8]) -> bool,
        raw: &[u8],
    ) -> Result<(), UnpackError> {
        // A fresh open of "." (not a dup): its own offset for the listing.
        let mut listing = nix::dir::Dir::openat(self.0.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(sys(raw))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in listing.iter() {
            let e = e.map_err(sys(raw))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        for n in names {
            let full = if prefix.is_empty() {
                n.clone()
            } else {
                [prefix, b"/", &n].concat()
            };
            if !keep(&full) {
                self.remove(&n, raw)?;
            }
        }
        Ok(())
    }

    fn own(&self, name: &[u8], meta: &Meta, raw: &[u8]) -> Result<(), UnpackError> {
        nix::unistd::fchownat(
            self.0.as_fd(),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(chown_err(raw, meta))
    }

    pub fn make_dir(&self, name: &[u8], meta: &Meta, raw: &[u8]) -> Result<(), UnpackError> {
        match self.kind(name).map_err(sys(raw))? {
            Some(SFlag::S_IFDIR) => {}
            Some(_) => {
                self.remove(name, raw)?;
                nix::sys::stat::mkdirat(self.0.as_fd(), name, Mode::from_bits_truncate(0o700))
                    .map_err(sys(raw))?;
            }
            None => nix::sys::stat::mkdirat(self.0.as_fd(), name, Mode::from_bits_truncate(0o700))
                .map_err(sys(raw))?,
        }
        let d = self.open_child(name).map_err(sys(raw))?;
        nix::unistd::fchown(
            d.0.as_fd(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(chown_err(raw, meta))?;
        nix::sys::stat::fchmod(d.0.as_fd(), Mode::from_bits_truncate(meta.mode)).map_err(sys(raw))
    }

    /// A new, empty regular file in place of whatever was there.
    pub fn create_file(&self, name: &[u8], raw: &[u8]) -> Result<OwnedFd, UnpackError> {
        self.remove(name, raw)?;
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        nix::fcntl::openat(self.0.as_fd(), name, flags, Mode::from_bits_truncate(0o600))
            .map_err(sys(raw))
    }

    pub fn make_symlink(
        &self,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
        raw: &[u8],
    ) -> Result<(), UnpackError> {
        self.remove(name, raw)?;
        // The target is text we store, never a path we follow.
        nix::unistd::symlinkat(target, self.0.as_fd(), name).map_err(sys(raw))?;
        self.own(name, meta, raw)?;
        self.set_times(name, meta, raw)
    }

    pub fn make_hardlink(
        &self,
        name: &[u8],
        tdir: &DirFd,
        tname: &[u8],
        raw: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let err = |why: &str| UnpackError::Hardlink {
            link: lossy(raw),
            target: lossy(target),
            why: why.into(),
        };
        match tdir.kind(tname).map_err(sys(raw))? {
            None => return Err(err("target does not exist")),
            Some(SFlag::S_IFDIR) => return Err(err("target is a directory")),
            Some(_) => {}
        }
        let same = |a: &DirFd, b: &DirFd| -> bool {
            matches!((nix::sys::stat::fstat(a.0.as_fd()), nix::sys::stat::fstat(b.0.as_fd())), (Ok(x), Ok(y)) if x.st_ino == y.st_ino && x.st_dev == y.st_dev)
        };
        if name == tname && same(self, tdir) {
            return Ok(()); // a link to itself: already there
        }
        self.remove(name, raw)?;
        nix::unistd::linkat(
            tdir.0.as_fd(),
            tname,
            self.0.as_fd(),
            name,
            AtFlags::empty(),
        )
        .map_err(sys(raw))
    }

    pub fn make_fifo(&self, name: &[u8], meta: &Meta, raw: &[u8]) -> Result<(), UnpackError> {
        self.remove(name, raw)?;
        nix::unistd::mkfifoat(self.0.as_fd(), name, Mode::from_bits_truncate(0o600))
            .map_err(sys(raw))?;
        self.own(name, meta, raw)?;
        // A fifo we just made in a directory only we write: no symlink here.
        nix::sys::stat::fchmodat(
            self.0.as_fd(),
            name,
            Mode::from_bits_truncate(meta.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(sys(raw))?;
        self.set_times(name, meta, raw)
    }

    pub fn set_times(&self, name: &[u8], meta: &Meta, raw: &[u8]) -> Result<(), UnpackError> {
        let (a, m) = meta.times();
        nix::sys::stat::utimensat(
            self.0.as_fd(),
            name,
            &a,
            &m,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys(raw))
    }
}

/// Owner, then mode (chown clears setuid bits), xattrs, mtime.
pub fn finish_file(
    file: &OwnedFd,
    meta: &Meta,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    raw: &[u8],
) -> Result<(), UnpackError> {
    nix::unistd::fchown(
        file.as_fd(),
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(chown_err(raw, meta))?;
    nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(meta.mode)).map_err(sys(raw))?;
    for (name, value) in xattrs {
        let Ok(cname) = std::ffi::CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: cname is NUL-terminated, value is a valid buffer of its length, the fd is ours.
        if unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        } < 0
        {
            return Err(UnpackError::Io {
                path: lossy(raw),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let (a, m) = meta.times();
    nix::sys::stat::futimens(file.as_fd(), &a, &m).map_err(sys(raw))
}
