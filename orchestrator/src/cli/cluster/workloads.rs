//! `deploy`, `service` and `instance`: the tenant's verbs on services.

use super::*;

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
pub(super) fn path_segment(name: &str) -> Result<&str> {
    if crate::state::paths::valid_name(name) {
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
                let when = |v: &Value| {
                    v.as_u64()
                        .map(crate::cli::workloads::ago)
                        .unwrap_or_default()
                };
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
