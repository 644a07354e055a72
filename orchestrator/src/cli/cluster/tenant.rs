//! `tenant` and `tls`: tenants with their quotas, and the server's certificates.

use super::*;

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
        /// The runtimes its services may use (default: microvm only; a
        /// container shares the node's kernel).
        #[arg(long, value_enum, value_delimiter = ',')]
        runtimes: Vec<crate::state::record::RuntimeKind>,
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
        runtimes,
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
    let quota = crate::cluster::schedule::Quota {
        millicpus: cpus.map(crate::runtime::limits::millicpus),
        memory_mib,
        instances,
    };
    let body = serde_json::to_string(&api::NewTenant {
        name,
        quota,
        runtimes,
    })?;
    let v = conn.call(reqwest::Method::POST, "/v1/tenants", Some(body))?;
    match conn.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Table => println!("{}", typed::<api::TenantCreated>(&v)?.token),
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
