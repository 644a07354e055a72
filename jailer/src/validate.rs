//! Checks on everything the jailer is told, before it creates anything.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("--id {0:?}: 1 to 64 of A-Z a-z 0-9 _ - (no '/', no '..')")]
    Id(String),
    #[error("{what} {path:?}: must be an absolute path without '..'")]
    NotAbsolute { what: &'static str, path: String },
    #[error("{what} {path:?}: {component:?} is a symlink; the jailer follows none")]
    Symlink {
        what: &'static str,
        path: String,
        component: String,
    },
    #[error("{what} {path:?}: {detail}")]
    Missing {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("{what} {path:?} is not a directory")]
    NotDir { what: &'static str, path: String },
    #[error("--uid/--gid 0: the VMM must not run as root")]
    Root,
    #[error("{flag} {value:?}: expected NAME=VALUE")]
    KeyValue { flag: &'static str, value: String },
    #[error("--resource-limit {0:?}: NOFILE or FSIZE with a number")]
    Rlimit(String),
    #[error("the VMM {0:?} is dynamically linked: the jail holds no libraries (use the static build, `make static`)")]
    Dynamic(String),
    #[error("{0:?} is not an ELF executable")]
    NotElf(String),
    #[error("{path:?}: uid {uid} / gid {gid} may not {access} it (mode {mode:o}, owner {owner}:{group}); the jailed VMM could not use it")]
    Access {
        path: String,
        uid: u32,
        gid: u32,
        access: &'static str,
        mode: u32,
        owner: u32,
        group: u32,
    },
    #[error("--bind {0:?},rw: a file with other hard links; the VMM could write it under another name (copy it, or bind it read-only)")]
    HardLinked(String),
    #[error("--cgroup {0:?}: KEY is controller.file (memory.max, pids.max, cpu.max; v1: memory.limit_in_bytes, cpu.cfs_quota_us, ...), VALUE one line")]
    Cgroup(String),
}

/// A jail id: a directory name and a cgroup name, nothing more.
pub fn id(s: &str) -> Result<(), ValidateError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidateError::Id(s.into()))
    }
}

/// An absolute path of plain components, none of them a symlink (lstat of
/// each prefix), that exists.
pub fn real_path(what: &'static str, p: &Path) -> Result<PathBuf, ValidateError> {
    let shown = || p.display().to_string();
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(ValidateError::NotAbsolute {
            what,
            path: shown(),
        });
    }
    let mut walked = PathBuf::from("/");
    for c in p.components().skip(1) {
        walked.push(c);
        match std::fs::symlink_metadata(&walked) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ValidateError::Symlink {
                    what,
                    path: shown(),
                    component: walked.display().to_string(),
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ValidateError::Missing {
                    what,
                    path: shown(),
                    detail: e.to_string(),
                })
            }
        }
    }
    Ok(walked)
}

/// A static ELF executable: no PT_INTERP program header (a dynamic one
/// would find no loader and no libraries in the jail).
pub fn static_elf(p: &Path) -> Result<(), ValidateError> {
    use std::io::Read;
    // The header and the program headers sit at the start: a few KiB, not
    // the whole binary (reading all of it cost more than the rest of the
    // jail). A buffer of the full size: one read, not a doubling series.
    const HEADERS: usize = 16 << 10;
    let mut bytes = Vec::with_capacity(HEADERS + 1);
    let read = std::fs::File::open(p).and_then(|f| f.take(HEADERS as u64).read_to_end(&mut bytes));
    read.map_err(|e| ValidateError::Missing {
        what: "the VMM",
        path: p.display().to_string(),
        detail: e.to_string(),
    })?;
    match elf_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => Err(ValidateError::Dynamic(p.display().to_string())),
        None => Err(ValidateError::NotElf(p.display().to_string())),
    }
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP header; `None`
/// when it is no such file (or its header table lies outside it).
pub fn elf_interpreter(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(b.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (entsize, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    if entsize < 4 {
        return None;
    }
    let mut found = false;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entsize)?)?;
        found |= u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?) == PT_INTERP;
    }
    Some(found)
}

/// The mode bits that apply to `uid`/`gid` (no supplementary groups: the
/// jail drops them) allow reading, and writing when `write`; for a
/// directory also searching.
pub fn accessible(p: &Path, uid: u32, gid: u32, write: bool) -> Result<(), ValidateError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(|e| ValidateError::Missing {
        what: "--bind",
        path: p.display().to_string(),
        detail: e.to_string(),
    })?;
    let shift = if m.uid() == uid {
        6
    } else if m.gid() == gid {
        3
    } else {
        0
    };
    let bits = (m.mode() >> shift) & 7;
    let need = 4 | if write { 2 } else { 0 } | if m.is_dir() { 1 } else { 0 };
    if bits & need == need {
        return Ok(());
    }
    let access = match (write, m.is_dir()) {
        (true, true) => "read, write and search",
        (true, false) => "read and write",
        (false, true) => "read and search",
        (false, false) => "read",
    };
    Err(ValidateError::Access {
        path: p.display().to_string(),
        uid,
        gid,
        access,
        mode: m.mode() & 0o7777,
        owner: m.uid(),
        group: m.gid(),
    })
}

/// A file bound writable must have no other name: through a hard link
/// the jailed VMM would write a file somewhere else on the host.
pub fn not_hard_linked(p: &Path) -> Result<(), ValidateError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).map_err(|e| ValidateError::Missing {
        what: "--bind",
        path: p.display().to_string(),
        detail: e.to_string(),
    })?;
    if !m.is_dir() && m.nlink() > 1 {
        return Err(ValidateError::HardLinked(p.display().to_string()));
    }
    Ok(())
}

/// `NAME=VALUE`.
pub fn key_value<'a>(flag: &'static str, s: &'a str) -> Result<(&'a str, &'a str), ValidateError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => Err(ValidateError::KeyValue {
            flag,
            value: s.into(),
        }),
    }
}

/// `--resource-limit NOFILE=1024` -> (RLIMIT_NOFILE, 1024).
pub fn rlimit(s: &str) -> Result<(libc::__rlimit_resource_t, u64), ValidateError> {
    let (k, v) = key_value("--resource-limit", s)?;
    let which = match k.to_ascii_uppercase().as_str() {
        "NOFILE" => libc::RLIMIT_NOFILE,
        "FSIZE" => libc::RLIMIT_FSIZE,
        _ => return Err(ValidateError::Rlimit(s.into())),
    };
    let n = v.parse().map_err(|_| ValidateError::Rlimit(s.into()))?;
    Ok((which, n))
}

/// `--cgroup memory.max=268435456` -> ("memory", "memory.max", "268435456").
pub fn cgroup(s: &str) -> Result<(String, String, String), ValidateError> {
    let (k, v) = key_value("--cgroup", s)?;
    let (controller, file) = k
        .split_once('.')
        .ok_or_else(|| ValidateError::Cgroup(s.into()))?;
    let plain = !file.is_empty()
        && !file.contains("..")
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.');
    if !plain || !["memory", "cpu", "pids"].contains(&controller) || v.contains('\n') {
        return Err(ValidateError::Cgroup(s.into()));
    }
    Ok((controller.into(), k.into(), v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_headers_and_malformed_files() {
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_interpreter(&elf), Some(false));
        elf[0x40 + 56..0x40 + 60].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(elf_interpreter(&elf), Some(true));
        assert_eq!(
            elf_interpreter(&elf[..0x40 + 58]),
            None,
            "a header table past the end"
        );
        let mut huge = elf.clone();
        huge[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_interpreter(&huge), None);
        let mut many = elf.clone();
        many[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(elf_interpreter(&many), None);
        for junk in [&b""[..], b"\x7fELF", b"#!/bin/sh\n", &[0u8; 64]] {
            assert_eq!(elf_interpreter(junk), None);
        }
        assert_eq!(
            elf_interpreter(&std::fs::read("/bin/sh").unwrap()),
            Some(true),
            "a dynamic shell"
        );
    }

    #[test]
    fn access_follows_the_mode_bits_for_the_vmm_uid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(accessible(&f, 64123, 64123, false).is_ok());
        assert!(matches!(
            accessible(&f, 64123, 64123, true),
            Err(ValidateError::Access {
                access: "read and write",
                ..
            })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = accessible(&f, 64123, 64123, false).unwrap_err();
        assert!(e.to_string().contains("may not read it (mode 600"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(accessible(dir.path(), 64123, 64123, false).is_err());
        nix::unistd::chown(dir.path(), Some(64123.into()), Some(64123.into())).unwrap();
        assert!(accessible(dir.path(), 64123, 64123, true).is_ok());
        assert!(accessible(&dir.path().join("nope"), 1, 1, false).is_err());
    }

    #[test]
    fn ids() {
        for good in ["a", "vm-1", "A_b-9", &"x".repeat(64)] {
            assert!(id(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "a/b", "../x", "a b", "é", &"x".repeat(65), "a\0"] {
            assert_eq!(id(bad), Err(ValidateError::Id(bad.into())));
        }
    }

    #[test]
    fn paths_are_absolute_plain_and_symlink_free() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let canon = std::fs::canonicalize(&real).unwrap();
        assert_eq!(real_path("x", &canon), Ok(canon.clone()));
        let via_link = std::fs::canonicalize(dir.path()).unwrap().join("link");
        assert!(matches!(
            real_path("x", &via_link),
            Err(ValidateError::Symlink { .. })
        ));
        assert!(matches!(
            real_path("x", &via_link.join("sub")),
            Err(ValidateError::Symlink { .. })
        ));
        assert!(matches!(
            real_path("x", Path::new("rel")),
            Err(ValidateError::NotAbsolute { .. })
        ));
        assert!(matches!(
            real_path("x", &canon.join("../real")),
            Err(ValidateError::NotAbsolute { .. })
        ));
        assert!(matches!(
            real_path("x", &canon.join("nope")),
            Err(ValidateError::Missing { .. })
        ));
    }

    #[test]
    fn limits_and_cgroups() {
        assert_eq!(rlimit("NOFILE=128"), Ok((libc::RLIMIT_NOFILE, 128)));
        assert_eq!(rlimit("fsize=0"), Ok((libc::RLIMIT_FSIZE, 0)));
        for bad in ["NOFILE", "NOFILE=", "CORE=1", "NOFILE=-1", "=3"] {
            assert!(rlimit(bad).is_err(), "{bad}");
        }
        assert_eq!(
            cgroup("memory.max=1000"),
            Ok(("memory".into(), "memory.max".into(), "1000".into()))
        );
        for bad in [
            "memory",
            "devices.allow=a",
            "memory.max",
            "memory/../x.max=1",
            "pids.max=1\n2",
            "memory..=1",
        ] {
            assert!(cgroup(bad).is_err(), "{bad}");
        }
    }
}
