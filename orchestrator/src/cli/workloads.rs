//! `bulkhead ps|logs|exec|stop|kill|rm|inspect`: workloads `run` started.

use std::io::{Read, Seek, Write};

use anyhow::{bail, Result};
use bulkhead_agent_proto::ProcessSpec;
use clap::Args;

use crate::runtime::attach::Request;
use crate::runtime::client;
use crate::runtime::create::parse_signal;
use crate::state::paths::data_dir;
use crate::state::paths::{self, Paths};
use crate::state::record::{Record, Status};
use crate::state::State;

fn state() -> State {
    State::new(Paths::new(data_dir()))
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also the ones that ended.
    #[arg(short, long)]
    all: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

pub(crate) fn ago(ms: u64) -> String {
    let s = crate::state::record::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn ports(r: &Record) -> String {
    r.config
        .network
        .as_ref()
        .map(|n| {
            n.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn summary(st: &crate::state::State, r: &Record) -> serde_json::Value {
    serde_json::json!({
        "id": r.config.id,
        "name": r.config.name,
        "image": r.config.image,
        "runtime": r.config.runtime.to_string(),
        "status": r.status().to_string(),
        "created_ms": r.config.created_ms,
        "command": r.config.process.args,
        "ip": r.config.network.as_ref().map(|n| n.ip.to_string()),
        "ports": ports(r),
        "health": st.health(r).map(|h| h.status),
    })
}

pub fn ps(a: PsArgs) -> Result<u8> {
    let st = state();
    let all = st.list()?;
    let shown: Vec<&Record> = all
        .iter()
        .filter(|r| a.all || r.status().is_live())
        .collect();
    if a.format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &shown.iter().map(|r| summary(&st, r)).collect::<Vec<_>>()
            )?
        );
        return Ok(0);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "ID", "NAME", "IMAGE", "RUNTIME", "COMMAND", "CREATED", "STATUS", "PORTS",
    ]);
    for r in shown {
        let mut cmd = r.config.process.args.join(" ");
        if cmd.len() > 30 {
            cmd = format!("{}...", cmd.chars().take(27).collect::<String>());
        }
        let mut status = r.status().to_string();
        if let Some(first) = status.lines().next() {
            status = first.chars().take(60).collect();
        }
        if let Some(h) = st.health(r) {
            status = format!("{status} ({})", h.status);
        }
        t.add_row([
            paths::short(&r.config.id).to_string(),
            r.config.name.clone(),
            r.config.image.clone(),
            r.config.runtime.to_string(),
            cmd,
            ago(r.config.created_ms),
            status,
            ports(r),
        ]);
    }
    println!("{t}");
    Ok(0)
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the workload ends.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    name: String,
}

pub fn logs(a: LogsArgs) -> Result<u8> {
    let st = state();
    let r = st.get(&a.name)?;
    let dir = st.paths().workload_dir(&r.config.id);
    let log = dir.join("log");
    let mut all = std::fs::read(dir.join("log.1")).unwrap_or_default();
    let mut f = std::fs::File::open(&log).ok();
    if let Some(f) = &mut f {
        f.read_to_end(&mut all)?;
    }
    let out = match a.tail {
        Some(n) => crate::runtime::workload::last_lines(&all, n),
        None => &all,
    };
    std::io::stdout().write_all(out)?;
    std::io::stdout().flush()?;
    if !a.follow {
        return Ok(0);
    }
    // Follow: inotify on the workload dir wakes us for new output, a
    // rotation, or exit.json (then drain and stop).
    let ino = nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC)?;
    use nix::sys::inotify::AddWatchFlags as W;
    ino.add_watch(
        &dir,
        W::IN_MODIFY | W::IN_CREATE | W::IN_MOVED_TO | W::IN_DELETE_SELF,
    )?;
    let mut pos = f
        .as_mut()
        .map(|f| f.stream_position())
        .transpose()?
        .unwrap_or(0);
    loop {
        let done = dir.join("exit.json").exists()
            || !dir.exists()
            || st
                .get(&r.config.id)
                .map(|r| !r.status().is_live())
                .unwrap_or(true);
        // Rotated: start over on the new file.
        if std::fs::metadata(&log)
            .map(|m| m.len() < pos)
            .unwrap_or(false)
        {
            pos = 0;
        }
        if let Ok(mut f) = std::fs::File::open(&log) {
            f.seek(std::io::SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            std::io::stdout().write_all(&buf)?;
            std::io::stdout().flush()?;
        }
        if done {
            return Ok(0);
        }
        // Bounded wait, so a supervisor that died without writing still ends us.
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&ino),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))? > 0 {
            let _ = ino.read_events();
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[arg(short, long)]
    interactive: bool,
    #[arg(short, long)]
    tty: bool,
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(short, long = "workdir")]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
    name: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

fn running(r: &Record) -> Result<()> {
    match r.status() {
        Status::Running => Ok(()),
        s => bail!("{} is not running ({s})", r.config.name),
    }
}

pub fn exec(a: ExecArgs) -> Result<u8> {
    let r = state().get(&a.name)?;
    running(&r)?;
    let mut env = r.config.process.env.clone();
    for e in &a.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let process = ProcessSpec {
        args: a.command.clone(),
        env,
        cwd: a.workdir.clone().or(r.config.process.cwd.clone()),
        user: a.user.clone().or(r.config.process.user.clone()),
        tty: a.tty,
        stdin: a.interactive,
        ..Default::default()
    };
    let rt = rt()?;
    let report = rt.block_on(async {
        let s = client::connect(&Paths::ctl_socket(&r.config.id)).await?;
        client::session(s, &Request::Exec { process }, a.interactive, a.tty).await
    });
    rt.shutdown_background();
    let report = report?;
    if let Some(e) = &report.error {
        eprintln!("bulkhead: {e}");
    }
    Ok(u8::try_from(report.code.clamp(0, 255)).unwrap_or(125))
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after the stop signal before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn stop(a: StopArgs) -> Result<u8> {
    let st = state();
    for n in &a.names {
        crate::runtime::remove::stop(&st.get(n)?, a.time)?;
        println!("{n}");
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal name or number.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn kill(a: KillArgs) -> Result<u8> {
    let sig = parse_signal(&a.signal)?;
    let st = state();
    let rt = rt()?;
    for n in &a.names {
        let r = st.get(n)?;
        running(&r)?;
        rt.block_on(client::request(
            &Paths::ctl_socket(&r.config.id),
            &Request::Signal { signal: sig },
        ))?;
        println!("{n}");
    }
    Ok(0)
}

#[derive(Debug, Args)]
#[command(
    after_help = "Several workloads are removed side by side (up to 16 at once), each as it finishes; a name that cannot be removed is reported and the others still go (exit status 1 then)."
)]
pub struct RmArgs {
    /// Kill it first if it still runs (also cleans up after a dead supervisor).
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    names: Vec<String>,
}

/// Workloads removed at once by one `rm`.
const RM_PARALLEL: usize = 16;

pub fn rm(a: RmArgs) -> Result<u8> {
    let st = state();
    // Names to records with the store open once; each workload once, in
    // the order first named.
    let mut todo: Vec<(String, Record)> = Vec::new();
    let mut failed = false;
    {
        let _db = st.hold()?;
        for n in &a.names {
            match st.get(n) {
                Ok(r) if todo.iter().any(|(_, t)| t.config.id == r.config.id) => {}
                Ok(r) => todo.push((n.clone(), r)),
                Err(e) => {
                    eprintln!("bulkhead: {e}");
                    failed = true;
                }
            }
        }
    }
    // Side by side: each one's stop (a VM's shutdown takes the longest)
    // does not wait for the others'. They take turns on the store and the
    // network lock as any two `rm`s would.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let any_failed = std::sync::atomic::AtomicBool::new(failed);
    std::thread::scope(|s| {
        for _ in 0..todo.len().min(RM_PARALLEL) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((n, r)) = todo.get(i) else { break };
                match crate::runtime::remove::remove(&st, r, a.force) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("bulkhead: {}", bulkhead_agent_proto::report(&e));
                        any_failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Ok(u8::from(any_failed.into_inner()))
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    name: String,
}

pub fn inspect(a: InspectArgs) -> Result<u8> {
    let st = state();
    let r = st.get(&a.name)?;
    let dir = st.paths().workload_dir(&r.config.id);
    let c = &r.config;
    // The lease is current (a tenant policy may change a running workload's egress).
    let attachment = crate::state::net::leases(&st)
        .ok()
        .and_then(|ls| ls.into_iter().find(|l| l.id == c.id))
        .map(|l| l.attachment)
        .or_else(|| c.network.clone());
    let v = serde_json::json!({
        "id": c.id,
        "name": c.name,
        "image": c.image,
        "image_digest": c.manifest,
        "runtime": c.runtime.to_string(),
        "oci_runtime": c.oci_runtime,
        "status": r.status().to_string(),
        "health_check": c.health,
        "health": st.health(&r),
        "process": c.process,
        "network": attachment.as_ref().map(|n| serde_json::json!({"network": n.network, "ip": n.ip.to_string(), "gateway": n.gateway.to_string(), "mac": n.mac, "interface": n.host_if, "ports": n.ports.iter().map(ToString::to_string).collect::<Vec<_>>(), "nameservers": n.nameservers,
            "egress": crate::network::lifecycle::egress_json(n, &crate::network::lifecycle::refused(&st))})),
        "vm": c.vm.as_ref().map(|vm| serde_json::json!({
            "vcpus": crate::runtime::limits::vm_vcpus(c.cpus),
            "memory_mib": c.memory_mib.unwrap_or(crate::runtime::limits::DEFAULT_VM_MEMORY_MIB),
            "kernel": vm.kernel, "initrd": vm.initrd, "disk": vm.disk.path, "disk_format": vm.disk.format, "vmm": vm.vmm,
            "jail": vm.jail.as_ref().map(|j| serde_json::json!({"uid": j.uid, "gid": j.gid, "dir": j.chroot_base.join(&c.id), "vm_dir": Paths::vm_dir(&c.id), "jailer": j.jailer})),
        })),
        "limits": {"cpus": c.cpus, "memory_mib": c.memory_mib},
        "fencing": c.fencing,
        "volumes": c.volumes,
        "pids": r.running.as_ref().map(|x| serde_json::json!({"supervisor": x.supervisor.pid, "runtime": x.runtime.map(|p| p.pid)})),
        "paths": {
            "dir": dir,
            "log": dir.join("log"),
            "control_socket": Paths::ctl_socket(&c.id),
            "runtime_dir": Paths::run_dir(&c.id),
        },
        "created_ms": c.created_ms,
        "started_ms": r.running.as_ref().and_then(|x| x.started_ms),
        "exit": r.exit,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}
