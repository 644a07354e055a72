//! The multi-host store: etcd v3 (`--store etcds://HOST:PORT[,HOST:PORT...]`
//! over TLS, or `etcd://` in the clear), with leader election among the
//! servers that share it. [`EtcdAccess`] says how to reach it: the CA that
//! signed etcd's certificate, a client certificate (etcd's
//! `--client-cert-auth`) and etcd's own user and password, as
//! Kubernetes' apiserver reaches its etcd.
//!
//! Keys live under `/bulkhead`. Each server holds an etcd lease (kept
//! alive while it runs) and campaigns for `/bulkhead/leader`: created only
//! if absent, attached to its lease, naming the server and where its API
//! is. The holder is the leader; every transaction it sends carries one
//! more compare: that key still holds exactly its value. A leader that
//! lost its lease (stopped, cut off) therefore writes nothing, even if it
//! has not noticed yet; the others stand by, polling, and campaign once
//! the key is gone.
//!
//! The store's calls are blocking (as redb's are): each is handed to a
//! thread that owns the etcd client and its runtime.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::store::{Compare, Entry, Op, Store, StoreError};

const ROOT: &str = "/bulkhead";
const LEADER: &str = "/bulkhead/leader";

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(format!("etcd: {e}"))
}

/// How a server reaches etcd beyond its addresses.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// PEM of the CA that signed etcd's serving certificates (`etcds://`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key this server shows etcd (`etcds://`).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// etcd's own authentication: user and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_pem.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// Whether `url` is an etcd store URL at all (`etcd://` or `etcds://`).
pub fn is_etcd_url(url: &str) -> bool {
    url.starts_with("etcd://") || url.starts_with("etcds://")
}

/// The `HOST:PORT,...` part of an etcd store URL.
pub fn hosts_of(url: &str) -> Option<&str> {
    url.strip_prefix("etcds://")
        .or_else(|| url.strip_prefix("etcd://"))
}

/// `etcd://h1:p1,h2:p2` -> the endpoints (`http://h1:p1`, ...);
/// `etcds://` -> `https://...`.
pub fn endpoints(url: &str) -> Result<Vec<String>, String> {
    let scheme = if url.starts_with("etcds://") {
        "https"
    } else {
        "http"
    };
    let rest = hosts_of(url).ok_or_else(|| {
        format!("{url:?}: etcds://HOST:PORT[,HOST:PORT...] (or etcd:// in the clear)")
    })?;
    let eps: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .map(|hp| format!("{scheme}://{hp}"))
        .collect();
    for (hp, ep) in rest.split(',').zip(&eps) {
        let hp = hp.trim();
        let ok = hp.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!("{url:?}: {hp:?} is not HOST:PORT ({ep})"));
        }
    }
    Ok(eps)
}

type Reply<T> = mpsc::SyncSender<Result<T, StoreError>>;

enum Job {
    Revision(Reply<u64>),
    Get(String, Reply<Option<Entry>>),
    List(String, Reply<Vec<Entry>>),
    Txn(Vec<Compare>, Vec<Op>, Option<Vec<u8>>, Reply<u64>),
}

/// What this server knows of the election.
#[derive(Debug, Default)]
struct Leadership {
    /// Our value of the leader key while we hold it.
    mine: Option<Vec<u8>>,
    /// The current leader's announced API address (ours or another's).
    hint: Option<String>,
}

#[derive(Debug)]
pub struct EtcdStore {
    jobs: mpsc::Sender<Job>,
    leadership: Arc<Mutex<Leadership>>,
}

/// etcd's revisions are `i64` and never negative.
fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn entry(kv: &etcd_client::KeyValue) -> Option<Entry> {
    let key = kv.key_str().ok()?.strip_prefix(ROOT)?.to_string();
    Some(Entry {
        key,
        value: kv.value().to_vec(),
        revision: revision(kv.mod_revision()),
    })
}

fn compare(c: &Compare) -> EtcdCompare {
    match c {
        Compare::Absent(k) => {
            EtcdCompare::create_revision(format!("{ROOT}{k}"), CompareOp::Equal, 0)
        }
        Compare::Revision(k, r) => {
            // A revision we read came from an i64; one past it never matches.
            let r = i64::try_from(*r).unwrap_or(i64::MAX);
            EtcdCompare::mod_revision(format!("{ROOT}{k}"), CompareOp::Equal, r)
        }
        Compare::Value(k, v) => {
            EtcdCompare::value(format!("{ROOT}{k}"), CompareOp::Equal, v.clone())
        }
    }
}

async fn run_job(client: &mut Client, job: Job) {
    match job {
        Job::Revision(reply) => {
            let r = client
                .get(LEADER, None)
                .await
                .map_err(db)
                .map(|g| g.header().map_or(0, |h| revision(h.revision())));
            let _ = reply.send(r);
        }
        Job::Get(key, reply) => {
            let r = client
                .get(format!("{ROOT}{key}"), None)
                .await
                .map_err(db)
                .map(|g| g.kvs().first().and_then(entry));
            let _ = reply.send(r);
        }
        Job::List(prefix, reply) => {
            let r = client
                .get(
                    format!("{ROOT}{prefix}"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .map_err(db)
                .map(|g| g.kvs().iter().filter_map(entry).collect());
            let _ = reply.send(r);
        }
        Job::Txn(compares, ops, guard, reply) => {
            let mut when: Vec<EtcdCompare> = compares.iter().map(compare).collect();
            if let Some(mine) = &guard {
                when.push(EtcdCompare::value(LEADER, CompareOp::Equal, mine.clone()));
            }
            let then: Vec<TxnOp> = ops
                .iter()
                .map(|op| match op {
                    Op::Put(k, v) => TxnOp::put(format!("{ROOT}{k}"), v.clone(), None),
                    Op::Delete(k) => TxnOp::delete(format!("{ROOT}{k}"), None),
                })
                .collect();
            // On failure: read the leader key, to tell a lost election from a conflict.
            let txn = Txn::new()
                .when(when)
                .and_then(then)
                .or_else(vec![TxnOp::get(LEADER, None)]);
            let r = match client.txn(txn).await {
                Err(e) => Err(db(e)),
                Ok(resp) if resp.succeeded() => {
                    Ok(resp.header().map_or(0, |h| revision(h.revision())))
                }
                Ok(resp) => {
                    let leader = resp.op_responses().into_iter().find_map(|o| match o {
                        TxnOpResponse::Get(g) => {
                            Some(g.kvs().first().map(|kv| kv.value().to_vec()))
                        }
                        _ => None,
                    });
                    match (&guard, leader) {
                        (Some(mine), Some(now)) if now.as_ref() != Some(mine) => {
                            Err(StoreError::NotLeader(now.and_then(|v| hint_of(&v))))
                        }
                        _ => Err(StoreError::Conflict(
                            "a key changed since it was read (or is not what this writer expected)"
                                .into(),
                        )),
                    }
                }
            };
            let _ = reply.send(r);
        }
    }
}

/// The API address in a leader key's value (`{"id": .., "api": ..}`).
fn hint_of(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()?
        .get("api")?
        .as_str()
        .map(str::to_string)
}

async fn connect(eps: &[String], access: &EtcdAccess) -> Result<Client, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    if eps.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &access.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &access.client_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    if let Some((user, password)) = &access.user {
        opts = opts.with_user(user.clone(), password.clone());
    }
    Client::connect(eps, Some(opts))
        .await
        .map_err(|e| StoreError::Open {
            path: eps.join(","),
            detail: e.to_string(),
        })
}

impl EtcdStore {
    /// Connects to `url` and starts campaigning: `api` is where this
    /// server's API is (announced in the leader key), `ttl_s` the lease.
    pub fn open(url: &str, access: &EtcdAccess, api: &str, ttl_s: i64) -> Result<Self, StoreError> {
        let eps = endpoints(url).map_err(|detail| StoreError::Open {
            path: url.into(),
            detail,
        })?;
        if url.starts_with("etcds://") && access.ca_pem.is_none() {
            return Err(StoreError::Open {
                path: url.into(),
                detail: "etcds:// needs the CA that signed etcd's certificate (--store-ca)".into(),
            });
        }
        let worker_access = access.clone();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let worker_eps = eps.clone();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(db(e)));
                        return;
                    }
                };
                let mut client = match rt.block_on(connect(&worker_eps, &worker_access)) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // A first read proves the cluster answers (connect is lazy).
                match rt.block_on(client.get(LEADER, None)) {
                    Ok(_) => {
                        let _ = ready_tx.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Open {
                            path: worker_eps.join(","),
                            detail: e.to_string(),
                        }));
                        return;
                    }
                }
                while let Ok(job) = rx.recv() {
                    rt.block_on(run_job(&mut client, job));
                }
            })
            .map_err(db)?;
        ready_rx.recv().map_err(db)??;
        let leadership = Arc::new(Mutex::new(Leadership::default()));
        let id = super::auth::new_token().map_err(db)?;
        let mine = serde_json::to_vec(&serde_json::json!({ "id": &id[3..19], "api": api }))
            .unwrap_or_default();
        let l = Arc::clone(&leadership);
        let access = access.clone();
        std::thread::Builder::new()
            .name("election".into())
            .spawn(move || elect(eps, access, mine, ttl_s.max(2), l))
            .map_err(db)?;
        Ok(EtcdStore { jobs, leadership })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(make(tx))
            .map_err(|_| StoreError::Db("etcd: the client thread is gone".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Db("etcd: no answer".into()))?
    }
}

impl Store for EtcdStore {
    fn revision(&self) -> Result<u64, StoreError> {
        self.call(Job::Revision)
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.call(|r| Job::Get(key.to_string(), r))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.call(|r| Job::List(prefix.to_string(), r))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<u64, StoreError> {
        let guard = {
            let l = self.leadership.lock().unwrap_or_else(|p| p.into_inner());
            match &l.mine {
                Some(m) => m.clone(),
                None => return Err(StoreError::NotLeader(l.hint.clone())),
            }
        };
        let r = self.call(|reply| Job::Txn(compares.to_vec(), ops.to_vec(), Some(guard), reply));
        if let Err(StoreError::NotLeader(hint)) = &r {
            // Deposed: stop writing at once; the election thread campaigns again.
            let mut l = self.leadership.lock().unwrap_or_else(|p| p.into_inner());
            l.mine = None;
            l.hint = hint.clone();
        }
        r
    }

    fn is_leader(&self) -> bool {
        self.leadership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mine
            .is_some()
    }

    fn leader_hint(&self) -> Option<String> {
        self.leadership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hint
            .clone()
    }
}

/// The election loop: lease, campaign, keep alive while leading (stepping
/// down locally well before the lease could run out), stand by otherwise.
fn elect(
    eps: Vec<String>,
    access: EtcdAccess,
    mine: Vec<u8>,
    ttl_s: i64,
    leadership: Arc<Mutex<Leadership>>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let set = |m: Option<Vec<u8>>, hint: Option<String>| {
        let mut l = leadership.lock().unwrap_or_else(|p| p.into_inner());
        l.mine = m;
        l.hint = hint;
    };
    let ttl = Duration::from_secs(u64::try_from(ttl_s).unwrap_or(0));
    rt.block_on(async {
        loop {
            if let Err(e) = campaign(&eps, &access, &mine, ttl_s, ttl, &set).await {
                eprintln!("bulkhead server: election: {e}");
            }
            set(None, None);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// One term: returns when this server is not (or no longer) the leader.
async fn campaign(
    eps: &[String],
    access: &EtcdAccess,
    mine: &[u8],
    ttl_s: i64,
    ttl: Duration,
    set: &impl Fn(Option<Vec<u8>>, Option<String>),
) -> Result<(), StoreError> {
    let mut client = connect(eps, access).await?;
    let lease = client.lease_grant(ttl_s, None).await.map_err(db)?.id();
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(db)?;
    // Stand by until the key is free, keeping our lease alive meanwhile.
    let mut last_ok = loop {
        let txn = Txn::new()
            .when(vec![EtcdCompare::create_revision(
                LEADER,
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                LEADER,
                mine.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(LEADER, None)]);
        let sent = Instant::now();
        let resp = client.txn(txn).await.map_err(db)?;
        if resp.succeeded() {
            set(Some(mine.to_vec()), hint_of(mine));
            eprintln!("bulkhead server: elected leader");
            break sent;
        }
        let holder = resp.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        set(None, holder.as_deref().and_then(hint_of));
        tokio::time::sleep(Duration::from_millis(500)).await;
        keeper.keep_alive().await.map_err(db)?;
        match stream.message().await.map_err(db)? {
            Some(r) if r.ttl() > 0 => {}
            _ => return Err(db("the lease ran out")),
        }
    };
    // Leading: renew every third of the lease; step down locally once two
    // thirds passed without a renewal (etcd's compare stops us anyway).
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = Instant::now();
        let renewed = tokio::time::timeout(ttl / 3, async {
            keeper.keep_alive().await.map_err(db)?;
            stream.message().await.map_err(db)
        })
        .await;
        match renewed {
            Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = sent,
            Ok(Ok(_)) => return Err(db("the leader lease ran out: stepping down")),
            _ => {}
        }
        if last_ok.elapsed() > ttl * 2 / 3 {
            return Err(db(
                "no lease renewal for two thirds of its time: stepping down",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_host_and_port_pairs() {
        assert_eq!(
            endpoints("etcd://127.0.0.1:2379").ok(),
            Some(vec!["http://127.0.0.1:2379".to_string()])
        );
        assert_eq!(endpoints("etcd://a:1, b:2").ok().map(|e| e.len()), Some(2));
        assert_eq!(
            endpoints("etcds://a:1,b:2").ok(),
            Some(vec!["https://a:1".to_string(), "https://b:2".to_string()])
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://h:1/x",
            "http://h:1",
            "etcd://h:1,,",
            "etcds://",
            "etcds:/h:1",
        ] {
            assert!(endpoints(bad).is_err(), "{bad}");
        }
        assert_eq!(
            hint_of(br#"{"id": "x", "api": "http://10.0.0.1:7070"}"#).as_deref(),
            Some("http://10.0.0.1:7070")
        );
        assert_eq!(hint_of(b"not json"), None);
    }
}
