//! The control plane from the command line: `bulkhead server`, and the
//! verbs that talk to one (`deploy`, `service`, `instance`, `node`,
//! `tenant`) over its HTTP API with a bearer token.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::cluster::auth::new_token;
use crate::cluster::state::Cluster;
use crate::cluster::store::FileStore;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// file:PATH: one host (default: cluster.redb in the data dir).
    /// etcd://HOST:PORT[,...] is not built yet.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Seconds without a heartbeat before a node counts as not ready.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    heartbeat_grace: u64,
}

pub fn server(a: ServerArgs) -> Result<()> {
    let path = match a.store.as_deref() {
        None => super::run::data_dir().join("cluster.redb"),
        Some(s) if s.starts_with("file:") && s.len() > 5 => PathBuf::from(&s[5..]),
        Some(s) if s.starts_with("etcd://") => bail!("--store {s}: the etcd store is not built yet; use file:PATH (one host)"),
        Some(s) => bail!("--store {s:?}: file:PATH (or, later, etcd://HOST:PORT)"),
    };
    let cluster = Cluster::new(FileStore::open(&path)?);
    let token_file = path.with_extension("admin-token");
    let token = new_token()?;
    if cluster.init_admin(&token)? {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&token_file).with_context(|| format!("write {}", token_file.display()))?;
        writeln!(f, "{token}")?;
        eprintln!("bulkhead server: new cluster store {}; the admin token is in {} (export BULKHEAD_TOKEN=$(cat {}))", path.display(), token_file.display(), token_file.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(crate::cluster::server::serve(cluster, a.listen, a.heartbeat_grace.saturating_mul(1000))).with_context(|| format!("serve on {}", a.listen))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// How to reach the server.
#[derive(Debug, Args)]
pub struct Conn {
    /// The server's URL (default: $BULKHEAD_SERVER, else http://127.0.0.1:7070).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A bearer token (default: $BULKHEAD_TOKEN).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

impl Conn {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Result<Value> {
        let base = self.server.clone().or_else(|| std::env::var("BULKHEAD_SERVER").ok().filter(|s| !s.is_empty())).unwrap_or_else(|| DEFAULT_SERVER.into());
        let base = base.trim_end_matches('/').to_string();
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("BULKHEAD_TOKEN").ok().filter(|s| !s.is_empty()))
            .context("no token: --token or BULKHEAD_TOKEN (the server wrote the admin token beside its store)")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // The TLS stack's crypto (reqwest is built without a default): ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        rt.block_on(async {
            let mut req = reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(token);
            if let Some(b) = body {
                let kind = if b.trim_start().starts_with('{') { "application/json" } else { "application/yaml" };
                req = req.header("content-type", kind).body(b);
            }
            let resp = req.send().await.with_context(|| format!("cannot reach the server at {base} (is `bulkhead server` running there? --server or BULKHEAD_SERVER)"))?;
            let status = resp.status();
            let text = resp.text().await?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if !status.is_success() {
                bail!("{}", v["error"].as_str().map_or_else(|| format!("{status}: {v}"), str::to_string));
            }
            Ok(v)
        })
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value) -> comfy_table::Table) {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Format::Table => println!("{}", table(v)),
        }
    }
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn placement_table(v: &Value) -> comfy_table::Table {
    let mut t = table(&["INSTANCE", "NODE", ""]);
    for p in v["placed"].as_array().into_iter().flatten() {
        t.add_row(vec![s(&p[0]), s(&p[1]), "placed".into()]);
    }
    for r in v["removed"].as_array().into_iter().flatten() {
        t.add_row(vec![s(r), String::new(), "removed".into()]);
    }
    t
}

fn cpus(millicpus: &Value) -> String {
    millicpus.as_u64().map_or_else(String::new, |m| format!("{}", m as f64 / 1000.0))
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The service file (YAML or JSON; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Show where the replicas would go; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn deploy(a: DeployArgs) -> Result<()> {
    let text = if a.file.as_os_str() == "-" { std::io::read_to_string(std::io::stdin())? } else { std::fs::read_to_string(&a.file).with_context(|| format!("read {}", a.file.display()))? };
    // Checked here first: a bad file fails without a round trip, with the same message.
    crate::cluster::spec::parse(&text)?;
    let v = a.conn.call(reqwest::Method::POST, &format!("/v1/services?dry_run={}", a.dry_run), Some(text))?;
    a.conn.print(&v, placement_table);
    if a.dry_run && a.conn.format == Format::Table {
        eprintln!("dry run: nothing was changed");
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// The tenant's services.
    Ls(Conn),
    /// One service and its instances (JSON).
    Inspect {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set the number of replicas (new ones placed all or nothing; the
    /// highest-numbered go first).
    Scale {
        name: String,
        replicas: u32,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a service and its instances.
    Rm {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn service(cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/services", None)?;
            conn.print(&v, |v| {
                let mut t = table(&["NAME", "IMAGE", "RUNTIME", "REPLICAS", "INSTANCES", "CPU", "MEMORY MIB", "RESTART"]);
                for r in v.as_array().into_iter().flatten() {
                    let sv = &r["service"];
                    t.add_row(vec![
                        s(&sv["spec"]["name"]),
                        s(&sv["spec"]["image"]),
                        s(&sv["spec"]["runtime"]),
                        s(&sv["spec"]["replicas"]),
                        s(&r["instances"]),
                        cpus(&sv["request"]["millicpus"]),
                        s(&sv["request"]["memory_mib"]),
                        s(&sv["spec"]["restart"]),
                    ]);
                }
                t
            });
        }
        ServiceCommand::Inspect { name, conn } => {
            let v = conn.call(reqwest::Method::GET, &format!("/v1/services/{}", path_segment(&name)?), None)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ServiceCommand::Scale { name, replicas, dry_run, conn } => {
            let v = conn.call(reqwest::Method::POST, &format!("/v1/services/{}/scale?dry_run={dry_run}", path_segment(&name)?), Some(json!({ "replicas": replicas }).to_string()))?;
            conn.print(&v, placement_table);
        }
        ServiceCommand::Rm { name, conn } => {
            conn.call(reqwest::Method::DELETE, &format!("/v1/services/{}", path_segment(&name)?), None)?;
            println!("{name}");
        }
    }
    Ok(())
}

/// A name as one URL path segment (names are plain: no escaping needed).
fn path_segment(name: &str) -> Result<&str> {
    if crate::runtime::paths::valid_name(name) {
        Ok(name)
    } else {
        bail!("{name:?}: not a valid name (letters, digits, '_', '.', '-')")
    }
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// The tenant's instances: service, index, node, state, restarts.
    Ls(Conn),
}

pub fn instance(cmd: InstanceCommand) -> Result<()> {
    let InstanceCommand::Ls(conn) = cmd;
    let v = conn.call(reqwest::Method::GET, "/v1/instances", None)?;
    conn.print(&v, |v| {
        let mut t = table(&["SERVICE", "INSTANCE", "NODE", "STATE", "RESTARTS", "LAST EXIT"]);
        for i in v.as_array().into_iter().flatten() {
            t.add_row(vec![s(&i["service"]), s(&i["index"]), s(&i["node"]), s(&i["state"]), s(&i["restarts"]), s(&i["last_exit"])]);
        }
        t
    });
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Nodes: ready, cordoned, CPU and memory allocated of allocatable.
    Ls(Conn),
    /// No new instances on this node.
    Cordon {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// New instances may go to this node again.
    Uncordon {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn node(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/nodes", None)?;
            conn.print(&v, |v| {
                let mut t = table(&["NAME", "READY", "CORDONED", "CPU", "MEMORY MIB", "INSTANCES", "LABELS"]);
                for n in v.as_array().into_iter().flatten() {
                    let labels: Vec<String> = n["node"]["labels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
                    t.add_row(vec![
                        s(&n["node"]["name"]),
                        s(&n["ready"]),
                        s(&n["node"]["cordoned"]),
                        format!("{}/{}", cpus(&n["allocated"]["millicpus"]), cpus(&n["node"]["allocatable"]["millicpus"])),
                        format!("{}/{}", s(&n["allocated"]["memory_mib"]), s(&n["node"]["allocatable"]["memory_mib"])),
                        s(&n["instances"]),
                        labels.join(","),
                    ]);
                }
                t
            });
        }
        NodeCommand::Cordon { name, conn } => {
            conn.call(reqwest::Method::POST, &format!("/v1/nodes/{}/cordon", path_segment(&name)?), None)?;
            println!("{name}");
        }
        NodeCommand::Uncordon { name, conn } => {
            conn.call(reqwest::Method::POST, &format!("/v1/nodes/{}/uncordon", path_segment(&name)?), None)?;
            println!("{name}");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// A new tenant with its quota; prints its token (shown once).
    Create {
        name: String,
        /// CPUs in all (vCPUs of microVMs count whole).
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory in all, as `run --memory` (microVMs count the VMM overhead).
        #[arg(long)]
        memory: Option<String>,
        /// Instances in all.
        #[arg(long)]
        instances: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn tenant(cmd: TenantCommand) -> Result<()> {
    let TenantCommand::Create { name, cpus, memory, instances, conn } = cmd;
    if let Some(c) = cpus {
        if !(c.is_finite() && c > 0.0) {
            bail!("--cpus {c}: more than 0");
        }
    }
    let memory_mib = memory.as_deref().map(super::run::parse_memory).transpose()?;
    let quota = json!({ "millicpus": cpus.map(|c| (c * 1000.0).round() as u64), "memory_mib": memory_mib, "instances": instances });
    let v = conn.call(reqwest::Method::POST, "/v1/tenants", Some(json!({ "name": name, "quota": quota }).to_string()))?;
    match conn.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Table => println!("{}", s(&v["token"])),
    }
    Ok(())
}
