//! The jailing itself. Three processes: this one (stays on the host: at the
//! end it removes the jail dir and cgroups), a middle one (joins the
//! cgroups and the network namespace, unshares mount, ipc, uts and pid
//! namespaces) and the VMM (PID 1 of the new pid namespace: binds in what
//! it needs, pivot_root, rlimits, closes fds, NO_NEW_PRIVS, drops to
//! UID:GID with no capabilities, execs with an empty environment). The
//! upper two pass SIGTERM/SIGINT down and the exit status up; the lower two
//! die with their parent (PR_SET_PDEATHSIG), so a killed jailer takes its
//! VMM along (what it leaves, `cleanup` removes).

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
const OLD_ROOT: &str = ".old_root";

/// Jails `spec.command` and waits for it; returns its exit code (128+N
/// when killed by signal N). The jail dir and cgroups are gone afterwards.
pub fn run(spec: &Spec) -> Result<i32, JailError> {
    let (jail, root) = chroot::create(&spec.chroot_base, &spec.id)?;
    let made = prepare(spec, &root);
    let result = made.and_then(|cgroups| {
        let r = start(spec, &root, &cgroups);
        cgroups.remove();
        r
    });
    let removed = chroot::remove(&jail);
    let code = result?;
    removed?;
    Ok(code)
}

fn prepare(spec: &Spec, root: &Path) -> Result<Cgroups, JailError> {
    chroot::mount_point(root, Path::new(&spec.command[0]))?;
    for (host, _) in &spec.binds {
        chroot::mount_point(root, host)?;
    }
    for dev in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
        chroot::device(root, dev, spec.uid, spec.gid)?;
    }
    for dir in ["proc", OLD_ROOT] {
        std::fs::create_dir(root.join(dir)).map_err(|source| ChrootError::Io { what: "create", path: root.join(dir), source })?;
    }
    Ok(Cgroups::create(&spec.id, &spec.cgroups)?)
}

fn relayed_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        s.add(sig);
    }
    s
}

/// Passes SIGTERM/SIGINT to `child` until it ends; its status as a code.
fn relay(child: Pid, signals: &SigSet) -> i32 {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Err(_) => return 125,
            Ok(_) => {}
        }
        if let Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) = signals.wait() {
            let _ = kill(child, sig);
        }
    }
}

fn start(spec: &Spec, root: &Path, cgroups: &Cgroups) -> Result<i32, JailError> {
    let signals = relayed_signals();
    let jailer = nix::unistd::getpid();
    signals.thread_block().map_err(|e| JailError::Sys("block signals", e))?;
    // SAFETY: the jailer is single-threaded here; the child only runs the
    // code below before exec or _exit.
    match unsafe { fork() }.map_err(|e| JailError::Sys("fork", e))? {
        ForkResult::Parent { child } => Ok(relay(child, &signals)),
        ForkResult::Child => {
            let code = match middle(spec, root, cgroups, &signals, jailer) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bulkhead-jailer: {e}");
                    125
                }
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The kernel kills this process when its parent ends, whoever ends it
/// (a SIGKILLed jailer must not leave a VMM running); 0 when the parent is
/// already gone.
fn die_with_parent(parent: Option<Pid>) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(JailError::Sys("PR_SET_PDEATHSIG", nix::Error::last()));
    }
    if parent.is_some_and(|p| nix::unistd::getppid() != p) {
        return Err(JailError::Sys("the jailer ended before the jail was made", nix::Error::ESRCH));
    }
    Ok(())
}

fn middle(spec: &Spec, root: &Path, cgroups: &Cgroups, signals: &SigSet, jailer: Pid) -> Result<i32, JailError> {
    die_with_parent(Some(jailer))?;
    cgroups.join(std::process::id() as i32)?;
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(|e| JailError::Sys("open the network namespace", nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| JailError::Sys("join the network namespace", e))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID).map_err(|e| JailError::Sys("unshare namespaces", e))?;
    // SAFETY: single-threaded (a forked child); the grandchild execs or _exits.
    match unsafe { fork() }.map_err(|e| JailError::Sys("fork into the pid namespace", e))? {
        ForkResult::Parent { child } => Ok(relay(child, signals)),
        ForkResult::Child => {
            let e = enter_and_exec(spec, root);
            eprintln!("bulkhead-jailer: {e}");
            // SAFETY: ends the forked child without running destructors.
            unsafe { libc::_exit(125) }
        }
    }
}

/// Only returns on failure.
fn enter_and_exec(spec: &Spec, root: &Path) -> JailError {
    match jail_self(spec, root) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn jail_self(spec: &Spec, root: &Path) -> Result<std::convert::Infallible, JailError> {
    let sys = |what: &'static str| move |e: nix::Error| JailError::Sys(what, e);
    nix::unistd::sethostname(&spec.id).map_err(sys("sethostname"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(sys("make / private"))?;
    mount(Some(root), root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(sys("bind the jail root"))?;
    // A base on a nodev mount (/run on most hosts) would make the two
    // device nodes unusable: the jail root's own flags are nosuid, noexec,
    // devices allowed (each bind below gets its own, stricter flags).
    mount(None::<&str>, root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, None::<&str>).map_err(sys("remount the jail root"))?;
    let vmm = (PathBuf::from(&spec.command[0]), false);
    for (host, rw) in spec.binds.iter().chain(std::iter::once(&vmm)) {
        let target = chroot::inside(root, host);
        mount(Some(host.as_path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys("bind mount"))?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if !rw {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(sys("remount a bind"))?;
    }
    mount(Some("proc"), &root.join("proc"), Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>).map_err(sys("mount proc"))?;
    nix::unistd::chdir(root).map_err(sys("chdir"))?;
    nix::unistd::pivot_root(".", OLD_ROOT).map_err(sys("pivot_root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    umount2(&*format!("/{OLD_ROOT}"), MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    std::fs::remove_dir(format!("/{OLD_ROOT}")).map_err(|e| JailError::Sys("remove the old root", nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    for (resource, n) in &spec.rlimits {
        let limit = libc::rlimit { rlim_cur: *n, rlim_max: *n };
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
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0); // EINVAL past the last capability
        }
    }
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(spec.gid.into(), spec.gid.into(), spec.gid.into()).map_err(sys("setresgid"))?;
    // From uid 0 to another: the permitted and effective capabilities go.
    nix::unistd::setresuid(spec.uid.into(), spec.uid.into(), spec.uid.into()).map_err(sys("setresuid"))?;
    // After the uid change (which clears it); kept across exec. The parent
    // (the middle process) is outside this pid namespace: no ppid to check.
    die_with_parent(None)?;
    // SIGTERM/SIGINT stay blocked across exec: the VMM reads them from a
    // signalfd, and as PID 1 of its namespace an unblocked one with the
    // default action would be dropped. SIGCHLD goes back.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_unblock().map_err(sys("unblock SIGCHLD"))?;
    let args: Vec<CString> = spec.command.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let path = CString::new(Path::new(&spec.command[0]).as_os_str().as_bytes()).unwrap_or_default();
    let env: [CString; 0] = [];
    match nix::unistd::execve(&path, &args, &env) {
        Err(e) => Err(JailError::Sys("exec the VMM", e)),
        Ok(never) => match never {},
    }
}

fn close_other_fds(keep: &[i32]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd").map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing inherited fds nothing here uses (the directory iterator is already dropped).
            unsafe { libc::close(fd) };
        }
    }
}
