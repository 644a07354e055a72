//! The container runtime: the image's root tree under a per-workload
//! overlay (writes land in the workload's `upper/`, never in the shared
//! tree), an OCI runtime spec from oci-spec, and crun or runc driven
//! through its CLI in the foreground, so its exit status is the workload's.
//!
//! Hybrid cgroup hosts (v1 controllers, cgroup2 at /sys/fs/cgroup/unified):
//! runc 1.1 copes; crun 1.8 refuses, so it runs in a private mount
//! namespace with the unified mount taken away and sees plain v1.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_agent_proto::ProcessSpec;
use bulkhead_images::store::{Digest, Store};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, Spec, UserBuilder,
};
use tokio::process::Command;

use super::attach::{ExitReport, Kind};
use super::console::{attach_terminal, lock, ConsoleSocket, Terminal, Tty};
use super::limits;
use super::workload::{
    failed, open_pty, proc_pair, pump_reader, pump_writer, stdio_for, Control, Proc,
};
use crate::state::paths::Paths;
use crate::state::record::WorkloadConfig;

/// Why a container could not be prepared. Each message says what failed;
/// its cause is the `source()` (printed with `report`).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("neither crun nor runc is installed (apt-get install crun runc)")]
    NoOciRuntime,
    #[error("the workload's image manifest")]
    Manifest(#[source] bulkhead_images::store::digest::BadDigest),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image store")]
    Store(#[source] bulkhead_images::store::StoreError),
    #[error("unpack the image")]
    Unpack(#[source] bulkhead_images::rootdisk::RootDiskError),
    #[error("mount the overlay on {0}")]
    Overlay(PathBuf, #[source] nix::Error),
    #[error("mount the writable layer's tmpfs on {0}")]
    Tmpfs(PathBuf, #[source] nix::Error),
    #[error("mount the image's tree with the container's ids on {0}")]
    Idmap(PathBuf, #[source] std::io::Error),
    #[error("the OCI runtime spec")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("the process's user")]
    User(#[from] bulkhead_agent::passwd::UserError),
    #[error("the workload's volumes")]
    Volume(#[source] Box<super::volumes::VolumeError>),
}

pub(super) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> PrepareError {
    let what = what.to_string();
    move |source| PrepareError::Io { what, source }
}

/// Which OCI runtime: `crun` if installed, else `runc`.
pub fn default_oci_runtime() -> Option<&'static str> {
    ["crun", "runc"].into_iter().find(|r| which(r).is_some())
}

pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|c| c.is_file())
    })
}

/// v1 controllers with cgroup2 beside them at /sys/fs/cgroup/unified.
fn hybrid_cgroups() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().any(|l| {
        l.split_whitespace().nth(4) == Some("/sys/fs/cgroup/unified") && l.contains(" - cgroup2 ")
    })
}

#[derive(Debug)]
pub struct Container {
    id: String,
    runtime: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    data: Paths,
    hybrid_unshare: bool,
    /// Its root stays mounted once it ended, until `rm` (a local
    /// workload: `cp` reaches it); a cluster instance's goes at once.
    keep_root: bool,
    execs: std::sync::atomic::AtomicU32,
    consoles: std::sync::atomic::AtomicU32,
}

impl Container {
    /// Mounts the overlay and writes the bundle's config.json.
    /// `netns`: the network namespace the supervisor made (veth and
    /// address in place), joined through `/proc/<supervisor>/fd/N`;
    /// `userns`: the user namespace that owns it, mapping `cfg.userns`.
    pub fn prepare(
        cfg: &WorkloadConfig,
        paths: &Paths,
        store: &Store,
        netns: Option<&OwnedFd>,
        userns: Option<&OwnedFd>,
    ) -> Result<Self, PrepareError> {
        let runtime = cfg
            .oci_runtime
            .clone()
            .or_else(|| default_oci_runtime().map(str::to_string))
            .ok_or(PrepareError::NoOciRuntime)?;
        let manifest = Digest::parse(&cfg.manifest).map_err(PrepareError::Manifest)?;
        let tree = super::rootfs::ensure_tree(store, paths, &manifest)?;
        let root = super::rootfs::mount_root(cfg, paths, &tree, userns)?;
        let (rootfs, bundle, ct, ids) = (root.rootfs, root.bundle, root.dir, root.base);
        let c = Container {
            id: cfg.id.clone(),
            hybrid_unshare: runtime == "crun" && hybrid_cgroups(),
            keep_root: cfg.fencing.is_none(),
            runtime,
            bundle,
            rootfs,
            data: paths.clone(),
            execs: Default::default(),
            consoles: Default::default(),
        };
        let etc = write_etc_files(cfg, &ct, ids).inspect_err(|_| c.unmount())?;
        let mut spec = c.spec(cfg).inspect_err(|_| c.unmount())?;
        join_namespaces(&mut spec, netns, userns.zip(cfg.userns))
            .and_then(|()| bind_etc_files(&mut spec, &etc))
            .inspect_err(|_| c.unmount())?;
        let state = crate::state::State::new(paths.clone());
        let vols = super::volumes::bind_for_container(cfg, &state, &ct, userns)
            .map_err(|e| PrepareError::Volume(Box::new(e)))
            .inspect_err(|_| c.unmount())?;
        bind_volumes(&mut spec, &vols)
            .and_then(|()| add_tmpfs(&mut spec, &cfg.tmpfs))
            .inspect_err(|_| c.unmount())?;
        spec.save(c.bundle.join("config.json"))?;
        Ok(c)
    }

    fn spec(&self, cfg: &WorkloadConfig) -> Result<Spec, PrepareError> {
        let mut spec = Spec::default();
        let p = &cfg.process;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(p.args.clone()));
        let mut env = with_default_path(&p.env);
        if p.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        env.push(format!("HOSTNAME={}", crate::state::paths::short(&cfg.id)));
        process.set_env(Some(env));
        process.set_cwd(p.cwd.clone().unwrap_or_else(|| "/".into()).into());
        process.set_terminal(Some(p.tty));
        let user = self.resolve_user(p.user.as_deref())?;
        process.set_user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.groups)
                .build()?,
        );
        spec.set_process(Some(process));
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(self.rootfs.clone());
        root.set_readonly(Some(cfg.read_only_root));
        spec.set_root(Some(root));
        spec.set_hostname(Some(crate::state::paths::short(&cfg.id).to_string()));
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(m) = cfg.memory_mib {
            let bytes = i64::try_from(m.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
            resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build()?);
        }
        if let Some(c) = cfg.cpus {
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(i64::try_from(limits::millicpus(c) * 100).unwrap_or(i64::MAX))
                    .period(100_000u64)
                    .build()?,
            );
        }
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(limits::CONTAINER_PIDS))
                .build()?,
        );
        linux.set_resources(Some(resources.build()?));
        linux.set_seccomp(Some(super::seccomp::profile()?));
        linux.set_cgroups_path(Some(PathBuf::from(format!("/bulkhead/{}", cfg.id))));
        spec.set_linux(Some(linux));
        Ok(spec)
    }

    /// `user[:group]` against the image's own /etc/passwd and /etc/group,
    /// read through the rootfs without leaving it (openat2 RESOLVE_IN_ROOT).
    fn resolve_user(
        &self,
        spec: Option<&str>,
    ) -> Result<bulkhead_agent::passwd::User, bulkhead_agent::passwd::UserError> {
        let Some(spec) = spec.filter(|s| !s.is_empty()) else {
            return Ok(bulkhead_agent::passwd::User {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into(),
            });
        };
        let passwd = super::rootfs::read_in_root(&self.rootfs, "etc/passwd").unwrap_or_default();
        let group = super::rootfs::read_in_root(&self.rootfs, "etc/group").unwrap_or_default();
        bulkhead_agent::passwd::resolve(
            spec,
            &bulkhead_agent::passwd::parse_passwd(&passwd),
            &bulkhead_agent::passwd::parse_group(&group),
        )
    }

    pub fn unmount(&self) {
        super::rootfs::unmount_layers(&self.data, &self.id);
    }

    fn base_command(&self, log: &Path) -> Command {
        let mut cmd = Command::new(&self.runtime);
        if self.runtime == "crun" {
            cmd.arg(format!("--log=file:{}", log.display()))
                .arg("--log-format=json");
        } else {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        cmd
    }

    /// A terminal for the process, if it asked for one: crun's
    /// `--console-socket` goes on `cmd` (before the container id).
    fn terminal_for(&self, cmd: &mut Command, tty: bool) -> Result<Option<Tty>, ExitReport> {
        if !tty {
            return Ok(None);
        }
        if self.runtime != "crun" {
            let (master, slave) = open_pty().map_err(|e| failed(format!("open a pty: {e}")))?;
            return Ok(Some(Tty::Pty { master, slave }));
        }
        let n = self
            .consoles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Paths::run_dir(&self.id);
        let sock = ConsoleSocket::bind(&dir, &format!("console-{n}.sock"))
            .map_err(|e| failed(format!("a console socket in {}: {e}", dir.display())))?;
        cmd.arg("--console-socket").arg(sock.path());
        Ok(Some(Tty::Console(sock)))
    }

    /// Spawns `runtime ARGS` and turns it into a [`Proc`]: output from
    /// pipes or from the process's terminal.
    fn spawn(
        &self,
        mut cmd: Command,
        tty: Option<Tty>,
        log: PathBuf,
    ) -> Result<(Proc, Option<crate::state::procs::ProcId>), ExitReport> {
        let (i, o, e) = match &tty {
            Some(Tty::Pty { slave, .. }) => stdio_for(Some(slave)),
            Some(Tty::Console(_)) => stdio_for(None).map(|(_, o, e)| (Stdio::null(), o, e)),
            None => stdio_for(None),
        }
        .map_err(|e| failed(format!("stdio: {e}")))?;
        cmd.stdin(i).stdout(o).stderr(e).kill_on_drop(false);
        let unified = CString::new("/sys/fs/cgroup/unified").unwrap_or_default();
        let root = CString::new("/").unwrap_or_default();
        let hybrid = self.hybrid_unshare;
        let with_ctty = matches!(tty, Some(Tty::Pty { .. }));
        // SAFETY: between fork and exec only raw syscalls on memory prepared
        // before the fork (the CStrings above); nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                if with_ctty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                    return Err(std::io::Error::last_os_error());
                }
                if hybrid
                    && (libc::unshare(libc::CLONE_NEWNS) < 0
                        || libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) < 0
                        || libc::umount2(unified.as_ptr(), libc::MNT_DETACH) < 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("start {}: {e}", self.runtime)))?;
        let pid = child
            .id()
            .and_then(|p| crate::state::procs::ProcId::of(crate::state::procs::pid_t(p)));
        let (proc_, ends) = proc_pair();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump_reader(out, Kind::Stdout, ends.output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump_reader(err, Kind::Stderr, ends.output.clone()));
        }
        let mut stdin = Some(ends.stdin);
        if let (Some(w), Some(s)) = (child.stdin.take(), stdin.take_if(|_| tty.is_none())) {
            pump_writer(w, s, None);
        }
        let terminal = Arc::new(Mutex::new(Terminal::default()));
        let (mut console, mut pty_reader) = (None, None);
        match tty {
            Some(Tty::Pty { master, slave }) => {
                drop(slave);
                pty_reader = attach_terminal(master, &terminal, ends.output.clone(), stdin.take());
            }
            Some(Tty::Console(c)) => console = Some(c),
            None => {}
        }
        let (runtime, id, mut control) = (self.runtime.clone(), self.id.clone(), ends.control);
        let ctl_terminal = Arc::clone(&terminal);
        tokio::spawn(async move {
            while let Some(c) = control.recv().await {
                match c {
                    Control::Signal(s) => {
                        let _ = Command::new(&runtime)
                            .args(["kill", &id, &s.to_string()])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .await;
                    }
                    Control::Resize(r, c) => lock(&ctl_terminal).resize(r, c),
                }
            }
        });
        let (exit, output) = (ends.exit, ends.output);
        tokio::spawn(async move {
            let wait = child.wait();
            tokio::pin!(wait);
            let mut status = None;
            if let Some(console) = console {
                // crun passes the terminal before the process starts, so once
                // the process has ended it is there already, or never comes.
                let master = tokio::select! {
                    biased;
                    m = console.receive() => Some(m),
                    s = &mut wait => {
                        status = Some(s);
                        tokio::time::timeout(Duration::from_secs(1), console.receive()).await.ok()
                    }
                };
                match master {
                    Some(Ok(m)) => {
                        pty_reader = attach_terminal(m, &terminal, output.clone(), stdin.take());
                    }
                    Some(Err(e)) => eprintln!("bulkhead supervisor: the workload's terminal: {e}"),
                    None => {}
                }
            }
            drop(output);
            let status = match status {
                Some(s) => s,
                None => wait.await,
            };
            for r in readers {
                let _ = r.await;
            }
            // The pty ends when the last holder of its other end is gone: at
            // once for a whole container; an exec's background child may keep
            // it, and does not keep the exit from being reported.
            if let Some(r) = pty_reader {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
            lock(&terminal).close();
            let report = match status {
                Ok(s) => exit_report(
                    s.code().unwrap_or(125),
                    &std::fs::read_to_string(&log).unwrap_or_default(),
                ),
                Err(e) => failed(format!("wait for the OCI runtime: {e}")),
            };
            let _ = exit.send(report);
        });
        Ok((proc_, pid))
    }

    /// Starts the main process; returns once the container exists (its
    /// pid file is written), so an `exec` right after finds it.
    pub fn start_main(
        &self,
        p: &ProcessSpec,
    ) -> Result<(Proc, Option<crate::state::procs::ProcId>), ExitReport> {
        let log = self.bundle.join("runtime-main.log");
        let pid_file = self.bundle.join("pid");
        let mut cmd = self.base_command(&log);
        cmd.args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        let console = self.terminal_for(&mut cmd, p.tty)?;
        cmd.arg(&self.id);
        let ino = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC)
            .map_err(|e| failed(format!("inotify: {e}")))?;
        use nix::sys::inotify::AddWatchFlags as W;
        ino.add_watch(&self.bundle, W::IN_CREATE | W::IN_MOVED_TO)
            .map_err(|e| failed(format!("inotify: {e}")))?;
        let (proc_, pid) = self.spawn(cmd, console, log)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Until the pid file appears, the runtime gives up, or a minute passed.
        while !pid_file.exists()
            && pid.is_some_and(|p| p.alive())
            && std::time::Instant::now() < deadline
        {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&ino),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) > 0 {
                let _ = ino.read_events();
            }
        }
        Ok((proc_, pid))
    }

    pub fn exec(&self, p: &ProcessSpec) -> Result<Proc, ExitReport> {
        let n = self
            .execs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.bundle.join(format!("runtime-exec-{n}.log"));
        let mut cmd = self.base_command(&log);
        cmd.arg("exec");
        if p.tty {
            cmd.arg("--tty");
        }
        if let Some(cwd) = &p.cwd {
            cmd.args(["--cwd", cwd]);
        }
        // crun's exec does not add a PATH where the environment has none.
        for e in with_default_path(&p.env) {
            cmd.args(["--env", &e]);
        }
        if p.user.is_some() {
            let u = self
                .resolve_user(p.user.as_deref())
                .map_err(|e| failed(e.to_string()))?;
            cmd.args(["--user", &format!("{}:{}", u.uid, u.gid)]);
            for g in u.groups {
                cmd.args(["--additional-gids", &g.to_string()]);
            }
        }
        // Neither runtime takes "--" here: options end at the container id.
        let console = self.terminal_for(&mut cmd, p.tty)?;
        cmd.arg(&self.id).args(&p.args);
        self.spawn(cmd, console, log).map(|(p, _)| p)
    }

    /// One end of `bulkhead cp`: our own helper (`bulkhead __copy`) in the
    /// container's user and mount namespaces (`runtime::copy`).
    pub fn copy(&self, spec: &bulkhead_agent_proto::CopySpec) -> Result<Proc, ExitReport> {
        let pid = std::fs::read_to_string(self.bundle.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .ok_or_else(|| failed("the container's pid file is missing"))?;
        let cmd = super::copy::helper_command(
            spec,
            super::copy::Inside::Running {
                pid,
                workload: &self.id,
            },
        )
        .map_err(|e| failed(format!("the copy helper: {e}")))?;
        // The helper says why it failed on stderr; no runtime log.
        let log = self.bundle.join("copy.log");
        self.spawn(Command::from(cmd), None, log).map(|(p, _)| p)
    }

    /// SIGKILL to every process of the container (it did not stop when told).
    pub async fn kill_all(&self) {
        let _ = Command::new(&self.runtime)
            .args(["kill", "--all", &self.id, "KILL"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }

    /// After the workload ended: the runtime's leftovers and the volumes'
    /// binds (a volume is free for its next writer). A local workload's
    /// root stays mounted until `rm`, as docker keeps a stopped container's
    /// writable layer: `bulkhead cp` reads and writes it (its memory stays
    /// taken until then). A cluster instance is replaced, not looked into:
    /// its root goes now.
    pub async fn cleanup(&self) {
        let _ = Command::new(&self.runtime)
            .args(["delete", "-f", &self.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if self.keep_root {
            super::volumes::unbind_all(&Paths::container_dir(&self.id));
        } else {
            self.unmount();
        }
    }
}

/// `env` with the default PATH added when it has none (as docker does, and
/// as the agent does in a microVM).
fn with_default_path(env: &[String]) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", bulkhead_agent_proto::DEFAULT_PATH));
    }
    env
}

/// hostname, hosts and (with a network) resolv.conf for the container, in
/// `<container dir>/etc/`: bound over the image's, as docker does, and
/// owned by the container's root (`base`), who may edit them.
fn write_etc_files(
    cfg: &WorkloadConfig,
    dir: &Path,
    base: Option<u32>,
) -> Result<Vec<(PathBuf, &'static str)>, PrepareError> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(io(format_args!("create {}", etc.display())))?;
    let host = crate::state::paths::short(&cfg.id);
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(a) = &cfg.network {
        hosts.push_str(&format!("{}\t{host}\n", a.ip));
    } else {
        hosts.push_str(&format!("127.0.1.1\t{host}\n"));
    }
    let mut files = vec![
        (etc.join("hostname"), "/etc/hostname", format!("{host}\n")),
        (etc.join("hosts"), "/etc/hosts", hosts),
    ];
    if let Some(a) = &cfg.network {
        let resolv: String = a
            .nameservers
            .iter()
            .map(|n| format!("nameserver {n}\n"))
            .collect();
        files.push((etc.join("resolv.conf"), "/etc/resolv.conf", resolv));
    }
    let mut out = Vec::new();
    for (path, dest, text) in files {
        std::fs::write(&path, text)
            .and_then(|()| match base {
                Some(b) => std::os::unix::fs::chown(&path, Some(b), Some(b)),
                None => Ok(()),
            })
            .map_err(io(format_args!("write {}", path.display())))?;
        out.push((path, dest));
    }
    Ok(out)
}

/// The spec joins `netns` and, with its ids, the user namespace that owns
/// it (both through `/proc/<supervisor>/fd/N`). The maps are written into
/// the spec too: runc 1.1 reads them from there when it joins.
fn join_namespaces(
    spec: &mut Spec,
    netns: Option<&OwnedFd>,
    userns: Option<(&OwnedFd, crate::state::record::UserIds)>,
) -> Result<(), PrepareError> {
    let path = |fd: &OwnedFd| {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ))
    };
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    let mut join = |typ: LinuxNamespaceType, fd: &OwnedFd| -> Result<(), PrepareError> {
        namespaces.retain(|n| n.typ() != typ);
        let ns = LinuxNamespaceBuilder::default().typ(typ).path(path(fd));
        namespaces.push(ns.build()?);
        Ok(())
    };
    if let Some(ns) = netns {
        join(LinuxNamespaceType::Network, ns)?;
    }
    if let Some((ns, ids)) = userns {
        join(LinuxNamespaceType::User, ns)?;
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(ids.base)
            .size(crate::state::record::UserIds::SIZE)
            .build()?;
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The spec binds the etc files in.
fn bind_etc_files(spec: &mut Spec, etc: &[(PathBuf, &'static str)]) -> Result<(), PrepareError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (src, dest) in etc {
        mounts.push(
            MountBuilder::default()
                .destination(*dest)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The spec binds the volumes (bound with the container's ids under its
/// dir) at their paths; `:ro` ones read-only here too.
fn bind_volumes(spec: &mut Spec, vols: &[(PathBuf, String, bool)]) -> Result<(), PrepareError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (src, dest, read_only) in vols {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if *read_only {
            options.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(options)
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// `--tmpfs`: the runtime mounts each (inside the container's namespaces,
/// so its memory is the container's).
fn add_tmpfs(
    spec: &mut Spec,
    list: &[crate::state::volumes::TmpfsMount],
) -> Result<(), PrepareError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for t in list {
        let mut options = vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            format!("size={}", t.size_bytes),
            format!("mode={:o}", t.mode),
        ];
        if t.noexec {
            options.push("noexec".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(&t.target)
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The runtime's exit code, or a start failure its JSON log names (runc and
/// crun both exit 1 then): 127 not found, 126 not executable, 125 other.
pub fn exit_report(code: i32, log: &str) -> ExitReport {
    let error = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next();
    match error {
        Some(msg) if code != 0 => {
            let lower = msg.to_lowercase();
            let not_found = lower.contains("not found in $path")
                || (lower.contains("executable file") && lower.contains("not found"))
                || ((lower.contains("exec: \"") || lower.contains("open executable"))
                    && lower.contains("no such file or directory"));
            let code = if not_found {
                127
            } else if lower.contains("permission denied") || lower.contains("exec format error") {
                126
            } else {
                125
            };
            ExitReport {
                code,
                signal: None,
                error: Some(msg),
                started_ms: None,
                timeline: Vec::new(),
                vm_exits: Vec::new(),
            }
        }
        _ => ExitReport {
            code,
            signal: (129..=192).contains(&code).then_some(code - 128),
            error: None,
            started_ms: None,
            timeline: Vec::new(),
            vm_exits: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_logs_map_to_docker_exit_codes() {
        let runc = r#"{"level":"error","msg":"runc run failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH","time":"x"}"#;
        assert_eq!(exit_report(1, runc).code, 127);
        let crun = r#"{"msg":"executable file `nosuch` not found in $PATH: No such file or directory","level":"error","time":"x"}"#;
        assert_eq!(exit_report(1, crun).code, 127);
        assert_eq!(
            exit_report(
                1,
                r#"{"level":"error","msg":"exec: \"/etc\": permission denied"}"#
            )
            .code,
            126
        );
        assert_eq!(
            exit_report(1, r#"{"level":"error","msg":"cgroup: something"}"#).code,
            125
        );
        assert_eq!(exit_report(1, r#"{"level":"error","msg":"error opening file `/run/crun/x/status`: No such file or directory"}"#).code, 125, "not the command's fault");
        assert_eq!(exit_report(1, r#"{"level":"error","msg":"exec: \"/nosuch\": stat /nosuch: no such file or directory"}"#).code, 127);
        assert_eq!(exit_report(1, "").code, 1, "the workload's own exit 1");
        assert_eq!(
            exit_report(1, "not json\n{\"level\":\"warning\",\"msg\":\"x\"}").error,
            None
        );
        let killed = exit_report(137, "");
        assert_eq!((killed.code, killed.signal), (137, Some(9)));
    }
}
