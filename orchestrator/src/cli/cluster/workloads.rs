//! `deploy`, `service` and `instance`: the tenant's verbs on services.

use super::*;
use crate::cluster::state::Instance;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The service file (YAML or JSON; `-` reads stdin); or a stack file
    /// (`name:` and `services: {NAME: SERVICE, ...}`), whose services are
    /// deployed together: all of them, or none.
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
    if crate::cluster::stack::is_stack(&text) {
        return deploy_stack(&a, &crate::cluster::stack::parse(&text)?);
    }
    // Checked here first: a bad file fails without a round trip, with the same message.
    crate::cluster::spec::parse(&text)?;
    let v = a.conn.call(
        reqwest::Method::POST,
        &format!("/v1/services?dry_run={}", a.dry_run),
        Some(text),
    )?;
    a.conn.print(&v, placement_table)?;
    if a.dry_run && a.conn.format == Format::Table {
        eprintln!("dry run: nothing was changed");
    }
    Ok(())
}

/// A stack's services, each checked by the server first (a dry run: the
/// name free, the quota, the image, a placement), then deployed one by one;
/// if one fails, those deployed here are removed again, so the stack goes
/// in whole or not at all. (Not one transaction: a change by someone else
/// between the dry runs and the deploys can still refuse a later one, and
/// then the earlier ones are rolled back.)
fn deploy_stack(a: &DeployArgs, stack: &crate::cluster::stack::Stack) -> Result<()> {
    let send = |svc: &crate::cluster::spec::Service, dry: bool| {
        a.conn.call(
            reqwest::Method::POST,
            &format!("/v1/services?dry_run={dry}"),
            Some(serde_json::to_string(&svc.spec).unwrap_or_default()),
        )
    };
    for svc in &stack.services {
        send(svc, true)
            .with_context(|| format!("stack {}: service {}", stack.name, svc.spec.name))?;
    }
    let mut done: Vec<(String, Value)> = Vec::new();
    if !a.dry_run {
        for svc in &stack.services {
            match send(svc, false) {
                Ok(v) => done.push((svc.spec.name.clone(), v)),
                Err(e) => {
                    let mut undone = Vec::new();
                    for (name, _) in &done {
                        let path = format!("/v1/services/{}", path_segment(name)?);
                        if a.conn.call(reqwest::Method::DELETE, &path, None).is_ok() {
                            undone.push(name.clone());
                        }
                    }
                    return Err(e.context(format!(
                        "stack {}: service {} (removed again: {})",
                        stack.name,
                        svc.spec.name,
                        if undone.is_empty() {
                            "none".to_string()
                        } else {
                            undone.join(", ")
                        }
                    )));
                }
            }
        }
    } else {
        for svc in &stack.services {
            done.push((svc.spec.name.clone(), send(svc, true)?));
        }
    }
    if a.conn.format == Format::Json {
        let services: serde_json::Map<String, Value> = done.into_iter().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"stack": stack.name, "services": services}))?
        );
    } else {
        let mut t = table(&["SERVICE", "INSTANCE", "NODE", ""]);
        for (name, v) in done {
            let c: Change = serde_json::from_value(v)?;
            for crate::cluster::state::Placed { index, node } in c.placed {
                t.add_row(vec![name.clone(), index.to_string(), node, "placed".into()]);
            }
        }
        println!("stack {}\n{t}", stack.name);
        if a.dry_run {
            eprintln!("dry run: nothing was changed");
        }
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
    /// Remove a service and its instances; or, with --stack, every
    /// service of a stack.
    Rm {
        #[arg(required_unless_present = "stack", conflicts_with = "stack")]
        name: Option<String>,
        /// The stack whose services go.
        #[arg(long, value_name = "STACK")]
        stack: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn service(cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/services", None)?;
            conn.print(&v, |rows: Vec<api::ServiceRow>| {
                let mut t = table(&[
                    "NAME",
                    "STACK",
                    "IMAGE",
                    "RUNTIME",
                    "REPLICAS",
                    "INSTANCES",
                    "CPU",
                    "MEMORY MIB",
                    "RESTART",
                ]);
                for r in rows {
                    let (spec, request) = (&r.service.spec, r.service.request);
                    t.add_row(vec![
                        spec.name.clone(),
                        spec.stack.clone().unwrap_or_default(),
                        spec.image.clone(),
                        word(&spec.runtime),
                        spec.replicas.to_string(),
                        r.instances.to_string(),
                        cpus(request.millicpus),
                        request.memory_mib.to_string(),
                        word(&spec.restart),
                    ]);
                }
                t
            })?;
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
            conn.print(&v, placement_table)?;
        }
        ServiceCommand::Rm { name, stack, conn } => {
            let names = match (name, stack) {
                (Some(n), _) => vec![n],
                (None, Some(s)) => {
                    let rows: Vec<api::ServiceRow> = serde_json::from_value(conn.call(
                        reqwest::Method::GET,
                        "/v1/services",
                        None,
                    )?)?;
                    let of: Vec<String> = rows
                        .into_iter()
                        .filter(|r| r.service.spec.stack.as_deref() == Some(s.as_str()))
                        .map(|r| r.service.spec.name)
                        .collect();
                    if of.is_empty() {
                        bail!("no stack {s:?} (`bulkhead service ls` shows each service's stack)");
                    }
                    of
                }
                (None, None) => bail!("a service's name, or --stack"),
            };
            for name in names {
                conn.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/services/{}", path_segment(&name)?),
                    None,
                )?;
                println!("{name}");
            }
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
            conn.print(&v, |instances: Vec<Instance>| {
                let mut t = table(&[
                    "SERVICE",
                    "INSTANCE",
                    "NODE",
                    "STATE",
                    "HEALTH",
                    "REFUSED",
                    "STARTED",
                    "EXITED",
                    "RESTARTS",
                    "LAST EXIT",
                    "FENCE",
                ]);
                let when = |ms: Option<u64>| ms.map(crate::cli::workloads::ago).unwrap_or_default();
                for i in instances {
                    t.add_row(vec![
                        i.service,
                        i.index.to_string(),
                        i.node,
                        word(&i.state),
                        i.health.map(|h| word(&h)).unwrap_or_default(),
                        i.refused.map(|n| n.to_string()).unwrap_or_default(),
                        when(i.started_ms),
                        when(i.exited_ms),
                        i.restarts.to_string(),
                        i.last_exit.map(|c| c.to_string()).unwrap_or_default(),
                        i.fence.to_string(),
                    ]);
                }
                t
            })?;
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
            let body = serde_json::to_string(&api::Exec { command })?;
            let v = conn.call(
                reqwest::Method::POST,
                &format!(
                    "/v1/services/{}/instances/{index}/exec",
                    path_segment(&service)?
                ),
                Some(body),
            )?;
            let r: crate::cluster::node_api::ExecResult = typed(&v)?;
            use std::io::Write;
            let _ = std::io::stdout().write_all(r.stdout.as_bytes());
            let _ = std::io::stderr().write_all(r.stderr.as_bytes());
            Ok(u8::try_from(r.code.clamp(0, 255)).unwrap_or(125))
        }
    }
}
