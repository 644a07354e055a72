//! The control plane from the command line: `bulkhead server`, and the
//! verbs that talk to one (`deploy`, `service`, `instance`, `node`,
//! `tenant`) over its HTTP API with a bearer token.
//!
//! ```text
//! server.rs    `bulkhead server`: the control plane's settings and start
//! workloads.rs `deploy`, `service`, `instance`
//! node.rs      `node`: the node daemon and the admin verbs on nodes
//! tenant.rs    `tenant` and `tls`
//! ```

mod node;
mod server;
mod tenant;
mod token;
mod workloads;

pub use node::*;
pub use server::*;
pub use tenant::*;
pub use token::*;
pub use workloads::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::cluster::api;
use crate::cluster::auth::new_token;
use crate::cluster::backoff::BackoffPolicy;
use crate::cluster::etcd::EtcdStore;
use crate::cluster::reconcile::Timing;
use crate::cluster::server::Settings;
use crate::cluster::state::Change;
use crate::cluster::state::Cluster;
use crate::cluster::store::FileStore;
use crate::state::record::RuntimeKind;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

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
    /// A file holding the bearer token (default: $BULKHEAD_TOKEN). Never
    /// the token itself as an argument: every user of the host reads those.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Refused: see --token-file.
    #[arg(long, hide = true, value_name = "TOKEN")]
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
        if self.token.is_some() {
            return Err(crate::cli::secrets::no_secret_in_argv(
                "--token",
                "BULKHEAD_TOKEN",
                "--token-file",
            ));
        }
        let token = crate::cli::secrets::secret(self.token_file.as_deref(), "BULKHEAD_TOKEN")?
            .context("no token: BULKHEAD_TOKEN or --token-file (the server wrote the admin token beside its store)")?;
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
                let why = || {
                    serde_json::from_value::<api::ErrorBody>(v.clone())
                        .map_or_else(|_| format!("{status}: {v}"), |e| e.error)
                };
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

    /// The answer as the server sent it (`--format json`), or as a table
    /// of its typed form (`api.rs`).
    fn print<T: serde::de::DeserializeOwned>(
        &self,
        v: &Value,
        table: impl FnOnce(T) -> comfy_table::Table,
    ) -> Result<()> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
            Format::Table => println!("{}", table(typed(v)?)),
        }
        Ok(())
    }
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

/// An answer in its `api.rs` type.
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .context("the server's answer is not what this bulkhead expects (another version?)")
}

/// A value as its JSON word (an enum's serde name, a number, nothing for null).
fn word(v: &impl serde::Serialize) -> String {
    s(&serde_json::to_value(v).unwrap_or_default())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn placement_table(c: Change) -> comfy_table::Table {
    let mut t = table(&["INSTANCE", "NODE", ""]);
    for crate::cluster::state::Placed { index, node } in c.placed {
        t.add_row(vec![index.to_string(), node, "placed".into()]);
    }
    for r in c.removed {
        t.add_row(vec![r.to_string(), String::new(), "removed".into()]);
    }
    t
}

fn cpus(millicpus: u64) -> String {
    format!("{}", millicpus as f64 / 1000.0)
}
