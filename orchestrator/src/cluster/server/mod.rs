//! `bulkhead server`: the control plane's HTTP JSON API over the cluster
//! state. Every request carries a bearer token; tenants see and change
//! only their own services and instances (another tenant's are "not
//! found"), the admin registers nodes, cordons them and creates tenants.
//! The routes and their OpenAPI document come from one table (`api::ROUTES`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::api;
use super::auth::Principal;
use super::backoff::{BackoffPolicy, Clock, WallClock};
use super::reconcile::Timing;
use super::schedule::Quota;
use super::spec::{self, Resources};
use super::state::{Cluster, Node, StateError};
use super::store::StoreError;

/// How the cluster keeps time: heartbeats, leases, stop time, backoff.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timing: Timing,
    pub backoff: BackoffPolicy,
    /// Nodes sync this often.
    pub heartbeat_ms: u64,
    /// A fenced workload gets its stop signal at the lease deadline and
    /// SIGKILL this much later (within `timing.stop_ms`).
    pub kill_after_ms: u64,
    /// The reconciler runs this often.
    pub reconcile_ms: u64,
    /// Tenant networks' addresses: a range per tenant, a slice per node.
    pub pool: crate::cluster::netpool::Pool,
    /// How a tenant's nodes are joined.
    pub overlay: crate::network::overlay::Mode,
}

impl Settings {
    /// Sane timing for these values: the lease outlasts the grace (a live
    /// node's workloads never fence themselves), the kill comes within the
    /// stop time, heartbeats come several times per grace.
    pub fn new(timing: Timing, backoff: BackoffPolicy) -> Result<Self, String> {
        if timing.grace_ms < 1_000 || timing.lease_ms < timing.grace_ms || timing.stop_ms < 1_000 {
            return Err(format!("heartbeat grace {} ms (at least 1000), lease {} ms (at least the grace), stop time {} ms (at least 1000)", timing.grace_ms, timing.lease_ms, timing.stop_ms));
        }
        if backoff.initial_ms == 0 || backoff.cap_ms < backoff.initial_ms {
            return Err(format!(
                "backoff {} ms to {} ms: more than 0, the cap at least the first",
                backoff.initial_ms, backoff.cap_ms
            ));
        }
        let heartbeat_ms = (timing.grace_ms / 4).clamp(250, 2_000);
        Ok(Settings {
            timing,
            backoff,
            heartbeat_ms,
            kill_after_ms: timing.stop_ms / 2,
            reconcile_ms: heartbeat_ms.min(1_000),
            pool: crate::cluster::netpool::Pool::default(),
            overlay: crate::network::overlay::Mode::default(),
        })
    }
}

#[derive(Clone)]
struct App {
    cluster: Arc<Cluster>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// This server's and its store's addresses, for nodes to keep their
    /// workloads from.
    control_plane: Arc<Vec<String>>,
    /// The hash of the CA a joining node must find in this server's chain
    /// (`sha256:<hex>`), which join tokens carry; `None` over plain HTTP.
    discovery: Option<Arc<String>>,
}

/// An error as the API returns it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(api::ErrorBody { error: self.1 })).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let status = match &e {
            StateError::Spec(_) => StatusCode::BAD_REQUEST,
            StateError::NoService(_) | StateError::NoNode(_) => StatusCode::NOT_FOUND,
            StateError::Exists(_)
            | StateError::Taken(_)
            | StateError::Store(StoreError::Conflict(_)) => StatusCode::CONFLICT,
            StateError::Unschedulable(_)
            | StateError::OverQuota(_)
            | StateError::UnknownImage { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            StateError::Store(StoreError::NotLeader(_)) => StatusCode::SERVICE_UNAVAILABLE,
            StateError::Store(_) | StateError::Corrupt(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

fn who(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    if !app.cluster.is_leader() {
        let leader = app
            .cluster
            .leader_hint()
            .map(|l| format!(": the leader is {l}"))
            .unwrap_or_default();
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this server is a standby{leader}"),
        ));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "no token: send Authorization: Bearer TOKEN (the CLI: --token or BULKHEAD_TOKEN)"
                .into(),
        ));
    };
    app.cluster
        .principal(token, app.clock.now_ms())?
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))
}

fn admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match who(app, headers)? {
        Principal::Admin => Ok(()),
        _ => Err(ApiError(
            StatusCode::FORBIDDEN,
            "this needs the admin token".into(),
        )),
    }
}

fn tenant(app: &App, headers: &HeaderMap) -> Result<(String, Quota), ApiError> {
    tenant_record(app, headers).map(|(t, r)| (t, r.quota))
}

fn tenant_record(
    app: &App,
    headers: &HeaderMap,
) -> Result<(String, super::auth::Tenant), ApiError> {
    match who(app, headers)? {
        Principal::Tenant(t) => {
            let record = app.cluster.tenant(&t)?;
            Ok((t, record))
        }
        _ => Err(ApiError(
            StatusCode::FORBIDDEN,
            "services belong to tenants: use a tenant's token".into(),
        )),
    }
}

impl App {
    /// Nodes whose last heartbeat is older than this are not ready.
    fn ready_after_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(self.settings.timing.grace_ms)
    }
}

/// `?dry_run=true` (or `1`); anything else in the query is refused.
fn dry_run(q: &Option<String>) -> Result<bool, ApiError> {
    match q.as_deref() {
        None | Some("") | Some("dry_run=false") | Some("dry_run=0") => Ok(false),
        Some("dry_run=true") | Some("dry_run=1") => Ok(true),
        Some(other) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("query {other:?}: only dry_run=true|false"),
        )),
    }
}

/// A JSON body, refused as JSON (400) when it is not the expected shape;
/// read after the caller is known, so strangers learn nothing from it.
fn body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the request body: {e}")))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(api::document())
}

async fn register_node(State(app): State<App>, headers: HeaderMap, text: String) -> ApiResult {
    admin(&app, &headers)?;
    let n: Node = body(&text)?;
    valid_node(&n)?;
    let name = n.name.clone();
    app.cluster.register_node(n)?;
    let revision = app.cluster.heartbeat(&name, app.clock.now_ms())?;
    ok(api::NodeRegistered { name, revision })
}

fn valid_node(n: &Node) -> Result<(), ApiError> {
    if !crate::state::paths::valid_name(&n.name)
        || n.labels
            .iter()
            .any(|(k, v)| !spec::valid_label(k) || !spec::valid_label(v))
    {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("node {:?}: a name of letters, digits, '_', '.', '-', and labels of 1-63 such characters", n.name)));
    }
    Ok(())
}

async fn join(State(app): State<App>, headers: HeaderMap, text: String) -> ApiResult {
    // A join token, or (a restarted node, whose join token may have
    // expired) the node's own token: then only under its own name.
    let caller = who(&app, &headers)?;
    if !matches!(caller, Principal::Join | Principal::Node(_)) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "joining needs a join token (`bulkhead node token create`)".into(),
        ));
    }
    let api::JoinRequest {
        node: mut n,
        api_secret,
        api_cert,
        node_token,
    } = body(&text)?;
    if let Principal::Node(own) = &caller {
        if *own != n.name {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("a node's token joins only under its own name ({own})"),
            ));
        }
    }
    valid_node(&n)?;
    n.cordoned = false; // kept as it was by register_node
                        // The node API only over TLS with the certificate the node gave: its
                        // secret never crosses the network in the clear.
    let access = match (api_secret, api_cert, n.api.as_deref()) {
        (Some(secret), Some(cert), Some(api)) if api.starts_with("https://") => {
            super::tls::pinned_client(&cert)
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("api_cert: {e}")))?;
            Some(super::auth::NodeAccess { secret, cert })
        }
        (None, None, _) => None,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "a node API needs api_secret, api_cert and an https:// api URL".into(),
            ))
        }
    };
    let name = n.name.clone();
    let token = app.cluster.join_node(
        n,
        access.as_ref(),
        node_token.as_deref(),
        app.clock.now_ms(),
    )?;
    let s = app.settings;
    ok(api::Joined {
        name,
        token,
        heartbeat_ms: s.heartbeat_ms,
        lease_ms: s.timing.lease_ms,
        kill_after_ms: s.kill_after_ms,
        control_plane: app.control_plane.to_vec(),
    })
}

/// The instance `index` of the caller's `service`, its node's API, the
/// secret for it and a client that trusts only that node's certificate.
fn instance_on_node(
    app: &App,
    headers: &HeaderMap,
    service: &str,
    index: &str,
) -> Result<(super::node_api::Target, String, String, reqwest::Client), ApiError> {
    let (t, _) = tenant(app, headers)?;
    let index: u32 = index.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("instance {index:?}: a number"),
        )
    })?;
    app.cluster.service(&t, service)?; // another tenant's: not found
    let i = app
        .cluster
        .instances(Some(&t))?
        .into_iter()
        .find(|i| i.service == service && i.index == index)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no instance {service}/{index}"),
            )
        })?;
    let node = app
        .cluster
        .nodes()?
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.name == i.node)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no node {}", i.node)))?;
    let (Some(api), Some(access)) = (node.api, app.cluster.node_access(&node.name)?) else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "node {} has no API (it did not join through `bulkhead node`)",
                node.name
            ),
        ));
    };
    let http = super::tls::pinned_client(&access.cert).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("node {}'s certificate: {e}", node.name),
        )
    })?;
    Ok((
        super::node_api::Target {
            tenant: t,
            service: service.into(),
            index,
            fence: i.fence,
        },
        api,
        access.secret,
        http,
    ))
}

/// Relays the node's answer (status and body) or says it cannot be reached.
async fn relay(resp: Result<reqwest::Response, reqwest::Error>, node_api: &str) -> ApiResult {
    let resp = resp.map_err(|e| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("the instance's node at {node_api}: {e}"),
        )
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let kind = resp.headers().get("content-type").cloned();
    let bytes = resp.bytes().await.map_err(|e| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("the instance's node at {node_api}: {e}"),
        )
    })?;
    let mut r = (status, bytes).into_response();
    if let Some(k) = kind {
        r.headers_mut().insert("content-type", k);
    }
    Ok(r)
}

async fn instance_logs(
    State(app): State<App>,
    headers: HeaderMap,
    Path((name, index)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let tail = match q.as_deref() {
        None | Some("") => None,
        Some(q) => Some(
            q.strip_prefix("tail=")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError(StatusCode::BAD_REQUEST, format!("query {q:?}: only tail=N"))
                })?,
        ),
    };
    let (t, api, secret, http) = instance_on_node(&app, &headers, &name, &index)?;
    // Tenant and service names are letters, digits, '_', '.', '-': nothing to escape.
    let mut url = format!(
        "{api}/logs?tenant={}&service={}&index={}&fence={}",
        t.tenant, t.service, t.index, t.fence
    );
    if let Some(n) = tail {
        url += &format!("&tail={n}");
    }
    let resp = http
        .get(url)
        .bearer_auth(secret)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await;
    relay(resp, &api).await
}

async fn instance_exec(
    State(app): State<App>,
    headers: HeaderMap,
    Path((name, index)): Path<(String, String)>,
    text: String,
) -> ApiResult {
    let (t, api, secret, http) = instance_on_node(&app, &headers, &name, &index)?;
    let e: api::Exec = body(&text)?;
    let req = super::node_api::ExecRequest {
        target: t,
        command: e.command,
    };
    let timeout = super::node_api::EXEC_TIMEOUT + std::time::Duration::from_secs(10);
    let resp = http
        .post(format!("{api}/exec"))
        .json(&req)
        .bearer_auth(secret)
        .timeout(timeout)
        .send()
        .await;
    relay(resp, &api).await
}

async fn sync(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    text: String,
) -> ApiResult {
    if who(&app, &headers)? != Principal::Node(name.clone()) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this needs node {name}'s own token"),
        ));
    }
    let s: api::SyncRequest = body(&text)?;
    let now = app.clock.now_ms();
    app.cluster.heartbeat(&name, now)?;
    if let Some(images) = s.images {
        // Best effort: a raced write is tried again at the next sync, and
        // must not cost this one (it renews the node's leases).
        if let Err(e) = app.cluster.set_node_images(&name, images) {
            eprintln!("bulkhead server: node {name}'s images: {e}");
        }
    }
    app.cluster
        .report(&name, &s.reports, now, &app.settings.backoff)?;
    let assignments = app.cluster.assignments(&name)?;
    // Each tenant it runs: its slice of the tenant's range (made on first use).
    let mut slices = std::collections::BTreeMap::new();
    let mut names = std::collections::BTreeMap::new();
    let mut vips = std::collections::BTreeMap::new();
    for a in &assignments {
        if !slices.contains_key(&a.tenant) {
            let s = app
                .cluster
                .tenant_slice(&app.settings.pool, &a.tenant, &name)?;
            slices.insert(a.tenant.clone(), s.to_string());
            let (n, v) = app.cluster.service_names(&app.settings.pool, &a.tenant)?;
            names.insert(a.tenant.clone(), n);
            vips.insert(a.tenant.clone(), v);
        }
    }
    // Slices of tenants it has let go of go back to their ranges.
    if let Some(held) = &s.networks {
        app.cluster
            .release_slices(&name, |t| slices.contains_key(t) || held.contains(t))?;
    }
    // Its overlay ends, for tenants it runs only; then its peers in each.
    if let Some(o) = &s.overlay {
        // Where other nodes pass ingress connections on to it.
        if crate::cluster::overlay::refuse_address(o.address).is_none() {
            app.cluster.set_node_address(&name, o.address)?;
        }
        for (tenant, end) in o.ends.iter().filter(|(t, _)| slices.contains_key(*t)) {
            match crate::cluster::overlay::refuse_end(o.address, end) {
                None => app.cluster.set_overlay_end(tenant, &name, o.address, end)?,
                Some(why) => eprintln!(
                    "bulkhead server: node {name}'s end of tenant {tenant}'s overlay: {why}"
                ),
            }
        }
    }
    let mut peers = std::collections::BTreeMap::new();
    for tenant in slices.keys() {
        peers.insert(tenant.clone(), app.cluster.overlay_peers(tenant, &name)?);
    }
    ok(api::Synced {
        assignments,
        slices,
        names,
        vips,
        overlay: app.settings.overlay,
        peers,
        ingress: app.cluster.ingress(&name)?,
        lease_ms: app.settings.timing.lease_ms,
        kill_after_ms: app.settings.kill_after_ms,
        control_plane: app.control_plane.to_vec(),
    })
}

async fn nodes(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    admin(&app, &headers)?;
    let ready_after = app.ready_after_ms();
    let instances = app.cluster.instances(None)?;
    let mut out = Vec::new();
    for (n, _) in app.cluster.nodes()? {
        let on: Vec<_> = instances.iter().filter(|i| i.node == n.name).collect();
        let allocated = on
            .iter()
            .fold(Resources::default(), |a, i| a.plus(i.request));
        let last = app.cluster.last_heartbeat_ms(&n.name)?;
        out.push(api::NodeRow {
            ready: last >= ready_after,
            heartbeat_age_ms: app.clock.now_ms().saturating_sub(last),
            allocated,
            instances: on.len(),
            slices: app.cluster.node_slices(&n.name)?,
            node: n,
        });
    }
    ok(out)
}

async fn heartbeat(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&app, &headers)?;
    ok(api::Revision {
        revision: app.cluster.heartbeat(&name, app.clock.now_ms())?,
    })
}

async fn remove_node(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&app, &headers)?;
    let t = app.settings.timing;
    let instances_moved = app.cluster.remove_node(
        &name,
        app.clock.now_ms(),
        t.lease_ms.saturating_add(t.stop_ms),
    )?;
    ok(api::NodeRemoved {
        removed: name,
        instances_moved,
    })
}

async fn cordon(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    admin(&app, &headers)?;
    ok(api::Revision {
        revision: app.cluster.cordon(&name, true)?,
    })
}

async fn drain(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    admin(&app, &headers)?;
    ok(api::Drained {
        moved: app.cluster.drain(&name)?,
    })
}

async fn uncordon(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&app, &headers)?;
    ok(api::Revision {
        revision: app.cluster.cordon(&name, false)?,
    })
}

async fn deploy(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    text: String,
) -> ApiResult {
    let (t, record) = tenant_record(&app, &headers)?;
    let dry = dry_run(&q)?;
    let svc = spec::parse(&text).map_err(StateError::from)?;
    policy::check_deploy(&app, &t, &record, &svc)?;
    ok(app
        .cluster
        .deploy(&t, &record.quota, &svc, app.ready_after_ms(), dry)?)
}

async fn services(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let (t, _) = tenant(&app, &headers)?;
    let instances = app.cluster.instances(Some(&t))?;
    let rows: Vec<_> = app
        .cluster
        .services(&t)?
        .into_iter()
        .map(|s| {
            let n = instances
                .iter()
                .filter(|i| i.service == s.spec.name)
                .count();
            api::ServiceRow {
                service: s,
                instances: n,
            }
        })
        .collect();
    ok(rows)
}

async fn service(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let (t, _) = tenant(&app, &headers)?;
    let s = app.cluster.service(&t, &name)?;
    let instances: Vec<_> = app
        .cluster
        .instances(Some(&t))?
        .into_iter()
        .filter(|i| i.service == name)
        .collect();
    ok(api::ServiceDetail {
        service: s,
        instances,
    })
}

async fn remove(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let (t, _) = tenant(&app, &headers)?;
    ok(api::Revision {
        revision: app.cluster.remove(&t, &name)?,
    })
}

async fn scale(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    text: String,
) -> ApiResult {
    let (t, quota) = tenant(&app, &headers)?;
    let dry = dry_run(&q)?;
    let s: api::Scale = body(&text)?;
    ok(app
        .cluster
        .scale(&t, &quota, &name, s.replicas, app.ready_after_ms(), dry)?)
}

async fn instances(State(app): State<App>, headers: HeaderMap) -> ApiResult {
    let (t, _) = tenant(&app, &headers)?;
    ok(app.cluster.instances(Some(&t))?)
}

async fn no_route() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such route (GET /openapi.json lists them)".into(),
    )
}

mod admin;
mod policy;
use admin::{create_tenant, join_token, revoke_token, tenants, tokens, update_tenant};

fn router(app: App) -> Router {
    let routes = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/tenants", post(create_tenant).get(tenants))
        .route("/v1/tenants/{name}", axum::routing::patch(update_tenant))
        .route("/v1/nodes", post(register_node).get(nodes))
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/v1/nodes/tokens", post(join_token))
        .route("/v1/tokens", get(tokens))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/v1/nodes/join", post(join))
        .route("/v1/nodes/{name}/sync", post(sync))
        .route("/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/v1/nodes/{name}/cordon", post(cordon))
        .route("/v1/nodes/{name}/uncordon", post(uncordon))
        .route("/v1/nodes/{name}/drain", post(drain))
        .route("/v1/services", post(deploy).get(services))
        .route("/v1/services/{name}", get(service).delete(remove))
        .route("/v1/services/{name}/scale", post(scale))
        .route("/v1/instances", get(instances))
        .route(
            "/v1/services/{name}/instances/{index}/logs",
            get(instance_logs),
        )
        .route(
            "/v1/services/{name}/instances/{index}/exec",
            post(instance_exec),
        )
        .fallback(no_route)
        .with_state(app);
    super::listen::limited(routes)
}

/// The reconciler: a pass every `reconcile_ms`, on its own thread (the
/// store calls block). Failures are logged when they change, not each pass.
fn reconciler(cluster: Arc<Cluster>, clock: Arc<dyn Clock>, settings: Settings) {
    let mut last_problem = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(settings.reconcile_ms));
        if !cluster.is_leader() {
            continue; // a standby decides nothing
        }
        let problem = match cluster.reconcile_pass(clock.now_ms(), &settings.timing) {
            Ok(pass) => {
                for a in &pass.applied {
                    eprintln!("bulkhead server: {a}");
                }
                pass.failed
                    .iter()
                    .map(|(a, why)| format!("{a}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Err(e) => e.to_string(),
        };
        if problem != last_problem && !problem.is_empty() {
            eprintln!("bulkhead server: reconciler: {problem}");
        }
        last_problem = problem;
    }
}

/// Serves until SIGTERM or SIGINT (over TLS with `tls`); the reconciler
/// runs beside it.
/// `control_plane`: the addresses of this server and its store, which
/// nodes keep every workload from.
pub async fn serve(
    cluster: Arc<Cluster>,
    listen: SocketAddr,
    settings: Settings,
    tls: Option<(Arc<rustls::ServerConfig>, String)>,
    control_plane: Vec<String>,
) -> std::io::Result<()> {
    let (tls, discovery) = match tls {
        Some((config, hash)) => (Some(config), Some(Arc::new(hash))),
        None => (None, None),
    };
    // Stored times (heartbeats, backoff) must mean the same to the next leader.
    let clock: Arc<dyn Clock> = Arc::new(WallClock);
    let app = App {
        cluster,
        clock: Arc::clone(&clock),
        settings,
        control_plane: Arc::new(control_plane),
        discovery,
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "bulkhead server: listening on {scheme}://{}",
        listener.local_addr()?
    );
    let (cluster, clock) = (Arc::clone(&app.cluster), Arc::clone(&clock));
    std::thread::Builder::new()
        .name("reconciler".into())
        .spawn(move || reconciler(cluster, clock, settings))?;
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let limits = super::listen::Limits::for_this_process();
    super::listen::serve(listener, router(app), tls, limits, stop).await
}
