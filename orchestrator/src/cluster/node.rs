//! `bulkhead node`: the daemon on each host. It joins with a join token,
//! then syncs every heartbeat interval: it reports its instances (running,
//! or exited with a code) and gets back what it must run, each assignment
//! with a fence. It starts what is missing through the local runtime
//! (`bulkhead run -d`, so jailed like any VM), stops and removes what is no
//! longer assigned (or assigned under another fence), and renews each
//! workload's lease deadline only after the server has heard from it.
//!
//! Its workloads are ordinary local workloads, found again by their
//! environment (`BULKHEAD_FENCE` and friends), so a restarted node daemon
//! re-adopts them without restarting anything. Their supervisors stop
//! them when the lease deadline passes, whether this daemon lives or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::assign::{Assignment, Observed, Report};
use super::spec::Resources;
use super::state::Node;
use crate::runtime::fencing::{self, monotonic_ms};
use crate::runtime::paths::Paths;
use crate::runtime::record::{Record, RuntimeKind, Status};
use crate::runtime::state::State;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the server at {0}: {1}")]
    Server(String, String),
    /// The token is no longer good (the server forgot us, or issued another).
    #[error("the server refused this node's token: {0}")]
    Refused(String),
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
        Key { tenant: a.tenant.clone(), service: a.service.clone(), index: a.index, fence: a.fence }
    }

    /// From `BULKHEAD_TENANT`, `_SERVICE`, `_INSTANCE`, `_FENCE` in `env`.
    fn from_env(env: &[String]) -> Option<Key> {
        let get = |k: &str| env.iter().find_map(|e| e.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
        Some(Key { tenant: get("BULKHEAD_TENANT")?, service: get("BULKHEAD_SERVICE")?, index: get("BULKHEAD_INSTANCE")?.parse().ok()?, fence: get("BULKHEAD_FENCE")?.parse().ok()? })
    }

    fn report(&self, observed: Observed) -> Report {
        Report { tenant: self.tenant.clone(), service: self.service.clone(), index: self.index, fence: self.fence, observed }
    }

    /// The local workload's name: (fence, index) is unique in the cluster
    /// (one service's instances per store transaction).
    fn workload_name(&self) -> String {
        format!("bh-{}-{}", self.fence, self.index)
    }
}

#[derive(Debug, Deserialize)]
struct Joined {
    token: String,
    heartbeat_ms: u64,
    lease_ms: u64,
    kill_after_ms: u64,
}

#[derive(Debug, Deserialize)]
struct Synced {
    assignments: Vec<Assignment>,
    lease_ms: u64,
    kill_after_ms: u64,
}

struct Client {
    /// One server, or several sharing a store: the leader answers.
    bases: Vec<String>,
    http: reqwest::Client,
    /// The last one that answered (tried first).
    current: usize,
}

impl Client {
    fn new(servers: &str, http: reqwest::Client) -> Client {
        let bases = servers.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        Client { bases, http, current: 0 }
    }

    fn name(&self) -> String {
        self.bases.join(",")
    }

    async fn post<T: serde::de::DeserializeOwned>(&mut self, path: &str, token: &str, body: serde_json::Value) -> Result<T, NodeError> {
        let mut last = NodeError::Server(self.name(), "no server URL".into());
        for k in 0..self.bases.len() {
            let i = (self.current + k) % self.bases.len();
            let base = self.bases[i].clone();
            let resp = match self.http.post(format!("{base}{path}")).bearer_auth(token).json(&body).timeout(Duration::from_secs(5)).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = NodeError::Server(base, e.to_string());
                    continue;
                }
            };
            let status = resp.status();
            let text = resp.text().await.map_err(|e| NodeError::Server(base.clone(), e.to_string()))?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                last = NodeError::Server(base, text); // a standby: try the next
                continue;
            }
            self.current = i;
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                return Err(NodeError::Refused(text));
            }
            if !status.is_success() {
                return Err(NodeError::Server(base, format!("{status}: {text}")));
            }
            return serde_json::from_str(&text).map_err(|e| NodeError::Server(base, format!("an answer that does not parse: {e}")));
        }
        Err(last)
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
}

/// The address the server sees this host by: `listen` unless it is
/// 0.0.0.0, else the source address of the route to the first server.
fn own_address(servers: &str, listen: std::net::IpAddr) -> std::net::IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    let host = servers.split(',').next().unwrap_or("").trim().split("://").last().unwrap_or("").split('/').next().unwrap_or("").to_string();
    let hostport = if host.contains(':') { host } else { format!("{host}:80") };
    let routed = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|u| {
        u.connect(&hostport)?;
        u.local_addr()
    });
    routed.map(|a| a.ip()).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The host of an https:// URL (an IPv6 address without its brackets).
fn api_host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str().filter(|_| u.scheme() == "https")?;
    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Runs the node daemon until SIGTERM or SIGINT.
pub fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let leases = cfg.data.join("node").join("leases");
    std::fs::create_dir_all(&leases).map_err(|e| NodeError::Local(format!("{}: {e}", leases.display())))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| NodeError::Local(e.to_string()))?;
    let http = super::tls::client(cfg.cacert.as_deref()).map_err(|e| NodeError::Local(e.to_string()))?;
    let client = Client::new(&cfg.server, http);
    let secret = super::auth::new_token().map_err(|e| NodeError::Local(e.to_string()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(cfg.listen)).map_err(|e| NodeError::Local(format!("the node API on {}: {e}", cfg.listen)))?;
    let port = listener.local_addr().map_err(|e| NodeError::Local(e.to_string()))?.port();
    let mut cfg = cfg;
    let api = cfg.advertise.clone().unwrap_or_else(|| format!("https://{}", std::net::SocketAddr::new(own_address(&cfg.server, cfg.listen.ip()), port)));
    // TLS only, with a certificate made now for the advertised host: the
    // server pins it (it gets it at join, over its own API).
    let host = api_host(&api).ok_or_else(|| NodeError::Local(format!("--advertise {api:?}: https://HOST:PORT (the node API speaks TLS only)")))?;
    let (cert, key) = super::tls::self_signed(&[host]).map_err(|e| NodeError::Local(format!("the node API's certificate: {e}")))?;
    let tls = super::tls::server_config_pem(&cert, &key).map_err(|e| NodeError::Local(format!("the node API's certificate: {e}")))?;
    cfg.node.api = Some(api);
    rt.spawn(super::node_api::serve(listener, tls, secret.clone(), cfg.data.clone(), cfg.bulkhead.clone()));
    let mut d = Daemon { cfg, client, leases, busy: Arc::default(), failed_starts: Arc::default(), kill_after_ms: 5_000, secret, cert };
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| NodeError::Local(e.to_string()))?;
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
        let mut body = serde_json::to_value(&self.cfg.node).unwrap_or_default();
        body["api_secret"] = json!(self.secret);
        body["api_cert"] = json!(self.cert);
        let j: Joined = self.client.post("/v1/nodes/join", &self.cfg.join_token, body).await?;
        self.kill_after_ms = j.kill_after_ms;
        eprintln!("bulkhead node: joined {} as {} (heartbeat every {} ms, lease {} ms)", self.client.name(), self.cfg.node.name, j.heartbeat_ms, j.lease_ms);
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
                    Err(NodeError::Refused(why)) => return Err(NodeError::Refused(format!("the join token: {why}"))),
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

    fn lease_file(&self, k: &Key) -> PathBuf {
        self.leases.join(k.workload_name())
    }

    /// One heartbeat: report, renew, act.
    async fn sync_once(&mut self, token: &str) -> Result<(), NodeError> {
        let local = local_instances(&self.cfg.data)?;
        let mut reports: Vec<Report> = local.iter().filter_map(|(k, r)| observed(r).map(|o| k.report(o))).collect();
        reports.extend(self.failed_starts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, code)| k.report(Observed::Exited { code: *code })));
        // The deadline counts from before the request: never later than the
        // server's own reckoning (its heartbeat time + the lease).
        let sent = monotonic_ms();
        let path = format!("/v1/nodes/{}/sync", self.cfg.node.name);
        let s: Synced = self.client.post(&path, token, json!({ "reports": reports, "images": local_images(&self.cfg.data) })).await?;
        self.kill_after_ms = s.kill_after_ms;
        let deadline = sent.saturating_add(s.lease_ms);
        let assigned: BTreeMap<Key, Assignment> = s.assignments.into_iter().map(|a| (Key::of(&a), a)).collect();
        self.failed_starts.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| assigned.contains_key(k));
        for k in local.keys().filter(|k| assigned.contains_key(*k)) {
            if let Err(e) = fencing::write(&self.lease_file(k), deadline) {
                eprintln!("bulkhead node: renew the lease of {}: {e}", k.workload_name());
            }
        }
        for (k, r) in &local {
            if !assigned.contains_key(k) {
                self.spawn_worker(k.clone(), Work::Remove(r.config.id.clone(), r.status().is_live()));
            }
        }
        let failed: BTreeSet<Key> = self.failed_starts.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for (k, a) in assigned {
            if !local.contains_key(&k) && !failed.contains(&k) {
                if let Err(e) = fencing::write(&self.lease_file(&k), deadline) {
                    eprintln!("bulkhead node: the lease of {}: {e}", k.workload_name());
                    continue;
                }
                self.spawn_worker(k, Work::Start(Box::new(a)));
            }
        }
        Ok(())
    }

    /// Runs `work` on a thread of its own unless `k` is busy already.
    fn spawn_worker(&self, k: Key, work: Work) {
        if !self.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone()) {
            return;
        }
        let (busy, failed) = (Arc::clone(&self.busy), Arc::clone(&self.failed_starts));
        let (bulkhead, data, node, kill_after_ms) = (self.cfg.bulkhead.clone(), self.cfg.data.clone(), self.cfg.node.name.clone(), self.kill_after_ms);
        let lease = self.lease_file(&k);
        std::thread::spawn(move || {
            match work {
                Work::Start(a) => {
                    if let Err((code, why)) = start(&bulkhead, &data, &node, &k, &a, &lease, kill_after_ms) {
                        eprintln!("bulkhead node: start {}/{}/{}: {why}", k.tenant, k.service, k.index);
                        if let Some(code) = code {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone(), code);
                        }
                    }
                }
                Work::Remove(id, live) => {
                    if live {
                        let secs = kill_after_ms.div_ceil(1000).max(1).to_string();
                        let _ = local_cmd(&bulkhead, &data).args(["stop", "-t", &secs, &id]).output();
                    }
                    match local_cmd(&bulkhead, &data).args(["rm", "-f", &id]).output() {
                        Ok(o) if o.status.success() => {
                            let _ = std::fs::remove_file(&lease);
                        }
                        Ok(o) => eprintln!("bulkhead node: rm {id}: {}", String::from_utf8_lossy(&o.stderr).trim()),
                        Err(e) => eprintln!("bulkhead node: rm {id}: {e}"),
                    }
                }
            }
            busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
        });
    }
}

enum Work {
    Start(Box<Assignment>),
    /// The workload id, and whether it may still run (stop it first).
    Remove(String, bool),
}

fn local_cmd(bulkhead: &Path, data: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bulkhead);
    c.env("BULKHEAD_DATA", data).stdin(std::process::Stdio::null());
    c
}

/// `bulkhead run -d` for an assignment. Err: (the code to report when the
/// runtime made no workload that will report it, why).
fn start(bulkhead: &Path, data: &Path, node: &str, k: &Key, a: &Assignment, lease: &Path, kill_after_ms: u64) -> Result<(), (Option<i32>, String)> {
    let spec = &a.spec;
    let mut c = local_cmd(bulkhead, data);
    c.args(["run", "-d", "--name", &k.workload_name(), "--runtime", &spec.runtime.to_string()]);
    c.arg("--fence-deadline-file").arg(lease).args(["--fence-kill-after-ms", &kill_after_ms.to_string()]);
    for (key, value) in &spec.env {
        c.arg(format!("--env={key}={value}"));
    }
    for (key, value) in [
        ("BULKHEAD_TENANT", k.tenant.clone()),
        ("BULKHEAD_SERVICE", k.service.clone()),
        ("BULKHEAD_INSTANCE", k.index.to_string()),
        ("BULKHEAD_FENCE", k.fence.to_string()),
        ("BULKHEAD_NODE", node.to_string()),
    ] {
        c.arg(format!("--env={key}={value}"));
    }
    if let Some(cpus) = spec.cpus {
        c.arg(format!("--cpus={cpus}"));
    }
    if let Some(m) = &spec.memory {
        c.arg(format!("--memory={m}"));
    }
    for p in &spec.ports {
        c.arg(format!("--publish={p}"));
    }
    // Tenant values as `--flag=value` and after `--`: none can pass for a flag of `run`.
    c.arg("--").arg(&spec.image).args(&spec.command);
    let o = c.output().map_err(|e| (Some(125), format!("{}: {e}", bulkhead.display())))?;
    if o.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
    // A workload that exists reports its own end; one that never got made is reported by us.
    let made = local_instances(data).map(|l| l.contains_key(k)).unwrap_or(false);
    Err(((!made).then_some(o.status.code().unwrap_or(125)), why))
}

/// This node's instances among the local workloads.
/// What the local image store holds, as the server matches a service's
/// image: every name and the manifest digests they point at. `None` when
/// the store cannot be read (the server then keeps what it was told last).
fn local_images(data: &Path) -> Option<BTreeSet<String>> {
    let refs = bulkhead_images::store::Store::open(data).and_then(|s| s.refs()).ok()?;
    Some(refs.into_iter().flat_map(|(name, digest)| [name, digest.to_string()]).collect())
}

pub(crate) fn local_instances(data: &Path) -> Result<BTreeMap<Key, Record>, NodeError> {
    let state = State::new(Paths::new(data));
    let records = state.list().map_err(|e| NodeError::Local(e.to_string()))?;
    Ok(records.into_iter().filter_map(|r| Some((Key::from_env(&r.config.process.env)?, r))).collect())
}

/// What to report of a local workload (nothing while it is starting).
fn observed(r: &Record) -> Option<Observed> {
    match r.status() {
        Status::Created => None,
        Status::Running => Some(Observed::Running),
        Status::Exited(code) => Some(Observed::Exited { code }),
        Status::Failed(_) => Some(Observed::Exited { code: r.exit.as_ref().map_or(125, |e| e.code) }),
    }
}

/// What this host offers when not told: its CPUs, 90% of its memory, and
/// the runtimes it can run (microvm with /dev/kvm, container with crun or runc).
/// This host's CPUs and memory, whole.
pub fn host_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())).unwrap_or(0);
    Resources { millicpus: cpus * 1000, memory_mib: mem_kib / 1024 }
}

/// What a node offers by default: every CPU, 90% of memory (the rest for
/// the host and the VMMs' own), and the runtimes this host has.
pub fn host_defaults() -> (Resources, Vec<RuntimeKind>) {
    let whole = host_capacity();
    let mut runtimes = Vec::new();
    if Path::new("/dev/kvm").exists() {
        runtimes.push(RuntimeKind::Microvm);
    }
    if crate::runtime::container::default_oci_runtime().is_some() {
        runtimes.push(RuntimeKind::Container);
    }
    (Resources { millicpus: whole.millicpus, memory_mib: whole.memory_mib * 9 / 10 }, runtimes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_identity_comes_from_the_environment_and_odd_values_are_not_ours() {
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = Key::from_env(&env(&["PATH=/bin", "BULKHEAD_TENANT=acme", "BULKHEAD_SERVICE=web", "BULKHEAD_INSTANCE=3", "BULKHEAD_FENCE=17"]));
        assert_eq!(k, Some(Key { tenant: "acme".into(), service: "web".into(), index: 3, fence: 17 }));
        assert_eq!(k.map(|k| k.workload_name()).as_deref(), Some("bh-17-3"));
        for bad in [
            &["BULKHEAD_TENANT=acme", "BULKHEAD_SERVICE=web", "BULKHEAD_INSTANCE=3"][..],
            &["BULKHEAD_TENANT=acme", "BULKHEAD_SERVICE=web", "BULKHEAD_INSTANCE=x", "BULKHEAD_FENCE=1"],
            &["BULKHEAD_TENANT=acme", "BULKHEAD_SERVICE=web", "BULKHEAD_INSTANCE=1", "BULKHEAD_FENCE=-1"],
            &["BULKHEAD_TENANTX=acme", "BULKHEAD_SERVICE=web", "BULKHEAD_INSTANCE=1", "BULKHEAD_FENCE=1"],
        ] {
            assert_eq!(Key::from_env(&env(bad)), None, "{bad:?}");
        }
    }
}
