//! `bulkhead node`: the node daemon, and the admin verbs on nodes.

use super::*;

/// `BULKHEAD_JOIN_TOKEN=T bulkhead node --server URL` runs the node daemon;
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
    /// A file holding a join token from `bulkhead node token create`
    /// (default: $BULKHEAD_JOIN_TOKEN). Never the token as an argument.
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// Refused: see --join-token-file.
    #[arg(long, hide = true, value_name = "TOKEN")]
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
    /// Seconds an image's root disk may take to build (unpacking and mkfs,
    /// in a child process) before the build is killed and the instance
    /// reported failed: a hostile image cannot hold a worker forever.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    disk_timeout: u64,
    /// This host's address on the network between nodes: its tenants'
    /// instances on other nodes reach its instances through tunnels that
    /// end here (default: its address on the way to the server).
    #[arg(long, value_name = "IP")]
    overlay_address: Option<std::net::Ipv4Addr>,
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
    /// A new join token (admin); prints it. It works for --ttl.
    Create {
        /// How long it works (`30m`, `24h`, ...; `0`: until revoked).
        #[arg(long, default_value = "24h", value_parser = super::parse_duration_ms)]
        ttl: u64,
        #[command(flatten)]
        conn: Conn,
    },
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
    if a.join_token.is_some() {
        return Err(crate::cli::secrets::no_secret_in_argv(
            "--join-token",
            "BULKHEAD_JOIN_TOKEN",
            "--join-token-file",
        ));
    }
    let join_token = crate::cli::secrets::secret(a.join_token_file.as_deref(), "BULKHEAD_JOIN_TOKEN")?
        .context("`bulkhead node` runs the node daemon: it needs a join token (from `bulkhead node token create`) in BULKHEAD_JOIN_TOKEN or --join-token-file; or use a subcommand (ls, cordon, uncordon, drain, rm, token)")?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the node daemon needs root (it runs workloads through `bulkhead run`)");
    }
    let name = a.name.unwrap_or_else(host_name);
    if !crate::state::paths::valid_name(&name) {
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
        allocatable.millicpus = crate::runtime::limits::millicpus(c);
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
        data: crate::state::paths::data_dir(),
        bulkhead: std::env::current_exe()?,
        cacert: cacert(&a.cacert),
        listen: a.listen,
        advertise: a.advertise,
        insecure: a.insecure,
        disk_timeout: std::time::Duration::from_secs(a.disk_timeout),
        overlay_address: a.overlay_address,
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
            let d: api::Drained = typed(&v)?;
            println!("{name}: cordoned, {} instance(s) to move", d.moved);
        }
        NodeCommand::Rm { name, conn } => {
            let v = conn.call(
                reqwest::Method::DELETE,
                &format!("/v1/nodes/{}", path_segment(&name)?),
                None,
            )?;
            let r: api::NodeRemoved = typed(&v)?;
            println!(
                "{name}: removed ({} instance(s) to place elsewhere)",
                r.instances_moved
            );
        }
        NodeCommand::Token(TokenCommand::Create { ttl, conn }) => {
            let v = conn.call(
                reqwest::Method::POST,
                &format!("/v1/nodes/tokens?ttl_s={}", ttl.div_ceil(1000)),
                None,
            )?;
            let t: api::TokenAnswer = typed(&v)?;
            println!("{}", t.token);
            match t.expires_ms {
                Some(ms) => eprintln!("it works until {}", super::token::wall_time(ms)),
                None => eprintln!("it works until revoked (`bulkhead token rm`)"),
            }
        }
        NodeCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/nodes", None)?;
            conn.print(&v, |rows: Vec<api::NodeRow>| {
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
                for r in rows {
                    let n = &r.node;
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    t.add_row(vec![
                        n.name.clone(),
                        r.ready.to_string(),
                        n.cordoned.to_string(),
                        format!(
                            "{}/{}",
                            cpus(r.allocated.millicpus),
                            cpus(n.allocatable.millicpus)
                        ),
                        format!("{}/{}", r.allocated.memory_mib, n.allocatable.memory_mib),
                        n.capacity
                            .map(|c| format!("{} CPU, {} MiB", cpus(c.millicpus), c.memory_mib))
                            .unwrap_or_default(),
                        r.instances.to_string(),
                        labels.join(","),
                    ]);
                }
                t
            })?;
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
