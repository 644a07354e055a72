//! The container's root: the image's disk read-only under a writable
//! overlay, switched to the way switch_root does it (the initramfs is
//! rootfs, where pivot_root fails): move the new root over `/` and chroot.
//! What was `/` before (the initramfs, the agent's binary) ends up under
//! the new root's mount, out of reach of anything that starts after.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use bulkhead_agent_proto::{DnsSpec, HostEntry, RootSource, RootSpec, TmpfsSpec, VolumeSpec};

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{what}")]
    Sys { what: String, source: nix::Error },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("root spec: {0}")]
    Spec(String),
}

/// Scratch mount points, on PID 1's own /run tmpfs (hidden after the switch).
const SCRATCH: &str = "/run/bulkhead";

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RootError {
    let what = what.into();
    move |source| RootError::Sys { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootError {
    let what = what.into();
    move |source| RootError::Io { what, source }
}

fn mkdir(p: &str) -> Result<(), RootError> {
    std::fs::create_dir_all(p).map_err(io(format!("mkdir {p}")))
}

/// Mounts the root and switches into it. Afterwards `/` is the container's
/// root, with /dev, /proc, /sys (and their submounts) moved in, and fresh
/// tmpfs on /run and /tmp.
pub fn enter(spec: &RootSpec) -> Result<(), RootError> {
    let lower = format!("{SCRATCH}/lower");
    let rw = format!("{SCRATCH}/rw");
    let root = format!("{SCRATCH}/root");
    for d in [&lower, &rw, &root] {
        mkdir(d)?;
    }
    match &spec.source {
        RootSource::Block { device, fstype } => {
            if !matches!(fstype.as_str(), "ext4" | "erofs") {
                return Err(RootError::Spec(format!(
                    "root filesystem {fstype:?}: use ext4 or erofs"
                )));
            }
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
            mount(
                Some(device.as_str()),
                lower.as_str(),
                Some(fstype.as_str()),
                flags,
                None::<&str>,
            )
            .map_err(sys(format!("mount {device} ({fstype}, read-only)")))?;
        }
        RootSource::Directory { path } => {
            mount(
                Some(path.as_str()),
                lower.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(format!("bind {path}")))?;
            mount(
                None::<&str>,
                lower.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(sys(format!("make {path} read-only")))?;
        }
    }
    match &spec.scratch {
        Some(dev) => mount(
            Some(dev.as_str()),
            rw.as_str(),
            Some("ext4"),
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(sys(format!("mount scratch disk {dev}")))?,
        None => mount(
            Some("tmpfs"),
            rw.as_str(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(sys("tmpfs for the overlay's upper layer"))?,
    }
    let (upper, work) = (format!("{rw}/upper"), format!("{rw}/work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    mount(
        Some("overlay"),
        root.as_str(),
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(sys("mount the overlay root"))?;

    for d in ["dev", "proc", "sys", "run", "tmp"] {
        let p = format!("{root}/{d}");
        if !Path::new(&p).is_dir() {
            // An image may have a file or symlink here; the mount point wins.
            let _ = std::fs::remove_file(&p);
            mkdir(&p)?;
        }
    }
    for d in ["/dev", "/proc", "/sys"] {
        let target = format!("{root}{d}");
        mount(
            Some(d),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys(format!("move {d} into the root")))?;
    }
    mount(
        Some("tmpfs"),
        format!("{root}/run").as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(sys("tmpfs /run"))?;
    mount(
        Some("tmpfs"),
        format!("{root}/tmp").as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(sys("tmpfs /tmp"))?;
    // POSIX shared memory (shm_open) lives on /dev/shm.
    let shm = format!("{root}/dev/shm");
    if !Path::new(&shm).is_dir() {
        mkdir(&shm)?;
    }
    mount(
        Some("shm"),
        shm.as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(sys("tmpfs /dev/shm"))?;

    // Drop the agent's binary from rootfs (it stays mapped while we run).
    // In the namespace-based tests /init does not exist: nothing to do.
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir(root.as_str()).map_err(sys("chdir into the root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move the root over /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Mounts each volume (an ext4 disk) at its target, after [`enter`]: the
/// paths resolve inside the root, dirs made as needed; read-only ones
/// read-only (the host gives their disks read-only too).
pub fn mount_volumes(volumes: &[VolumeSpec]) -> Result<(), RootError> {
    for v in volumes {
        mkdir(&v.target)?;
        let mut flags = MsFlags::MS_NODEV;
        if v.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(
            Some(v.device.as_str()),
            v.target.as_str(),
            Some("ext4"),
            flags,
            None::<&str>,
        )
        .map_err(|e| match e {
            // A read-only disk whose journal was left to replay (its last
            // VM lost its power while writing it): the replay would write.
            nix::Error::EROFS if v.read_only => RootError::Spec(format!(
                "volume at {}: its journal must be replayed first (the last VM that wrote it did not shut down); mount it read-write once",
                v.target
            )),
            e => RootError::Sys {
                what: format!("mount volume {} at {}", v.device, v.target),
                source: e,
            },
        })?;
    }
    Ok(())
}

/// Mounts each tmpfs at its target, after [`enter`] (nosuid, nodev; noexec
/// where asked), of its size.
pub fn mount_tmpfs(list: &[TmpfsSpec]) -> Result<(), RootError> {
    for t in list {
        mkdir(&t.target)?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if t.noexec {
            flags |= MsFlags::MS_NOEXEC;
        }
        let opts = format!("size={},mode={:o}", t.size_bytes, t.mode);
        mount(
            Some("tmpfs"),
            t.target.as_str(),
            Some("tmpfs"),
            flags,
            Some(opts.as_str()),
        )
        .map_err(sys(format!("tmpfs at {}", t.target)))?;
    }
    Ok(())
}

/// Makes the root read-only (`--read-only`), once everything the agent
/// writes in it is written; what is mounted below it (/dev, /proc, /run,
/// /tmp, tmpfs, volumes) stays as it is.
pub fn seal_root() -> Result<(), RootError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(sys("make the root read-only"))
}

/// Unmounts the volumes (last mounted first) so that their filesystems are
/// clean on disk; one still busy is remounted read-only instead. Errors
/// are reported, not fatal: power-off follows, and the journal has the rest.
pub fn unmount_volumes(targets: &[String]) {
    for t in targets.iter().rev() {
        if let Err(e) = nix::mount::umount(t.as_str()) {
            let ro = mount(
                None::<&str>,
                t.as_str(),
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            eprintln!("bulkhead-agent: unmount volume at {t}: {e} (read-only instead: {ro:?})");
        }
    }
}

/// Content of /etc/hosts: localhost, the hostname on the container's
/// address (or loopback), and the request's extra entries.
pub fn hosts_file(hostname: Option<&str>, address: Option<&str>, extra: &[HostEntry]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(h) = hostname {
        s.push_str(&format!("{}\t{h}\n", address.unwrap_or("127.0.1.1")));
    }
    for e in extra {
        s.push_str(&format!("{}\t{}\n", e.address, e.names.join(" ")));
    }
    s
}

pub fn resolv_conf(dns: &DnsSpec) -> String {
    let mut s = String::new();
    for ns in &dns.nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    s
}

/// Checks names and addresses that end up in /etc files: one token each,
/// nothing that could add lines.
pub fn check_etc_token(what: &str, s: &str) -> Result<(), RootError> {
    if s.is_empty()
        || s.len() > 253
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(RootError::Spec(format!(
            "{what} {s:?} is not a single name"
        )));
    }
    Ok(())
}

/// Writes a file in the (overlaid, writable) root, replacing a symlink
/// rather than following it into wherever the image points it.
pub fn write_etc(path: &str, content: &str) -> Result<(), RootError> {
    mkdir("/etc")?;
    let _ = std::fs::remove_file(path);
    std::fs::write(path, content).map_err(io(format!("write {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_hold_what_was_asked() {
        let h = hosts_file(
            Some("web"),
            Some("10.0.0.2"),
            &[HostEntry {
                address: "10.0.0.9".into(),
                names: vec!["db".into(), "db.local".into()],
            }],
        );
        assert!(
            h.contains("127.0.0.1\tlocalhost\n")
                && h.contains("10.0.0.2\tweb\n")
                && h.ends_with("10.0.0.9\tdb db.local\n"),
            "{h}"
        );
        assert_eq!(
            resolv_conf(&DnsSpec {
                nameservers: vec!["1.1.1.1".into()],
                search: vec!["a".into(), "b".into()]
            }),
            "nameserver 1.1.1.1\nsearch a b\n"
        );
    }

    #[test]
    fn names_that_would_inject_lines_are_refused() {
        for bad in ["", "a b", "a\nnameserver 6.6.6.6", "x#y", &"a".repeat(300)] {
            assert!(check_etc_token("hostname", bad).is_err(), "{bad:?}");
        }
        assert!(check_etc_token("hostname", "web-1.example").is_ok());
    }
}
