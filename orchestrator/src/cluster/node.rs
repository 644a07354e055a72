//! `bulkhead node`: the daemon on each host. It joins with a join token,
//! then syncs every heartbeat interval: it reports its instances (running,
//! or exited with a code) and gets back what it must run, each assignment
//! with a fence. It starts what is missing through the runtime library
//! (`runtime::create`, in this process, with every tenant value a typed
//! field; the supervisor is a child, and so is whatever builds a kernel or
//! a root disk), stops and removes what is no longer assigned (or assigned
//! under another fence, `runtime::remove`), and renews each workload's
//! lease deadline only after the server has heard from it.
//!
//! Its workloads are ordinary local workloads, found again by their
//! environment (`BULKHEAD_FENCE` and friends), so a restarted node daemon
//! re-adopts them without restarting anything. Their supervisors stop
//! them when the lease deadline passes, whether this daemon lives or not.

mod join;
mod local;
mod overlay;

pub use join::*;
pub(crate) use local::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::assign::{Assignment, Observed, Report};
use super::spec::Resources;
use super::state::Node;
use crate::state::fencing::{self, monotonic_ms};
use crate::state::health::HealthStatus;
use crate::state::paths::Paths;
use crate::state::record::{Record, RuntimeKind, Status};
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the server at {0}: {1}")]
    Server(String, String),
    /// The token is no longer good (the server forgot us, or issued another).
    #[error("the server refused this node's token: {0}")]
    Refused(String),
    /// The server will not do it as asked (a join under a name another
    /// node holds).
    #[error("the server refused: {0}")]
    Conflict(String),
    #[error("the local runtime: {0}")]
    Local(String),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub server: String,
    pub join_token: String,
    pub node: Node,
    /// The local runtime's data dir (images, workloads).
    pub data: PathBuf,
    /// This program, for `run`, `stop` and `rm`.
    pub bulkhead: PathBuf,
    /// Trust only this CA for https:// servers.
    pub cacert: Option<PathBuf>,
    /// The node API (`node_api`) listens here...
    pub listen: std::net::SocketAddr,
    /// ...and the server reaches it here (default: derived).
    pub advertise: Option<String>,
    /// Join and sync over http:// (the join token, this node's token and
    /// its API secret then cross the network in the clear).
    pub insecure: bool,
    /// How long an image's root disk may take to build.
    pub disk_timeout: Duration,
    /// This host's address between nodes, where its tenants' overlays
    /// take their peers' traffic (default: its address on the way to the
    /// server).
    pub overlay_address: Option<std::net::Ipv4Addr>,
}

/// An instance's identity on this node, from its workload's environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub tenant: String,
    pub service: String,
    pub index: u32,
    pub fence: u64,
}

impl Key {
    fn of(a: &Assignment) -> Key {
        Key {
            tenant: a.tenant.clone(),
            service: a.service.clone(),
            index: a.index,
            fence: a.fence,
        }
    }

    /// From `BULKHEAD_TENANT`, `_SERVICE`, `_INSTANCE`, `_FENCE` in `env`.
    fn from_env(env: &[String]) -> Option<Key> {
        let get = |k: &str| {
            env.iter()
                .find_map(|e| e.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Key {
            tenant: get("BULKHEAD_TENANT")?,
            service: get("BULKHEAD_SERVICE")?,
            index: get("BULKHEAD_INSTANCE")?.parse().ok()?,
            fence: get("BULKHEAD_FENCE")?.parse().ok()?,
        })
    }

    fn report(&self, observed: Observed) -> Report {
        Report {
            tenant: self.tenant.clone(),
            service: self.service.clone(),
            index: self.index,
            fence: self.fence,
            observed,
            health: None,
            ip: None,
            refused: None,
        }
    }

    /// The local workload's name: (fence, index) is unique in the cluster
    /// (one service's instances per store transaction).
    fn workload_name(&self) -> String {
        format!("bh-{}-{}", self.fence, self.index)
    }
}

/// What the daemon knows between syncs.
struct Daemon {
    cfg: NodeConfig,
    client: Client,
    leases: PathBuf,
    /// Instances being started or stopped right now (by a worker thread).
    busy: Arc<Mutex<BTreeSet<Key>>>,
    /// Starts that failed before the runtime made a workload: reported
    /// as exited with this code until the assignment changes.
    failed_starts: Arc<Mutex<BTreeMap<Key, i32>>>,
    /// From the server: SIGKILL this long after a lease deadline passed.
    kill_after_ms: u64,
    /// What the server must send to the node API...
    secret: String,
    /// ...and the certificate that API serves (PEM).
    cert: String,
    /// One lock per tenant: starts hold it shared while they make sure the
    /// tenant's network exists and run; a removal takes it alone to drop
    /// the network once nothing is on it.
    tenant_locks: TenantLocks,
    /// What the server said last of the control plane's addresses.
    control_plane: Vec<String>,
    /// When our firewall tables and routing rules were last checked.
    walls_checked: Option<Instant>,
    /// Its tenants' tunnels to their other nodes.
    overlays: overlay::Overlays,
}

#[derive(Clone, Default)]
struct TenantLocks(Arc<Mutex<BTreeMap<String, Arc<RwLock<()>>>>>);

impl TenantLocks {
    fn of(&self, tenant: &str) -> Arc<RwLock<()>> {
        Arc::clone(
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(tenant.to_string())
                .or_default(),
        )
    }
}

/// How often the node checks that its firewall tables and routing rules
/// are still there (a firewall reload flushes the tables: the workloads
/// are cut off, never opened, until they are back).
const WALLS_EVERY: Duration = Duration::from_secs(5);

/// The address the server sees this host by: `listen` unless it is
/// 0.0.0.0, else the source address of the route to the first server.
fn own_address(servers: &str, listen: std::net::IpAddr) -> std::net::IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let host = servers
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .split("://")
        .last()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let hostport = if host.contains(':') {
        host
    } else {
        format!("{host}:80")
    };
    let routed = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|u| {
        u.connect(&hostport)?;
        u.local_addr()
    });
    routed
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The host of an https:// URL (an IPv6 address without its brackets).
fn api_host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str().filter(|_| u.scheme() == "https")?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Runs the node daemon until SIGTERM or SIGINT.
pub fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    refuse_cleartext(&cfg.server, cfg.insecure)?;
    // A connection per peer and per workload: not systemd's soft 1024.
    // Workloads get the original limit back (state::fdlimit).
    if let Err(e) = crate::state::fdlimit::raise() {
        eprintln!("bulkhead node: warning: could not raise the descriptor limit: {e}");
    }
    let leases = cfg.data.join("node").join("leases");
    bulkhead_images::private::data_root(&cfg.data)
        .map_err(|e| NodeError::Local(format!("the data dir {}: {e}", cfg.data.display())))?;
    for d in [cfg.data.join("node"), leases.clone()] {
        bulkhead_images::private::dir(&d)
            .map_err(|e| NodeError::Local(format!("{}: {e}", d.display())))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NodeError::Local(e.to_string()))?;
    let mut cfg = cfg;
    let (secret_part, pinned) = split_join_token(&cfg.join_token);
    cfg.join_token = secret_part;
    let http = rt.block_on(trust(&cfg, pinned.as_deref()))?;
    let client = Client::new(&cfg.server, http);
    let secret = super::auth::new_token().map_err(|e| NodeError::Local(e.to_string()))?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| NodeError::Local(format!("the node API on {}: {e}", cfg.listen)))?;
    let port = listener
        .local_addr()
        .map_err(|e| NodeError::Local(e.to_string()))?
        .port();
    let api = cfg.advertise.clone().unwrap_or_else(|| {
        format!(
            "https://{}",
            std::net::SocketAddr::new(own_address(&cfg.server, cfg.listen.ip()), port)
        )
    });
    // TLS only, with a certificate made now for the advertised host: the
    // server pins it (it gets it at join, over its own API).
    let host = api_host(&api).ok_or_else(|| {
        NodeError::Local(format!(
            "--advertise {api:?}: https://HOST:PORT (the node API speaks TLS only)"
        ))
    })?;
    let (cert, key) = api_certificate(&cfg.data, &host)?;
    let tls = super::tls::server_config_pem(&cert, &key)
        .map_err(|e| NodeError::Local(format!("the node API's certificate: {e}")))?;
    cfg.node.api = Some(api);
    let overlay_address = cfg.overlay_address.or(
        match own_address(&cfg.server, std::net::Ipv4Addr::UNSPECIFIED.into()) {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        },
    );
    // The node API on a thread and runtime of its own: what its peers do
    // never delays the main loop, which renews the leases.
    let (api_secret, data, bulkhead) = (secret.clone(), cfg.data.clone(), cfg.bulkhead.clone());
    std::thread::Builder::new()
        .name("node-api".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    rt.block_on(async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        super::node_api::serve(listener, tls, api_secret, data, bulkhead).await
                    })
                });
            if let Err(e) = served {
                eprintln!("bulkhead node: the node API stopped: {e}");
            }
        })
        .map_err(|e| NodeError::Local(format!("start the node API: {e}")))?;
    let mut d = Daemon {
        cfg,
        client,
        leases,
        busy: Arc::default(),
        failed_starts: Arc::default(),
        kill_after_ms: 5_000,
        secret,
        cert,
        tenant_locks: TenantLocks::default(),
        control_plane: Vec::new(),
        walls_checked: None,
        overlays: overlay::Overlays::new(overlay_address),
    };
    d.protect(Vec::new());
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| NodeError::Local(e.to_string()))?;
        tokio::select! {
            r = d.main_loop() => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })
}

impl Daemon {
    async fn join(&mut self) -> Result<(String, u64), NodeError> {
        self.cfg.node.images = local_images(&self.cfg.data);
        let body = super::api::JoinRequest {
            node: self.cfg.node.clone(),
            api_secret: Some(self.secret.clone()),
            api_cert: Some(self.cert.clone()),
            node_token: read_identity(&self.cfg.data, &self.cfg.node.name),
        };
        // A restarted node joins with its own token (its join token may
        // have expired); a new one, or one an admin removed, with the join
        // token.
        let own = read_identity(&self.cfg.data, &self.cfg.node.name);
        let j: super::api::Joined = match own {
            Some(t) => match self.client.post("/v1/nodes/join", &t, &body).await {
                Err(NodeError::Refused(_)) if !self.cfg.join_token.is_empty() => {
                    let body = super::api::JoinRequest {
                        node_token: None,
                        ..body
                    };
                    self.client
                        .post("/v1/nodes/join", &self.cfg.join_token, &body)
                        .await?
                }
                r => r?,
            },
            None => {
                self.client
                    .post("/v1/nodes/join", &self.cfg.join_token, &body)
                    .await?
            }
        };
        if let Err(e) = write_identity(&self.cfg.data, &self.cfg.node.name, &j.token) {
            eprintln!("bulkhead node: keep this node's token in {}: {e} (a restarted daemon will not get its name back)", identity_file(&self.cfg.data).display());
        }
        self.kill_after_ms = j.kill_after_ms;
        self.protect(j.control_plane);
        eprintln!(
            "bulkhead node: joined {} as {} (heartbeat every {} ms, lease {} ms)",
            self.client.name(),
            self.cfg.node.name,
            j.heartbeat_ms,
            j.lease_ms
        );
        Ok((j.token, j.heartbeat_ms.clamp(100, 10_000)))
    }

    async fn main_loop(&mut self) -> Result<(), NodeError> {
        let mut joined: Option<(String, u64)> = None;
        let mut last_problem = String::new();
        loop {
            let (token, every) = match &joined {
                Some(j) => j.clone(),
                None => match self.join().await {
                    Ok(j) => {
                        joined = Some(j.clone());
                        j
                    }
                    Err(NodeError::Refused(why)) => {
                        return Err(NodeError::Refused(format!("the join token: {why}")))
                    }
                    Err(e @ NodeError::Conflict(_)) => return Err(e),
                    Err(e) => {
                        if e.to_string() != last_problem {
                            eprintln!("bulkhead node: cannot join yet: {e}");
                            last_problem = e.to_string();
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            match self.sync_once(&token).await {
                Ok(()) => last_problem.clear(),
                Err(NodeError::Refused(why)) => {
                    eprintln!("bulkhead node: {why}: joining again");
                    joined = None;
                }
                Err(e) => {
                    // No renewal: if this goes on, the workloads fence themselves.
                    if e.to_string() != last_problem {
                        eprintln!("bulkhead node: {e}");
                        last_problem = e.to_string();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
    }

    /// Keeps the control plane out of every workload's reach: the servers'
    /// addresses and what the server said (`said`), when that changed.
    fn protect(&mut self, said: Vec<String>) {
        if said == self.control_plane && self.walls_checked.is_some() {
            return;
        }
        let state = State::new(Paths::new(&self.cfg.data));
        match crate::network::lifecycle::set_protected(
            &state,
            protected_addresses(&self.cfg.server, &said),
        ) {
            Ok(_) => self.control_plane = said,
            Err(e) => {
                eprintln!("bulkhead node: keep workloads from the control plane's addresses: {e}")
            }
        }
        self.check_walls();
    }

    /// Puts our firewall tables and routing rules back if they went.
    fn check_walls(&mut self) {
        if self
            .walls_checked
            .is_some_and(|t| t.elapsed() < WALLS_EVERY)
        {
            return;
        }
        self.walls_checked = Some(Instant::now());
        match crate::network::lifecycle::check_walls(&State::new(Paths::new(&self.cfg.data))) {
            Ok(fixed) if fixed.is_empty() => {}
            Ok(fixed) => eprintln!("bulkhead node: restored {}", fixed.join("; ")),
            Err(e) => eprintln!("bulkhead node: check the firewall tables and routing rules: {e}"),
        }
    }

    fn lease_file(&self, k: &Key) -> PathBuf {
        self.leases.join(k.workload_name())
    }

    /// One heartbeat: report, renew, act.
    async fn sync_once(&mut self, token: &str) -> Result<(), NodeError> {
        let local = local_instances(&self.cfg.data)?;
        let here = State::new(Paths::new(&self.cfg.data));
        let health: BTreeMap<&Key, HealthStatus> = local
            .iter()
            .filter_map(|(k, r)| Some((k, here.health(r)?.status)))
            .collect();
        // One `nft` run per sync, and none on a node with nothing to count.
        let refused = if local.is_empty() {
            Default::default()
        } else {
            crate::network::lifecycle::refused(&here)
        };
        let mut reports: Vec<Report> = local
            .iter()
            .filter_map(|(k, r)| {
                observed(r).map(|o| Report {
                    health: health.get(k).copied(),
                    refused: (o == Observed::Running)
                        .then_some(r.config.network.as_ref())
                        .flatten()
                        .map(|n| {
                            let c = crate::network::egress::refused_counter(&n.host_if);
                            refused.get(&c).map_or(0, |(packets, _)| *packets)
                        }),
                    ip: (o == Observed::Running)
                        .then(|| r.config.network.as_ref().map(|n| n.ip))
                        .flatten(),
                    ..k.report(o)
                })
            })
            .collect();
        reports.extend(
            self.failed_starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, code)| k.report(Observed::Exited { code: *code })),
        );
        // The deadline counts from before the request: never later than the
        // server's own reckoning (its heartbeat time + the lease).
        let sent = monotonic_ms();
        let path = format!("/v1/nodes/{}/sync", self.cfg.node.name);
        let body = super::api::SyncRequest {
            reports,
            images: local_images(&self.cfg.data),
            overlay: self.overlays.report(),
            networks: crate::state::net::networks(&here)
                .ok()
                .map(|n| n.into_iter().filter_map(|n| n.tenant).collect()),
        };
        let s: super::api::Synced = self.client.post(&path, token, &body).await?;
        self.kill_after_ms = s.kill_after_ms;
        let deadline = sent.saturating_add(s.lease_ms);
        // A slice the node cannot read is left out: the network then takes
        // a free /24 of its own, as before slices.
        let slices: BTreeMap<String, crate::state::subnet::Subnet> = s
            .slices
            .iter()
            .filter_map(|(t, c)| Some((t.clone(), crate::state::subnet::Subnet::parse(c).ok()?)))
            .collect();
        // Each tenant's service names, for its resolver here.
        for (tenant, names) in &s.names {
            if let Err(e) = crate::network::lifecycle::set_tenant_names(&here, tenant, names) {
                eprintln!("bulkhead node: tenant {tenant}'s names: {e}");
            }
        }
        for (tenant, vips) in &s.vips {
            if let Err(e) = crate::network::lifecycle::set_tenant_vips(&here, tenant, vips) {
                eprintln!("bulkhead node: tenant {tenant}'s service addresses: {e}");
            }
        }
        let tenants: Vec<&String> = slices.keys().collect();
        self.overlays.sync(&here, s.overlay, &tenants, &s.peers);
        let assigned: BTreeMap<Key, Assignment> = s
            .assignments
            .into_iter()
            .map(|a| (Key::of(&a), a))
            .collect();
        self.failed_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| assigned.contains_key(k));
        for k in local.keys().filter(|k| assigned.contains_key(*k)) {
            if let Err(e) = fencing::write(&self.lease_file(k), deadline) {
                eprintln!(
                    "bulkhead node: renew the lease of {}: {e}",
                    k.workload_name()
                );
            }
        }
        // After the renewals: these take the network lock and run ip and nft.
        self.protect(s.control_plane);
        self.check_walls();
        if let Err(e) =
            crate::network::lifecycle::set_ingress(&here, s.ingress.ports, s.ingress.nodes)
        {
            eprintln!("bulkhead node: the cluster's published ports: {e}");
        }
        // A tenant's policy may have changed under running instances.
        let wants: BTreeMap<String, crate::network::lifecycle::EgressWant> = local
            .iter()
            .filter(|(_, r)| r.status().is_live())
            .filter_map(|(k, r)| {
                let want = local::egress_of(&assigned.get(k)?.spec).ok()?;
                Some((r.config.id.clone(), want))
            })
            .collect();
        if let Err(e) = crate::network::lifecycle::set_egress(&here, &wants) {
            eprintln!("bulkhead node: the instances' egress: {e}");
        }
        for (k, r) in &local {
            if !assigned.contains_key(k) {
                self.spawn_worker(
                    k.clone(),
                    Work::Remove(r.config.id.clone(), r.status().is_live()),
                );
            } else if health.get(k) == Some(&HealthStatus::Unhealthy) {
                // Out of service: it stops, is reported exited, and its
                // restart policy decides (Kubernetes' liveness probes).
                self.spawn_worker(k.clone(), Work::Stop(r.config.id.clone()));
            }
        }
        let failed: BTreeSet<Key> = self
            .failed_starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for (k, a) in assigned {
            if !local.contains_key(&k) && !failed.contains(&k) {
                if let Err(e) = fencing::write(&self.lease_file(&k), deadline) {
                    eprintln!("bulkhead node: the lease of {}: {e}", k.workload_name());
                    continue;
                }
                let slice = slices.get(&k.tenant).copied();
                self.spawn_worker(k, Work::Start(Box::new(a), slice));
            }
        }
        Ok(())
    }

    /// Runs `work` on a thread of its own unless `k` is busy already.
    fn spawn_worker(&self, k: Key, work: Work) {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k.clone())
        {
            return;
        }
        let (busy, failed) = (Arc::clone(&self.busy), Arc::clone(&self.failed_starts));
        let builds = local::Builds {
            bulkhead: self.cfg.bulkhead.clone(),
            disk_timeout: self.cfg.disk_timeout,
        };
        let (data, node, kill_after_ms) = (
            self.cfg.data.clone(),
            self.cfg.node.name.clone(),
            self.kill_after_ms,
        );
        let lease = self.lease_file(&k);
        let tenant_lock = self.tenant_locks.of(&k.tenant);
        std::thread::spawn(move || {
            match work {
                Work::Start(a, slice) => {
                    // The sync that asked read the local workloads before
                    // its slow part (the server, the network lock): an
                    // earlier start of this instance may have ended since.
                    if local_instances(&data).is_ok_and(|l| l.contains_key(&k)) {
                        busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                        return;
                    }
                    let shared = tenant_lock.read().unwrap_or_else(|p| p.into_inner());
                    let started = crate::network::lifecycle::ensure_tenant_network(
                        &State::new(Paths::new(&data)),
                        &k.tenant,
                        slice,
                    )
                    .map_err(|e| (Some(125), format!("the tenant's network: {e}")))
                    .and_then(|network| {
                        start(
                            &builds,
                            &data,
                            &node,
                            &k,
                            &a,
                            crate::state::fencing::Fencing {
                                deadline_file: lease.clone(),
                                kill_after_ms,
                            },
                            &network,
                        )
                    });
                    drop(shared);
                    if let Err((code, why)) = started {
                        eprintln!(
                            "bulkhead node: start {}/{}/{}: {why}",
                            k.tenant, k.service, k.index
                        );
                        if let Some(code) = code {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(k.clone(), code);
                        }
                    }
                }
                Work::Stop(id) => {
                    let state = State::new(Paths::new(&data));
                    eprintln!(
                        "bulkhead node: {}/{}/{} is unhealthy: stopping it",
                        k.tenant, k.service, k.index
                    );
                    let secs = kill_after_ms.div_ceil(1000).max(1);
                    if let Err(e) = state
                        .get(&id)
                        .map_err(anyhow::Error::from)
                        .and_then(|r| Ok(crate::runtime::remove::stop(&r, secs)?))
                    {
                        eprintln!("bulkhead node: stop {id}: {e:#}");
                    }
                }
                Work::Remove(id, live) => {
                    let state = State::new(Paths::new(&data));
                    let removed = state.get(&id).map_err(Into::into).and_then(|r| {
                        if live {
                            let secs = kill_after_ms.div_ceil(1000).max(1);
                            let _ = crate::runtime::remove::stop(&r, secs);
                        }
                        // Stopped above: what still runs is killed.
                        let r = state.get(&id)?;
                        crate::runtime::remove::remove(&state, &r, true)
                    });
                    match removed {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&lease);
                            let alone = tenant_lock.write().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) =
                                crate::network::lifecycle::release_tenant_network(&state, &k.tenant)
                            {
                                eprintln!(
                                    "bulkhead node: remove tenant {}'s network: {e}",
                                    k.tenant
                                );
                            }
                            drop(alone);
                        }
                        Err(e) => eprintln!("bulkhead node: rm {id}: {:#}", anyhow::Error::from(e)),
                    }
                }
            }
            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_identity_comes_from_the_environment_and_odd_values_are_not_ours() {
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = Key::from_env(&env(&[
            "PATH=/bin",
            "BULKHEAD_TENANT=acme",
            "BULKHEAD_SERVICE=web",
            "BULKHEAD_INSTANCE=3",
            "BULKHEAD_FENCE=17",
        ]));
        assert_eq!(
            k,
            Some(Key {
                tenant: "acme".into(),
                service: "web".into(),
                index: 3,
                fence: 17
            })
        );
        assert_eq!(k.map(|k| k.workload_name()).as_deref(), Some("bh-17-3"));
        for bad in [
            &[
                "BULKHEAD_TENANT=acme",
                "BULKHEAD_SERVICE=web",
                "BULKHEAD_INSTANCE=3",
            ][..],
            &[
                "BULKHEAD_TENANT=acme",
                "BULKHEAD_SERVICE=web",
                "BULKHEAD_INSTANCE=x",
                "BULKHEAD_FENCE=1",
            ],
            &[
                "BULKHEAD_TENANT=acme",
                "BULKHEAD_SERVICE=web",
                "BULKHEAD_INSTANCE=1",
                "BULKHEAD_FENCE=-1",
            ],
            &[
                "BULKHEAD_TENANTX=acme",
                "BULKHEAD_SERVICE=web",
                "BULKHEAD_INSTANCE=1",
                "BULKHEAD_FENCE=1",
            ],
        ] {
            assert_eq!(Key::from_env(&env(bad)), None, "{bad:?}");
        }
    }
}
