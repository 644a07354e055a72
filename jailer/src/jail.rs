//! The jailing itself. Two processes: this one (joins the network
//! namespace, unshares ipc, uts and pid namespaces, but keeps the host's
//! mounts: at the end it removes the jail dir and cgroups) and the VMM
//! (PID 1 of the new pid namespace: joins the cgroups, unshares the mount
//! namespace, fills a tmpfs root, binds in what it needs, pivot_root,
//! rlimits, closes fds, NO_NEW_PRIVS, drops to UID:GID with no
//! capabilities, execs with an empty environment). The jailer passes
//! SIGTERM/SIGINT down and the exit status up; the VMM dies with it
//! (PR_SET_PDEATHSIG), so a killed jailer takes its VMM along (what it
//! leaves, `cleanup` removes).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::cgroup::{CgroupError, Cgroups};
use crate::chroot::{self, ChrootError};

/// What to jail, checked (`validate`).
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    /// Host paths bound in at the same path; `true`: writable.
    pub binds: Vec<(PathBuf, bool)>,
    pub cgroups: Vec<(String, String, String)>,
    pub netns: Option<PathBuf>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub keep_fds: Vec<i32>,
    /// A lease deadline file and how long past it the VMM is killed.
    pub deadline: Option<(PathBuf, u64)>,
    /// The VMM (an absolute path, bound in read-only) and its arguments.
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Chroot(#[from] ChrootError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{0}: {1}")]
    Sys(&'static str, nix::Error),
}

/// The devices a VMM opens: KVM always, the TUN clone device if the host has one.
const DEVICES: &[&str] = &["/dev/kvm", "/dev/net/tun"];

/// Jails `spec.command` and waits for it; returns its exit code (128+N
/// when killed by signal N). The jail dir and cgroups are gone afterwards.
pub fn run(spec: &Spec) -> Result<i32, JailError> {
    let (jail, root, held) = chroot::create(&spec.chroot_base, &spec.id)?;
    let result = Cgroups::create(&spec.id, &spec.cgroups)
        .map_err(JailError::from)
        .and_then(|cgroups| {
            let r = start(spec, &root, &cgroups);
            cgroups.remove();
            r
        });
    let removed = chroot::remove(&jail);
    drop(held);
    let code = result?;
    removed?;
    Ok(code)
}

/// The jail's root, made inside its own mount namespace: a small tmpfs
/// over `root` (so nothing of it is written to the host's disk, and it
/// goes with the namespace) holding the mount points of what is bound in,
/// the two device nodes and /proc.
fn fill_root(spec: &Spec, root: &Path) -> Result<(), JailError> {
    let sys = |what: &'static str| move |e: nix::Error| JailError::Sys(what, e);
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=1024"),
    )
    .map_err(sys("mount the jail's tmpfs"))?;
    chroot::mount_point(root, Path::new(&spec.command[0]))?;
    for (host, _) in &spec.binds {
        chroot::mount_point(root, host)?;
    }
    for dev in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
        chroot::device(root, dev, spec.uid, spec.gid)?;
    }
    std::fs::create_dir(root.join("proc")).map_err(|source| ChrootError::Io {
        what: "create",
        path: root.join("proc"),
        source,
    })?;
    Ok(())
}

fn relayed_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        s.add(sig);
    }
    s
}

/// How often the lease deadline is looked at.
const DEADLINE_POLL: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 250_000_000,
};

/// Waits up to `DEADLINE_POLL` for one of `signals`.
fn wait_signal(signals: &SigSet) -> Option<Signal> {
    // SAFETY: sigtimedwait reads the set and the timeout, both alive for
    // the call, and writes no siginfo (null is allowed).
    let n = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &DEADLINE_POLL) };
    Signal::try_from(n).ok()
}

/// Passes SIGTERM/SIGINT to `child` until it ends, and SIGKILLs it once
/// the lease deadline (if any) is `kill_after` ms past; its status as a code.
fn relay(child: Pid, signals: &SigSet, deadline: Option<&(PathBuf, u64)>) -> i32 {
    let mut killed = false;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Err(_) => return 125,
            Ok(_) => {}
        }
        let sig = match deadline {
            None => signals.wait().ok(),
            Some(_) => wait_signal(signals),
        };
        if let Some(sig @ (Signal::SIGTERM | Signal::SIGINT)) = sig {
            let _ = kill(child, sig);
        }
        if let Some((file, kill_after)) = deadline {
            let by = crate::deadline::read(file).map_or(0, |d| d.saturating_add(*kill_after));
            if !killed && crate::deadline::monotonic_ms() >= by {
                eprintln!(
                    "bulkhead-jailer: the lease deadline in {} passed: killing the VMM",
                    file.display()
                );
                let _ = kill(child, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}

fn start(spec: &Spec, root: &Path, cgroups: &Cgroups) -> Result<i32, JailError> {
    let signals = relayed_signals();
    signals
        .thread_block()
        .map_err(|e| JailError::Sys("block signals", e))?;
    // The jailer takes the VMM's network, ipc and uts namespaces and makes
    // the pid namespace its child is PID 1 of; it keeps the host's mount
    // namespace (the child makes its own: its pivot_root must not move the
    // jailer, which removes the jail dir at the end).
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(|e| {
            JailError::Sys(
                "open the network namespace",
                nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| JailError::Sys("join the network namespace", e))?;
    }
    nix::sched::unshare(
        CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID,
    )
    .map_err(|e| JailError::Sys("unshare namespaces", e))?;
    let jailer = JailerWatch::open()?;
    // SAFETY: the jailer is single-threaded here; the child only runs the
    // code below before exec or _exit.
    match unsafe { fork() }.map_err(|e| JailError::Sys("fork", e))? {
        ForkResult::Parent { child } => {
            drop(jailer);
            Ok(relay(child, &signals, spec.deadline.as_ref()))
        }
        ForkResult::Child => {
            let e = enter_and_exec(spec, root, cgroups, jailer);
            eprintln!("bulkhead-jailer: {}", crate::report(&e));
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(125) }
        }
    }
}

/// A pidfd of the jailer, made before the fork: the child (PID 1 of its
/// own pid namespace, where its parent has no pid) polls it to learn
/// whether the jailer ended before the child asked to die with it.
struct JailerWatch(std::os::fd::OwnedFd);

impl JailerWatch {
    fn open() -> Result<JailerWatch, JailError> {
        // SAFETY: pidfd_open with our own pid and no flags; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd < 0 {
            return Err(JailError::Sys(
                "pidfd_open (Linux 5.3 or later)",
                nix::Error::last(),
            ));
        }
        let fd = std::os::fd::RawFd::try_from(fd)
            .map_err(|_| JailError::Sys("pidfd_open", nix::Error::EBADF))?;
        // SAFETY: the fd was just made and nothing else owns it.
        Ok(JailerWatch(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// The kernel kills this process when the jailer ends, whoever ends it
    /// (a SIGKILLed jailer must not leave a VMM running); an error when the
    /// jailer is gone already. The watch is closed.
    fn die_with_jailer(self) -> Result<(), JailError> {
        die_with_parent()?;
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.0),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, no timeout.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ready != 0 {
            return Err(JailError::Sys(
                "the jailer ended before the jail was made",
                nix::Error::ESRCH,
            ));
        }
        Ok(())
    }
}

/// PR_SET_PDEATHSIG: SIGKILL when the parent ends (cleared by a uid
/// change, so set again after it).
fn die_with_parent() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(JailError::Sys("PR_SET_PDEATHSIG", nix::Error::last()));
    }
    Ok(())
}

/// Only returns on failure.
fn enter_and_exec(spec: &Spec, root: &Path, cgroups: &Cgroups, jailer: JailerWatch) -> JailError {
    match jail_self(spec, root, cgroups, jailer) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn jail_self(
    spec: &Spec,
    root: &Path,
    cgroups: &Cgroups,
    jailer: JailerWatch,
) -> Result<std::convert::Infallible, JailError> {
    let sys = |what: &'static str| move |e: nix::Error| JailError::Sys(what, e);
    jailer.die_with_jailer()?;
    cgroups.join_self()?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare the mount namespace"))?;
    nix::unistd::sethostname(&spec.id).map_err(sys("sethostname"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make / private"))?;
    fill_root(spec, root)?;
    let vmm = (PathBuf::from(&spec.command[0]), false);
    for (host, rw) in spec.binds.iter().chain(std::iter::once(&vmm)) {
        let target = chroot::inside(root, host);
        mount(
            Some(host.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind mount"))?;
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if !rw {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .map_err(sys("remount a bind"))?;
    }
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mount proc"))?;
    // The tmpfs itself read-only from here (the binds keep their own flags).
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("remount the jail root read-only"))?;
    // pivot_root(".", "."): the old root ends up stacked over the new one,
    // and detaching it leaves the new one; no old-root dir to make or remove.
    nix::unistd::chdir(root).map_err(sys("chdir"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    for (resource, n) in &spec.rlimits {
        let limit = libc::rlimit {
            rlim_cur: *n,
            rlim_max: *n,
        };
        // SAFETY: setrlimit reads the struct we pass; no other memory involved.
        if unsafe { libc::setrlimit(*resource, &limit) } != 0 {
            return Err(JailError::Sys("setrlimit", nix::Error::last()));
        }
    }
    close_other_fds(&spec.keep_fds);
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(JailError::Sys("NO_NEW_PRIVS", nix::Error::last()));
        }
        // Capabilities are numbered from 0 up; EINVAL past the last one.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
    }
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(spec.gid.into(), spec.gid.into(), spec.gid.into())
        .map_err(sys("setresgid"))?;
    // From uid 0 to another: the permitted and effective capabilities go.
    nix::unistd::setresuid(spec.uid.into(), spec.uid.into(), spec.uid.into())
        .map_err(sys("setresuid"))?;
    // After the uid change (which clears it); kept across exec.
    die_with_parent()?;
    // SIGTERM/SIGINT stay blocked across exec: the VMM reads them from a
    // signalfd, and as PID 1 of its namespace an unblocked one with the
    // default action would be dropped. SIGCHLD goes back.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_unblock().map_err(sys("unblock SIGCHLD"))?;
    let args: Vec<CString> = spec
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let path = CString::new(Path::new(&spec.command[0]).as_os_str().as_bytes()).unwrap_or_default();
    let env: [CString; 0] = [];
    // For the start timeline (`bulkhead bench boot`): everything of the jail is in place.
    eprintln!("{}", crate::timeline::jail_ready_line());
    match nix::unistd::execve(&path, &args, &env) {
        Err(e) => Err(JailError::Sys("exec the VMM", e)),
        Ok(never) => match never {},
    }
}

/// Closes every fd above stdio but `keep`: close_range over the gaps
/// between them (Linux 5.9+), else one by one from /proc/self/fd.
fn close_other_fds(keep: &[i32]) {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd > 2)
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut from = 3u32;
    let mut ranged = true;
    for upto in kept.iter().map(|k| Some(*k)).chain(std::iter::once(None)) {
        let last = upto.map_or(u32::MAX, |k| k.saturating_sub(1));
        // SAFETY: closes fds nothing in this process uses any more; the
        // kernel checks the range.
        if last >= from && unsafe { libc::syscall(libc::SYS_close_range, from, last, 0) } != 0 {
            ranged = false;
            break;
        }
        from = upto.map_or(u32::MAX, |k| k.saturating_add(1));
    }
    if ranged {
        return;
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing inherited fds nothing here uses (the directory iterator is already dropped).
            unsafe { libc::close(fd) };
        }
    }
}
