//! The microVM runtime: bulkhead-vmm with our guest kernel, the agent's
//! initramfs and the image's root disk (read-only, an overlay on tmpfs in
//! the guest), driven through the agent over vsock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bulkhead_agent_proto::client::{AgentClient, ClientError, Output};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bulkhead_agent_proto::{
    DnsSpec, ErrorKind, ExitStatus, Fd, NetworkSpec, ProcessSpec, RootSource, RootSpec,
    StartRequest, TmpfsSpec, VolumeSpec, AGENT_VSOCK_PORT,
};
use bulkhead_vmm::config::{
    ConfigError, DiskConfig, NetConfig, SerialOutput, VmConfig, VsockConfig,
};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use super::attach::{ExitReport, Kind, Mark};
use super::jail;
use super::workload::{failed, proc_pair, Control, Proc, RotatingLog};
use crate::state::paths::Paths;
use crate::state::procs::{pid_t, ProcId};
use crate::state::record::{RootDisk, VmFiles, VmmFlavor, WorkloadConfig};

/// The guest's serial console is kept in `console.log` (and `console.1`), this big at most.
const CONSOLE_LIMIT: u64 = 1 << 20;

/// How long the guest may take from VMM start to the agent dialing in.
/// Generous: under the nested test host's emulation a boot takes seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const CID: u32 = 3;
/// A jailed VMM's root disk, passed open.
pub const DISK_FD: i32 = 4;
/// A jailed VMM's volume disks, passed open: 5, 6, ...
pub const VOLUME_FD_BASE: i32 = 5;
/// Where the disks' fds wait for their dup2 (above every target number).
const FD_PARKING: i32 = 64;
/// The guest kernel's command line.
const CMDLINE: &str = bulkhead_images::kernel::GUEST_CMDLINE;

/// The VMM's whole configuration for the workload `id`, the one hand-off
/// to it: `create` checks it before anything is made (without the MAC,
/// which the address lease gives later), `boot` writes it into the VM's dir
/// and the VMM reads it (`--config`). Size defaults and bounds: `limits`.
pub fn vm_config(
    id: &str,
    cpus: Option<f64>,
    memory_mib: Option<u64>,
    files: &VmFiles,
    mac: Option<&str>,
    disk_fd: bool,
    volumes: &[super::volumes::VolumeDisk],
) -> Result<VmConfig, ConfigError> {
    let vcpus = super::limits::vm_vcpus(cpus);
    let memory = memory_mib.unwrap_or(super::limits::DEFAULT_VM_MEMORY_MIB);
    let config = VmConfig {
        kernel: Some(files.kernel.clone()),
        initrd: Some(files.initrd.clone()),
        cmdline: Some(CMDLINE.into()),
        vcpus: u8::try_from(vcpus).unwrap_or(u8::MAX),
        memory_mib: u32::try_from(memory).unwrap_or(u32::MAX),
        // The image's root disk (read-only: an overlay on tmpfs in the
        // guest); a jailed VMM gets it open, as fd 4, and never its path.
        // Then the volumes (/dev/vdb, ...), read-only where asked: the
        // device refuses writes, not only the guest's mount.
        disks: std::iter::once(DiskConfig {
            path: if disk_fd {
                PathBuf::from(format!("fd:{DISK_FD}"))
            } else {
                files.disk.path.clone()
            },
            read_only: files.disk.read_only,
        })
        .chain(
            volumes
                .iter()
                .zip(VOLUME_FD_BASE..)
                .map(|(v, fd)| DiskConfig {
                    path: if disk_fd {
                        PathBuf::from(format!("fd:{fd}"))
                    } else {
                        v.path.clone()
                    },
                    read_only: v.read_only,
                }),
        )
        .collect(),
        vsock: Some(VsockConfig {
            uds_path: Paths::vm_dir(id).join("vsock"),
            cid: CID,
        }),
        // The TAP comes open, as fd 3 (the jail has no /dev/net/tun).
        net: mac
            .map(|m| -> Result<NetConfig, ConfigError> {
                Ok(NetConfig {
                    tap: "fd:3".into(),
                    mac: Some(m.parse()?),
                })
            })
            .transpose()?,
        serial: SerialOutput::Stdout,
        boot_timeline: true,
        // Mapped, not copied, where they are the owner's own copies.
        share_boot_files: files.share_boot_files,
        ..VmConfig::default()
    };
    config.validate()?;
    Ok(config)
}

#[derive(Debug)]
pub struct Microvm {
    child: tokio::sync::Mutex<Child>,
    client: AgentClient,
    console: PathBuf,
    console_pump: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pid: Option<ProcId>,
}

/// The last `n` lines of the guest's serial console.
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    escape_controls(&lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Guest-written text made safe for an operator's terminal: control
/// characters (escape sequences that move the cursor, retitle the window
/// or rewrite what came before) shown as `\u{..}`; newlines and tabs kept.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a microVM did not come up. Each message says what failed; its cause
/// is the `source()` (printed with `report`).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no VM files in the workload config")]
    NoVmFiles,
    #[error("the VM's directory")]
    Jail(#[from] jail::JailError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM's configuration")]
    Config(#[from] ConfigError),
    #[error("encode the VM's configuration")]
    Encode(#[from] serde_json::Error),
    #[error("a Firecracker-compatible VMM runs with --network none only (it takes a TAP by name, not an open one)")]
    FirecrackerNetwork,
    /// The VMM ran but no agent dialed in; the text ends with the guest
    /// console's last lines.
    #[error("{0}")]
    NoAgent(String),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BootError {
    let what = what.to_string();
    move |source| BootError::Io { what, source }
}

fn with_console(why: String, console: &Path) -> String {
    let tail = console_tail(console, 20);
    if tail.is_empty() {
        why
    } else {
        format!("{why}\n--- guest console (last lines) ---\n{tail}")
    }
}

impl Microvm {
    /// Starts the VMM (through bulkhead-jailer when the config has a jail)
    /// and waits for the agent's hello.
    /// `tap`: the workload's TAP (on its bridge), passed to the VMM as fd 3.
    /// `marks` gets `runtime-invoked` (the VMM's spawn) and `agent-connected`.
    pub async fn boot(
        cfg: &WorkloadConfig,
        workload_dir: &Path,
        tap: Option<&OwnedFd>,
        volumes: &[super::volumes::VolumeDisk],
        marks: &mut Vec<Mark>,
    ) -> Result<Self, BootError> {
        let files = cfg.vm.as_ref().ok_or(BootError::NoVmFiles)?;
        let jail = files.jail.as_ref();
        let vm_dir = crate::state::paths::Paths::vm_dir(&cfg.id);
        jail::make_vm_dir(&vm_dir, jail)?;
        let uds = vm_dir.join("vsock");
        let listener_path = PathBuf::from(format!("{}_{AGENT_VSOCK_PORT}", uds.display()));
        let listener = UnixListener::bind(&listener_path)
            .map_err(io(format_args!("bind {}", listener_path.display())))?;
        jail::hand_over(&listener_path, jail)?;
        let console = workload_dir.join("console.log");
        let vcpus = super::limits::vm_vcpus(cfg.cpus);
        let memory = cfg
            .memory_mib
            .unwrap_or(super::limits::DEFAULT_VM_MEMORY_MIB);
        let with_tap =
            tap.is_some() && cfg.network.is_some() && files.flavor == VmmFlavor::Bulkhead;
        let mut cmd = match jail {
            Some(j) => {
                let netns = jail::vmm_netns()?;
                jail::command(
                    j, cfg, files, &vm_dir, vcpus, memory, with_tap, volumes, &netns,
                )
            }
            None => Command::new(&files.vmm),
        };
        match files.flavor {
            VmmFlavor::Bulkhead => {
                let mac = cfg
                    .network
                    .as_ref()
                    .filter(|_| with_tap)
                    .map(|a| a.mac.as_str());
                let vm = vm_config(
                    &cfg.id,
                    cfg.cpus,
                    cfg.memory_mib,
                    files,
                    mac,
                    jail.is_some(),
                    volumes,
                )?;
                let path = vm_dir.join("vm.json");
                let json = serde_json::to_vec_pretty(&vm)?;
                std::fs::write(&path, json)
                    .map_err(io(format_args!("write {}", path.display())))?;
                jail::hand_over(&path, jail)?;
                if let Some(tap) = tap.filter(|_| with_tap) {
                    let fd = tap.as_raw_fd();
                    // SAFETY: dup2 is async-signal-safe; it gives the VMM the TAP as fd 3 (without CLOEXEC).
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::dup2(fd, 3) < 0 {
                                Err(std::io::Error::last_os_error())
                            } else {
                                Ok(())
                            }
                        });
                    }
                }
                if jail.is_some() {
                    // The root disk as fd 4, the volumes' as 5, 6, ...
                    let disks = std::iter::once((&files.disk.path, files.disk.read_only, DISK_FD))
                        .chain(
                            volumes
                                .iter()
                                .zip(VOLUME_FD_BASE..)
                                .map(|(v, fd)| (&v.path, v.read_only, fd)),
                        );
                    for (path, read_only, target) in disks {
                        let disk = std::fs::File::options()
                            .read(true)
                            .write(!read_only)
                            .open(path)
                            .map_err(io(format_args!("open {}", path.display())))?;
                        // Parked above every number the children get (3,
                        // 4, 5, ...), so that no dup2 of ours closes another's source.
                        let disk = nix::fcntl::fcntl(
                            &disk,
                            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FD_PARKING),
                        )
                        .map_err(|e| io("move a disk fd")(e.into()))?;
                        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that is ours.
                        let disk = unsafe { OwnedFd::from_raw_fd(disk) };
                        // SAFETY: dup2 is async-signal-safe; it gives the VMM
                        // the disk as fd `target` (without CLOEXEC), after the
                        // TAP's. `disk` moves into the closure, so it stays
                        // open until the spawn.
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::dup2(disk.as_raw_fd(), target) < 0 {
                                    Err(std::io::Error::last_os_error())
                                } else {
                                    Ok(())
                                }
                            });
                        }
                    }
                }
                cmd.arg("--config").arg(&path);
            }
            VmmFlavor::Firecracker => {
                if cfg.network.is_some() {
                    return Err(BootError::FirecrackerNetwork);
                }
                let config = serde_json::json!({
                    "boot-source": {"kernel_image_path": files.kernel, "initrd_path": files.initrd, "boot_args": CMDLINE},
                    "drives": [{"drive_id": "rootfs", "path_on_host": files.disk.path, "is_root_device": false, "is_read_only": files.disk.read_only}],
                    "machine-config": {"vcpu_count": vcpus, "mem_size_mib": memory},
                    "vsock": {"guest_cid": CID, "uds_path": uds},
                });
                let path = vm_dir.join("vmm-config.json");
                std::fs::write(&path, config.to_string())
                    .map_err(io(format_args!("write {}", path.display())))?;
                cmd.args(["--no-api", "--config-file"]).arg(&path);
            }
        }
        marks.push(Mark::now("runtime-invoked"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                bulkhead_images::private::create(&workload_dir.join("vmm.log"))
                    .map_err(io("create vmm.log"))?,
            ))
            .kill_on_drop(false)
            .spawn()
            .map_err(io(format_args!("start {}", files.vmm.display())))?;
        let started = child.id();
        // The console is guest output: kept, but capped (a guest may print forever).
        let mut pump = child.stdout.take().map(|mut out| {
            let mut log = RotatingLog::new(console.clone(), CONSOLE_LIMIT);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.write(&buf[..n]);
                }
            })
        });
        let client = tokio::select! {
            c = AgentClient::accept(&listener) => c.map_err(|e| BootError::NoAgent(with_console(format!("the agent: {e}"), &console)))?,
            s = child.wait() => {
                if let Some(p) = pump.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
                }
                let vmm_log: String = std::fs::read_to_string(workload_dir.join("vmm.log"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !bulkhead_jailer::timeline::is_mark(l))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(BootError::NoAgent(with_console(format!("the VMM exited before the agent dialed in ({}): {}", s.map(|s| s.to_string()).unwrap_or_default(), vmm_log.trim()), &console)));
            }
            _ = tokio::time::sleep(BOOT_TIMEOUT) => {
                let _ = child.start_kill();
                return Err(BootError::NoAgent(with_console(format!("no agent within {BOOT_TIMEOUT:?}"), &console)));
            }
        };
        marks.push(Mark::now("agent-connected"));
        // The agent dialed in: the VMM is running (under its jailer, if jailed).
        let pid = match (started, jail) {
            (Some(j), Some(_)) => jail::vmm_under(pid_t(j)),
            (Some(p), None) => ProcId::of(pid_t(p)),
            (None, _) => None,
        };
        Ok(Microvm {
            child: tokio::sync::Mutex::new(child),
            client,
            console,
            console_pump: tokio::sync::Mutex::new(pump),
            pid,
        })
    }

    pub fn pid(&self) -> Option<ProcId> {
        self.pid
    }

    pub async fn start_main(&self, cfg: &WorkloadConfig) -> Result<Proc, ExitReport> {
        let req = StartRequest {
            process: cfg.process.clone(),
            root: RootSpec {
                source: match &cfg.vm {
                    Some(files) => RootSource::Block {
                        device: RootDisk::GUEST_DEVICE.into(),
                        fstype: files.disk.format.fstype().into(),
                    },
                    None => RootSource::default(),
                },
                scratch: None,
                // Disk i+1 (after the root's /dev/vda) is the i-th volume.
                volumes: cfg
                    .volumes
                    .iter()
                    .zip(b'b'..=b'z')
                    .map(|(m, letter)| VolumeSpec {
                        device: format!("/dev/vd{}", char::from(letter)),
                        target: m.target.clone(),
                        read_only: m.read_only,
                    })
                    .collect(),
                tmpfs: cfg
                    .tmpfs
                    .iter()
                    .map(|t| TmpfsSpec {
                        target: t.target.clone(),
                        size_bytes: t.size_bytes,
                        mode: t.mode,
                        noexec: t.noexec,
                    })
                    .collect(),
                read_only: cfg.read_only_root,
            },
            hostname: Some(crate::state::paths::short(&cfg.id).to_string()),
            network: cfg.network.as_ref().map(|a| NetworkSpec {
                interface: "eth0".into(),
                address: format!("{}/{}", a.ip, a.prefix),
                gateway: Some(a.gateway.to_string()),
                mtu: None,
            }),
            dns: DnsSpec {
                nameservers: cfg
                    .network
                    .as_ref()
                    .map(|a| a.nameservers.clone())
                    .unwrap_or_default(),
                search: Vec::new(),
            },
            ..Default::default()
        };
        let p = self.client.start(req).await.map_err(|e| self.report(e))?;
        Ok(drive(p, cfg.process.stdin))
    }

    pub async fn exec(&self, spec: &ProcessSpec) -> Result<Proc, ExitReport> {
        let p = self
            .client
            .exec(spec.clone())
            .await
            .map_err(|e| self.report(e))?;
        Ok(drive(p, spec.stdin))
    }

    /// One end of `bulkhead cp`, run by the agent in the container.
    pub async fn copy(&self, spec: &bulkhead_agent_proto::CopySpec) -> Result<Proc, ExitReport> {
        let stdin = spec.direction == bulkhead_agent_proto::CopyDirection::In;
        let p = self
            .client
            .copy(spec.clone())
            .await
            .map_err(|e| self.report(e))?;
        Ok(drive(p, stdin))
    }

    fn report(&self, e: ClientError) -> ExitReport {
        match e {
            ClientError::Agent(a) => {
                let code = match a.kind {
                    ErrorKind::NotFound => 127,
                    ErrorKind::NotExecutable => 126,
                    _ => 125,
                };
                ExitReport {
                    code,
                    signal: None,
                    error: Some(a.message),
                    started_ms: None,
                    timeline: Vec::new(),
                    vm_exits: Vec::new(),
                }
            }
            other => failed(with_console(other.to_string(), &self.console)),
        }
    }

    /// A VM that ended without the agent's report: why, with the console
    /// (once the VMM is gone and its last output is in).
    pub async fn lost(&self, why: &str) -> ExitReport {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.lock().await.wait()).await;
        if let Some(p) = self.console_pump.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
        }
        failed(with_console(why.to_string(), &self.console))
    }

    /// Ends the VM without asking the guest (it did not stop when told).
    /// The VMM itself: a jailer outliving it removes its jail and cgroups.
    pub async fn kill_vm(&self) {
        if !self.pid.is_some_and(|p| p.signal(libc::SIGKILL)) {
            let _ = self.child.lock().await.start_kill();
        }
    }

    /// After the main process ended the agent powers the VM off: wait for
    /// that, then make sure.
    pub async fn finish(&self) {
        let mut child = self.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = self.client.shutdown().await;
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                if let Some(p) = self.pid {
                    p.signal(libc::SIGKILL);
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// bulkhead-vmm's own report from `vmm.log` (once it exited), on
/// CLOCK_MONOTONIC: `jail-ready` (bulkhead-jailer about to exec it),
/// `vmm-start` (its `main`), `kernel-entry`, the guest's stage codes
/// (`agent-ready`, ...) and `vmm-exit`; and its exits by `KIND DEVICE`.
/// Nothing from another VMM.
pub fn vmm_report(workload_dir: &Path) -> (Vec<Mark>, Vec<(String, u64)>) {
    let log = std::fs::read(workload_dir.join("vmm.log")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let report = bulkhead_vmm::timeline::parse_report(&log);
    let Some(start) = report.monotonic_start_us else {
        return (Vec::new(), report.exits);
    };
    let mut marks: Vec<Mark> = bulkhead_jailer::timeline::jail_ready_at(&log)
        .map(|at_us| Mark {
            name: "jail-ready".into(),
            at_us,
        })
        .into_iter()
        .collect();
    marks.push(Mark {
        name: "vmm-start".into(),
        at_us: start,
    });
    marks.extend(report.marks.into_iter().map(|(name, us)| Mark {
        name: if name == "exit" {
            "vmm-exit".into()
        } else {
            name
        },
        at_us: start.saturating_add(us),
    }));
    (marks, report.exits)
}

/// Runs an agent process as a [`Proc`]. Only a process started with stdin
/// gets data or an EOF on it: the agent treats anything else as a broken
/// protocol and hangs up.
fn drive(mut p: bulkhead_agent_proto::client::Process, has_stdin: bool) -> Proc {
    let (proc_, ends) = proc_pair();
    if has_stdin {
        let stdin = p.stdin();
        let mut stdin_rx = ends.stdin;
        tokio::spawn(async move {
            while let Some(Some(data)) = stdin_rx.recv().await {
                if stdin.write(&data).await.is_err() {
                    return;
                }
            }
            let _ = stdin.close().await;
        });
    }
    // Signals go through their own handle, so they still reach a process
    // that closed its output but runs on.
    let agent_control = p.control();
    let mut control = ends.control;
    tokio::spawn(async move {
        while let Some(c) = control.recv().await {
            // Bounded: a guest that stopped answering must not hold back
            // the signals queued after this one (stop's SIGKILL).
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                match c {
                    Control::Signal(s) => agent_control.signal(s).await,
                    Control::Resize(r, c) => agent_control.resize(r, c).await,
                }
            })
            .await;
        }
    });
    let (out, exit) = (ends.output, ends.exit);
    tokio::spawn(async move {
        while let Some(o) = p.next_output().await {
            if let Output::Data(fd, data) = o {
                let kind = if fd == Fd::Stderr {
                    Kind::Stderr
                } else {
                    Kind::Stdout
                };
                let _ = out.send((kind, data)).await;
            }
        }
        drop(out);
        let report = match p.wait().await {
            Ok(ExitStatus::Code(c)) => ExitReport {
                code: c,
                signal: None,
                error: None,
                started_ms: None,
                timeline: Vec::new(),
                vm_exits: Vec::new(),
            },
            // The agent is guest code: no arithmetic on its numbers may overflow.
            Ok(ExitStatus::Signal(s)) => ExitReport {
                code: 128i32.saturating_add(s),
                signal: Some(s),
                error: None,
                started_ms: None,
                timeline: Vec::new(),
                vm_exits: Vec::new(),
            },
            Err(e) => failed(format!(
                "the agent connection ended without an exit report: {e}"
            )),
        };
        let _ = exit.send(report);
    });
    proc_
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_console_text_reaches_the_terminal_escaped() {
        let hostile = "ok\tline\n\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31mred";
        let shown = escape_controls(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown:?}"
        );
        assert!(
            shown.starts_with("ok\tline\n\\u{1b}]0;owned\\u{7}"),
            "{shown}"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("console.log");
        std::fs::write(&log, format!("1\n2\n{hostile}\n")).unwrap_or_else(|e| panic!("{e}"));
        let tail = console_tail(&log, 2);
        assert!(
            tail.starts_with("ok\tline\n") && !tail.contains('\u{1b}'),
            "{tail:?}"
        );
    }
}
