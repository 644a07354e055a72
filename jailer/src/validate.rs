//! Checks on everything the jailer is told, before it creates anything.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("--id {0:?}: 1 to 64 of A-Z a-z 0-9 _ - (no '/', no '..')")]
    Id(String),
    #[error("{what} {path:?}: must be an absolute path without '..'")]
    NotAbsolute { what: &'static str, path: String },
    #[error("{what} {path:?}: {component:?} is a symlink; the jailer follows none")]
    Symlink { what: &'static str, path: String, component: String },
    #[error("{what} {path:?}: {detail}")]
    Missing { what: &'static str, path: String, detail: String },
    #[error("{what} {path:?} is not a directory")]
    NotDir { what: &'static str, path: String },
    #[error("--uid/--gid 0: the VMM must not run as root")]
    Root,
    #[error("{flag} {value:?}: expected NAME=VALUE")]
    KeyValue { flag: &'static str, value: String },
    #[error("--resource-limit {0:?}: NOFILE or FSIZE with a number")]
    Rlimit(String),
    #[error("--cgroup {0:?}: KEY is controller.file (memory.max, pids.max, cpu.max; v1: memory.limit_in_bytes, cpu.cfs_quota_us, ...), VALUE one line")]
    Cgroup(String),
}

/// A jail id: a directory name and a cgroup name, nothing more.
pub fn id(s: &str) -> Result<(), ValidateError> {
    let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
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
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(ValidateError::NotAbsolute { what, path: shown() });
    }
    let mut walked = PathBuf::from("/");
    for c in p.components().skip(1) {
        walked.push(c);
        match std::fs::symlink_metadata(&walked) {
            Ok(m) if m.file_type().is_symlink() => return Err(ValidateError::Symlink { what, path: shown(), component: walked.display().to_string() }),
            Ok(_) => {}
            Err(e) => return Err(ValidateError::Missing { what, path: shown(), detail: e.to_string() }),
        }
    }
    Ok(walked)
}

/// `NAME=VALUE`.
pub fn key_value<'a>(flag: &'static str, s: &'a str) -> Result<(&'a str, &'a str), ValidateError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => Err(ValidateError::KeyValue { flag, value: s.into() }),
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
    let (controller, file) = k.split_once('.').ok_or_else(|| ValidateError::Cgroup(s.into()))?;
    let plain = !file.is_empty() && !file.contains("..") && !file.starts_with('.') && file.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.');
    if !plain || !["memory", "cpu", "pids"].contains(&controller) || v.contains('\n') {
        return Err(ValidateError::Cgroup(s.into()));
    }
    Ok((controller.into(), k.into(), v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(real_path("x", &via_link), Err(ValidateError::Symlink { .. })));
        assert!(matches!(real_path("x", &via_link.join("sub")), Err(ValidateError::Symlink { .. })));
        assert!(matches!(real_path("x", Path::new("rel")), Err(ValidateError::NotAbsolute { .. })));
        assert!(matches!(real_path("x", &canon.join("../real")), Err(ValidateError::NotAbsolute { .. })));
        assert!(matches!(real_path("x", &canon.join("nope")), Err(ValidateError::Missing { .. })));
    }

    #[test]
    fn limits_and_cgroups() {
        assert_eq!(rlimit("NOFILE=128"), Ok((libc::RLIMIT_NOFILE, 128)));
        assert_eq!(rlimit("fsize=0"), Ok((libc::RLIMIT_FSIZE, 0)));
        for bad in ["NOFILE", "NOFILE=", "CORE=1", "NOFILE=-1", "=3"] {
            assert!(rlimit(bad).is_err(), "{bad}");
        }
        assert_eq!(cgroup("memory.max=1000"), Ok(("memory".into(), "memory.max".into(), "1000".into())));
        for bad in ["memory", "devices.allow=a", "memory.max", "memory/../x.max=1", "pids.max=1\n2", "memory..=1"] {
            assert!(cgroup(bad).is_err(), "{bad}");
        }
    }
}
