//! `bulkhead run`: an image in its own microVM (or, with `--runtime
//! container`, on the shared kernel through crun/runc), docker-style.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bulkhead_agent_proto::ProcessSpec;
use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::Store;
use clap::Args;

use crate::network::{lifecycle, Publish};
use crate::runtime::attach::Request;
use crate::runtime::{client, container};
use crate::state::net::{self, Want};
use crate::state::paths::{self, Paths};
use crate::state::record::{
    now_ms, write_json, Jail, Record, RuntimeKind, VmFiles, WorkloadConfig,
};
use crate::state::State;

/// bulkhead's own failure (docker's convention).
pub const EXIT_BULKHEAD: u8 = 125;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: the workload's (128+N when killed by signal N); 125 when bulkhead itself failed, 126 when the command cannot be executed, 127 when it is not found."
)]
pub struct RunArgs {
    /// Run in the background and print the workload's id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the workload and everything it left once it ends.
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the workload.
    #[arg(short, long)]
    interactive: bool,
    /// Give the workload a terminal.
    #[arg(short, long)]
    tty: bool,
    /// A name to refer to it by (default: the image's name and a short id).
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass ours on).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the workload.
    #[arg(short, long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or uid, optionally :group) from the image's /etc/passwd.
    #[arg(short, long)]
    user: Option<String>,
    /// Replace the image's Entrypoint (the image's Cmd is dropped too).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// vCPUs for the microVM (default 1); CPU quota for a container.
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Memory: 512m, 1g, or bytes (microVM default 256m; a container has no limit unless given).
    #[arg(short, long, value_name = "SIZE")]
    memory: Option<String>,
    /// Where it runs: its own microVM, or a container on this host's kernel.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Microvm)]
    runtime: RuntimeKind,
    /// Print to stderr how long the start took and how long it ran.
    #[arg(long)]
    timing: bool,
    /// The OCI runtime for --runtime container (default: crun if installed, else runc).
    #[arg(long, value_name = "crun|runc")]
    oci_runtime: Option<String>,
    /// Publish a port on the host's IPv4 addresses: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]
    /// (127.0.0.1 included; IPv6 is not published). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// The network to join (`bulkhead network ls`), or `none` for loopback only.
    #[arg(long, value_name = "NAME", default_value = crate::network::DEFAULT_NETWORK)]
    network: String,
    /// Let the workload reach CIDR (or one address) although it is
    /// private, link-local or otherwise denied; repeatable. By default a
    /// workload reaches the internet, its own network and nothing else:
    /// not 10/8, 172.16/12, 192.168/16, 100.64/10, 169.254/16 (cloud
    /// metadata), 127/8, 224/4, 240/4, nor this host's control plane,
    /// which nothing opens.
    #[arg(long = "allow-egress", value_name = "CIDR")]
    allow_egress: Vec<String>,
    // Docker flags bulkhead does not support yet: refused by name, never ignored.
    #[arg(short = 'v', long = "volume", hide = true)]
    volume: Vec<String>,
    #[arg(long, hide = true)]
    mount: Vec<String>,
    #[arg(long, hide = true)]
    privileged: bool,
    #[arg(long, hide = true)]
    restart: Option<String>,
    // For `bulkhead bench`: another VMM started Firecracker's way (--no-api
    // --config-file), and where to write the start milestones as JSON.
    #[arg(long, hide = true, value_name = "PATH")]
    vmm_firecracker: Option<PathBuf>,
    #[arg(long, hide = true, value_name = "FILE")]
    timeline_json: Option<PathBuf>,
    // For `bulkhead node`: the workload stops once the deadline in this file
    // (CLOCK_MONOTONIC ms) has passed: the stop signal, then SIGKILL after
    // --fence-kill-after-ms.
    #[arg(long, hide = true, value_name = "FILE")]
    fence_deadline_file: Option<PathBuf>,
    #[arg(long, hide = true, value_name = "MS", default_value_t = 3000)]
    fence_kill_after_ms: u64,
    /// The image (name[:tag] or digest) from `bulkhead image ls`.
    image: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl RunArgs {
    fn refuse_unsupported(&self) -> Result<()> {
        let mut not_yet = Vec::new();
        if !self.volume.is_empty() || !self.mount.is_empty() {
            not_yet.push("-v/--volume and --mount (volumes are not supported yet)");
        }
        if self.privileged {
            not_yet.push(
                "--privileged (not supported: it would undo the isolation bulkhead exists for)",
            );
        }
        if self.restart.is_some() {
            not_yet.push("--restart (restart policies belong to `bulkhead deploy`, not built yet)");
        }
        if !not_yet.is_empty() {
            bail!("unsupported flag(s): {}", not_yet.join("; "));
        }
        Ok(())
    }
}

/// `SIGTERM`, `TERM`, `15` -> 15.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))
}

/// Image config + env files + flags -> the process to run.
fn process_spec(img: &bulkhead_images::store::Image, a: &RunArgs) -> Result<ProcessSpec> {
    let rc = &img.config.config;
    let mut spec = rc.process_spec();
    spec.args = match &a.entrypoint {
        Some(e) => std::iter::once(e.clone())
            .chain(a.command.iter().cloned())
            .collect(),
        None if !a.command.is_empty() => rc
            .entrypoint
            .iter()
            .flatten()
            .cloned()
            .chain(a.command.iter().cloned())
            .collect(),
        None => spec.args,
    };
    if spec.args.is_empty() || spec.args[0].is_empty() {
        bail!("no command: the image has no Entrypoint or Cmd, so give one after the image name");
    }
    let mut extra = Vec::new();
    for f in &a.env_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("--env-file {}", f.display()))?;
        extra.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    extra.extend(a.env.iter().cloned());
    for e in extra {
        let kv = match e.split_once('=') {
            Some(_) => e,
            None => match std::env::var(&e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue, // docker: an unset KEY is left out
            },
        };
        let key = kv.split('=').next().unwrap_or_default().to_string();
        if key.is_empty() {
            bail!("-e {kv:?}: empty variable name");
        }
        spec.env
            .retain(|x| x.split('=').next() != Some(key.as_str()));
        spec.env.push(kv);
    }
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("-w {w:?}: the working directory must be absolute");
        }
        spec.cwd = Some(w.clone());
    }
    if let Some(u) = &a.user {
        spec.user = Some(u.clone());
    }
    spec.tty = a.tty;
    spec.stdin = a.interactive;
    Ok(spec)
}

fn vm_files(store: &Store, manifest: &bulkhead_images::store::Digest) -> Result<VmFiles> {
    match bulkhead_vmm::host::detect() {
        bulkhead_vmm::host::KvmKind::Hardware => {}
        other => bail!(
            "this host cannot boot a microVM: {other}. A stock Linux guest needs VT-x/AMD-V behind /dev/kvm. Use --runtime container here, or run bulkhead inside the nested test host (`tests/testhost/run -- bulkhead run ...`; `make demo` does)"
        ),
    }
    let kernel = match std::env::var_os("BULKHEAD_KERNEL").filter(|k| !k.is_empty()) {
        Some(k) => PathBuf::from(k),
        None => match bulkhead_images::kernel::find_built() {
            Ok(k) => k.vmlinux,
            Err(_) => {
                eprintln!("the guest kernel is not built yet: building it once (minutes; cached)");
                let mut progress = super::kernel::TerminalProgress::new();
                bulkhead_images::kernel::build(&Default::default(), &mut progress)
                    .context("build the guest kernel (`bulkhead kernel build` shows more)")?
                    .vmlinux
            }
        },
    };
    let agent = crate::runtime::shipped_binary("bulkhead-agent")?;
    let initrd =
        bulkhead_images::agent_initramfs::cached(&agent).context("the agent's initramfs")?;
    let disk = rootdisk::build(store, manifest, Format::Ext4, &mut |m| eprintln!("{m}"))
        .context("the image's root disk")?;
    let real = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
    let jail = Jail {
        jailer: real(crate::runtime::shipped_binary("bulkhead-jailer")?)?,
        chroot_base: Paths::jail_base(),
        uid: 0,
        gid: 0,
        ids: jail_ids()?,
    };
    Ok(VmFiles {
        vmm: real(crate::runtime::shipped_binary("bulkhead-vmm")?)?,
        kernel: real(kernel)?,
        initrd: real(initrd)?,
        disk: real(disk)?,
        flavor: Default::default(),
        jail: Some(jail),
    })
}

/// The uids (and gids, the same numbers) jailed VMMs run as: one each,
/// `BULKHEAD_JAIL_IDS=FIRST-LAST`. The default lies above the ranges
/// distributions hand out (users, subuid maps from 100000, systemd's
/// containers up to 1879048191) and below 2^31.
pub const DEFAULT_JAIL_IDS: (u32, u32) = (2_000_000_000, 2_000_065_535);

fn jail_ids() -> Result<(u32, u32)> {
    let Some(v) = std::env::var("BULKHEAD_JAIL_IDS")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return Ok(DEFAULT_JAIL_IDS);
    };
    parse_jail_ids(&v).with_context(|| format!("BULKHEAD_JAIL_IDS={v:?}: FIRST-LAST, 0 < FIRST <= LAST < 4294967295 (e.g. 2000000000-2000065535)"))
}

fn parse_jail_ids(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('-')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b && b < u32::MAX).then_some((a, b))
}

/// Starts the supervisor for `id` and waits for its first word: `ok`, or
/// `err MESSAGE` (it ended already).
fn spawn_supervisor(data: &Path, id: &str) -> Result<std::result::Result<(), String>> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let fd = write_end.as_raw_fd();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("__supervise")
        .arg("--data")
        .arg(data)
        .args(["--notify-fd", "3", id]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it puts our pipe end at fd 3 (without CLOEXEC) for the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let status = cmd.status().context("start the supervisor")?;
    drop(write_end);
    if !status.success() {
        bail!("the supervisor failed to start: {status}");
    }
    let mut msg = String::new();
    std::fs::File::from(read_end).read_to_string(&mut msg)?;
    let first = msg.lines().next().unwrap_or("").to_string();
    Ok(match first.as_str() {
        "ok" => Ok(()),
        "" => Err("the supervisor died before it started the workload".into()),
        other => Err(other
            .strip_prefix("err ")
            .unwrap_or(other)
            .replace("\\n", "\n")),
    })
}

pub fn run(a: RunArgs) -> Result<u8> {
    let invoked_ms = now_ms();
    a.refuse_unsupported()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("`bulkhead run` needs root for now (KVM, TAP devices, overlay mounts, OCI runtimes)");
    }
    let data = paths::data_dir();
    let store = Store::open(&data)
        .with_context(|| format!("open the image store at {}", data.display()))?;
    let manifest = store.resolve(&a.image).with_context(|| {
        format!(
            "image {:?} (pull or import it first: `bulkhead image pull|import`)",
            a.image
        )
    })?;
    let img = store.image(&manifest)?;
    let process = process_spec(&img, &a)?;
    let stop_signal = match img.config.config.stop_signal.as_deref() {
        Some(s) if !s.is_empty() => {
            parse_signal(s).with_context(|| format!("the image's StopSignal {s:?}"))?
        }
        _ => libc::SIGTERM,
    };
    // Checked for the runtime before anything is made (the VMM's own bounds for a microVM).
    let memory_mib = a
        .memory
        .as_deref()
        .map(|m| crate::runtime::limits::memory_for(a.runtime, m))
        .transpose()
        .context("--memory")?;
    if let Some(c) = a.cpus {
        if !(c > 0.0 && c <= 64.0) {
            bail!("--cpus {c}: between 0 and 64");
        }
    }
    let vm = match a.runtime {
        RuntimeKind::Microvm => {
            let mut files = vm_files(&store, &manifest)?;
            if let Some(other) = &a.vmm_firecracker {
                if a.network != crate::network::NONE {
                    bail!("another VMM runs with --network none only");
                }
                files.vmm = std::fs::canonicalize(other)
                    .with_context(|| format!("the other VMM {}", other.display()))?;
                files.flavor = crate::state::record::VmmFlavor::Firecracker;
            }
            Some(files)
        }
        RuntimeKind::Container => {
            if let Some(r) = &a.oci_runtime {
                if r != "crun" && r != "runc" {
                    bail!("--oci-runtime {r:?}: crun or runc");
                }
                container::which(r)
                    .with_context(|| format!("{r} is not installed (apt-get install {r})"))?;
            } else if container::default_oci_runtime().is_none() {
                bail!("--runtime container needs crun or runc: apt-get install crun (or runc)");
            }
            None
        }
    };
    let ports = a
        .publish
        .iter()
        .map(|p| Publish::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if a.network == crate::network::NONE && !ports.is_empty() {
        bail!("-p needs a network: --network none has loopback only");
    }
    let allow_egress = a
        .allow_egress
        .iter()
        .map(|c| crate::network::egress::parse_allow(c))
        .collect::<Result<Vec<_>, _>>()?;
    if a.network == crate::network::NONE && !allow_egress.is_empty() {
        bail!("--allow-egress needs a network: --network none has loopback only");
    }
    if allow_egress.len() > crate::network::egress::MAX_ALLOWS {
        bail!(
            "--allow-egress: at most {} of them",
            crate::network::egress::MAX_ALLOWS
        );
    }
    for (i, p) in ports.iter().enumerate() {
        if let Some(q) = ports[..i].iter().find(|q| q.clashes(p)) {
            bail!("-p {p} and -p {q} claim the same host port");
        }
    }
    let p = Paths::new(&data);
    let state = State::new(p.clone());
    // Leftovers of workloads that are gone (a crash, a reboot) go first.
    if let Err(e) = lifecycle::sweep(&state) {
        eprintln!("bulkhead: warning: cleaning up after workloads that are gone: {e}");
    }
    if let Err(e) = crate::runtime::jail::sweep(&state) {
        eprintln!("bulkhead: warning: removing the jails of workloads that are gone: {e}");
    }
    let want = if a.network == crate::network::NONE {
        None
    } else {
        if a.network == crate::network::DEFAULT_NETWORK {
            lifecycle::ensure_default(&state)?;
        }
        // A port another workload publishes, or a host program's: refused
        // now, not at start (the insert checks workloads again, atomically).
        net::check_ports(&net::leases(&state)?, &ports)?;
        for port in &ports {
            drop(crate::network::host::bind_port(port)?);
        }
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Some(Want {
            network: a.network.clone(),
            ports,
            nameservers: crate::network::nameservers(&resolv),
            allow_egress,
        })
    };
    let id = paths::new_id()?;
    let name = match &a.name {
        Some(n) if paths::valid_name(n) => n.clone(),
        Some(n) => {
            bail!("--name {n:?}: letters, digits, '_', '.', '-', starting with a letter or digit")
        }
        None => {
            let base: String = a
                .image
                .rsplit('/')
                .next()
                .unwrap_or("w")
                .split([':', '@'])
                .next()
                .unwrap_or("w")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("{}-{}", if base.is_empty() { "w" } else { &base }, &id[..8])
        }
    };
    let cfg = WorkloadConfig {
        id: id.clone(),
        name,
        image: a.image.clone(),
        manifest: manifest.to_string(),
        runtime: a.runtime,
        oci_runtime: a.oci_runtime.clone(),
        process,
        cpus: a.cpus,
        memory_mib,
        stop_signal,
        attach: !a.detach,
        auto_remove: a.rm,
        vm,
        network: None,
        created_ms: now_ms(),
        fencing: a
            .fence_deadline_file
            .as_ref()
            .map(|f| crate::state::fencing::Fencing {
                deadline_file: f.clone(),
                kill_after_ms: a.fence_kill_after_ms,
            }),
    };
    let dir = p.workload_dir(&id);
    // Configs, logs and writable layers: closed to other users.
    bulkhead_images::private::dir(&p.data().join("workloads"))
        .and_then(|()| bulkhead_images::private::dir(&dir))
        .with_context(|| format!("create {}", dir.display()))?;
    let mut rec = Record {
        config: cfg,
        running: None,
        exit: None,
    };
    // The record and its address lease in one transaction; then the config
    // (with the address) for the supervisor.
    let inserted = net::insert_workload(&state, &mut rec, want.as_ref())
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            write_json(&dir.join("config.json"), &rec.config).map_err(anyhow::Error::from)
        });
    if let Err(e) = inserted {
        let _ = state.remove(&id);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let started = spawn_supervisor(&data, &id)?;
    if a.detach {
        return match started {
            Ok(()) => {
                println!("{id}");
                Ok(0)
            }
            Err(e) => {
                let code = state
                    .get(&id)
                    .ok()
                    .and_then(|r| r.exit.map(|x| x.code))
                    .unwrap_or(125);
                eprintln!("bulkhead: {e}");
                Ok(u8::try_from(code).unwrap_or(EXIT_BULKHEAD))
            }
        };
    }
    if let Err(e) = started {
        bail!("{e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let s = client::connect(&Paths::ctl_socket(&id)).await?;
        client::session(
            s,
            &Request::Attach {
                stdin: a.interactive,
            },
            a.interactive,
            a.tty,
        )
        .await
    });
    rt.shutdown_background();
    let report = report?;
    if let Some(e) = &report.error {
        eprintln!("bulkhead: {e}");
    }
    if let Some(path) = &a.timeline_json {
        let json = serde_json::json!({"code": report.code, "timeline": report.timeline});
        std::fs::write(path, json.to_string())
            .with_context(|| format!("write {}", path.display()))?;
    }
    if a.timing {
        let end = now_ms();
        match report.started_ms {
            Some(s) => eprintln!("bulkhead: {} started {} ms after `bulkhead run` began (wall clock), then ended and was cleaned up {} ms later", a.runtime, s.saturating_sub(invoked_ms), end.saturating_sub(s)),
            None => eprintln!("bulkhead: {} never started ({} ms)", a.runtime, end.saturating_sub(invoked_ms)),
        }
    }
    Ok(u8::try_from(report.code.clamp(0, 255)).unwrap_or(EXIT_BULKHEAD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_jail_ids() {
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert_eq!(parse_signal("2").ok(), Some(2));
        assert!(
            parse_signal("0").is_err()
                && parse_signal("NOPE").is_err()
                && parse_signal("65").is_err()
        );
        assert_eq!(parse_jail_ids("5-9"), Some((5, 9)));
        assert_eq!(parse_jail_ids("7-7"), Some((7, 7)));
        for bad in [
            "",
            "5",
            "9-5",
            "0-10",
            "-1-5",
            "a-b",
            "1-4294967295",
            "1-99999999999",
        ] {
            assert_eq!(parse_jail_ids(bad), None, "{bad}");
        }
    }
}
