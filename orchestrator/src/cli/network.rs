//! `bulkhead network create|ls|inspect|rm` and `bulkhead system prune`.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::workloads::OutputFormat;
use crate::network::{host, lifecycle, rules, Subnet};
use crate::state::net;
use crate::state::paths::data_dir;
use crate::state::paths::Paths;
use crate::state::State;

fn state() -> State {
    State::new(Paths::new(data_dir()))
}

fn need_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`bulkhead {what}` needs root (bridges and nftables rules)");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a bridge of its own and a subnet. Workloads on
    /// different networks cannot reach each other.
    Create(CreateArgs),
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// A network's details as JSON: subnet, bridge, the workloads on it with
    /// their addresses and ports, and its firewall rules.
    Inspect { name: String },
    /// Remove networks no workload is on, with their bridges.
    Rm { names: Vec<String> },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// IPv4 subnet (ADDRESS/PREFIX, /8 to /29); its first address is the
    /// gateway [default: the first 10.N.0.0/16 from 10.89 that nothing here uses].
    #[arg(long)]
    subnet: Option<String>,
    /// The bridge's name (default: bh-NAME, or bh-HASH when NAME does not fit).
    #[arg(long)]
    bridge: Option<String>,
    name: String,
}

pub fn run(cmd: NetworkCommand) -> Result<()> {
    let st = state();
    match cmd {
        NetworkCommand::Create(a) => {
            need_root("network create")?;
            let subnet = match &a.subnet {
                Some(s) => Subnet::parse(s)?,
                None => lifecycle::pick_subnet(&st, 16)?,
            };
            let n = lifecycle::create(&st, &a.name, subnet, a.bridge)?;
            println!("{}", n.name);
        }
        NetworkCommand::Ls { format } => {
            let nets = net::networks(&st)?;
            let leases = net::leases(&st)?;
            let count = |name: &str| {
                leases
                    .iter()
                    .filter(|l| l.attachment.network == name)
                    .count()
            };
            if format == OutputFormat::Json {
                let v: Vec<_> = nets
                    .iter()
                    .map(|n| serde_json::json!({"name": n.name, "bridge": n.bridge, "subnet": n.subnet.to_string(), "gateway": n.gateway().to_string(), "tenant": n.tenant, "workloads": count(&n.name)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header(["NAME", "BRIDGE", "SUBNET", "GATEWAY", "TENANT", "WORKLOADS"]);
            for n in &nets {
                t.add_row([
                    n.name.clone(),
                    n.bridge.clone(),
                    n.subnet.to_string(),
                    n.gateway().to_string(),
                    n.tenant.clone().unwrap_or_default(),
                    count(&n.name).to_string(),
                ]);
            }
            println!("{t}");
        }
        NetworkCommand::Inspect { name } => {
            let n = net::network(&st, &name)?;
            let leases: Vec<_> = net::leases(&st)?
                .into_iter()
                .filter(|l| l.attachment.network == name)
                .collect();
            let attachments: Vec<_> = leases.iter().map(|l| l.attachment.clone()).collect();
            let policy = net::host_policy(&st)?;
            let refused = crate::network::lifecycle::refused(&st);
            let workloads: Vec<_> = leases
                .iter()
                .map(|l| {
                    let a = &l.attachment;
                    serde_json::json!({"id": l.id, "ip": a.ip.to_string(), "mac": a.mac, "interface": a.host_if, "ports": a.ports.iter().map(ToString::to_string).collect::<Vec<_>>(), "egress": crate::network::lifecycle::egress_json(a, &refused)})
                })
                .collect();
            let v = serde_json::json!({
                "name": n.name,
                "bridge": n.bridge,
                "bridge_present": host::link_exists(&n.bridge),
                "subnet": n.subnet.to_string(),
                "gateway": n.gateway().to_string(),
                // Where its workloads' names are answered (none on the default network).
                "resolver": crate::network::dns::serves(&n).then(|| format!("{}:53", n.gateway())),
                "tenant": n.tenant,
                "workloads": workloads,
                "protected": policy.protected.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "rules": rules::network_rules(&n, &attachments, &policy),
                "nft_table_loaded": host::list_rules(&crate::network::HostNames::of(state().paths()).table()).is_some(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        NetworkCommand::Rm { names } => {
            need_root("network rm")?;
            if names.is_empty() {
                bail!("name the network(s) to remove (`bulkhead network ls`)");
            }
            for n in names {
                lifecycle::remove(&st, &n)?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Remove what workloads that are gone left behind (after a crash or a
    /// reboot): address leases, TAP and veth interfaces, firewall rules;
    /// recreate missing bridges, and put back our firewall tables and
    /// routing rules where something removed them (a firewall reload cuts
    /// workloads off until then). Running workloads are not touched.
    Prune,
}

pub fn system(cmd: SystemCommand) -> Result<()> {
    match cmd {
        SystemCommand::Prune => {
            need_root("system prune")?;
            let mut removed = lifecycle::sweep(&state())?;
            removed.extend(
                lifecycle::check_walls(&state())?
                    .into_iter()
                    .map(|w| format!("(restored {w})")),
            );
            for r in &removed {
                match r.strip_prefix('(') {
                    Some(note) => println!("{}", note.trim_end_matches(')')),
                    None => println!("removed {r}"),
                }
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
        }
    }
    Ok(())
}
