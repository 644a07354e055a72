//! `tenant` and `tls`: tenants with their quotas and runtimes (create,
//! ls, update), and the server's certificates.

use super::*;

/// A tenant's limits and runtimes as flags (create sets them, update
/// changes those given).
#[derive(Debug, Args)]
pub struct TenantLimits {
    /// CPUs in all (vCPUs of microVMs count whole).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory in all, as `run --memory` (microVMs count the VMM overhead).
    #[arg(long)]
    memory: Option<String>,
    /// Instances in all.
    #[arg(long)]
    instances: Option<u64>,
    /// The runtimes its services may use (create's default: microvm only;
    /// a container shares the node's kernel).
    #[arg(long, value_enum, value_delimiter = ',')]
    runtimes: Vec<crate::state::record::RuntimeKind>,
    /// Whether its instances may reach the internet (create's default:
    /// allow). `deny` leaves them their tenant network and the private
    /// ranges their services allow; it applies to running instances too.
    #[arg(long, value_enum)]
    internet: Option<Internet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Internet {
    Allow,
    Deny,
}

impl TenantLimits {
    fn internet(&self) -> Option<bool> {
        self.internet.map(|i| i == Internet::Allow)
    }
}

impl TenantLimits {
    fn quota(&self) -> Result<crate::cluster::schedule::Quota> {
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                bail!("--cpus {c}: more than 0");
            }
        }
        if self.instances == Some(0) {
            bail!("--instances 0: at least 1");
        }
        let memory_mib = self
            .memory
            .as_deref()
            .map(crate::runtime::limits::parse_memory)
            .transpose()
            .context("--memory")?;
        Ok(crate::cluster::schedule::Quota {
            millicpus: self.cpus.map(crate::runtime::limits::millicpus),
            memory_mib,
            instances: self.instances,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// A new tenant with its quota (limits left out: 64 CPUs, 256 GiB,
    /// 100 instances); prints its token (shown once).
    Create {
        name: String,
        #[command(flatten)]
        limits: TenantLimits,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every tenant with its quota and runtimes.
    Ls(Conn),
    /// Change a tenant's limits and runtimes: those given replace its own,
    /// the rest stay. A runtime one of its services uses cannot be taken
    /// away; a quota below what it uses stands and refuses growth.
    Update {
        name: String,
        #[command(flatten)]
        limits: TenantLimits,
        #[command(flatten)]
        conn: Conn,
    },
}

fn tenant_row(t: &crate::cluster::auth::Tenant) -> Vec<String> {
    let cpus = t
        .quota
        .millicpus
        .map(|m| format!("{}", m as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    let memory = t
        .quota
        .memory_mib
        .map(|m| format!("{m} MiB"))
        .unwrap_or_else(|| "-".into());
    let instances = t
        .quota
        .instances
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into());
    let runtimes: Vec<String> = t.runtimes.iter().map(word).collect();
    let internet = if t.internet { "allow" } else { "deny" };
    vec![
        t.name.clone(),
        cpus,
        memory,
        instances,
        runtimes.join(","),
        internet.into(),
    ]
}

const TENANT_COLUMNS: [&str; 6] = [
    "NAME",
    "CPUS",
    "MEMORY",
    "INSTANCES",
    "RUNTIMES",
    "INTERNET",
];

pub fn tenant(cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Create { name, limits, conn } => {
            let body = serde_json::to_string(&api::NewTenant {
                name,
                quota: limits.quota()?,
                internet: limits.internet(),
                runtimes: limits.runtimes,
            })?;
            let v = conn.call(reqwest::Method::POST, "/v1/tenants", Some(body))?;
            match conn.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table => println!("{}", typed::<api::TenantCreated>(&v)?.token),
            }
            Ok(())
        }
        TenantCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/tenants", None)?;
            conn.print(&v, |rows: Vec<crate::cluster::auth::Tenant>| {
                let mut t = table(&TENANT_COLUMNS);
                for r in &rows {
                    t.add_row(tenant_row(r));
                }
                t
            })
        }
        TenantCommand::Update { name, limits, conn } => {
            let quota = limits.quota()?;
            let internet = limits.internet();
            let runtimes = (!limits.runtimes.is_empty()).then_some(limits.runtimes);
            if quota == crate::cluster::schedule::Quota::default()
                && runtimes.is_none()
                && internet.is_none()
            {
                bail!("tenant update {name}: nothing to change (--cpus, --memory, --instances, --runtimes, --internet)");
            }
            let body = serde_json::to_string(&api::TenantUpdate {
                quota,
                runtimes,
                internet,
            })?;
            let v = conn.call(
                reqwest::Method::PATCH,
                &format!("/v1/tenants/{}", path_segment(&name)?),
                Some(body),
            )?;
            conn.print(&v, |r: crate::cluster::auth::Tenant| {
                let mut t = table(&TENANT_COLUMNS);
                t.add_row(tenant_row(&r));
                t
            })
        }
    }
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
