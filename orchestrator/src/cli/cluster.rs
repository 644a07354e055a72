//! The control plane from the command line: `bulkhead server`, and the
//! verbs that talk to one (`deploy`, `service`, `instance`, `node`,
//! `tenant`) over its HTTP API with a bearer token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::cluster::auth::new_token;
use crate::cluster::backoff::BackoffPolicy;
use crate::cluster::etcd::EtcdStore;
use crate::cluster::reconcile::Timing;
use crate::cluster::server::Settings;
use crate::cluster::state::Cluster;
use crate::cluster::store::FileStore;
use crate::runtime::record::RuntimeKind;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// file:PATH: one host (default: cluster.redb in the data dir); or
    /// etcd://HOST:PORT[,HOST:PORT...]: several servers share it, one leads.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Where this server's API is for others (announced while it leads;
    /// default: http://LISTEN).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// etcd: the leader's lease; a standby takes over this long after the
    /// leader stopped renewing it.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration_ms)]
    leader_lease: u64,
    /// Where a new store's admin token is written (default: beside a file
    /// store, or cluster.admin-token in the data dir).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Without a heartbeat this long a node is lost: not ready, and its
    /// instances are replaced once its lease and the stop time are over.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    heartbeat_grace: u64,
    /// A node's workloads stop themselves this long after the node last
    /// reached the server (at least the grace).
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_duration_ms)]
    lease: u64,
    /// How long a workload may take to stop (stop signal, then SIGKILL
    /// halfway) before a replacement starts elsewhere.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    stop_time: u64,
    /// Restart backoff: the first wait, doubling...
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_initial: u64,
    /// ...up to this...
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_cap: u64,
    /// ...and forgotten after a run this long.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_reset: u64,
}

/// `500ms`, `10s`, `5m`, `1h`, or plain seconds -> milliseconds.
pub fn parse_duration_ms(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number with ms, s, m or h (e.g. 10s)"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    n.checked_mul(mult)
        .filter(|ms| *ms <= 7 * 24 * 3_600_000)
        .ok_or_else(|| format!("{s:?}: at most a week"))
}

pub fn server(a: ServerArgs) -> Result<()> {
    let timing = Timing {
        grace_ms: a.heartbeat_grace,
        lease_ms: a.lease,
        stop_ms: a.stop_time,
    };
    let backoff = BackoffPolicy {
        initial_ms: a.backoff_initial,
        cap_ms: a.backoff_cap,
        reset_after_ms: a.backoff_reset,
    };
    let settings = Settings::new(timing, backoff).map_err(anyhow::Error::msg)?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(crate::cluster::tls::server_config(c, k)?),
        _ => None,
    };
    let (cluster, token_file, what) = match a.store.as_deref() {
        Some(s) if s.starts_with("etcd://") => {
            let api = a.advertise.clone().unwrap_or_else(|| {
                format!(
                    "{}://{}",
                    if tls.is_some() { "https" } else { "http" },
                    a.listen
                )
            });
            let ttl = a.leader_lease.div_ceil(1000).max(2) as i64;
            let store = EtcdStore::open(s, &api, ttl).with_context(|| format!("--store {s}"))?;
            let file = a
                .admin_token_file
                .clone()
                .unwrap_or_else(|| super::run::data_dir().join("cluster.admin-token"));
            (Cluster::new(store), file, s.to_string())
        }
        other => {
            let path = match other {
                None => super::run::data_dir().join("cluster.redb"),
                Some(s) if s.starts_with("file:") && s.len() > 5 => PathBuf::from(&s[5..]),
                Some(s) => {
                    bail!("--store {s:?}: file:PATH (one host) or etcd://HOST:PORT[,HOST:PORT...]")
                }
            };
            let file = a
                .admin_token_file
                .clone()
                .unwrap_or_else(|| path.with_extension("admin-token"));
            (
                Cluster::new(FileStore::open(&path)?),
                file,
                path.display().to_string(),
            )
        }
    };
    let cluster = Arc::new(cluster);
    // The admin token: made by the first leader of a new store.
    let first = Arc::clone(&cluster);
    std::thread::spawn(move || loop {
        if first.is_leader() {
            match new_token().map_err(anyhow::Error::from).and_then(|t| Ok((first.init_admin(&t)?, t))) {
                Ok((true, token)) => match write_token(&token_file, &token) {
                    Ok(()) => eprintln!("bulkhead server: new cluster store {what}; the admin token is in {} (export BULKHEAD_TOKEN=$(cat {}))", token_file.display(), token_file.display()),
                    Err(e) => eprintln!("bulkhead server: the admin token could not be written ({e:#}); it is {token}"),
                },
                Ok((false, _)) => {}
                Err(e) => {
                    eprintln!("bulkhead server: the admin token: {e:#}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    // Store calls (redb, or etcd through its client thread) block the
    // worker that makes them: several workers, so a slow store call holds
    // up its own request, not every other one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let control_plane = control_plane(&a);
    rt.block_on(crate::cluster::server::serve(
        cluster,
        a.listen,
        settings,
        tls,
        control_plane,
    ))
    .with_context(|| format!("serve on {}", a.listen))
}

/// The addresses nodes keep workloads from: this server's (its listen
/// address unless unspecified, its advertised host) and its etcd's.
fn control_plane(a: &ServerArgs) -> Vec<String> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if !a.listen.ip().is_unspecified() {
        hosts.push((a.listen.ip().to_string(), a.listen.port()));
    }
    if let Some(u) = a
        .advertise
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
    {
        if let Some(h) = u.host_str() {
            hosts.push((
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                u.port_or_known_default().unwrap_or(443),
            ));
        }
    }
    if let Some(etcd) = a.store.as_deref().and_then(|s| s.strip_prefix("etcd://")) {
        for ep in etcd.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (h, p) = ep.rsplit_once(':').unwrap_or((ep, "2379"));
            hosts.push((
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().unwrap_or(2379),
            ));
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (h, port) in hosts {
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), port))
            .map(|a| a.collect::<Vec<_>>())
            .unwrap_or_default();
        out.extend(
            resolved
                .into_iter()
                .filter(|s| s.is_ipv4() && !s.ip().is_unspecified())
                .map(|s| format!("{}/32", s.ip())),
        );
    }
    out.sort();
    out.dedup();
    out
}

fn write_token(file: &std::path::Path, token: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("write {}", file.display()))?;
    writeln!(f, "{token}")?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// How to reach the server.
#[derive(Debug, Args)]
pub struct Conn {
    /// The server's URL, or several comma-separated (the first that answers
    /// and leads is used; default: $BULKHEAD_SERVER, else http://127.0.0.1:7070).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A bearer token (default: $BULKHEAD_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// For https:// servers: trust only this CA certificate (PEM), e.g. the
    /// one `bulkhead tls self-signed` made (default: $BULKHEAD_CACERT, else
    /// the system's roots).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// --cacert, else $BULKHEAD_CACERT.
fn cacert(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone().or_else(|| {
        std::env::var_os("BULKHEAD_CACERT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

impl Conn {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Result<Value> {
        let base = self
            .server
            .clone()
            .or_else(|| {
                std::env::var("BULKHEAD_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_SERVER.into());
        let base = base.trim_end_matches('/').to_string();
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("BULKHEAD_TOKEN").ok().filter(|s| !s.is_empty()))
            .context("no token: --token or BULKHEAD_TOKEN (the server wrote the admin token beside its store)")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = crate::cluster::tls::client(cacert(&self.cacert).as_deref())?;
        rt.block_on(async {
            // Several servers (comma-separated): the first that answers and is not a standby.
            let mut last = None;
            for base in base.split(',').map(|b| b.trim().trim_end_matches('/')).filter(|b| !b.is_empty()) {
                let mut req = http.request(method.clone(), format!("{base}{path}")).bearer_auth(&token);
                if let Some(b) = &body {
                    let kind = if b.trim_start().starts_with('{') { "application/json" } else { "application/yaml" };
                    req = req.header("content-type", kind).body(b.clone());
                }
                let resp = match req.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        // reqwest's Display is terse; the chain says why (refused, certificate, ...).
                        let mut why = e.to_string();
                        let mut src = std::error::Error::source(&e);
                        while let Some(s) = src {
                            why = format!("{why}: {s}");
                            src = s.source();
                        }
                        last = Some(anyhow::anyhow!("cannot reach the server at {base}: {why} (is `bulkhead server` running there? --server or BULKHEAD_SERVER; --cacert for a self-signed one)"));
                        continue;
                    }
                };
                let status = resp.status();
                let text = resp.text().await?;
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                let why = || v["error"].as_str().map_or_else(|| format!("{status}: {v}"), str::to_string);
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    last = Some(anyhow::anyhow!("{base}: {}", why()));
                    continue;
                }
                if !status.is_success() {
                    bail!("{}", why());
                }
                return Ok(v);
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("--server: no URL given")))
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
    millicpus
        .as_u64()
        .map_or_else(String::new, |m| format!("{}", m as f64 / 1000.0))
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
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("read {}", a.file.display()))?
    };
    // Checked here first: a bad file fails without a round trip, with the same message.
    crate::cluster::spec::parse(&text)?;
    let v = a.conn.call(
        reqwest::Method::POST,
        &format!("/v1/services?dry_run={}", a.dry_run),
        Some(text),
    )?;
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
                let mut t = table(&[
                    "NAME",
                    "IMAGE",
                    "RUNTIME",
                    "REPLICAS",
                    "INSTANCES",
                    "CPU",
                    "MEMORY MIB",
                    "RESTART",
                ]);
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
            let v = conn.call(
                reqwest::Method::GET,
                &format!("/v1/services/{}", path_segment(&name)?),
                None,
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ServiceCommand::Scale {
            name,
            replicas,
            dry_run,
            conn,
        } => {
            let v = conn.call(
                reqwest::Method::POST,
                &format!(
                    "/v1/services/{}/scale?dry_run={dry_run}",
                    path_segment(&name)?
                ),
                Some(json!({ "replicas": replicas }).to_string()),
            )?;
            conn.print(&v, placement_table);
        }
        ServiceCommand::Rm { name, conn } => {
            conn.call(
                reqwest::Method::DELETE,
                &format!("/v1/services/{}", path_segment(&name)?),
                None,
            )?;
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
    /// An instance's output (stdout and stderr as they came), from its node.
    Logs {
        service: String,
        index: u32,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command in an instance (on its node) and print its output;
    /// exits with the command's status. Not interactive.
    Exec {
        service: String,
        index: u32,
        #[command(flatten)]
        conn: Conn,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

pub fn instance(cmd: InstanceCommand) -> Result<u8> {
    match cmd {
        InstanceCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/instances", None)?;
            conn.print(&v, |v| {
                let mut t = table(&[
                    "SERVICE",
                    "INSTANCE",
                    "NODE",
                    "STATE",
                    "STARTED",
                    "EXITED",
                    "RESTARTS",
                    "LAST EXIT",
                    "FENCE",
                ]);
                let when = |v: &Value| v.as_u64().map(super::workloads::ago).unwrap_or_default();
                for i in v.as_array().into_iter().flatten() {
                    t.add_row(vec![
                        s(&i["service"]),
                        s(&i["index"]),
                        s(&i["node"]),
                        s(&i["state"]),
                        when(&i["started_ms"]),
                        when(&i["exited_ms"]),
                        s(&i["restarts"]),
                        s(&i["last_exit"]),
                        s(&i["fence"]),
                    ]);
                }
                t
            });
            Ok(0)
        }
        InstanceCommand::Logs {
            service,
            index,
            tail,
            conn,
        } => {
            let q = tail.map(|n| format!("?tail={n}")).unwrap_or_default();
            let v = conn.call(
                reqwest::Method::GET,
                &format!(
                    "/v1/services/{}/instances/{index}/logs{q}",
                    path_segment(&service)?
                ),
                None,
            )?;
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = out.write_all(
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
                    .as_bytes(),
            );
            Ok(0)
        }
        InstanceCommand::Exec {
            service,
            index,
            conn,
            command,
        } => {
            let body = json!({ "command": command }).to_string();
            let v = conn.call(
                reqwest::Method::POST,
                &format!(
                    "/v1/services/{}/instances/{index}/exec",
                    path_segment(&service)?
                ),
                Some(body),
            )?;
            use std::io::Write;
            let _ = std::io::stdout().write_all(v["stdout"].as_str().unwrap_or("").as_bytes());
            let _ = std::io::stderr().write_all(v["stderr"].as_str().unwrap_or("").as_bytes());
            Ok(u8::try_from(v["code"].as_i64().unwrap_or(125).clamp(0, 255)).unwrap_or(125))
        }
    }
}

/// `bulkhead node --server URL --join-token T` runs the node daemon;
/// `bulkhead node ls|cordon|uncordon|drain|token` manage nodes (admin).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    cmd: Option<NodeCommand>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// The node daemon's settings.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The server to join, or several comma-separated (default:
    /// $BULKHEAD_SERVER, else http://127.0.0.1:7070).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// From `bulkhead node token create` (default: $BULKHEAD_JOIN_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    join_token: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// A label for placement constraints (KEY=VALUE); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// CPUs to offer (default: all of this host's).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory to offer, as `run --memory` (default: 90% of this host's).
    #[arg(long)]
    memory: Option<String>,
    /// A runtime to offer; repeatable (default: microvm where /dev/kvm is,
    /// container where crun or runc is).
    #[arg(long = "runtime", value_enum)]
    runtimes: Vec<RuntimeKind>,
    /// For https:// servers: trust only this CA certificate (PEM; default:
    /// $BULKHEAD_CACERT, else the system's roots).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Where this node's own API listens (the server asks it for logs and
    /// exec, with a secret it got at join).
    #[arg(long, default_value = "0.0.0.0:7071", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// How the server reaches that API: https://HOST:PORT (it speaks TLS
    /// only, with a certificate made at start for HOST, which the server
    /// pins). Default: this host's address on the way to the server, and
    /// the --listen port.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// Join and sync over http:// although the join token, this node's
    /// token and its API secret then cross the network in the clear
    /// (refused without this flag).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Nodes: ready, cordoned, CPU and memory allocated of allocatable, capacity.
    Ls(Conn),
    /// Cordon a node and move its instances elsewhere (they are replaced
    /// on other nodes; the node stops its copies).
    Drain {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Join tokens for new nodes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Remove a node and free its name (its token stops working; a join
    /// under a name that holds a token is refused otherwise). Refused
    /// while instances assigned to it may still run: drain it first, or
    /// stop its daemon and wait its lease and stop time.
    Rm {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
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

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A new join token (admin); prints it.
    Create(Conn),
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn daemon(a: DaemonArgs) -> Result<()> {
    let server = a
        .server
        .or_else(|| {
            std::env::var("BULKHEAD_SERVER")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_SERVER.into());
    let join_token = a
        .join_token
        .or_else(|| std::env::var("BULKHEAD_JOIN_TOKEN").ok().filter(|s| !s.is_empty()))
        .context("`bulkhead node` runs the node daemon: it needs --join-token (from `bulkhead node token create`) or BULKHEAD_JOIN_TOKEN; or use a subcommand (ls, cordon, uncordon, drain, rm, token)")?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the node daemon needs root (it runs workloads through `bulkhead run`)");
    }
    let name = a.name.unwrap_or_else(host_name);
    if !crate::runtime::paths::valid_name(&name) {
        bail!("node name {name:?}: letters, digits, '_', '.', '-' (--name)");
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: KEY=VALUE"))?;
        if !crate::cluster::spec::valid_label(k) || !crate::cluster::spec::valid_label(v) {
            bail!("--label {l:?}: 1-63 letters, digits, '_', '.', '-' on each side");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let (mut allocatable, mut runtimes) = crate::cluster::node::host_defaults();
    if let Some(c) = a.cpus {
        if !(c.is_finite() && c > 0.0) {
            bail!("--cpus {c}: more than 0");
        }
        allocatable.millicpus = (c * 1000.0).round() as u64;
    }
    if let Some(m) = &a.memory {
        allocatable.memory_mib = crate::runtime::limits::parse_memory(m).context("--memory")?;
    }
    if !a.runtimes.is_empty() {
        runtimes = a.runtimes;
    }
    if runtimes.is_empty() {
        bail!("this host offers no runtime: no /dev/kvm (microvm) and no crun or runc (container: apt-get install crun)");
    }
    let node = crate::cluster::state::Node {
        name,
        labels,
        capacity: Some(crate::cluster::node::host_capacity()),
        allocatable,
        runtimes,
        cordoned: false,
        api: None,
        images: None,
    };
    let cfg = crate::cluster::node::NodeConfig {
        server,
        join_token,
        node,
        data: super::run::data_dir(),
        bulkhead: std::env::current_exe()?,
        cacert: cacert(&a.cacert),
        listen: a.listen,
        advertise: a.advertise,
        insecure: a.insecure,
    };
    crate::cluster::node::run(cfg)?;
    Ok(())
}

pub fn node(a: NodeArgs) -> Result<()> {
    let Some(cmd) = a.cmd else {
        return daemon(a.daemon);
    };
    match cmd {
        NodeCommand::Drain { name, conn } => {
            let v = conn.call(
                reqwest::Method::POST,
                &format!("/v1/nodes/{}/drain", path_segment(&name)?),
                None,
            )?;
            println!("{name}: cordoned, {} instance(s) to move", s(&v["moved"]));
        }
        NodeCommand::Rm { name, conn } => {
            let v = conn.call(
                reqwest::Method::DELETE,
                &format!("/v1/nodes/{}", path_segment(&name)?),
                None,
            )?;
            println!(
                "{name}: removed ({} instance(s) to place elsewhere)",
                s(&v["instances_moved"])
            );
        }
        NodeCommand::Token(TokenCommand::Create(conn)) => {
            let v = conn.call(reqwest::Method::POST, "/v1/nodes/tokens", None)?;
            println!("{}", s(&v["token"]));
        }
        NodeCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/nodes", None)?;
            conn.print(&v, |v| {
                let mut t = table(&[
                    "NAME",
                    "READY",
                    "CORDONED",
                    "CPU",
                    "MEMORY MIB",
                    "CAPACITY",
                    "INSTANCES",
                    "LABELS",
                ]);
                for n in v.as_array().into_iter().flatten() {
                    let labels: Vec<String> = n["node"]["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", s(v)))
                        .collect();
                    t.add_row(vec![
                        s(&n["node"]["name"]),
                        s(&n["ready"]),
                        s(&n["node"]["cordoned"]),
                        format!(
                            "{}/{}",
                            cpus(&n["allocated"]["millicpus"]),
                            cpus(&n["node"]["allocatable"]["millicpus"])
                        ),
                        format!(
                            "{}/{}",
                            s(&n["allocated"]["memory_mib"]),
                            s(&n["node"]["allocatable"]["memory_mib"])
                        ),
                        n["node"]["capacity"]
                            .as_object()
                            .map(|_| {
                                format!(
                                    "{} CPU, {} MiB",
                                    cpus(&n["node"]["capacity"]["millicpus"]),
                                    s(&n["node"]["capacity"]["memory_mib"])
                                )
                            })
                            .unwrap_or_default(),
                        s(&n["instances"]),
                        labels.join(","),
                    ]);
                }
                t
            });
        }
        NodeCommand::Cordon { name, conn } => {
            conn.call(
                reqwest::Method::POST,
                &format!("/v1/nodes/{}/cordon", path_segment(&name)?),
                None,
            )?;
            println!("{name}");
        }
        NodeCommand::Uncordon { name, conn } => {
            conn.call(
                reqwest::Method::POST,
                &format!("/v1/nodes/{}/uncordon", path_segment(&name)?),
                None,
            )?;
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
    let TenantCommand::Create {
        name,
        cpus,
        memory,
        instances,
        conn,
    } = cmd;
    if let Some(c) = cpus {
        if !(c.is_finite() && c > 0.0) {
            bail!("--cpus {c}: more than 0");
        }
    }
    let memory_mib = memory
        .as_deref()
        .map(crate::runtime::limits::parse_memory)
        .transpose()
        .context("--memory")?;
    let quota = json!({ "millicpus": cpus.map(|c| (c * 1000.0).round() as u64), "memory_mib": memory_mib, "instances": instances });
    let v = conn.call(
        reqwest::Method::POST,
        "/v1/tenants",
        Some(json!({ "name": name, "quota": quota }).to_string()),
    )?;
    match conn.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Table => println!("{}", s(&v["token"])),
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// A self-signed certificate and key for trying `bulkhead server
    /// --tls-cert/--tls-key` (clients: --cacert with the certificate).
    SelfSigned {
        /// A DNS name or IP address the server is reached by; repeatable
        /// (default: localhost and 127.0.0.1).
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
        /// Where server.crt and server.key (0600) go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

pub fn tls(cmd: TlsCommand) -> Result<()> {
    let TlsCommand::SelfSigned { mut names, out } = cmd;
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }
    let (cert, key) = crate::cluster::tls::self_signed(&names)?;
    let (cert_file, key_file) = (out.join("server.crt"), out.join("server.key"));
    for f in [&cert_file, &key_file] {
        if f.exists() {
            bail!(
                "{} exists: not overwritten (remove it, or --out another dir)",
                f.display()
            );
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    std::fs::write(&cert_file, cert).with_context(|| format!("write {}", cert_file.display()))?;
    write_token(&key_file, key.trim_end())?;
    println!("{}\n{}", cert_file.display(), key_file.display());
    eprintln!(
        "bulkhead: self-signed for {}: bulkhead server --tls-cert {} --tls-key {}; clients: --cacert {} (or BULKHEAD_CACERT)",
        names.join(", "),
        cert_file.display(),
        key_file.display(),
        cert_file.display()
    );
    Ok(())
}
