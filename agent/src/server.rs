//! The agent's one loop: host frames in, process output out, children
//! reaped, all on one thread with poll(2). Every frame from the host is
//! checked; a malformed one ends the connection (and with it the VM),
//! never the loop's invariants.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use bulkhead_agent_proto::flow::{RecvWindow, SendWindow};
use bulkhead_agent_proto::frame::DATA_CHUNK;
use bulkhead_agent_proto::{
    encode, AgentError, BootStage, ErrorKind, ExitStatus, Fd, Frame, FrameDecoder, FromAgent,
    StartRequest, StreamId, ToAgent,
};

use crate::pid1::BootMarks;
use crate::process::{self, Namespaces};
use crate::rootfs;
use bulkhead_agent::netlink;

/// How long a finished process's output may keep flowing before its exit
/// is reported anyway (a background child may hold the pipe open).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// SIGTERM to SIGKILL when stopping everything.
const KILL_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Output {
    fd: OwnedFd,
    window: SendWindow,
}

#[derive(Debug)]
struct Input {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    window: RecvWindow,
    eof: bool,
}

#[derive(Debug)]
struct Proc {
    pid: Pid,
    input: Option<Input>,
    out: [Option<Output>; 2],
    tty: Option<OwnedFd>,
    status: Option<ExitStatus>,
    drain_deadline: Option<Instant>,
    reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Running,
    /// The main process's exit is reported; waiting for the host's ack.
    AwaitAck(Instant),
    /// Everything got SIGTERM; SIGKILL at the deadline.
    Terminating(Instant),
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Conn,
    Signals,
    Out(u32, usize),
    In(u32),
}

#[derive(Debug)]
pub struct Agent<'a> {
    conn: Option<File>,
    decoder: FrameDecoder,
    signals: SignalFd,
    own_pid_ns: File,
    marks: &'a BootMarks,
    procs: HashMap<u32, Proc>,
    main: Option<u32>,
    started: bool,
    /// Where the volumes are mounted: unmounted before power-off, so the
    /// next VM finds them clean (no journal to replay).
    volumes: Vec<String>,
    ack_timeout: Duration,
    phase: Phase,
}

fn invalid(msg: impl Into<String>) -> AgentError {
    AgentError::new(ErrorKind::InvalidRequest, msg)
}

impl<'a> Agent<'a> {
    pub fn new(conn: OwnedFd, signals: SignalFd, own_pid_ns: File, marks: &'a BootMarks) -> Self {
        Self {
            conn: Some(File::from(conn)),
            decoder: FrameDecoder::new(),
            signals,
            own_pid_ns,
            marks,
            procs: HashMap::new(),
            main: None,
            started: false,
            volumes: Vec::new(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            phase: Phase::Running,
        }
    }

    fn send(&mut self, frame: &Frame) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let ok = frame.to_bytes().is_ok_and(|b| conn.write_all(&b).is_ok());
        if !ok {
            eprintln!("bulkhead-agent: lost the host connection while writing");
            self.conn = None;
            self.terminate();
        }
    }

    fn send_msg(&mut self, msg: &FromAgent) {
        self.send(&Frame::Control(encode(msg)));
    }

    /// Drops the connection after telling the host why.
    fn fatal(&mut self, why: String) {
        eprintln!("bulkhead-agent: {why}");
        self.send_msg(&FromAgent::Fatal { message: why });
        self.conn = None;
        self.terminate();
    }

    /// Serves until everything is done, then powers off.
    pub fn run(mut self, hello: FromAgent) -> ! {
        self.send_msg(&hello);
        loop {
            self.report_exits();
            if self.advance_phase() {
                break;
            }
            self.poll_once();
        }
        if let Some(mut c) = self.conn.take() {
            let _ = c.flush();
        }
        // Every process is gone (reaped): nothing holds the volumes.
        rootfs::unmount_volumes(&self.volumes);
        crate::pid1::power_off()
    }

    /// Moves the shutdown sequence along; true when it is time to power off.
    fn advance_phase(&mut self) -> bool {
        let now = Instant::now();
        match self.phase {
            Phase::Running => false,
            Phase::AwaitAck(deadline) => {
                if now >= deadline {
                    eprintln!(
                        "bulkhead-agent: the host did not acknowledge the exit report in {:?}",
                        self.ack_timeout
                    );
                    self.terminate();
                }
                false
            }
            Phase::Terminating(deadline) => {
                let children_left = self.reap();
                let outputs_open = self.procs.values().any(|p| !p.reported);
                if now >= deadline && children_left {
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    // Reap what SIGKILL leaves; the kernel finishes them promptly.
                    while let Ok(s) = waitpid(None::<Pid>, None) {
                        self.on_wait_status(s);
                    }
                    self.report_exits_now();
                    return true;
                }
                let done = !children_left && (!outputs_open || now >= deadline);
                if done {
                    self.report_exits_now();
                }
                done
            }
        }
    }

    /// Stops everything: SIGTERM now, SIGKILL after [`KILL_GRACE`].
    fn terminate(&mut self) {
        if !matches!(self.phase, Phase::Terminating(_)) {
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            self.phase = Phase::Terminating(Instant::now() + KILL_GRACE);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Running => None,
            Phase::AwaitAck(d) | Phase::Terminating(d) => Some(d),
        };
        self.procs
            .values()
            .filter(|p| !p.reported)
            .filter_map(|p| p.drain_deadline)
            .chain(phase)
            .min()
    }

    fn poll_once(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        let mut add = |fd: i32, events: i16, t: Token| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            tokens.push(t);
        };
        if let Some(c) = &self.conn {
            add(c.as_raw_fd(), libc::POLLIN, Token::Conn);
        }
        add(self.signals.as_raw_fd(), libc::POLLIN, Token::Signals);
        for (&id, p) in &self.procs {
            for (i, o) in p.out.iter().enumerate() {
                if let Some(o) = o {
                    if o.window.available() > 0 {
                        add(o.fd.as_raw_fd(), libc::POLLIN, Token::Out(id, i));
                    }
                }
            }
            if let Some(Input {
                fd: Some(fd),
                pending,
                ..
            }) = &p.input
            {
                if !pending.is_empty() {
                    add(fd.as_raw_fd(), libc::POLLOUT, Token::In(id));
                }
            }
        }
        let timeout = self.deadline().map_or(-1, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32
                + 1
        });
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            return; // timeout or EINTR: deadlines are checked by the caller
        }
        for (pfd, token) in fds.iter().zip(tokens) {
            if pfd.revents == 0 {
                continue;
            }
            match token {
                Token::Conn => self.on_conn_readable(),
                Token::Signals => self.on_signals(),
                Token::Out(id, i) => self.on_output(id, i),
                Token::In(id) => self.on_input_writable(id),
            }
        }
    }

    fn on_conn_readable(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => {
                eprintln!("bulkhead-agent: the host closed the connection; stopping");
                self.conn = None;
                self.terminate();
            }
            Ok(n) => {
                self.decoder.push(&buf[..n]);
                loop {
                    match self.decoder.next_frame() {
                        Ok(Some(f)) => {
                            if let Err(why) = self.on_frame(f) {
                                return self.fatal(why);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return self.fatal(format!("bad frame from the host: {e}")),
                    }
                    if self.conn.is_none() {
                        break;
                    }
                }
            }
        }
    }

    /// Handles one frame; Err is a protocol violation (the connection ends).
    fn on_frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Control(bytes) => {
                let msg = ToAgent::decode(&bytes)
                    .map_err(|e| format!("bad message from the host: {e}"))?;
                self.on_message(msg);
                Ok(())
            }
            Frame::Data { stream, bytes } => {
                if stream.fd() != Fd::Stdin {
                    return Err(format!("the host sent data on output stream {stream:?}"));
                }
                let p = self
                    .procs
                    .get_mut(&stream.process())
                    .ok_or_else(|| format!("stdin for unknown process {}", stream.process()))?;
                let Some(input) = p.input.as_mut() else {
                    // Started without stdin, or already ended: drop it, but a
                    // process that never had stdin is a host bug.
                    return if p.reported {
                        Ok(())
                    } else {
                        Err(format!(
                            "process {} was started without stdin",
                            stream.process()
                        ))
                    };
                };
                if input.eof {
                    return Err(format!(
                        "stdin data after EOF for process {}",
                        stream.process()
                    ));
                }
                input
                    .window
                    .on_data(bytes.len())
                    .map_err(|e| e.to_string())?;
                if bytes.is_empty() {
                    input.eof = true;
                } else if input.fd.is_some() {
                    input.pending.extend_from_slice(&bytes);
                } else if let Some(g) = input.window.on_consumed(bytes.len()) {
                    // The process stopped reading stdin: drop the bytes, keep the host flowing.
                    self.send(&Frame::Credit { stream, bytes: g });
                }
                self.flush_input(stream.process());
                Ok(())
            }
            Frame::Credit { stream, bytes } => {
                let idx = match stream.fd() {
                    Fd::Stdout => 0,
                    Fd::Stderr => 1,
                    Fd::Stdin => return Err("the host granted credit on a stdin stream".into()),
                };
                let p = self
                    .procs
                    .get_mut(&stream.process())
                    .ok_or_else(|| format!("credit for unknown process {}", stream.process()))?;
                if let Some(o) = p.out[idx].as_mut() {
                    o.window.grant(bytes).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }

    fn reply(&mut self, id: u64, result: Result<(), AgentError>) {
        if let Err(e) = &result {
            eprintln!("bulkhead-agent: request {id}: {e}");
        }
        self.send_msg(&FromAgent::Reply { id, result });
    }

    fn on_message(&mut self, msg: ToAgent) {
        match msg {
            ToAgent::Start { id, process, spec } => {
                let r = self.start(process, *spec);
                self.reply(id, r);
            }
            ToAgent::Exec { id, process, spec } => {
                let main_pid = self.check_new_id(process).and_then(|()| {
                    match self.main.and_then(|m| self.procs.get(&m)) {
                        Some(main) if main.status.is_none() => Ok(main.pid),
                        _ => Err(invalid("the container is not running")),
                    }
                });
                let r = main_pid
                    .and_then(|pid| process::spawn(&spec, Namespaces::Join(pid), &self.own_pid_ns))
                    .map(|s| self.track(process, s, spec.stdin));
                self.reply(id, r);
            }
            ToAgent::Copy { id, process, spec } => {
                let main_pid = self.check_new_id(process).and_then(|()| {
                    match self.main.and_then(|m| self.procs.get(&m)) {
                        Some(main) if main.status.is_none() => Ok(main.pid),
                        _ => Err(invalid("the container is not running")),
                    }
                });
                let stdin = spec.direction == bulkhead_agent_proto::CopyDirection::In;
                let r = main_pid
                    .and_then(|pid| process::spawn_copy(&spec, pid))
                    .map(|s| self.track(process, s, stdin));
                self.reply(id, r);
            }
            ToAgent::Signal {
                id,
                process,
                signal,
            } => {
                let r = match (self.procs.get(&process), Signal::try_from(signal)) {
                    (None, _) => Err(invalid(format!("no process {process}"))),
                    (_, Err(_)) => Err(invalid(format!("no signal {signal}"))),
                    (Some(p), _) if p.status.is_some() => {
                        Err(invalid(format!("process {process} has exited")))
                    }
                    (Some(p), Ok(sig)) => kill(p.pid, sig)
                        .map_err(|e| AgentError::new(ErrorKind::Failed, format!("kill: {e}"))),
                };
                self.reply(id, r);
            }
            ToAgent::Resize {
                id,
                process,
                rows,
                cols,
            } => {
                let r = match self.procs.get(&process).and_then(|p| p.tty.as_ref()) {
                    Some(tty) => process::resize(tty, rows, cols),
                    None => Err(invalid(format!("process {process} has no terminal"))),
                };
                self.reply(id, r);
            }
            ToAgent::AckExit { process } => {
                if Some(process) == self.main && matches!(self.phase, Phase::AwaitAck(_)) {
                    self.terminate();
                }
            }
            ToAgent::Shutdown { id } => {
                self.reply(id, Ok(()));
                self.terminate();
            }
        }
    }

    fn start(&mut self, process: u32, spec: StartRequest) -> Result<(), AgentError> {
        if self.started {
            return Err(invalid("the container was already started"));
        }
        self.check_new_id(process)?;
        spec.process.validate().map_err(invalid)?;
        spec.root.validate().map_err(invalid)?;
        let spec_err = |e: rootfs::RootError| invalid(bulkhead_agent_proto::report(&e));
        if let Some(h) = &spec.hostname {
            rootfs::check_etc_token("hostname", h).map_err(spec_err)?;
        }
        for e in &spec.hosts {
            rootfs::check_etc_token("hosts address", &e.address).map_err(spec_err)?;
            e.names
                .iter()
                .try_for_each(|n| rootfs::check_etc_token("hosts name", n))
                .map_err(spec_err)?;
        }
        for n in spec.dns.nameservers.iter().chain(&spec.dns.search) {
            rootfs::check_etc_token("dns entry", n).map_err(spec_err)?;
        }
        self.started = true;
        let failed = |e: &dyn std::error::Error| {
            AgentError::new(ErrorKind::Failed, bulkhead_agent_proto::report(e))
        };
        rootfs::enter(&spec.root).map_err(|e| failed(&e))?;
        rootfs::mount_volumes(&spec.root.volumes).map_err(|e| failed(&e))?;
        self.volumes = spec.root.volumes.iter().map(|v| v.target.clone()).collect();
        rootfs::mount_tmpfs(&spec.root.tmpfs).map_err(|e| failed(&e))?;
        if let Some(h) = &spec.hostname {
            nix::unistd::sethostname(h)
                .map_err(|e| AgentError::new(ErrorKind::Failed, format!("sethostname: {e}")))?;
            rootfs::write_etc("/etc/hostname", &format!("{h}\n")).map_err(|e| failed(&e))?;
        }
        let address = spec
            .network
            .as_ref()
            .and_then(|n| n.address.split_once('/'))
            .map(|(a, _)| a);
        rootfs::write_etc(
            "/etc/hosts",
            &rootfs::hosts_file(spec.hostname.as_deref(), address, &spec.hosts),
        )
        .map_err(|e| failed(&e))?;
        if !spec.dns.nameservers.is_empty() {
            rootfs::write_etc("/etc/resolv.conf", &rootfs::resolv_conf(&spec.dns))
                .map_err(|e| failed(&e))?;
        }
        if spec.root.read_only {
            rootfs::seal_root().map_err(|e| failed(&e))?;
        }
        netlink::configure(spec.network.as_ref()).map_err(|e| failed(&e))?;
        if spec.exit_ack_timeout_ms > 0 {
            self.ack_timeout = Duration::from_millis(u64::from(spec.exit_ack_timeout_ms));
        }
        let spawned = process::spawn(&spec.process, Namespaces::New, &self.own_pid_ns)?;
        self.track(process, spawned, spec.process.stdin);
        self.main = Some(process);
        self.marks.mark(BootStage::WorkloadStarted);
        Ok(())
    }

    /// A host-chosen id for a new process: in range and not taken.
    fn check_new_id(&self, process: u32) -> Result<(), AgentError> {
        if StreamId::new(process, Fd::Stdin).is_none() {
            return Err(invalid(format!("bad process id {process}")));
        }
        if self.procs.contains_key(&process) {
            return Err(invalid(format!("process id {process} is taken")));
        }
        Ok(())
    }

    fn track(&mut self, id: u32, s: process::Spawned, stdin: bool) {
        let out = |fd: OwnedFd| Output {
            fd,
            window: SendWindow::default(),
        };
        let tty_mode = s.tty.is_some();
        let input = stdin.then(|| Input {
            fd: s.stdin,
            pending: Vec::new(),
            window: RecvWindow::default(),
            eof: false,
        });
        self.procs.insert(
            id,
            Proc {
                pid: s.pid,
                input,
                out: [Some(out(s.stdout)), s.stderr.map(out)],
                tty: s.tty,
                status: None,
                drain_deadline: None,
                reported: false,
            },
        );
        if tty_mode {
            // The terminal carries everything on stdout: stderr ends now.
            if let Some(stream) = StreamId::new(id, Fd::Stderr) {
                self.send(&Frame::Data {
                    stream,
                    bytes: Vec::new(),
                });
            }
        }
    }

    fn on_output(&mut self, id: u32, idx: usize) {
        let Some(o) = self.procs.get_mut(&id).and_then(|p| p.out[idx].as_mut()) else {
            return;
        };
        let want = o.window.available().min(DATA_CHUNK);
        let mut buf = vec![0u8; want];
        // SAFETY: buf is writable for `want` bytes; the fd is ours.
        let n = unsafe { libc::read(o.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
        let fd = if idx == 0 { Fd::Stdout } else { Fd::Stderr };
        let Some(stream) = StreamId::new(id, fd) else {
            return;
        };
        if let Ok(n @ 1..) = usize::try_from(n) {
            buf.truncate(n);
            o.window.consume(buf.len());
            self.send(&Frame::Data { stream, bytes: buf });
            return;
        }
        let e = std::io::Error::last_os_error();
        if n < 0 && matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return;
        }
        // 0 is EOF; EIO is how a pty says its last slave closed.
        if let Some(p) = self.procs.get_mut(&id) {
            p.out[idx] = None;
        }
        self.send(&Frame::Data {
            stream,
            bytes: Vec::new(),
        });
    }

    fn on_input_writable(&mut self, id: u32) {
        self.flush_input(id);
    }

    fn flush_input(&mut self, id: u32) {
        let Some(input) = self.procs.get_mut(&id).and_then(|p| p.input.as_mut()) else {
            return;
        };
        let mut written = 0;
        if let Some(fd) = &input.fd {
            while written < input.pending.len() {
                let rest = &input.pending[written..];
                // SAFETY: rest is a valid buffer; the fd is ours.
                let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
                if let Ok(n @ 1..) = usize::try_from(n) {
                    written += n;
                    continue;
                }
                let e = std::io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    // EPIPE: the process closed stdin. Drop what is left.
                    input.fd = None;
                    written = input.pending.len();
                }
                break;
            }
        } else {
            written = input.pending.len();
        }
        input.pending.drain(..written);
        let grant = input.window.on_consumed(written);
        if input.eof && input.pending.is_empty() {
            input.fd = None; // closing our end is the process's EOF
        }
        if let (Some(bytes), Some(stream)) = (grant, StreamId::new(id, Fd::Stdin)) {
            self.send(&Frame::Credit { stream, bytes });
        }
    }

    fn on_signals(&mut self) {
        let mut reap = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match i32::try_from(info.ssi_signo).unwrap_or(0) {
                libc::SIGCHLD => reap = true,
                libc::SIGTERM | libc::SIGINT => {
                    eprintln!("bulkhead-agent: signal {}: stopping", info.ssi_signo);
                    self.terminate();
                }
                _ => {}
            }
        }
        if reap {
            self.reap();
        }
    }

    /// Reaps every zombie, ours or orphans reparented to PID 1; true while
    /// children remain.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(s) => self.on_wait_status(s),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return false, // ECHILD: none left
            }
        }
    }

    fn on_wait_status(&mut self, s: WaitStatus) {
        let (pid, status) = match s {
            WaitStatus::Exited(pid, code) => (pid, ExitStatus::Code(code)),
            WaitStatus::Signaled(pid, sig, _) => (pid, ExitStatus::Signal(sig as i32)),
            _ => return,
        };
        if let Some(p) = self
            .procs
            .values_mut()
            .find(|p| p.pid == pid && p.status.is_none())
        {
            p.status = Some(status);
            p.drain_deadline = Some(Instant::now() + DRAIN_GRACE);
        }
    }

    /// Sends each exit report once its output is drained (or the drain
    /// grace is over): data, then EOFs, then the report, in that order.
    fn report_exits(&mut self) {
        self.report_exits_at(Instant::now());
    }

    /// Reports every exit now, drained or not (the end of the line).
    fn report_exits_now(&mut self) {
        self.report_exits_at(Instant::now() + DRAIN_GRACE + DRAIN_GRACE);
    }

    fn report_exits_at(&mut self, now: Instant) {
        let ready: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.reported && p.status.is_some())
            .filter(|(_, p)| {
                p.out.iter().all(Option::is_none) || p.drain_deadline.is_some_and(|d| now >= d)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let Some(p) = self.procs.get_mut(&id) else {
                continue;
            };
            let open: Vec<usize> = (0..2).filter(|&i| p.out[i].take().is_some()).collect();
            p.input = None;
            p.tty = None;
            p.reported = true;
            let status = p.status.unwrap_or(ExitStatus::Code(-1));
            for i in open {
                if let Some(stream) =
                    StreamId::new(id, if i == 0 { Fd::Stdout } else { Fd::Stderr })
                {
                    self.send(&Frame::Data {
                        stream,
                        bytes: Vec::new(),
                    });
                }
            }
            self.send_msg(&FromAgent::Exited {
                process: id,
                status,
            });
            if Some(id) == self.main && self.phase == Phase::Running {
                self.phase = Phase::AwaitAck(Instant::now() + self.ack_timeout);
            }
        }
    }
}
