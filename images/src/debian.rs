//! Debian packages on the build host: what is installed, installing what is
//! missing (as root), fetching a package without installing it.

use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("missing packages {missing:?}; run as root (it installs them) or: apt-get install {}", missing.join(" "))]
    MissingPackages { missing: Vec<String> },
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    Command {
        command: String,
        status: String,
        tail: String,
    },
}

impl DebianError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// The installed version of a Debian package, `None` if not installed.
pub fn installed_version(package: &str) -> Result<Option<String>, DebianError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", package])
        .stderr(Stdio::null())
        .output()
        .map_err(DebianError::io("run dpkg-query (is this a Debian host?)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(match text.split_once('\t') {
        Some((status, version)) if out.status.success() && status.ends_with(" installed") => {
            Some(version.trim().to_string())
        }
        _ => None,
    })
}

fn missing(packages: &[&str]) -> Result<Vec<String>, DebianError> {
    let mut missing = Vec::new();
    for p in packages {
        if installed_version(p)?.is_none() {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

/// Held while this process changes packages: two callers (tests run side
/// by side) take turns instead of failing on dpkg's lock; apt itself also
/// waits for whoever else holds dpkg's (`DPkg::Lock::Timeout`).
fn apt_lock() -> Result<nix::fcntl::Flock<std::fs::File>, DebianError> {
    let path = "/run/lock/bulkhead-apt.lock";
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(DebianError::io(format!("open {path}")))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        DebianError::Io {
            what: format!("lock {path}"),
            source: e.into(),
        }
    })
}

/// Installs whichever of `packages` are missing; refuses without root.
pub fn ensure_packages(packages: &[&str], log: &mut dyn FnMut(&str)) -> Result<(), DebianError> {
    if missing(packages)?.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(DebianError::MissingPackages {
            missing: missing(packages)?,
        });
    }
    let _turn = apt_lock()?;
    // Another caller may have installed them while this one waited.
    let missing = missing(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {}", missing.join(" ")));
    // An update first: a fresh machine may have no package lists at all.
    let update = Command::new("apt-get")
        .args(["-q", "-o", "DPkg::Lock::Timeout=600", "update"])
        .stdout(Stdio::null())
        .status();
    if !matches!(update, Ok(s) if s.success()) {
        log("apt-get update failed; trying the install with the lists already here");
    }
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
    ];
    args.extend(missing.iter().map(String::as_str));
    run_apt(&args)
}

/// The release codename of this Debian host (`VERSION_CODENAME` in
/// /etc/os-release), e.g. "bookworm".
pub fn codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    parse_codename(&text)
}

fn parse_codename(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Apt source file this crate writes when it enables backports.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/bulkhead-backports.sources";

/// Installs (or upgrades) `package` from `<codename>-backports`, first adding
/// that suite to apt's sources when no source names it. Root only.
pub fn install_from_backports(package: &str, log: &mut dyn FnMut(&str)) -> Result<(), DebianError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DebianError::MissingPackages {
            missing: vec![format!("{package} (from backports)")],
        });
    }
    let _turn = apt_lock()?;
    let codename = codename().ok_or_else(|| DebianError::Io {
        what: "read VERSION_CODENAME from /etc/os-release".into(),
        source: std::io::Error::other("not found"),
    })?;
    let suite = format!("{codename}-backports");
    if !apt_sources_mention(&suite) {
        log(&format!(
            "adding {suite} to apt's sources ({BACKPORTS_SOURCE})"
        ));
        let text = format!(
            "# Added by bulkhead: packages newer than {codename} ships (see README).\nTypes: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        // Whole or not at all: a half-written source file breaks every apt run.
        let tmp = format!("{BACKPORTS_SOURCE}.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, BACKPORTS_SOURCE))
            .map_err(DebianError::io(format!("write {BACKPORTS_SOURCE}")))?;
    }
    log(&format!("installing {package} from {suite}"));
    run_apt(&["-q", "-o", "DPkg::Lock::Timeout=600", "update"])?;
    run_apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
        "-t",
        &suite,
        package,
    ])
}

/// Whether any apt source file names `suite`.
fn apt_sources_mention(suite: &str) -> bool {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|text| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == suite))
        })
}

fn run_apt(args: &[&str]) -> Result<(), DebianError> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(DebianError::io("run apt-get"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(DebianError::Command {
        command: format!("apt-get {}", args.join(" ")),
        status: out.status.to_string(),
        tail: tail_lines(&String::from_utf8_lossy(&out.stderr), 20),
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The candidate version of `package` and the packages it depends on
/// (`apt-cache show`), e.g. for a metapackage like `linux-image-cloud-amd64`.
pub fn candidate(package: &str) -> Result<(String, Vec<String>), DebianError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stderr(Stdio::null())
        .output()
        .map_err(DebianError::io("run apt-cache"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_show(&text)
        .filter(|_| out.status.success())
        .ok_or_else(|| DebianError::Command {
            command: format!("apt-cache show {package}"),
            status: out.status.to_string(),
            tail: "no such package in the apt lists (run apt-get update)".into(),
        })
}

fn parse_show(text: &str) -> Option<(String, Vec<String>)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
    };
    let version = field("Version:")?.to_string();
    let depends = field("Depends:")
        .map(|d| {
            d.split(',')
                .filter_map(|alt| alt.split('|').next())
                .filter_map(|p| p.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some((version, depends))
}

/// Downloads `package`'s .deb into `dir` (no install); returns its path.
pub fn download(package: &str, dir: &Path) -> Result<std::path::PathBuf, DebianError> {
    let out = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(dir)
        .output()
        .map_err(DebianError::io("run apt-get download"))?;
    if !out.status.success() {
        return Err(DebianError::Command {
            command: format!("apt-get download {package}"),
            status: out.status.to_string(),
            tail: tail_lines(&String::from_utf8_lossy(&out.stderr), 20),
        });
    }
    let entries =
        std::fs::read_dir(dir).map_err(DebianError::io(format!("read {}", dir.display())))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| DebianError::Io {
            what: format!("apt-get download {package}"),
            source: std::io::Error::other("no .deb appeared"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_show_is_parsed() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), a | b\n";
        let (v, deps) = parse_show(text).unwrap();
        assert_eq!(v, "6.1.192-2");
        assert_eq!(deps, ["linux-image-6.1.0-56-cloud-amd64", "a"]);
        assert!(parse_show("Package: x\n").is_none());
    }

    #[test]
    fn codename_is_read_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(
            parse_codename("VERSION_CODENAME=\"trixie\"\n").as_deref(),
            Some("trixie")
        );
        assert_eq!(parse_codename("VERSION_CODENAME=\n"), None);
        assert_eq!(parse_codename("ID=debian\n"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
