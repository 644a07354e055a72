//! Starting the container's processes: user, groups, rlimits, working
//! directory, stdio (pipes or a pty), and the namespaces. The main process
//! gets a new pid namespace (it is PID 1 there, so `/proc/1/exe` is the
//! workload, not us) and a new mount namespace with its own /proc; exec'd
//! processes join both.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::Pid;

use bulkhead_agent_proto::{
    AgentError, CopyDirection, CopySpec, ErrorKind, ProcessSpec, RlimitResource,
};

use crate::passwd;

pub use bulkhead_agent_proto::DEFAULT_PATH;

/// A started process's descriptors (all non-blocking).
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Where stdin bytes go (pipe or pty master), if the host sends stdin.
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    /// None in TTY mode (the terminal carries both).
    pub stderr: Option<OwnedFd>,
    /// The pty master, for window resizes.
    pub tty: Option<OwnedFd>,
}

/// Whose namespaces a process joins.
#[derive(Debug, Clone, Copy)]
pub enum Namespaces {
    /// New pid and mount namespaces (the main process).
    New,
    /// Those of this running process (exec).
    Join(Pid),
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> AgentError {
    AgentError::new(kind, msg)
}

fn failed(what: &str) -> impl FnOnce(nix::Error) -> AgentError + '_ {
    move |e| err(ErrorKind::Failed, format!("{what}: {e}"))
}

/// Reads at most 1 MiB of an image file; absent is empty.
fn read_image_file(path: &str) -> String {
    let mut s = String::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(1 << 20).read_to_string(&mut s);
    }
    s
}

fn resource(r: RlimitResource) -> libc::__rlimit_resource_t {
    match r {
        RlimitResource::RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitResource::RlimitNproc => libc::RLIMIT_NPROC,
        RlimitResource::RlimitCore => libc::RLIMIT_CORE,
        RlimitResource::RlimitStack => libc::RLIMIT_STACK,
        RlimitResource::RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitResource::RlimitAs => libc::RLIMIT_AS,
        RlimitResource::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitResource::RlimitCpu => libc::RLIMIT_CPU,
    }
}

/// Starts `spec` in the container (our root is already the container's).
/// `own_pid_ns` is the agent's own pid namespace, to come back to.
pub fn spawn(spec: &ProcessSpec, ns: Namespaces, own_pid_ns: &File) -> Result<Spawned, AgentError> {
    spec.validate()
        .map_err(|m| err(ErrorKind::InvalidRequest, m))?;
    let user_spec = spec.user.as_deref().unwrap_or("0:0");
    let user = passwd::resolve(
        user_spec,
        &passwd::parse_passwd(&read_image_file("/etc/passwd")),
        &passwd::parse_group(&read_image_file("/etc/group")),
    )
    .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
    let mut groups: Vec<libc::gid_t> = user
        .groups
        .iter()
        .chain(&spec.additional_gids)
        .copied()
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let cwd = spec.cwd.clone().unwrap_or_else(|| "/".into());
    if !std::path::Path::new(&cwd).is_dir() {
        return Err(err(
            ErrorKind::Failed,
            format!("working directory {cwd:?} does not exist in the image"),
        ));
    }
    let cwd_c = CString::new(cwd).map_err(|_| err(ErrorKind::InvalidRequest, "cwd has a NUL"))?;
    let rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)> = spec
        .rlimits
        .iter()
        .map(|r| {
            (
                resource(r.resource),
                libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                },
            )
        })
        .collect();

    let mut cmd = Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..]).env_clear();
    let has = |k: &str| {
        spec.env
            .iter()
            .any(|e| e.split_once('=').is_some_and(|(key, _)| key == k))
    };
    if !has("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if !has("HOME") {
        cmd.env("HOME", &user.home);
    }
    for e in &spec.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }

    // stdio: in TTY mode the pty (master kept here), else pipes from spawn.
    let mut pty_master: Option<OwnedFd> = None;
    if spec.tty {
        let size = spec.tty_size.map(|(rows, cols)| nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(failed("openpty"))?;
        let slave = |fd: &OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| err(ErrorKind::Failed, format!("dup: {e}")))
        };
        cmd.stdin(slave(&pty.slave)?)
            .stdout(slave(&pty.slave)?)
            .stderr(Stdio::from(pty.slave));
        // SAFETY: F_SETFD on a descriptor we own: the workload must not inherit the master.
        if unsafe { libc::fcntl(pty.master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(err(
                ErrorKind::Failed,
                format!("pty: {}", std::io::Error::last_os_error()),
            ));
        }
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }

    // Namespaces: pid via our pid_for_children around the fork; mount in the child.
    let join_mnt: Option<File> = match ns {
        Namespaces::New => {
            unshare(CloneFlags::CLONE_NEWPID).map_err(failed("new pid namespace"))?;
            None
        }
        Namespaces::Join(pid) => {
            let pidns = File::open(format!("/proc/{pid}/ns/pid")).map_err(|e| {
                err(
                    ErrorKind::InvalidRequest,
                    format!("the container's main process is gone: {e}"),
                )
            })?;
            let mnt = File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| {
                err(
                    ErrorKind::InvalidRequest,
                    format!("the container's main process is gone: {e}"),
                )
            })?;
            setns(&pidns, CloneFlags::CLONE_NEWPID)
                .map_err(failed("join the container's pid namespace"))?;
            Some(mnt)
        }
    };
    let tty_mode = spec.tty;
    let (uid, gid) = (user.uid, user.gid);
    let mnt_fd = join_mnt.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec; the agent is
    // single-threaded, so no lock can be held by a vanished thread. It only
    // makes syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The agent blocks SIGCHLD/SIGTERM/SIGINT for its signalfd;
            // the workload starts with nothing blocked.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            nix::unistd::setsid()?;
            // Whatever the agent inherited or opened stays out of the workload.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if tty_mode && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match mnt_fd {
                Some(fd) => {
                    if libc::setns(fd, libc::CLONE_NEWNS) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                None => {
                    unshare(CloneFlags::CLONE_NEWNS)?;
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )?;
                    // The agent's /proc shows every process of the VM; the
                    // workload gets one of its own pid namespace instead.
                    umount2("/proc", MntFlags::MNT_DETACH)?;
                    mount(
                        Some("proc"),
                        "/proc",
                        Some("proc"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                        None::<&str>,
                    )?;
                }
            }
            if libc::chdir(cwd_c.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (res, lim) in &rlimits {
                if libc::setrlimit(*res, lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                || libc::setgid(gid) < 0
                || libc::setuid(uid) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Back to our own pid namespace for our own future children.
    setns(own_pid_ns, CloneFlags::CLONE_NEWPID)
        .map_err(failed("return to the agent's pid namespace"))?;
    let mut child = spawned.map_err(|e| {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
                ErrorKind::NotExecutable
            }
            _ => ErrorKind::Failed,
        };
        let what = match kind {
            ErrorKind::NotFound => "executable file not found",
            ErrorKind::NotExecutable => "permission denied / not executable",
            _ => "could not start",
        };
        err(kind, format!("{}: {what}: {e}", spec.args[0]))
    })?;
    let pid = pid_of(&child);
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| err(ErrorKind::Failed, format!("dup: {e}")))
    };
    let (stdin, stdout, stderr) = match &pty_master {
        Some(master) => (
            spec.stdin.then(|| dup(master)).transpose()?,
            dup(master)?,
            None,
        ),
        None => (
            child.stdin.take().map(OwnedFd::from),
            child
                .stdout
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| err(ErrorKind::Failed, "no stdout pipe"))?,
            child.stderr.take().map(OwnedFd::from),
        ),
    };
    // `child` is dropped without waiting: the agent reaps with waitpid(-1).
    for fd in [Some(&stdout), stderr.as_ref(), stdin.as_ref()]
        .into_iter()
        .flatten()
    {
        crate::pid1::set_nonblocking(fd, true)
            .map_err(|e| err(ErrorKind::Failed, format!("non-blocking stdio: {e}")))?;
    }
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        tty: pty_master,
    })
}

/// Starts one end of `bulkhead cp` (`bulkhead_agent::copy`): a child of
/// ours in the container's mount namespace, so the copy sees the workload's
/// files (volumes and tmpfs included) and nothing else of the guest. Its
/// stdout (out) or stdin (in) carries the stream; stderr the reason it
/// failed.
pub fn spawn_copy(spec: &CopySpec, main: Pid) -> Result<Spawned, AgentError> {
    spec.validate()
        .map_err(|m| err(ErrorKind::InvalidRequest, m))?;
    let mnt = File::open(format!("/proc/{main}/ns/mnt")).map_err(|e| {
        err(
            ErrorKind::InvalidRequest,
            format!("the container's main process is gone: {e}"),
        )
    })?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(failed("pipe"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_r, in_w) = pipe()?;
    let ends = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    // SAFETY: the agent is single-threaded, so the child starts with no
    // lock held by a vanished thread; it runs the copy and _exits.
    match unsafe { nix::unistd::fork() }.map_err(failed("fork"))? {
        nix::unistd::ForkResult::Child => {
            let code = copy_child(spec, &mnt, ends);
            // SAFETY: ends the child without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((in_r, out_w, err_w));
            let stdin = (spec.direction == CopyDirection::In).then_some(in_w);
            for fd in [Some(&out_r), Some(&err_r), stdin.as_ref()]
                .into_iter()
                .flatten()
            {
                crate::pid1::set_nonblocking(fd, true)
                    .map_err(|e| err(ErrorKind::Failed, format!("non-blocking stdio: {e}")))?;
            }
            Ok(Spawned {
                pid: child,
                stdin,
                stdout: out_r,
                stderr: Some(err_r),
                tty: None,
            })
        }
    }
}

/// The copy's child: stdio onto the pipes, nothing else of ours kept, into
/// the container's mount namespace, then the copy. Its exit code.
fn copy_child(spec: &CopySpec, mnt: &File, ends: [i32; 3]) -> i32 {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    // SAFETY: plain syscalls on descriptors this process holds.
    let ready = unsafe {
        libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) == 0
            && libc::dup2(ends[0], 0) == 0
            && libc::dup2(ends[1], 1) == 1
            && libc::dup2(ends[2], 2) == 2
            && libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    };
    if !ready {
        eprintln!(
            "bulkhead-agent: enter the container for the copy: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    let root = std::path::Path::new("/");
    use std::os::fd::FromRawFd;
    // SAFETY: 0 and 1 are the pipes dup'ed above; nothing else here owns them.
    let (stdin, stdout) = unsafe { (File::from_raw_fd(0), File::from_raw_fd(1)) };
    let mut note = |n: String| eprintln!("{n}");
    let done = match spec.direction {
        CopyDirection::Out => bulkhead_agent::copy::send(
            root,
            &spec.path,
            spec.follow_link,
            bulkhead_agent::copy::IdShift(0),
            std::io::BufWriter::with_capacity(64 << 10, stdout),
            &mut note,
        )
        .map(|_| ()),
        CopyDirection::In => bulkhead_agent::copy::receive(
            root,
            &spec.path,
            spec.keep_owners,
            bulkhead_agent::copy::IdShift(0),
            std::io::BufReader::with_capacity(64 << 10, stdin),
            &mut note,
        ),
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", bulkhead_agent_proto::report(&e));
            1
        }
    }
}

/// Sets a pty's window size.
pub fn resize(tty: &OwnedFd, rows: u16, cols: u16) -> Result<(), AgentError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own, on a pty master we hold.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(err(
            ErrorKind::Failed,
            format!("resize: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}

/// A child's pid as the `pid_t` nix takes: pids stop at `PID_MAX_LIMIT`
/// (2^22), so it never wraps.
#[allow(clippy::cast_possible_wrap)]
fn pid_of(child: &std::process::Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}
