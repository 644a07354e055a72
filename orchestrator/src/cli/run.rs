//! `bulkhead run`: an image in its own microVM (or, with `--runtime
//! container`, on the shared kernel through crun/runc), docker-style.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::{Digest, Store};
use clap::Args;

use crate::network::Publish;
use crate::runtime::attach::{self, Mark};
use crate::runtime::client;
use crate::runtime::create::{self, CreateError, Request, Started, VmAssets};
use crate::state::fencing::Fencing;
use crate::state::paths::{self, Paths};
use crate::state::record::{now_ms, DiskFormat, RuntimeKind};
use crate::state::volumes::{self, MountAsk, VolumeMount};
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
    /// Never let the workload reach CIDR (or one address), even on the
    /// internet or inside an --allow-egress range; repeatable. What the
    /// walls refuse is counted (`bulkhead inspect`: egress_refused).
    #[arg(long = "deny-egress", value_name = "CIDR")]
    deny_egress: Vec<String>,
    /// No internet: the workload reaches its own network, its nameservers
    /// and what --allow-egress opens, nothing else.
    #[arg(long)]
    no_internet: bool,
    /// A health check: CMD runs inside the workload through /bin/sh -c
    /// every interval; exit 0 is healthy (`ps` and `inspect` show it).
    /// Replaces the image's HEALTHCHECK; without it the image's is used.
    #[arg(long, value_name = "CMD")]
    health_cmd: Option<String>,
    /// Time between checks (default 30s, at least 1s): 500ms, 10s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = super::cluster::parse_duration_ms)]
    health_interval: Option<u64>,
    /// How long one check may take (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = super::cluster::parse_duration_ms)]
    health_timeout: Option<u64>,
    /// Failures in a row that make it unhealthy (default 3).
    #[arg(long, value_name = "N")]
    health_retries: Option<u32>,
    /// Failures in this time after the start do not count (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = super::cluster::parse_duration_ms)]
    health_start_period: Option<u64>,
    /// No health check, whatever the image's HEALTHCHECK says.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    no_healthcheck: bool,
    /// A named volume: NAME:/path[:ro]. Made on first use (a block volume
    /// for a microVM, a dir volume for a container: `bulkhead volume`),
    /// filled from the image's content at /path then; its data outlives the
    /// workload. One writer at a time. (Host paths: not supported yet.)
    #[arg(short = 'v', long = "volume", value_name = "NAME:/PATH[:ro]")]
    volume: Vec<String>,
    /// The same as type=volume,source=NAME,target=/PATH[,readonly].
    #[arg(long, value_name = "type=volume,source=NAME,target=/PATH[,readonly]")]
    mount: Vec<String>,
    /// A tmpfs at /PATH (memory): size=SIZE (default 64m), mode=OCTAL
    /// (default 1777), exec (default noexec); nosuid, nodev.
    #[arg(long, value_name = "/PATH[:size=64m,mode=1777,exec]")]
    tmpfs: Vec<String>,
    /// The root filesystem read-only: writes go to tmpfs (/run, /tmp in a
    /// microVM; --tmpfs) and volumes only.
    #[arg(long)]
    read_only: bool,
    // Docker flags bulkhead does not support yet: refused by name, never ignored.
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

/// Env files, then `-e` (KEY=VALUE, or KEY to pass ours on: left out when
/// we have none, as docker does) -> KEY=VALUE in order.
fn env_of(a: &RunArgs) -> Result<Vec<String>> {
    let mut given = Vec::new();
    for f in &a.env_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("--env-file {}", f.display()))?;
        given.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    given.extend(a.env.iter().cloned());
    let mut env = Vec::new();
    for e in given {
        let kv = match e.split_once('=') {
            Some(_) => e,
            None => match std::env::var(&e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue, // docker: an unset KEY is left out
            },
        };
        if kv.split('=').next().unwrap_or_default().is_empty() {
            bail!("-e {kv:?}: empty variable name");
        }
        env.push(kv);
    }
    Ok(env)
}

/// `-v` and `--mount` -> the volumes, in order; host paths refused.
fn volumes_of(a: &RunArgs) -> Result<Vec<VolumeMount>> {
    let asks = a
        .volume
        .iter()
        .map(|v| volumes::parse_volume_flag(v))
        .chain(a.mount.iter().map(|m| volumes::parse_mount_flag(m)));
    let mut out: Vec<VolumeMount> = Vec::new();
    for ask in asks {
        match ask.map_err(anyhow::Error::msg)? {
            MountAsk::Volume(v) => {
                if out.iter().any(|o| o.target == v.target) {
                    bail!("two volumes at {}", v.target);
                }
                out.push(v);
            }
            MountAsk::Bind { source, target } => bail!(
                "{source}:{target}: host directories (bind mounts) are not supported yet; use a named volume (NAME:{target})"
            ),
        }
    }
    Ok(out)
}

/// The flags as the runtime's typed request.
fn request(a: &RunArgs) -> Result<Request> {
    let publish = a
        .publish
        .iter()
        .map(|p| Publish::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let allow_egress = a
        .allow_egress
        .iter()
        .map(|c| crate::network::egress::parse_allow(c))
        .collect::<Result<Vec<_>, _>>()?;
    let deny_egress = a
        .deny_egress
        .iter()
        .map(|c| crate::network::egress::parse_deny(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Request {
        image: a.image.clone(),
        name: a.name.clone(),
        volumes: volumes_of(a)?,
        tmpfs: a
            .tmpfs
            .iter()
            .map(|t| volumes::parse_tmpfs_flag(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?,
        read_only_root: a.read_only,
        runtime: a.runtime,
        oci_runtime: a.oci_runtime.clone(),
        entrypoint: a.entrypoint.clone(),
        command: a.command.clone(),
        env: env_of(a)?,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        interactive: a.interactive,
        cpus: a.cpus,
        memory: a.memory.clone(),
        network: a.network.clone(),
        publish,
        allow_egress,
        deny_egress,
        no_internet: a.no_internet,
        attach: !a.detach,
        auto_remove: a.rm,
        fencing: a.fence_deadline_file.as_ref().map(|f| Fencing {
            deadline_file: f.clone(),
            kill_after_ms: a.fence_kill_after_ms,
        }),
        other_vmm: a.vmm_firecracker.clone(),
        tenant: None,
        health: crate::runtime::health::HealthAsk {
            probe: a.health_cmd.as_ref().map(|c| {
                crate::state::health::Probe::Exec(vec!["/bin/sh".into(), "-c".into(), c.clone()])
            }),
            interval_ms: a.health_interval,
            timeout_ms: a.health_timeout,
            start_period_ms: a.health_start_period,
            retries: a.health_retries,
            off: a.no_healthcheck,
        },
    })
}

/// The CLI builds what a microVM lacks in its own process, with progress
/// on the terminal.
struct HereWithProgress;

impl VmAssets for HereWithProgress {
    fn kernel(&mut self) -> Result<PathBuf, CreateError> {
        match bulkhead_images::kernel::find_built() {
            Ok(k) => Ok(k.vmlinux),
            Err(_) => {
                eprintln!("the guest kernel is not built yet: building it once (minutes; cached)");
                let mut progress = super::kernel::TerminalProgress::new();
                bulkhead_images::kernel::build(&Default::default(), &mut progress)
                    .map(|k| k.vmlinux)
                    .map_err(|e| {
                        CreateError::asset(
                            "build the guest kernel (`bulkhead kernel build` shows more)",
                            e,
                        )
                    })
            }
        }
    }

    fn root_disk(
        &mut self,
        store: &Store,
        manifest: &Digest,
        format: DiskFormat,
    ) -> Result<PathBuf, CreateError> {
        let format = match format {
            DiskFormat::Ext4 => Format::Ext4,
            DiskFormat::Erofs => Format::Erofs,
        };
        rootdisk::build(store, manifest, format, &mut |m| eprintln!("{m}"))
            .map_err(|e| CreateError::asset("the image's root disk", e))
    }
}

pub fn run(a: RunArgs) -> Result<u8> {
    let invoked_ms = now_ms();
    let mut marks = vec![Mark::now("cli-parsed")];
    a.refuse_unsupported()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("`bulkhead run` needs root for now (KVM, TAP devices, overlay mounts, OCI runtimes)");
    }
    let data = paths::data_dir();
    let req = request(&a)?;
    let rec = create::create(&data, &req, &mut HereWithProgress)?;
    marks.push(Mark::now("record-stored"));
    let id = rec.config.id;
    let started = create::start(&data, &id)?;
    if a.detach {
        return match started {
            Started::Running => {
                println!("{id}");
                Ok(0)
            }
            Started::Ended(e) => {
                let code = State::new(Paths::new(&data))
                    .get(&id)
                    .ok()
                    .and_then(|r| r.exit.map(|x| x.code))
                    .unwrap_or(125);
                eprintln!("bulkhead: {e}");
                Ok(u8::try_from(code).unwrap_or(EXIT_BULKHEAD))
            }
        };
    }
    if let Started::Ended(e) = started {
        bail!("{e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let s = client::connect(&Paths::ctl_socket(&id)).await?;
        client::session(
            s,
            &attach::Request::Attach {
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
        marks.extend(report.timeline.iter().cloned());
        let json = serde_json::json!({"code": report.code, "timeline": marks, "vm_exits": report.vm_exits});
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
