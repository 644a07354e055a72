//! `bulkhead volume create|ls|inspect|rm|prune`.

use std::io::IsTerminal;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::workloads::OutputFormat;
use crate::runtime::volumes as host;
use crate::state::paths::{data_dir, Paths};
use crate::state::volumes::{self, Volume, VolumeKind};
use crate::state::State;

fn state() -> State {
    State::new(Paths::new(data_dir()))
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Make a named volume: an ext4 image of SIZE (sparse: it takes what is
    /// written). `bulkhead run -v NAME:/path` makes one too, on first use.
    Create(CreateArgs),
    /// List volumes: kind, size, space taken, the workloads that use them.
    Ls {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// A volume's details as JSON.
    Inspect { names: Vec<String> },
    /// Remove volumes no workload uses (a workload's record keeps it in use
    /// until `bulkhead rm`); their data is gone.
    Rm {
        /// No error for a volume that does not exist.
        #[arg(short, long)]
        force: bool,
        names: Vec<String>,
    },
    /// Remove every volume no workload uses.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Its size limit: 512m, 10g, 1t [default: 1g].
    #[arg(long)]
    size: Option<String>,
    /// block: a disk for microVMs (only guests mount it); dir: a host
    /// directory for containers.
    #[arg(long = "type", value_enum, default_value_t = VolumeKind::Block)]
    kind: VolumeKind,
    name: String,
}

fn need_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`bulkhead volume {what}` needs root (volumes live in the data dir, mounted by root)"
        );
    }
    Ok(())
}

fn user_names(records: &[crate::state::record::Record], name: &str) -> Vec<String> {
    volumes::users(records, name)
        .iter()
        .map(|r| r.config.name.clone())
        .collect()
}

fn json(st: &State, v: &Volume, records: &[crate::state::record::Record]) -> serde_json::Value {
    let p = st.paths();
    let users: Vec<_> = volumes::users(records, &v.name)
        .iter()
        .map(|r| {
            let m = r.config.volumes.iter().find(|m| m.volume == v.name);
            serde_json::json!({
                "id": r.config.id,
                "name": r.config.name,
                "status": r.status().to_string(),
                "target": m.map(|m| m.target.clone()),
                "read_only": m.is_some_and(|m| m.read_only),
            })
        })
        .collect();
    serde_json::json!({
        "name": v.name,
        "kind": v.kind.to_string(),
        "size_bytes": v.size_bytes,
        "allocated_bytes": host::allocated_bytes(p, &v.name),
        "created_ms": v.created_ms,
        "used": v.used,
        "disk": host::disk_path(p, &v.name),
        "host_mount": (v.kind == VolumeKind::Dir).then(|| host::mount_point(p, &v.name)),
        "workloads": users,
    })
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 40 && b % (1 << 40) == 0 => format!("{}T", b >> 40),
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 => format!("{}M", b >> 20),
        b => format!("{b}B"),
    }
}

pub fn run(cmd: VolumeCommand) -> Result<()> {
    let st = state();
    match cmd {
        VolumeCommand::Create(a) => {
            need_root("create")?;
            let bytes = match &a.size {
                Some(s) => volumes::parse_size(s).map_err(anyhow::Error::msg)?,
                None => volumes::DEFAULT_SIZE,
            };
            let v = host::create(&st, &a.name, a.kind, bytes)?;
            println!("{}", v.name);
        }
        VolumeCommand::Ls { format } => {
            let vols = volumes::list(&st)?;
            let records = st.list()?;
            if format == OutputFormat::Json {
                let v: Vec<_> = vols.iter().map(|v| json(&st, v, &records)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header(["NAME", "KIND", "SIZE", "TAKEN", "WORKLOADS"]);
            for v in &vols {
                t.add_row([
                    v.name.clone(),
                    v.kind.to_string(),
                    size(v.size_bytes),
                    host::allocated_bytes(st.paths(), &v.name).map_or("?".into(), size),
                    user_names(&records, &v.name).join(","),
                ]);
            }
            println!("{t}");
        }
        VolumeCommand::Inspect { names } => {
            if names.is_empty() {
                bail!("name the volume(s) to inspect (`bulkhead volume ls`)");
            }
            let records = st.list()?;
            let mut out = Vec::new();
            for n in &names {
                match volumes::get(&st, n)? {
                    Some(v) => out.push(json(&st, &v, &records)),
                    None => bail!("no volume {n:?} (`bulkhead volume ls` lists them)"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        VolumeCommand::Rm { force, names } => {
            need_root("rm")?;
            if names.is_empty() {
                bail!("name the volume(s) to remove (`bulkhead volume ls`)");
            }
            let mut failed = 0;
            for n in &names {
                if force && volumes::get(&st, n)?.is_none() {
                    continue;
                }
                match host::remove(&st, n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("bulkhead: {}", bulkhead_agent_proto::report(&e));
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} volume(s) not removed", names.len());
            }
        }
        VolumeCommand::Prune { force } => {
            need_root("prune")?;
            let records = st.list()?;
            let unused: Vec<Volume> = volumes::list(&st)?
                .into_iter()
                .filter(|v| volumes::users(&records, &v.name).is_empty())
                .collect();
            if unused.is_empty() {
                eprintln!("no unused volumes");
                return Ok(());
            }
            if !force {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "this removes {} volume(s) and their data: pass -f to go ahead",
                        unused.len()
                    );
                }
                let names: Vec<_> = unused.iter().map(|v| v.name.as_str()).collect();
                eprint!("remove {} and their data? [y/N] ", names.join(", "));
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!("nothing removed");
                }
            }
            let mut freed = 0u64;
            for v in &unused {
                let taken = host::allocated_bytes(st.paths(), &v.name).unwrap_or(0);
                match host::remove(&st, &v.name) {
                    Ok(()) => {
                        println!("{}", v.name);
                        freed += taken;
                    }
                    // Taken into use meanwhile: kept.
                    Err(e) => eprintln!("bulkhead: {}", bulkhead_agent_proto::report(&e)),
                }
            }
            eprintln!("freed {}", size(freed));
        }
    }
    Ok(())
}
