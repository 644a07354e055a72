//! The control plane's API: its routes (`ROUTES`), what each takes and
//! answers (types shared by the server, the node daemon and the CLI), and
//! the `/openapi.json` document made from both.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::assign::{Assignment, Report};
use super::node_api::{ExecResult, Target};
use super::schedule::Quota;
use super::spec::Resources;
use super::state::{Change, Instance, Node, ServiceRecord};

/// (method, path, who, what, request body, answer): the API, for the
/// router and /openapi.json. Bodies name a schema of `api.rs` (`[X]`: a
/// list of X; `text`: plain text; empty: none).
pub const ROUTES: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("get", "/openapi.json", "anyone", "This document.", "", ""),
    ("post", "/v1/tenants", "admin", "Create a tenant ({name, quota, runtimes}); returns its token.", "NewTenant", "TenantCreated"),
    ("get", "/v1/tenants", "admin", "Every tenant with its quota and runtimes.", "", "[Tenant]"),
    ("patch", "/v1/tenants/{name}", "admin", "Change a tenant ({quota, runtimes}): the limits given replace its own, runtimes given replace its list (409 while a service uses one taken away).", "TenantUpdate", "Tenant"),
    ("post", "/v1/nodes", "admin", "Register or update a node ({name, labels, allocatable, runtimes}).", "Node", "NodeRegistered"),
    ("get", "/v1/nodes", "admin", "Nodes with readiness, allocation and instance counts.", "", "[NodeRow]"),
    ("post", "/v1/nodes/{name}/heartbeat", "admin", "The node is alive.", "", "Revision"),
    ("post", "/v1/nodes/tokens", "admin", "A new join token for `bulkhead node` (BULKHEAD_JOIN_TOKEN or --join-token-file); ?ttl_s=N (default 86400, 0: until revoked).", "", "TokenAnswer"),
    ("get", "/v1/tokens", "admin", "Every token by id (the start of its SHA-256, never the token): kind, name, made, expires.", "", "[TokenInfo]"),
    ("delete", "/v1/tokens/{id}", "admin", "Revoke a token by its id or a unique prefix of 8+ hex digits (not the admin token; a node's takes its name's binding along).", "", "TokenInfo"),
    ("post", "/v1/nodes/join", "join token", "A node joins ({name, labels, allocatable, runtimes, images, api, api_secret, api_cert, node_token}; its API https only, with that certificate): registered, and given its own token, the cluster's timing and the control plane's addresses. A name that is registered and holds a token needs that token as node_token (409 otherwise, nothing changed).", "JoinRequest", "Joined"),
    ("post", "/v1/nodes/{name}/sync", "that node", "Heartbeat with reports ({reports: [{tenant, service, index, fence, state: running|exited, code}], images}); returns its assignments.", "SyncRequest", "Synced"),
    ("delete", "/v1/nodes/{name}", "admin", "Remove a node and free its name (its token stops working); refused (409) while instances assigned to it may still run (drain it first).", "", "NodeRemoved"),
    ("post", "/v1/nodes/{name}/cordon", "admin", "No new instances on the node.", "", "Revision"),
    ("post", "/v1/nodes/{name}/uncordon", "admin", "New instances may go to the node again.", "", "Revision"),
    ("post", "/v1/nodes/{name}/drain", "admin", "Cordon the node and move its instances elsewhere.", "", "Drained"),
    ("post", "/v1/services", "tenant", "Deploy a service: the body is its spec (YAML or JSON); ?dry_run=true places without writing.", "ServiceSpec", "Change"),
    ("get", "/v1/services", "tenant", "The tenant's services.", "", "[ServiceRow]"),
    ("get", "/v1/services/{name}", "tenant", "One service with its instances.", "", "ServiceDetail"),
    ("delete", "/v1/services/{name}", "tenant", "Remove a service and its instances.", "", "Revision"),
    ("post", "/v1/services/{name}/scale", "tenant", "Set the replica count ({replicas}); ?dry_run=true.", "Scale", "Change"),
    ("get", "/v1/instances", "tenant", "The tenant's instances.", "", "[Instance]"),
    ("get", "/v1/services/{name}/instances/{index}/logs", "tenant", "An instance's output from its node (text; ?tail=N).", "", "text"),
    ("post", "/v1/services/{name}/instances/{index}/exec", "tenant", "Run {command: [...]} in an instance on its node; {code, stdout, stderr}.", "Exec", "ExecResult"),
];

/// A body's schema in the document: `X` (a `$ref`), `[X]` or `text`.
fn body_content(schema: &str) -> serde_json::Value {
    let reference = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    match schema {
        "text" => json!({ "text/plain": { "schema": { "type": "string" } } }),
        s => {
            let schema = match s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                Some(item) => json!({ "type": "array", "items": reference(item) }),
                None => reference(s),
            };
            json!({ "application/json": { "schema": schema } })
        }
    }
}

/// The OpenAPI 3.1 document of `ROUTES`, with the schemas of `api.rs`.
pub fn document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let error = body_content("ErrorBody");
    for (method, path, who, what, request, answer) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let security = if *who == "anyone" {
            json!([])
        } else {
            json!([{ "bearer": [] }])
        };
        let ok = if answer.is_empty() {
            json!({"description": "OK (this document)"})
        } else {
            json!({"description": "OK", "content": body_content(answer)})
        };
        let fail = |why: &str| json!({"description": why, "content": error});
        entry[*method] = json!({
            "summary": what,
            "description": format!("Caller: {who}."),
            "security": security,
            "responses": {
                "200": ok,
                "400": fail("bad input (the error names the field)"),
                "401": fail("no token or an unknown one"),
                "403": fail("the token may not do this"),
                "404": fail("not found (or another tenant's)"),
                "409": fail("exists already, or changed meanwhile (retry)"),
                "422": fail("cannot be placed, or over the tenant's quota")
            }
        });
        if !request.is_empty() {
            entry[*method]["requestBody"] =
                json!({"required": true, "content": body_content(request)});
        }
    }
    let schemas: serde_json::Map<String, serde_json::Value> = schemas()
        .into_iter()
        .map(|(name, schema)| (name, serde_json::to_value(schema).unwrap_or_default()))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {"title": "bulkhead control plane", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    /// The runtimes its services may use (default: microvm only).
    #[serde(default)]
    pub runtimes: Vec<crate::state::record::RuntimeKind>,
    /// Whether its instances may reach the internet (default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<bool>,
}

/// `PATCH /v1/tenants/{name}`: what changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    #[serde(default)]
    pub quota: Quota,
    #[serde(default)]
    pub runtimes: Option<Vec<crate::state::record::RuntimeKind>>,
    /// Whether its instances may reach the internet; running ones follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<bool>,
}

/// The tenant made, with its token (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantCreated {
    pub name: String,
    pub token: String,
}

/// A token (a node's join token), and when it stops working (wall-clock ms).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenAnswer {
    pub token: String,
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// The store revision a write made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Revision {
    pub revision: u64,
}

/// A node registered by hand.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRegistered {
    pub name: String,
    pub revision: u64,
}

/// `POST /v1/nodes/join`: the node, and how the server reaches its API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    #[serde(flatten)]
    pub node: Node,
    /// What the server sends to the node's own API...
    #[serde(default)]
    pub api_secret: Option<String>,
    /// ...and the certificate that API serves (PEM), pinned.
    #[serde(default)]
    pub api_cert: Option<String>,
    /// The token this node was given last: needed to join again under a
    /// name that holds one.
    #[serde(default)]
    pub node_token: Option<String>,
}

/// What a joined node is told: its token and the cluster's timing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Joined {
    pub name: String,
    pub token: String,
    pub heartbeat_ms: u64,
    pub lease_ms: u64,
    pub kill_after_ms: u64,
    /// The control plane's and its store's addresses (no workload on the
    /// node may reach them).
    #[serde(default)]
    pub control_plane: Vec<String>,
}

/// `POST /v1/nodes/{name}/sync`: what the node saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    #[serde(default)]
    pub reports: Vec<Report>,
    /// The node's images now (`None`: not said, the record keeps its own).
    #[serde(default)]
    pub images: Option<BTreeSet<String>>,
    /// The node's ends of its tenants' overlays (`None`: not said).
    #[serde(default)]
    pub overlay: Option<OverlayReport>,
    /// The tenants whose networks the node holds now (`None`: not said;
    /// the server then keeps every slice it gave the node). A tenant the
    /// node neither holds a network of nor is assigned instances of gets
    /// its slice back.
    #[serde(default)]
    pub networks: Option<BTreeSet<String>>,
}

/// A node's ends of the overlays of the tenants it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OverlayReport {
    /// Its address on the network between nodes (peers send there).
    #[schema(value_type = String)]
    pub address: std::net::Ipv4Addr,
    /// Tenant -> its end here.
    pub ends: std::collections::BTreeMap<String, OverlayEnd>,
}

/// One end of a tenant's overlay on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OverlayEnd {
    /// WireGuard's public key (base64); empty for a plain overlay.
    pub public_key: String,
    pub port: u16,
}

/// Another node of a tenant, as a node's peer in the tenant's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OverlayPeer {
    pub node: String,
    pub public_key: String,
    /// ADDRESS:PORT on the network between nodes.
    pub endpoint: String,
    /// Its slice of the tenant's range (CIDR): all it may send from.
    pub slice: String,
}

/// What the node must run now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Synced {
    pub assignments: Vec<Assignment>,
    /// Each tenant's network slice on this node (CIDR): the node's bridge
    /// for the tenant takes it.
    #[serde(default)]
    pub slices: std::collections::BTreeMap<String, String>,
    /// Each tenant's service names for its resolver on this node:
    /// `<service>`, `<index>.<service>`, and each with `.<tenant>.internal`
    /// -> the addresses of its running (and, with a check, healthy)
    /// instances, on any node.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>>)]
    pub names: std::collections::BTreeMap<String, crate::network::dns::ClusterNames>,
    /// Each tenant's service addresses -> the addresses of their running
    /// (and, with a check, healthy) instances on any node, for the node's
    /// rules to balance connections over.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>>)]
    pub vips: std::collections::BTreeMap<String, crate::network::Vips>,
    /// How the tenants' nodes are joined: `wireguard` or `plain`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub overlay: crate::network::overlay::Mode,
    /// Each tenant's other nodes that run it: the node's peers in the
    /// tenant's overlay.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, Vec<OverlayPeer>>,
    /// Every service's published ports and where their connections go
    /// from this node; every node's address.
    #[serde(default)]
    pub ingress: super::ingress::Ingress,
    pub lease_ms: u64,
    pub kill_after_ms: u64,
    #[serde(default)]
    pub control_plane: Vec<String>,
}

/// One row of `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRow {
    pub node: Node,
    pub ready: bool,
    pub heartbeat_age_ms: u64,
    pub allocated: Resources,
    pub instances: usize,
    /// Each tenant's slice of its range on this node (tenant -> CIDR),
    /// held while the node runs the tenant or holds its network.
    #[serde(default)]
    pub slices: std::collections::BTreeMap<String, String>,
}

/// A drain: how many instances move.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Drained {
    pub moved: usize,
}

/// A node removed: its name freed, and how many instances moved.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRemoved {
    pub removed: String,
    pub instances_moved: usize,
}

/// One row of `GET /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceRow {
    pub service: ServiceRecord,
    pub instances: usize,
}

/// `GET /v1/services/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceDetail {
    pub service: ServiceRecord,
    pub instances: Vec<Instance>,
}

/// `POST /v1/services/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: u32,
}

/// `POST /v1/services/{name}/instances/{index}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub command: Vec<String>,
}

/// Every error: what went wrong, for a person.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The schemas `/openapi.json` carries, by name.
pub fn schemas() -> Vec<(
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
)> {
    let mut out = Vec::new();
    fn add<T: ToSchema>(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        out.push((T::name().into_owned(), T::schema()));
        T::schemas(out);
    }
    add::<NewTenant>(&mut out);
    add::<TenantCreated>(&mut out);
    add::<TenantUpdate>(&mut out);
    add::<super::auth::Tenant>(&mut out);
    add::<TokenAnswer>(&mut out);
    add::<super::auth::TokenInfo>(&mut out);
    add::<Revision>(&mut out);
    add::<NodeRegistered>(&mut out);
    add::<Node>(&mut out);
    add::<JoinRequest>(&mut out);
    add::<Joined>(&mut out);
    add::<SyncRequest>(&mut out);
    add::<Synced>(&mut out);
    add::<NodeRow>(&mut out);
    add::<Drained>(&mut out);
    add::<NodeRemoved>(&mut out);
    add::<super::spec::ServiceSpec>(&mut out);
    add::<Change>(&mut out);
    add::<ServiceRow>(&mut out);
    add::<ServiceDetail>(&mut out);
    add::<Scale>(&mut out);
    add::<Instance>(&mut out);
    add::<Exec>(&mut out);
    add::<ExecResult>(&mut out);
    add::<Target>(&mut out);
    add::<ErrorBody>(&mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}
