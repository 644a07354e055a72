//! `bulkhead cp`: files between the host and a workload, both ways, placed
//! as `docker cp` places them.
//!
//! The workload's end runs confined to the workload (`bulkhead_agent::copy`):
//! in a microVM the agent runs it in the container; for a running container
//! our helper (`bulkhead __copy`) joins the container's user and mount
//! namespaces first, so it holds no more rights than the container's root;
//! for a stopped container the helper chroots into its root (still mounted:
//! `Container::cleanup`) and shifts ids by its base. The host's end makes
//! the stream from the host's files, or unpacks the workload's stream with
//! the image unpacker, which takes it as hostile (`unpack::Landing`): its
//! entries stay under the name asked for, and never become setuid programs.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};

use bulkhead_agent::copy::{self as engine, DestState, IdShift, Rename};
use bulkhead_agent_proto::{CopyDirection, CopyHeader, CopySpec};
use bulkhead_images::unpack::{Landing, Limits, Unpacker};

use super::attach::{self, ExitReport, Kind, Request};
use crate::state::paths::Paths;
use crate::state::record::{Record, RuntimeKind, Status};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Here(#[from] engine::CopyError),
    #[error(transparent)]
    Unpack(#[from] bulkhead_images::unpack::UnpackError),
    /// The workload's end failed: its own words.
    #[error("{0}")]
    There(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CopyError {
    let what = what.to_string();
    move |source| CopyError::Io { what, source }
}

/// One side of `bulkhead cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A host path; `-` is a tar stream on stdin or stdout.
    Host(String),
    Workload {
        name: String,
        path: String,
    },
}

impl Endpoint {
    /// docker's reading: `NAME:PATH` is in a workload unless it starts
    /// with `/` or `.` (a host path with a colon: write `./a:b`).
    pub fn parse(s: &str) -> Self {
        if s.starts_with('/') || s.starts_with('.') || s == "-" {
            return Endpoint::Host(s.into());
        }
        match s.split_once(':') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => Endpoint::Workload {
                name: name.into(),
                // Relative to the workload's root, as docker has it.
                path: if path.starts_with('/') {
                    path.into()
                } else {
                    format!("/{path}")
                },
            },
            _ => Endpoint::Host(s.into()),
        }
    }
}

/// Where the workload's end of a copy runs.
#[derive(Debug, Clone, Copy)]
pub enum Inside<'a> {
    /// A running container: its main process (`pid`) and id, to check that
    /// process is still its own before joining its namespaces.
    Running { pid: i32, workload: &'a str },
    /// A stopped container: its still-mounted root and its ids' base.
    Stopped { root: &'a Path, base: u32 },
}

/// `bulkhead __copy ...` for the workload's end.
pub fn helper_command(spec: &CopySpec, at: Inside<'_>) -> std::io::Result<std::process::Command> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    let json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
    cmd.args(["__copy", "--spec", &json]);
    match at {
        Inside::Running { pid, workload } => {
            cmd.arg("--pid")
                .arg(pid.to_string())
                .arg("--workload")
                .arg(workload);
        }
        Inside::Stopped { root, base } => {
            cmd.arg("--root")
                .arg(root)
                .arg("--id-base")
                .arg(base.to_string());
        }
    }
    Ok(cmd)
}

/// `bulkhead __copy`: the workload's end, on stdin or stdout. Runs before
/// any thread starts (joining a user namespace needs a single thread).
pub fn helper_main(
    spec: &str,
    pid: Option<i32>,
    workload: Option<&str>,
    root: Option<&Path>,
    base: u32,
) -> u8 {
    let run = || -> Result<(), String> {
        let spec: CopySpec = serde_json::from_str(spec).map_err(|e| format!("bad spec: {e}"))?;
        spec.validate()?;
        // No core dumps, no ptrace by the container's root, whose ids we take.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let ids = match (pid, workload, root) {
            (Some(pid), Some(id), None) => {
                enter_container(pid, id)?;
                IdShift(0)
            }
            (None, None, Some(root)) => {
                nix::unistd::chroot(root)
                    .and_then(|()| nix::unistd::chdir("/"))
                    .map_err(|e| format!("enter {}: {e}", root.display()))?;
                IdShift(base)
            }
            _ => return Err("--pid with --workload, or --root".into()),
        };
        let root = Path::new("/");
        let done = match spec.direction {
            CopyDirection::Out => engine::send(
                root,
                &spec.path,
                spec.follow_link,
                ids,
                std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock()),
                &mut |n| eprintln!("{n}"),
            )
            .map(|_| ()),
            CopyDirection::In => engine::receive(
                root,
                &spec.path,
                spec.keep_owners,
                ids,
                std::io::stdin().lock(),
                &mut |n| eprintln!("{n}"),
            ),
        };
        done.map_err(|e| bulkhead_agent_proto::report(&e))
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Into the user and mount namespaces of process `pid`, once it is sure to
/// be container `id`'s: in its cgroup, in a user namespace not ours, and
/// alive after both were read (the pidfd holds it: its pid is not reused
/// while we look).
fn enter_container(pid: i32, id: &str) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    // SAFETY: pidfd_open takes a pid and flags; the fd it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(format!(
            "the container's process {pid} is gone: {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = i32::try_from(fd).map_err(|_| "pidfd_open: a descriptor out of range".to_string())?;
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let theirs = ns(&format!("/proc/{pid}/ns/user"));
    let ours = ns("/proc/self/ns/user");
    if theirs.is_err() || theirs.as_ref().ok() == ours.as_ref().ok() {
        return Err(format!(
            "process {pid} has no user namespace of its own: refused"
        ));
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mine = format!("/bulkhead/{id}");
    if !cgroup
        .lines()
        .any(|l| l.ends_with(&mine) || l.contains(&format!("{mine}/")))
    {
        return Err(format!("process {pid} is not container {id}'s: refused"));
    }
    let mut poll = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&pidfd),
        nix::poll::PollFlags::POLLIN,
    )];
    if nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO).unwrap_or(1) != 0 {
        return Err("the container ended".into());
    }
    // SAFETY: setns on a pidfd we hold; this process has one thread.
    if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } < 0 {
        return Err(format!(
            "enter the container: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Joining kept our host ids, which the container does not map: become
    // its root (nsenter's way), so what we make is its root's.
    let root_ids = nix::unistd::setgroups(&[])
        .or_else(|e| {
            if e == nix::errno::Errno::EPERM {
                Ok(())
            } else {
                Err(e)
            }
        })
        .and_then(|()| {
            let g = nix::unistd::Gid::from_raw(0);
            nix::unistd::setresgid(g, g, g)
        })
        .and_then(|()| {
            let u = nix::unistd::Uid::from_raw(0);
            nix::unistd::setresuid(u, u, u)
        });
    root_ids.map_err(|e| format!("become the container's root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("enter the container's root: {e}"))
}

/// `bulkhead cp SRC DEST`, exactly one of them in a workload.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub src: Endpoint,
    pub dest: Endpoint,
    /// Keep owners (uid/gid) as they are at the source.
    pub archive: bool,
    /// Follow a symlink at the source's end.
    pub follow_link: bool,
}

/// What a copy moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// What was skipped (devices, sockets, ...), as each end said.
    pub notes: Vec<String>,
}

pub fn copy(state: &State, req: &CopyRequest) -> Result<Copied, CopyError> {
    match (&req.src, &req.dest) {
        (Endpoint::Workload { name, path }, Endpoint::Host(dest)) => {
            let spec = CopySpec {
                direction: CopyDirection::Out,
                path: path.clone(),
                follow_link: req.follow_link,
                keep_owners: req.archive,
            };
            if dest != "-" {
                check_host_dest(dest)?;
            }
            let peer = start(state, name, &spec)?;
            copy_out(peer, path, dest, req.archive)
        }
        (Endpoint::Host(src), Endpoint::Workload { name, path }) => {
            let spec = CopySpec {
                direction: CopyDirection::In,
                path: path.clone(),
                follow_link: false,
                keep_owners: req.archive,
            };
            if src != "-" {
                std::fs::symlink_metadata(src).map_err(io(format_args!("{src}")))?;
            }
            let peer = start(state, name, &spec)?;
            copy_in(peer, src, req.follow_link)
        }
        (Endpoint::Workload { .. }, Endpoint::Workload { .. }) => Err(CopyError::Input(
            "copying between two workloads is not supported: copy to the host, then on".into(),
        )),
        (Endpoint::Host(_), Endpoint::Host(_)) => Err(CopyError::Input(
            "one of SRC and DEST must be a workload's NAME:PATH".into(),
        )),
    }
}

/// A host destination's directory must exist before anything starts.
fn check_host_dest(dest: &str) -> Result<(), CopyError> {
    let p = Path::new(dest);
    if DestState::of(p)? != DestState::Missing {
        return Ok(());
    }
    let parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if DestState::of(parent)? != DestState::Dir {
        return Err(engine::CopyError::NoDestDir(parent.display().to_string()).into());
    }
    Ok(())
}

/// The workload's end, started: its stream and how it ended.
struct Peer {
    from: Option<Box<dyn Read + Send>>,
    to: Option<Sink>,
    done: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

/// Where a copy-in's stream goes: stdin frames to a supervisor, or the
/// helper's stdin.
enum Sink {
    Frames(UnixStream),
    Pipe(ChildStdin),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Frames(s) => {
                let n = buf.len().min(64 << 10);
                attach::write_frame_blocking(s, Kind::Stdin, &buf[..n])
                    .map_err(std::io::Error::other)?;
                Ok(n)
            }
            Sink::Pipe(p) => p.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Frames(s) => s.flush(),
            Sink::Pipe(p) => p.flush(),
        }
    }
}

impl Sink {
    /// The end of the stream.
    fn close(self) -> std::io::Result<()> {
        match self {
            Sink::Frames(mut s) => attach::write_frame_blocking(&mut s, Kind::StdinEof, &[])
                .map_err(std::io::Error::other),
            Sink::Pipe(p) => {
                drop(p);
                Ok(())
            }
        }
    }
}

/// Starts the workload's end of `spec` in workload `name`.
fn start(state: &State, name: &str, spec: &CopySpec) -> Result<Peer, CopyError> {
    let r = state.get(name)?;
    let status = r.status();
    if status == Status::Running {
        return via_supervisor(&r, spec);
    }
    if status.is_live() {
        return Err(CopyError::Input(format!(
            "{name} is {status}: copy once it runs or has ended"
        )));
    }
    match r.config.runtime {
        RuntimeKind::Microvm => Err(CopyError::Input(format!(
            "{name} is a stopped microVM: its writable layer lived in the VM's memory and ended \
             with it (keep data in a volume, `-v NAME:/path`, to read it after the workload)"
        ))),
        RuntimeKind::Container => stopped_container(&r, spec),
    }
}

fn via_supervisor(r: &Record, spec: &CopySpec) -> Result<Peer, CopyError> {
    let sock = Paths::ctl_socket(&r.config.id);
    let mut s = UnixStream::connect(&sock).map_err(io(format_args!(
        "reach {}'s supervisor at {}",
        r.config.name,
        sock.display()
    )))?;
    let req = serde_json::to_vec(&Request::Copy { spec: spec.clone() })
        .map_err(|e| CopyError::Input(e.to_string()))?;
    attach::write_frame_blocking(&mut s, Kind::Request, &req)
        .map_err(|e| CopyError::There(e.to_string()))?;
    let frames = s.try_clone().map_err(io("the supervisor's socket"))?;
    let (from, mut into) = if spec.direction == CopyDirection::Out {
        let (r, w) = std::io::pipe().map_err(io("a pipe"))?;
        (Some(Box::new(r) as Box<dyn Read + Send>), Some(w))
    } else {
        (None, None)
    };
    // One thread reads the supervisor: stream bytes into the pipe, the
    // reason on stderr, the exit report last.
    let reader = std::thread::spawn(move || -> Result<(), String> {
        let mut frames = frames;
        let mut stderr = Vec::new();
        loop {
            match attach::read_frame_blocking(&mut frames) {
                Ok(Some((Kind::Stdout, d))) => {
                    // Our end stopped reading (it failed): stop, and say why there.
                    if into.as_mut().is_some_and(|w| w.write_all(&d).is_err()) {
                        return Err(String::new());
                    }
                }
                Ok(Some((Kind::Stderr, d))) => {
                    if stderr.len() < 64 << 10 {
                        stderr.extend_from_slice(&d);
                    }
                }
                Ok(Some((Kind::Exit, p))) => {
                    let report: ExitReport =
                        attach::parse("exit", &p).map_err(|e| e.to_string())?;
                    return ended(report.code, report.error, &stderr);
                }
                Ok(Some((Kind::Reply, p))) => {
                    let reply: attach::Reply =
                        attach::parse("reply", &p).map_err(|e| e.to_string())?;
                    return Err(reply.error.unwrap_or_else(|| "refused".into()));
                }
                Ok(_) => return Err("the supervisor closed the connection mid-copy".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    Ok(Peer {
        from,
        to: (spec.direction == CopyDirection::In).then_some(Sink::Frames(s)),
        done: Box::new(move || {
            reader
                .join()
                .unwrap_or_else(|_| Err("the copy's reader panicked".into()))
        }),
    })
}

/// How the workload's end ended: fine, or why not (its stderr first).
fn ended(code: i32, error: Option<String>, stderr: &[u8]) -> Result<(), String> {
    if code == 0 {
        return Ok(());
    }
    let said = String::from_utf8_lossy(stderr).trim().to_string();
    Err(match (said.is_empty(), error) {
        (false, _) => said,
        (true, Some(e)) => e,
        (true, None) => format!("the copy inside the workload failed (exit {code})"),
    })
}

fn stopped_container(r: &Record, spec: &CopySpec) -> Result<Peer, CopyError> {
    let name = &r.config.name;
    let root = Paths::container_dir(&r.config.id).join("rootfs");
    let mounted = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        dev(p).is_some() && dev(p) != p.parent().and_then(dev)
    };
    if !mounted(&root) {
        return Err(CopyError::Input(if r.config.fencing.is_some() {
            format!("{name} is an ended cluster instance: its writable layer went with it")
        } else {
            format!("{name} has ended and its writable layer is gone (the host restarted since)")
        }));
    }
    let base = r.config.userns.as_ref().map(|u| u.base).ok_or_else(|| {
        CopyError::Input(format!(
            "{name} was made without a user namespace: not supported"
        ))
    })?;
    let under = |target: &str| {
        let t = target.trim_end_matches('/');
        spec.path == t || spec.path.starts_with(&format!("{t}/"))
    };
    if let Some(v) = r.config.volumes.iter().find(|v| under(&v.target)) {
        return Err(CopyError::Input(format!(
            "{} is on volume {:?}, which {name} no longer mounts (it has ended): copy through a \
             workload that mounts it",
            spec.path, v.volume
        )));
    }
    if let Some(t) = r.config.tmpfs.iter().find(|t| under(&t.target)) {
        return Err(CopyError::Input(format!(
            "{} is on a tmpfs ({}), which ended with {name}",
            spec.path, t.target
        )));
    }
    let mut cmd = helper_command(spec, Inside::Stopped { root: &root, base })
        .map_err(io("the copy helper"))?;
    cmd.stdin(if spec.direction == CopyDirection::In {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io("start the copy helper"))?;
    let from = child
        .stdout
        .take()
        .filter(|_| spec.direction == CopyDirection::Out)
        .map(|o| Box::new(o) as Box<dyn Read + Send>);
    let to = child.stdin.take().map(Sink::Pipe);
    let mut err = child.stderr.take();
    let said = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(64 << 10).read_to_end(&mut s);
        }
        s
    });
    Ok(Peer {
        from,
        to,
        done: Box::new(move || wait_helper(child, said)),
    })
}

fn wait_helper(mut child: Child, said: std::thread::JoinHandle<Vec<u8>>) -> Result<(), String> {
    let status = child
        .wait()
        .map_err(|e| format!("wait for the copy helper: {e}"))?;
    let said = said.join().unwrap_or_default();
    ended(status.code().unwrap_or(125), None, &said)
}

/// How both ends did. When both failed, `far_first` says whether the
/// workload's words explain ours (our stream broke because it stopped)
/// or ours come first (we stopped reading, so it got a broken pipe).
fn finish(
    peer_done: Box<dyn FnOnce() -> Result<(), String> + Send>,
    here: Result<Copied, CopyError>,
    far_first: fn(&CopyError) -> bool,
) -> Result<Copied, CopyError> {
    match (here, peer_done()) {
        (Ok(c), Ok(())) => Ok(c),
        (Err(e), Err(why)) if !why.is_empty() && far_first(&e) => Err(CopyError::There(why)),
        (Err(e), _) => Err(e),
        (Ok(_), Err(why)) if why.is_empty() => Err(CopyError::There(
            "the copy inside the workload failed".into(),
        )),
        (Ok(_), Err(why)) => Err(CopyError::There(why)),
    }
}

/// A copy out: a stream that broke or ended early is the workload's doing.
fn broken_stream(e: &CopyError) -> bool {
    matches!(
        e,
        CopyError::There(_)
            | CopyError::Io { .. }
            | CopyError::Unpack(bulkhead_images::unpack::UnpackError::Tar(_))
    )
}

/// The workload does not choose where its stream lands: the name and the
/// contents-only flag must be the ones asked for.
fn check_header(asked: &str, h: &CopyHeader) -> Result<(), CopyError> {
    if h.name != engine::top_name(asked) || h.contents_only != engine::contents_only(asked) {
        return Err(CopyError::Input(format!(
            "the workload sent {:?} (contents only: {}) for {asked:?}: refused",
            h.name, h.contents_only
        )));
    }
    Ok(())
}

fn copy_out(mut peer: Peer, asked: &str, dest: &str, archive: bool) -> Result<Copied, CopyError> {
    let from = peer
        .from
        .take()
        .ok_or_else(|| CopyError::There("no stream".into()))?;
    let mut from = BufReader::with_capacity(64 << 10, from);
    let here = (|| {
        let h = CopyHeader::read_from(&mut from).map_err(CopyError::There)?;
        check_header(asked, &h)?;
        if dest == "-" {
            let mut out = std::io::stdout().lock();
            let bytes =
                std::io::copy(&mut from, &mut out).map_err(io("write the stream to stdout"))?;
            out.flush().map_err(io("write the stream to stdout"))?;
            return Ok(Copied {
                bytes,
                notes: Vec::new(),
            });
        }
        let resolved = absolute(dest);
        let place = engine::placement(&h, dest, DestState::of(&resolved)?)?;
        let (dir, rename) = engine::target_of(&resolved, place)?;
        let top = h.name.as_bytes().to_vec();
        let landing = Landing {
            to: match rename {
                Rename::Keep => Some(top.clone()),
                Rename::To(n) => Some(n),
                Rename::Drop => None,
            },
            top,
            owner: (!archive).then(|| {
                (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                )
            }),
        };
        let limits = Limits {
            min_free: 64 << 20,
            ..Limits::default()
        };
        let mut u = Unpacker::for_copy(&dir, limits, landing)?;
        u.apply(&mut from)?;
        // Whatever follows the tar's end (padding) is read, so the far end finishes.
        std::io::copy(&mut from, &mut std::io::sink()).map_err(io("the copy stream"))?;
        Ok(Copied {
            bytes: u.report().bytes,
            notes: u
                .report()
                .skipped
                .iter()
                .map(|s| format!("{s}: not copied"))
                .collect(),
        })
    })();
    // On a failure here, closing the stream stops the far end.
    drop(from);
    finish(peer.done, here, broken_stream)
}

fn copy_in(mut peer: Peer, src: &str, follow_link: bool) -> Result<Copied, CopyError> {
    let mut to = peer
        .to
        .take()
        .ok_or_else(|| CopyError::There("no stream".into()))?;
    let mut notes = Vec::new();
    let here = if src == "-" {
        let bare = CopyHeader {
            name: String::new(),
            dir: true,
            contents_only: true,
        };
        to.write_all(&bare.to_line())
            .and_then(|()| std::io::copy(&mut std::io::stdin().lock(), &mut to))
            .map_err(io("send the stream from stdin"))
    } else {
        engine::send(
            Path::new("/"),
            &absolute(src).to_string_lossy(),
            follow_link,
            IdShift(0),
            std::io::BufWriter::with_capacity(64 << 10, &mut to),
            &mut |n| notes.push(n),
        )
        .map_err(CopyError::from)
    };
    let here = here
        .and_then(|bytes| to.close().map_err(io("end the stream")).map(|()| bytes))
        .map(|bytes| Copied { bytes, notes });
    // A copy in fails here mostly as a broken pipe: the workload's reason first.
    finish(peer.done, here, |_| true)
}

/// A host path made absolute without resolving it (a trailing `/` or `/.`
/// keeps its meaning).
fn absolute(p: &str) -> PathBuf {
    if p.starts_with('/') {
        return PathBuf::from(p);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    PathBuf::from(format!("{}/{p}", cwd.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_as_docker_reads_them() {
        let w = |name: &str, path: &str| Endpoint::Workload {
            name: name.into(),
            path: path.into(),
        };
        assert_eq!(Endpoint::parse("web:/etc/hosts"), w("web", "/etc/hosts"));
        assert_eq!(Endpoint::parse("web:etc"), w("web", "/etc"));
        assert_eq!(Endpoint::parse("web:"), w("web", "/"));
        assert_eq!(Endpoint::parse("web:/a:b"), w("web", "/a:b"));
        for host in ["/tmp/a:b", "./a:b", "-", "plain", "../x:y", ":x", "a/b:c"] {
            assert_eq!(Endpoint::parse(host), Endpoint::Host(host.into()), "{host}");
        }
    }

    #[test]
    fn a_workload_cannot_choose_where_its_stream_lands() {
        let h = |name: &str, contents_only: bool| CopyHeader {
            name: name.into(),
            dir: true,
            contents_only,
        };
        assert!(check_header("/srv/data", &h("data", false)).is_ok());
        assert!(check_header("/srv/data/.", &h("data", true)).is_ok());
        for (asked, sent) in [
            ("/srv/data", h("authorized_keys", false)),
            ("/srv/data", h("data", true)),
            ("/srv/data/.", h("data", false)),
            ("/", h("etc", true)),
        ] {
            assert!(check_header(asked, &sent).is_err(), "{asked} {sent:?}");
        }
    }

    #[test]
    fn the_far_ends_words_come_first() {
        assert_eq!(ended(0, None, b"noise"), Ok(()));
        assert_eq!(
            ended(1, Some("x".into()), b" /a: no such file \n"),
            Err("/a: no such file".into())
        );
        assert_eq!(ended(1, Some("x".into()), b""), Err("x".into()));
        assert!(ended(3, None, b"").is_err_and(|e| e.contains("exit 3")));
    }
}
