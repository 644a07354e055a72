//! The node daemon's own small API, for the server only: an instance's
//! logs and a command run in it (what `bulkhead instance logs|exec` asks
//! the server for; the server checks the tenant, then asks the node).
//!
//! It speaks TLS only, with a certificate the node makes at start. Each
//! request carries the secret the node made at start too; it gave both to
//! the server when it joined (the server pins the certificate, so the
//! secret never crosses the network in the clear). The node acts only on
//! its own cluster instances (found by their BULKHEAD_* environment), never
//! on other workloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Output kept per stream and per log request, at most.
pub const MAX_OUTPUT: usize = 1 << 20;
/// An exec'd command is killed after this long.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Which instance (the node checks it is one of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Target {
    pub tenant: String,
    pub service: String,
    pub index: u32,
    pub fence: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    #[serde(flatten)]
    pub target: Target,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    tenant: String,
    service: String,
    index: u32,
    fence: u64,
    #[serde(default)]
    tail: Option<usize>,
}

#[derive(Clone)]
struct NodeApp {
    secret: Arc<String>,
    data: PathBuf,
    bulkhead: PathBuf,
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": why.into() }))).into_response()
}

fn authorized(app: &NodeApp, headers: &HeaderMap) -> bool {
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Same length and every byte compared: no early exit on the first mismatch.
    got.len() == app.secret.len()
        && got
            .bytes()
            .zip(app.secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The local workload id of `t`, if it is one of this node's instances.
fn workload_of(app: &NodeApp, t: &Target) -> Option<String> {
    let key = super::node::Key {
        tenant: t.tenant.clone(),
        service: t.service.clone(),
        index: t.index,
        fence: t.fence,
    };
    super::node::local_instances(&app.data)
        .ok()?
        .remove(&key)
        .map(|r| r.config.id)
}

/// The last `tail` lines of `bytes` (all with `None`), at most MAX_OUTPUT bytes.
pub fn tail_of(bytes: &[u8], tail: Option<usize>) -> &[u8] {
    let lines = tail.map_or(bytes, |n| crate::runtime::workload::last_lines(bytes, n));
    &lines[lines.len().saturating_sub(MAX_OUTPUT)..]
}

async fn logs(
    State(app): State<NodeApp>,
    headers: HeaderMap,
    Query(q): Query<LogsQuery>,
) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "not the server's secret");
    }
    let t = Target {
        tenant: q.tenant,
        service: q.service,
        index: q.index,
        fence: q.fence,
    };
    let Some(id) = workload_of(&app, &t) else {
        return refuse(StatusCode::NOT_FOUND, "no such instance on this node");
    };
    let dir = crate::state::paths::Paths::new(&app.data).workload_dir(&id);
    let mut bytes = std::fs::read(dir.join("log.1")).unwrap_or_default();
    bytes.extend(std::fs::read(dir.join("log")).unwrap_or_default());
    (
        StatusCode::OK,
        String::from_utf8_lossy(tail_of(&bytes, q.tail)).into_owned(),
    )
        .into_response()
}

async fn exec(
    State(app): State<NodeApp>,
    headers: HeaderMap,
    Json(req): Json<ExecRequest>,
) -> Response {
    if !authorized(&app, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "not the server's secret");
    }
    if req.command.is_empty() || req.command.iter().any(|a| a.contains('\0')) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a command: one or more arguments, no NUL bytes",
        );
    }
    let Some(id) = workload_of(&app, &req.target) else {
        return refuse(StatusCode::NOT_FOUND, "no such instance on this node");
    };
    let mut cmd = tokio::process::Command::new(&app.bulkhead);
    cmd.env("BULKHEAD_DATA", &app.data)
        .arg("exec")
        .arg(&id)
        // The tenant's words are the command, never flags of ours.
        .arg("--")
        .args(&req.command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(EXEC_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) => {
            let cut =
                |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
            Json(ExecResult {
                code: o.status.code().unwrap_or(125),
                stdout: cut(&o.stdout),
                stderr: cut(&o.stderr),
            })
            .into_response()
        }
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("exec: {e}")),
        Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the command ran past {} s: killed", EXEC_TIMEOUT.as_secs()),
        ),
    }
}

/// Serves the node API over TLS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    secret: String,
    data: PathBuf,
    bulkhead: PathBuf,
) -> std::io::Result<()> {
    let app = NodeApp {
        secret: Arc::new(secret),
        data,
        bulkhead,
    };
    let router = Router::new()
        .route("/logs", get(logs))
        .route("/exec", post(exec))
        .with_state(app);
    let limits = super::listen::Limits::for_this_process();
    super::listen::serve(
        listener,
        super::listen::limited(router),
        Some(tls),
        limits,
        std::future::pending(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_whole_lines_and_capped() {
        assert_eq!(tail_of(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail_of(b"a\nb\n", None), b"a\nb\n");
        let big = vec![b'x'; MAX_OUTPUT + 10];
        assert_eq!(
            tail_of(&big, None).len(),
            MAX_OUTPUT,
            "at most MAX_OUTPUT bytes"
        );
        assert_eq!(tail_of(&big, Some(1)).len(), MAX_OUTPUT);
    }

    #[test]
    fn only_the_exact_secret_is_authorized() {
        let app = NodeApp {
            secret: Arc::new("bh_secret".into()),
            data: PathBuf::new(),
            bulkhead: PathBuf::new(),
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", v.parse().unwrap_or_else(|e| panic!("{e}")));
            authorized(&app, &h)
        };
        assert!(with("Bearer bh_secret"));
        for bad in [
            "Bearer bh_secreT",
            "Bearer bh_secret2",
            "Bearer bh_secre",
            "bh_secret",
            "Bearer ",
            "Basic bh_secret",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!authorized(&app, &HeaderMap::new()));
    }
}
