//! The per-workload supervisor (`bulkhead __supervise`), like conmon: it
//! owns the VMM or OCI runtime process and the agent connection, writes the
//! workload's output to `log` (rotated), serves the control socket (attach,
//! exec, signal, stop), records how the workload ended in `exit.json`, and
//! outlives the CLI that started it: it forks away, starts a new session,
//! and closes every fd it inherited but the one it reports readiness on.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_images::store::Store;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::lifecycle as network;

use super::attach::{self, ExitReport, Kind, Mark, Reply, Request};
use super::container::Container;
use super::microvm::Microvm;
use super::workload::{failed, Control, Proc, RotatingLog};
use crate::state::paths::Paths;
use crate::state::procs::ProcId;
use crate::state::record::{now_ms, read_json, write_json, Exit, Running, WorkloadConfig};
use crate::state::State;

/// Rotate `log` to `log.1` past this size.
pub const LOG_ROTATE_BYTES: u64 = 8 << 20;

/// Daemonizes and supervises workload `id`; returns only in the short-lived
/// first process (exit 0 once the daemon is forked off) or on early errors.
pub fn main(data: PathBuf, id: String, notify_fd: Option<i32>) -> std::process::ExitCode {
    // SAFETY: called first thing in a single-threaded process; the child
    // only continues this same code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return std::process::ExitCode::SUCCESS,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("bulkhead supervisor: fork: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let _ = nix::unistd::setsid();
    close_inherited_fds(notify_fd);
    if let Some(fd) = notify_fd {
        // Not for the runtimes we start: the caller waits for this pipe's end.
        // SAFETY: F_SETFD on an fd number; no memory involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let paths = Paths::new(&data);
    let dir = paths.workload_dir(&id);
    // stdio: nothing from the caller; our own messages go to supervisor.log.
    if let (Ok(null), Ok(log)) = (
        std::fs::File::open("/dev/null"),
        bulkhead_images::private::append(&dir.join("supervisor.log")),
    ) {
        use std::os::fd::AsFd;
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(log.as_fd());
        let _ = nix::unistd::dup2_stderr(log.as_fd());
    }
    // SAFETY: the fd number came from our parent for this purpose; nothing else here owns it.
    let notify = notify_fd.map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulkhead supervisor: tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(supervise(paths, id, notify));
    rt.shutdown_timeout(Duration::from_secs(1));
    std::process::ExitCode::from(code)
}

fn close_inherited_fds(keep: Option<i32>) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && Some(fd) != keep {
            // SAFETY: closing fds we inherited and do not use; the directory iterator's own fd is already closed.
            unsafe { libc::close(fd) };
        }
    }
}

fn tell(notify: &mut Option<std::fs::File>, msg: &str) {
    if let Some(mut f) = notify.take() {
        let _ = f.write_all(msg.as_bytes());
    }
}

enum Backend {
    Container(Container),
    Microvm(Box<Microvm>),
}

impl Backend {
    /// The last resort of `stop`: not through the guest or the workload.
    async fn force_kill(&self) {
        match self {
            Backend::Container(c) => c.kill_all().await,
            Backend::Microvm(m) => m.kill_vm().await,
        }
    }

    async fn exec(&self, p: &bulkhead_agent_proto::ProcessSpec) -> Result<Proc, ExitReport> {
        match self {
            Backend::Container(c) => c.exec(p),
            Backend::Microvm(m) => m.exec(p).await,
        }
    }

    async fn copy(&self, spec: &bulkhead_agent_proto::CopySpec) -> Result<Proc, ExitReport> {
        match self {
            Backend::Container(c) => c.copy(spec),
            Backend::Microvm(m) => m.copy(spec).await,
        }
    }
}

type OutputSender = mpsc::Sender<(Kind, Vec<u8>)>;

/// What the connection handlers share.
struct Shared {
    clients: Mutex<Vec<OutputSender>>,
    main_stdin: mpsc::Sender<Option<Vec<u8>>>,
    main_control: mpsc::Sender<Control>,
    exit: watch::Receiver<Option<ExitReport>>,
    backend: Arc<Backend>,
    stop_signal: i32,
}

async fn supervise(paths: Paths, id: String, mut notify: Option<std::fs::File>) -> u8 {
    let mut marks = vec![Mark::now("supervisor-up")];
    let dir = paths.workload_dir(&id);
    let cfg: WorkloadConfig = match read_json(&dir.join("config.json")) {
        Ok(Some(c)) => c,
        other => {
            tell(
                &mut notify,
                &format!("err cannot read the workload config: {other:?}\n"),
            );
            return 1;
        }
    };
    let me = ProcId::current();
    let mut running = Running {
        supervisor: me,
        runtime: None,
        started_ms: None,
    };
    let _ = write_json(&dir.join("running.json"), &running);
    let run_dir = Paths::run_dir(&id);
    let listener = match bind(&run_dir) {
        Ok(l) => l,
        Err(e) => {
            let report = failed(format!("control socket in {}: {e}", run_dir.display()));
            finish(&paths, &cfg, &report, None, &mut notify).await;
            return 1;
        }
    };
    // Attached: wait for the client first, so it sees every byte.
    let mut first = None;
    if cfg.attach {
        tell(&mut notify, "ok\n");
        match tokio::time::timeout(Duration::from_secs(60), listener.accept()).await {
            Ok(Ok((s, _))) => {
                marks.push(Mark::now("client-attached"));
                first = Some(s)
            }
            _ => {
                finish(
                    &paths,
                    &cfg,
                    &failed("no client attached within 60 s"),
                    None,
                    &mut notify,
                )
                .await;
                return 1;
            }
        }
    }
    let state = State::new(paths.clone());
    let attached = match network::attach(&state, &cfg) {
        Ok(a) => a,
        Err(e) => {
            return fail_early(
                &paths,
                &cfg,
                first,
                failed(format!("workload network: {e}")),
                &mut notify,
            )
            .await
        }
    };
    marks.push(Mark::now("network-attached"));
    let backend = match cfg.runtime {
        crate::state::record::RuntimeKind::Container => {
            let store = match Store::open(paths.data()) {
                Ok(s) => s,
                Err(e) => {
                    let report = failed(bulkhead_agent_proto::report(&e));
                    return fail_early(&paths, &cfg, first, report, &mut notify).await;
                }
            };
            match Container::prepare(
                &cfg,
                &paths,
                &store,
                attached.netns.as_ref(),
                attached.userns.as_ref(),
            ) {
                Ok(c) => {
                    // The container's confinement ready: its bundle (config
                    // with seccomp, user namespace, cgroup) and root mounted.
                    marks.push(Mark::now("bundle-ready"));
                    Backend::Container(c)
                }
                Err(e) => {
                    let report = failed(bulkhead_agent_proto::report(&e));
                    return fail_early(&paths, &cfg, first, report, &mut notify).await;
                }
            }
        }
        crate::state::record::RuntimeKind::Microvm => {
            let disks = super::volumes::disks_of(&cfg, &paths);
            match Microvm::boot(&cfg, &dir, attached.tap.as_ref(), &disks, &mut marks).await {
                Ok(m) => Backend::Microvm(Box::new(m)),
                Err(e) => {
                    let report = failed(bulkhead_agent_proto::report(&e));
                    return fail_early(&paths, &cfg, first, report, &mut notify).await;
                }
            }
        }
    };
    let started = match &backend {
        Backend::Container(c) => {
            marks.push(Mark::now("runtime-invoked"));
            c.start_main(&cfg.process)
        }
        Backend::Microvm(m) => m.start_main(&cfg).await.map(|p| (p, m.pid())),
    };
    let (main_proc, runtime_pid) = match started {
        Ok(x) => x,
        Err(report) => {
            cleanup(&backend).await;
            return fail_early(&paths, &cfg, first, report, &mut notify).await;
        }
    };
    // A fenced container is stopped by its deadline even if this
    // supervisor is killed (a microVM's jailer does the same).
    if let (Backend::Container(_), Some(f)) = (&backend, &cfg.fencing) {
        if let Err(e) = super::fence_watch::spawn(&cfg.id, f) {
            cleanup(&backend).await;
            let report = failed(format!("start the fence watcher: {e}"));
            return fail_early(&paths, &cfg, first, report, &mut notify).await;
        }
    }
    running.runtime = runtime_pid;
    running.started_ms = Some(now_ms());
    let _ = write_json(&dir.join("running.json"), &running);
    tell(&mut notify, "ok\n");

    let Proc {
        mut output,
        stdin,
        control,
        exit,
    } = main_proc;
    let (exit_tx, exit_rx) = watch::channel(None);
    let backend = Arc::new(backend);
    let shared = Arc::new(Shared {
        clients: Mutex::new(Vec::new()),
        main_stdin: stdin,
        main_control: control,
        exit: exit_rx,
        backend: Arc::clone(&backend),
        stop_signal: cfg.stop_signal,
    });
    let health = cfg.health.clone().map(|spec| {
        let b = Arc::clone(&backend);
        let exec: super::health::Exec = Box::new(move |p| {
            let b = Arc::clone(&b);
            Box::pin(async move { b.exec(&p).await })
        });
        tokio::spawn(super::health::run(
            spec,
            cfg.process.clone(),
            cfg.network.as_ref().map(|n| n.ip),
            exec,
            dir.join("health.json"),
        ))
    });
    let mut handlers = Vec::new();
    // The attached client registers for output in its own task: output is
    // held until it has (or gave up), so a quick `echo` is not lost to nobody.
    let (registered_tx, registered_rx) = oneshot::channel();
    let mut first_ready = first.is_none();
    let mut first_registered = Box::pin(async move {
        let _ = tokio::time::timeout(Duration::from_secs(60), registered_rx).await;
    });
    if let Some(s) = first {
        handlers.push(tokio::spawn(serve(
            s,
            Arc::clone(&shared),
            Some(registered_tx),
        )));
    }
    let mut log = RotatingLog::new(dir.join("log"), LOG_ROTATE_BYTES);
    let mut exit = Box::pin(exit);
    let mut report = None;
    let mut output_open = true;
    let fencing = cfg.fencing.clone();
    let mut fenced = fencing.is_none();
    let mut lease_over = Box::pin(async move {
        match &fencing {
            Some(f) => {
                crate::state::fencing::passed(f.deadline_file.clone()).await;
                Duration::from_millis(f.kill_after_ms)
            }
            None => std::future::pending().await,
        }
    });
    while output_open || report.is_none() {
        tokio::select! {
            kill_after = &mut lease_over, if !fenced && report.is_none() => {
                // The node daemon did not renew the lease in time: the server
                // may start a replacement once the deadline and stop time are over.
                fenced = true;
                eprintln!("bulkhead supervisor: the lease deadline passed: stopping the workload");
                tokio::spawn(stop(Arc::clone(&shared), kill_after));
            }
            _ = &mut first_registered, if !first_ready => first_ready = true,
            chunk = output.recv(), if output_open && first_ready => match chunk {
                Some((kind, data)) => {
                    log.write(&data);
                    let clients: Vec<_> = {
                        let mut all = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
                        all.retain(|c| !c.is_closed());
                        all.clone()
                    };
                    for c in clients {
                        let _ = c.send((kind, data.clone())).await;
                    }
                }
                None => output_open = false,
            },
            r = &mut exit, if report.is_none() => {
                report = Some(r.unwrap_or_else(|_| failed("the workload's process was lost")));
            }
            conn = listener.accept() => {
                if let Ok((s, _)) = conn {
                    handlers.retain(|h| !h.is_finished()); // a long-lived workload sees many requests
                    handlers.push(tokio::spawn(serve(s, Arc::clone(&shared), None)));
                }
            }
        }
    }
    let mut report = report.unwrap_or_else(|| failed("no exit status"));
    marks.push(Mark::now("workload-exited"));
    if let Some(h) = health {
        h.abort();
    }
    drop(shared);
    if let (Backend::Microvm(m), 125) = (&*backend, report.code) {
        report = m
            .lost(
                report
                    .error
                    .as_deref()
                    .unwrap_or("the VM ended without the agent's exit report"),
            )
            .await;
    }
    cleanup(&backend).await;
    drop(attached);
    drop(listener);
    // The VMM or OCI runtime gone (for a microVM: the VM torn down).
    marks.push(Mark::now("runtime-cleaned"));
    report.started_ms = running.started_ms;
    if let Backend::Microvm(_) = &*backend {
        let (vmm_marks, exits) = super::microvm::vmm_report(&dir);
        marks.extend(vmm_marks);
        report.vm_exits = exits;
    }
    report.timeline = marks;
    finish(&paths, &cfg, &report, Some(&exit_tx), &mut notify).await;
    // Let every attached client get its exit frame.
    for h in handlers {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    0
}

async fn fail_early(
    paths: &Paths,
    cfg: &WorkloadConfig,
    first: Option<UnixStream>,
    report: ExitReport,
    notify: &mut Option<std::fs::File>,
) -> u8 {
    finish(paths, cfg, &report, None, notify).await;
    if let Some(mut s) = first {
        // The attached client asked for something; it gets the failure.
        let _ = attach::read_frame(&mut s).await;
        let _ = attach::write_json(&mut s, Kind::Exit, &report).await;
    }
    1
}

async fn cleanup(b: &Backend) {
    match b {
        Backend::Container(c) => c.cleanup().await,
        Backend::Microvm(m) => m.finish().await,
    }
}

/// Records the end (or removes every trace for --rm), then tells waiters.
async fn finish(
    paths: &Paths,
    cfg: &WorkloadConfig,
    report: &ExitReport,
    exit_tx: Option<&watch::Sender<Option<ExitReport>>>,
    notify: &mut Option<std::fs::File>,
) {
    let dir = paths.workload_dir(&cfg.id);
    let state = State::new(paths.clone());
    // One open of the store for the whole teardown (no `.await` below
    // while it is held), taken as everywhere after the network lock.
    let held = network::lock(&state).ok().map(|l| (l, state.hold().ok()));
    // The address, ports, interfaces and rules go before anything else.
    if let Err(e) = network::detach(&state, &cfg.id) {
        eprintln!("bulkhead supervisor: network teardown: {e}");
    }
    // The jailer removes its jail when the VMM ends; this is for a jailer
    // that was killed (or never got that far).
    if let Err(e) = super::jail::remove(&cfg.id) {
        eprintln!(
            "bulkhead supervisor: jail teardown: {}",
            bulkhead_agent_proto::report(&e)
        );
    }
    let exit = Exit {
        code: report.code,
        signal: report.signal,
        error: report.error.clone(),
        finished_ms: now_ms(),
    };
    if cfg.auto_remove {
        let _ = super::remove::remove_files(paths, &cfg.id);
        let _ = state.remove(&cfg.id);
    } else {
        let _ = write_json(&dir.join("exit.json"), &exit);
    }
    drop(held);
    let _ = std::fs::remove_dir_all(Paths::run_dir(&cfg.id));
    tell(
        notify,
        &format!(
            "err {}\n",
            report
                .error
                .clone()
                .unwrap_or_else(|| format!("exited with {}", report.code))
                .replace('\n', "\\n")
        ),
    );
    if let Some(tx) = exit_tx {
        let mut report = report.clone();
        // Network, jail, files (and for --rm the record): all released.
        report.timeline.push(Mark::now("released"));
        let _ = tx.send(Some(report));
    }
}

fn bind(run_dir: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)?;
    let sock = run_dir.join("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    UnixListener::bind(sock)
}

/// One control connection; `registered` is told once an attaching client
/// gets output (dropped unsent for any other request).
async fn serve(stream: UnixStream, shared: Arc<Shared>, registered: Option<oneshot::Sender<()>>) {
    let (mut rd, mut wr) = stream.into_split();
    let req: Request = match attach::read_frame(&mut rd).await {
        Ok(Some((Kind::Request, p))) => match attach::parse("request", &p) {
            Ok(r) => r,
            Err(e) => {
                let _ = attach::write_json(
                    &mut wr,
                    Kind::Reply,
                    &Reply {
                        error: Some(e.to_string()),
                    },
                )
                .await;
                return;
            }
        },
        _ => return,
    };
    let registered = registered.filter(|_| matches!(req, Request::Attach { .. }));
    match req {
        Request::Signal { signal } => {
            let error = shared
                .main_control
                .send(Control::Signal(signal))
                .await
                .err()
                .map(|_| "the workload has ended".to_string());
            let _ = attach::write_json(&mut wr, Kind::Reply, &Reply { error }).await;
        }
        Request::Stop { timeout_s } => {
            stop(Arc::clone(&shared), Duration::from_secs(timeout_s)).await;
            let _ = attach::write_json(&mut wr, Kind::Reply, &Reply { error: None }).await;
        }
        Request::Attach { stdin } => {
            let (tx, mut rx) = mpsc::channel(64);
            shared
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tx);
            if let Some(r) = registered {
                let _ = r.send(());
            }
            let input = tokio::spawn(client_input(
                rd,
                stdin.then(|| shared.main_stdin.clone()),
                shared.main_control.clone(),
            ));
            let ended = ended(shared.exit.clone());
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    Some((kind, data)) = rx.recv() => {
                        if attach::write_frame(&mut wr, kind, &data).await.is_err() { break; }
                    }
                    report = &mut ended => {
                        // Output the main loop already queued comes first.
                        while let Ok((kind, data)) = rx.try_recv() {
                            let _ = attach::write_frame(&mut wr, kind, &data).await;
                        }
                        let _ = attach::write_json(&mut wr, Kind::Exit, &report).await;
                        break;
                    }
                }
            }
            input.abort();
        }
        Request::Exec { process } => {
            let p = shared.backend.exec(&process).await;
            relay(p, process.stdin, true, rd, wr).await;
        }
        Request::Copy { spec } => {
            let stdin = spec.direction == bulkhead_agent_proto::CopyDirection::In;
            let p = shared.backend.copy(&spec).await;
            relay(p, stdin, false, rd, wr).await;
        }
    }
}

/// Carries a started process's output to the client and the client's
/// stdin (and, with `signals`, its signals and window size) to it, then its
/// exit report.
async fn relay(
    p: Result<Proc, ExitReport>,
    stdin: bool,
    signals: bool,
    rd: tokio::net::unix::OwnedReadHalf,
    mut wr: tokio::net::unix::OwnedWriteHalf,
) {
    let p = match p {
        Ok(p) => p,
        Err(report) => {
            let _ = attach::write_json(&mut wr, Kind::Exit, &report).await;
            return;
        }
    };
    let Proc {
        mut output,
        stdin: input_tx,
        control,
        exit,
    } = p;
    // A copy takes no signals: its process is ours, not the workload's.
    let control = if signals { control } else { mpsc::channel(1).0 };
    let input = tokio::spawn(client_input(rd, stdin.then_some(input_tx), control));
    while let Some((kind, data)) = output.recv().await {
        if attach::write_frame(&mut wr, kind, &data).await.is_err() {
            break;
        }
    }
    let report = exit
        .await
        .unwrap_or_else(|_| failed("the exec'd process was lost"));
    let _ = attach::write_json(&mut wr, Kind::Exit, &report).await;
    input.abort();
}

/// The stop signal, SIGKILL after `timeout`, and the VM ended from outside
/// if even that is not delivered; returns once the workload has ended.
async fn stop(shared: Arc<Shared>, timeout: Duration) {
    let _ = shared
        .main_control
        .send(Control::Signal(shared.stop_signal))
        .await;
    if tokio::time::timeout(timeout, ended(shared.exit.clone()))
        .await
        .is_err()
    {
        let _ = shared
            .main_control
            .send(Control::Signal(libc::SIGKILL))
            .await;
        // A SIGKILL the guest never delivers (it hangs): end the VM itself.
        if tokio::time::timeout(Duration::from_secs(10), ended(shared.exit.clone()))
            .await
            .is_err()
        {
            shared.backend.force_kill().await;
            ended(shared.exit.clone()).await;
        }
    }
}

/// Resolves once the workload has ended, with how.
async fn ended(mut exit: watch::Receiver<Option<ExitReport>>) -> ExitReport {
    let r = exit
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone());
    r.unwrap_or_else(|| failed("the supervisor lost the workload"))
}

/// Frames from a client: stdin, signals, resizes.
async fn client_input(
    mut rd: tokio::net::unix::OwnedReadHalf,
    stdin: Option<mpsc::Sender<Option<Vec<u8>>>>,
    control: mpsc::Sender<Control>,
) {
    while let Ok(Some((kind, p))) = attach::read_frame(&mut rd).await {
        match kind {
            Kind::Stdin => {
                if let Some(s) = &stdin {
                    let _ = s.send(Some(p)).await;
                }
            }
            Kind::StdinEof => {
                if let Some(s) = &stdin {
                    let _ = s.send(None).await;
                }
            }
            Kind::Signal => {
                if let Ok(sig) = attach::parse_signal(&p) {
                    let _ = control.send(Control::Signal(sig)).await;
                }
            }
            Kind::Resize => {
                if let Ok((r, c)) = attach::parse_resize(&p) {
                    let _ = control.send(Control::Resize(r, c)).await;
                }
            }
            _ => return, // a client does not send output
        }
    }
}
