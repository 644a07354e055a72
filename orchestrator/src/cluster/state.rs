//! The cluster's records in the store and the writes that change them.
//! Every change is one transaction guarded by the revisions it read: the
//! service, each node, and `/placements`, which every change of where
//! instances run rewrites, so two deploys that read the same free capacity
//! cannot both commit, and the one that lost changes nothing. Heartbeats
//! live apart so they do not fail deploys. Records are JSON under:
//!
//! ```text
//! /nodes/<node>                          Node (capacity, labels, cordon, images)
//! /heartbeats/<node>                     its last heartbeat (ms)
//! /placements                            rewritten by every placement change
//! /services/<tenant>/<service>           ServiceRecord (the checked spec)
//! /instances/<tenant>/<service>/<index>  Instance: the assignment (node);
//!                                        its revision is the fence
//! /status/<tenant>/<service>/<index>     InstanceStatus: what its node reported
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::backoff::Restarts;
use super::schedule::{self, NodeView, Quota, Request};
use super::spec::{self, Resources, Service, ServiceSpec};
use super::store::{Compare, Entry, Op, Store, StoreError};
use crate::state::record::RuntimeKind;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Unschedulable(#[from] schedule::Unschedulable),
    #[error(transparent)]
    OverQuota(#[from] schedule::OverQuota),
    #[error("no service {0:?}")]
    NoService(String),
    #[error("no node {0:?}")]
    NoNode(String),
    #[error("service {0:?} exists (scale it, or remove it first)")]
    Exists(String),
    #[error("image {image:?} is in the store of none of the {nodes} nodes (pull or import it there first: `bulkhead image pull|import`)")]
    UnknownImage { image: String, nodes: usize },
    #[error("a damaged record at {0}: {1}")]
    Corrupt(String, String),
    /// A name bound to someone else, or a change that must wait.
    #[error("{0}")]
    Taken(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The host's whole CPUs and memory, as its node daemon found them
    /// (`None`: not said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// What instances may use of it (all CPUs and 90% of memory unless the
    /// node was told otherwise).
    pub allocatable: Resources,
    pub runtimes: Vec<RuntimeKind>,
    pub cordoned: bool,
    /// The node daemon's own API (logs, exec), if it has one.
    #[serde(default)]
    pub api: Option<String>,
    /// What its image store holds: names as `bulkhead image ls` shows them
    /// and manifest digests. `None`: not said (a node registered through
    /// the API by hand), so any image may be placed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<BTreeSet<String>>,
}

impl Node {
    /// Whether a service's image can run here: `names` are what
    /// `image_names` makes of it.
    pub fn may_have_image(&self, names: &[String; 2]) -> bool {
        self.images
            .as_ref()
            .is_none_or(|held| names.iter().any(|n| held.contains(n)))
    }
}

/// A service's image (`name[:tag]` or a digest) as given and as `bulkhead
/// run` resolves it in a node's store (`bb` is `bb:latest`).
pub fn image_names(image: &str) -> [String; 2] {
    [image.to_string(), bulkhead_images::store::normalise(image)]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRecord {
    pub tenant: String,
    pub spec: ServiceSpec,
    pub request: Resources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Assigned; the node has not reported it running yet.
    Pending,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub tenant: String,
    pub service: String,
    pub index: u32,
    pub node: String,
    pub state: InstanceState,
    pub request: Resources,
    pub restarts: u32,
    pub last_exit: Option<i32>,
    /// When its node first reported this copy running, and exited (server
    /// wall clock, ms since the epoch; from the status record).
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub exited_ms: Option<u64>,
    /// The store revision that assigned it (placed or restarted): nodes run
    /// only the copy with the current fence, and reports about any other
    /// are ignored.
    #[serde(default)]
    pub fence: u64,
    /// Its health check's verdict while it runs (from the status record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::state::health::HealthStatus>,
    /// Its address on the tenant's network while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Packets it sent that its node's walls refused (egress, other
    /// networks, the node's services), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
}

/// What the node reported about an instance (kept apart from the
/// assignment, so reports never move its fence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The assignment this describes (0: none reported yet).
    pub fence: u64,
    pub state: Option<InstanceState>,
    pub last_exit: Option<i32>,
    /// When it was first reported running (server clock).
    pub started_ms: Option<u64>,
    /// When it was reported exited (server clock).
    #[serde(default)]
    pub exited_ms: Option<u64>,
    pub restarts: Restarts,
    /// Its health check's verdict while it runs (none without a check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::state::health::HealthStatus>,
    /// Its address on the tenant's network while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Packets the node's walls refused of it, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
}

pub(crate) fn service_key(tenant: &str, name: &str) -> String {
    format!("/services/{tenant}/{name}")
}

fn instance_prefix(tenant: &str, name: &str) -> String {
    format!("/instances/{tenant}/{name}/")
}

pub(crate) fn instance_key(tenant: &str, name: &str, index: u32) -> String {
    format!("/instances/{tenant}/{name}/{index:06}")
}

pub(crate) fn status_key(tenant: &str, name: &str, index: u32) -> String {
    format!("/status/{tenant}/{name}/{index:06}")
}

pub(crate) fn node_key(name: &str) -> String {
    format!("/nodes/{name}")
}

pub(crate) fn heartbeat_key(name: &str) -> String {
    format!("/heartbeats/{name}")
}

pub(crate) const PLACEMENTS: &str = "/placements";

pub(crate) fn decode<T: DeserializeOwned>(e: &Entry) -> Result<T, StateError> {
    serde_json::from_slice(&e.value)
        .map_err(|err| StateError::Corrupt(e.key.clone(), err.to_string()))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// One instance a deploy or scale placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placed {
    /// The instance's index in its service.
    pub index: u32,
    /// The node it was placed on.
    pub node: String,
}

/// What a deploy or scale did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    /// The instances placed.
    pub placed: Vec<Placed>,
    /// Instance indexes removed.
    pub removed: Vec<u32>,
    /// The store revision written (0: dry run).
    pub revision: u64,
}

/// The cluster's state over a store.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) store: Box<dyn Store>,
}

impl Cluster {
    pub fn new(store: impl Store + 'static) -> Self {
        Cluster {
            store: Box::new(store),
        }
    }

    /// Whether this server may write (see `Store::is_leader`).
    pub fn is_leader(&self) -> bool {
        self.store.is_leader()
    }

    pub fn leader_hint(&self) -> Option<String> {
        self.store.leader_hint()
    }

    /// Adds or updates a node (keeping its cordon).
    pub fn register_node(&self, mut node: Node) -> Result<u64, StateError> {
        let key = node_key(&node.name);
        let old = self.store.get(&key)?;
        let guard = match &old {
            Some(e) => {
                node.cordoned = decode::<Node>(e)?.cordoned;
                Compare::Revision(key.clone(), e.revision)
            }
            None => Compare::Absent(key.clone()),
        };
        Ok(self.store.txn(&[guard], &[Op::Put(key, encode(&node))])?)
    }

    /// The images node `name` holds now, when they changed since it said
    /// last (a write only then: the record's revision guards placements).
    pub fn set_node_images(
        &self,
        name: &str,
        images: BTreeSet<String>,
    ) -> Result<bool, StateError> {
        let key = node_key(name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoNode(name.into()))?;
        let mut node: Node = decode(&e)?;
        if node.images.as_ref() == Some(&images) {
            return Ok(false);
        }
        node.images = Some(images);
        self.store.txn(
            &[Compare::Revision(key.clone(), e.revision)],
            &[Op::Put(key, encode(&node))],
        )?;
        Ok(true)
    }

    /// A node is alive at `now_ms` (the server's clock).
    pub fn heartbeat(&self, name: &str, now_ms: u64) -> Result<u64, StateError> {
        if self.store.get(&node_key(name))?.is_none() {
            return Err(StateError::NoNode(name.into()));
        }
        Ok(self.store.txn(
            &[],
            &[Op::Put(heartbeat_key(name), now_ms.to_le_bytes().to_vec())],
        )?)
    }

    /// When the node last said it is alive (0: never).
    pub fn last_heartbeat_ms(&self, name: &str) -> Result<u64, StateError> {
        let e = self.store.get(&heartbeat_key(name))?;
        Ok(e.and_then(|e| {
            e.value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        })
        .unwrap_or(0))
    }

    /// A guard that fails if any placement changed since, and the write
    /// that makes other such guards fail.
    pub(crate) fn placements_guard(&self) -> Result<(Compare, Op), StateError> {
        let guard = match self.store.get(PLACEMENTS)? {
            Some(e) => Compare::Revision(PLACEMENTS.into(), e.revision),
            None => Compare::Absent(PLACEMENTS.into()),
        };
        Ok((guard, Op::Put(PLACEMENTS.into(), Vec::new())))
    }

    pub fn cordon(&self, name: &str, cordoned: bool) -> Result<u64, StateError> {
        let key = node_key(name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoNode(name.into()))?;
        let mut n: Node = decode(&e)?;
        n.cordoned = cordoned;
        Ok(self.store.txn(
            &[Compare::Revision(key.clone(), e.revision)],
            &[Op::Put(key, encode(&n))],
        )?)
    }

    /// Cordons the node and deletes its instances (the reconciler places
    /// replacements elsewhere; the node stops its copies). Returns how many.
    pub fn drain(&self, name: &str) -> Result<usize, StateError> {
        let key = node_key(name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoNode(name.into()))?;
        let mut n: Node = decode(&e)?;
        n.cordoned = true;
        let (placements, bump) = self.placements_guard()?;
        let mut guards = vec![Compare::Revision(key.clone(), e.revision), placements];
        let mut ops = vec![Op::Put(key, encode(&n)), bump];
        let mut moved = 0;
        for i in self.instances(None)?.into_iter().filter(|i| i.node == name) {
            let ikey = instance_key(&i.tenant, &i.service, i.index);
            guards.push(Compare::Revision(ikey.clone(), i.fence));
            ops.push(Op::Delete(ikey));
            ops.push(Op::Delete(status_key(&i.tenant, &i.service, i.index)));
            moved += 1;
        }
        self.store.txn(&guards, &ops)?;
        Ok(moved)
    }

    /// Removes node `name` and frees its name (its token stops working).
    /// Instances still assigned to it are removed too (the reconciler
    /// places replacements), but only once the node's copies have surely
    /// stopped: no heartbeat for its lease plus the stop time (`settle_ms`)
    /// before `now_ms`; until then `Taken`, and nothing changes. Returns
    /// how many instances went.
    pub fn remove_node(
        &self,
        name: &str,
        now_ms: u64,
        settle_ms: u64,
    ) -> Result<usize, StateError> {
        let key = node_key(name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoNode(name.into()))?;
        let on: Vec<Instance> = self
            .instances(None)?
            .into_iter()
            .filter(|i| i.node == name)
            .collect();
        let last = self.last_heartbeat_ms(name)?;
        if !on.is_empty() && now_ms < last.saturating_add(settle_ms) {
            return Err(StateError::Taken(format!(
                "node {name:?} still has {} instance(s) and was heard from {} ms ago: its copies may still run. Drain it first (`bulkhead node drain {name}`), or stop its daemon and wait {} ms",
                on.len(),
                now_ms.saturating_sub(last),
                last.saturating_add(settle_ms).saturating_sub(now_ms)
            )));
        }
        let (placements, bump) = self.placements_guard()?;
        let mut guards = vec![Compare::Revision(key.clone(), e.revision), placements];
        let mut ops = vec![Op::Delete(key), Op::Delete(heartbeat_key(name)), bump];
        ops.extend(self.node_token_ops(name)?);
        for prefix in ["/netslices/", "/overlay/", super::ingress::ADDRESSES] {
            ops.extend(self.node_key_deletes(prefix, name)?);
        }
        ops.extend(self.node_slice_index_deletes(name)?);
        for i in &on {
            let ikey = instance_key(&i.tenant, &i.service, i.index);
            guards.push(Compare::Revision(ikey.clone(), i.fence));
            ops.push(Op::Delete(ikey));
            ops.push(Op::Delete(status_key(&i.tenant, &i.service, i.index)));
        }
        self.store.txn(&guards, &ops)?;
        Ok(on.len())
    }

    pub fn nodes(&self) -> Result<Vec<(Node, u64)>, StateError> {
        self.store
            .list("/nodes/")?
            .iter()
            .map(|e| Ok((decode(e)?, e.revision)))
            .collect()
    }

    /// Every instance (of `tenant`, or all with `None`), as last reported.
    pub fn instances(&self, tenant: Option<&str>) -> Result<Vec<Instance>, StateError> {
        Ok(self
            .instances_with_status(tenant)?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    /// Every instance with its node's reports: state, exit and restarts
    /// come from the status when it is about the current fence.
    pub fn instances_with_status(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(Instance, InstanceStatus)>, StateError> {
        let scope = tenant.map_or_else(String::new, |t| format!("{t}/"));
        let mut statuses: BTreeMap<String, InstanceStatus> = BTreeMap::new();
        for e in self.store.list(&format!("/status/{scope}"))? {
            let key = e.key.replacen("/status/", "/instances/", 1);
            statuses.insert(key, decode(&e)?);
        }
        let mut out = Vec::new();
        for e in self.store.list(&format!("/instances/{scope}"))? {
            let mut i: Instance = decode(&e)?;
            i.fence = e.revision;
            let st = statuses.remove(&e.key).unwrap_or_default();
            i.restarts = st.restarts.total;
            if st.fence == i.fence {
                i.state = st.state.unwrap_or(InstanceState::Pending);
                i.last_exit = st.last_exit;
                (i.started_ms, i.exited_ms) = (st.started_ms, st.exited_ms);
                i.health = st.health;
                i.ip = st.ip;
                i.refused = st.refused;
            }
            out.push((i, st));
        }
        Ok(out)
    }

    /// A tenant's services (another tenant's are not there for it).
    pub fn services(&self, tenant: &str) -> Result<Vec<ServiceRecord>, StateError> {
        self.store
            .list(&format!("/services/{tenant}/"))?
            .iter()
            .map(decode)
            .collect()
    }

    pub fn service(&self, tenant: &str, name: &str) -> Result<ServiceRecord, StateError> {
        let e = self
            .store
            .get(&service_key(tenant, name))?
            .ok_or_else(|| StateError::NoService(name.into()))?;
        decode(&e)
    }

    /// The nodes as the scheduler sees them for `service`, each with the
    /// revision read (the write is guarded by it).
    fn snapshot(
        &self,
        tenant: &str,
        service: &str,
        image: &str,
        ready_after_ms: u64,
    ) -> Result<(Vec<NodeView>, Vec<Compare>, Op), StateError> {
        let (placements, bump) = self.placements_guard()?;
        let nodes = self.nodes()?;
        let all = self.instances(None)?;
        let mut views = Vec::new();
        let mut guards = vec![placements];
        let image = image_names(image);
        for (n, rev) in nodes {
            let on: Vec<&Instance> = all.iter().filter(|i| i.node == n.name).collect();
            let allocated = on
                .iter()
                .fold(Resources::default(), |a, i| a.plus(i.request));
            let this_service = on
                .iter()
                .filter(|i| i.tenant == tenant && i.service == service)
                .count();
            let this_service = u32::try_from(this_service).unwrap_or(u32::MAX);
            guards.push(Compare::Revision(node_key(&n.name), rev));
            let ready = self.last_heartbeat_ms(&n.name)? >= ready_after_ms;
            let has_image = n.may_have_image(&image);
            views.push(NodeView {
                name: n.name,
                labels: n.labels,
                allocatable: n.allocatable,
                allocated,
                cordoned: n.cordoned,
                ready,
                runtimes: n.runtimes,
                has_image,
                this_service,
            });
        }
        Ok((views, guards, bump))
    }

    /// Creates a service and places its replicas, all or nothing; `dry`
    /// computes the placement and writes nothing.
    pub fn deploy(
        &self,
        tenant: &str,
        quota: &Quota,
        svc: &Service,
        ready_after_ms: u64,
        dry: bool,
    ) -> Result<Change, StateError> {
        let key = service_key(tenant, &svc.spec.name);
        if self.store.get(&key)?.is_some() {
            return Err(StateError::Exists(svc.spec.name.clone()));
        }
        let record = ServiceRecord {
            tenant: tenant.into(),
            spec: svc.spec.clone(),
            request: svc.request,
        };
        let mut guards = vec![Compare::Absent(key.clone())];
        let mut ops = vec![Op::Put(key, encode(&record))];
        let change = self.place_more(
            &record,
            quota,
            0,
            svc.spec.replicas,
            ready_after_ms,
            &mut guards,
            &mut ops,
        )?;
        self.commit(change, &guards, &ops, dry)
    }

    /// Sets a service's replica count: new instances placed (all or
    /// nothing), the highest-numbered removed first.
    pub fn scale(
        &self,
        tenant: &str,
        quota: &Quota,
        name: &str,
        replicas: u32,
        ready_after_ms: u64,
        dry: bool,
    ) -> Result<Change, StateError> {
        let key = service_key(tenant, name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoService(name.into()))?;
        let mut record: ServiceRecord = decode(&e)?;
        let mut spec = record.spec.clone();
        spec.replicas = replicas;
        spec::check(spec.clone())?;
        record.spec = spec;
        let mut guards = vec![Compare::Revision(key.clone(), e.revision)];
        let mut ops = vec![Op::Put(key, encode(&record))];
        let existing: Vec<Instance> = self
            .store
            .list(&instance_prefix(tenant, name))?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        let have = u32::try_from(existing.len()).unwrap_or(u32::MAX);
        let change = if replicas > have {
            let next = existing.iter().map(|i| i.index + 1).max().unwrap_or(0);
            self.place_more(
                &record,
                quota,
                next,
                replicas - have,
                ready_after_ms,
                &mut guards,
                &mut ops,
            )?
        } else {
            let mut by_index = existing;
            by_index.sort_by_key(|i| std::cmp::Reverse(i.index));
            let removed: Vec<u32> = by_index
                .iter()
                .take((have - replicas) as usize)
                .map(|i| i.index)
                .collect();
            ops.extend(removed.iter().flat_map(|i| {
                [
                    Op::Delete(instance_key(tenant, name, *i)),
                    Op::Delete(status_key(tenant, name, *i)),
                ]
            }));
            let (placements, bump) = self.placements_guard()?;
            guards.push(placements);
            ops.push(bump);
            Change {
                placed: Vec::new(),
                removed,
                revision: 0,
            }
        };
        self.commit(change, &guards, &ops, dry)
    }

    /// Removes a service and its instances (nodes stop them).
    pub fn remove(&self, tenant: &str, name: &str) -> Result<u64, StateError> {
        let key = service_key(tenant, name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoService(name.into()))?;
        let (placements, bump) = self.placements_guard()?;
        let mut ops = vec![
            Op::Delete(key.clone()),
            bump,
            Op::Delete(super::netpool::vip_key(tenant, name)),
        ];
        ops.extend(
            self.store
                .list(&instance_prefix(tenant, name))?
                .into_iter()
                .map(|i| Op::Delete(i.key)),
        );
        ops.extend(
            self.store
                .list(&format!("/status/{tenant}/{name}/"))?
                .into_iter()
                .map(|i| Op::Delete(i.key)),
        );
        Ok(self
            .store
            .txn(&[Compare::Revision(key, e.revision), placements], &ops)?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn place_more(
        &self,
        record: &ServiceRecord,
        quota: &Quota,
        first_index: u32,
        count: u32,
        ready_after_ms: u64,
        guards: &mut Vec<Compare>,
        ops: &mut Vec<Op>,
    ) -> Result<Change, StateError> {
        let tenant = &record.tenant;
        // The quota is the tenant record's as read here, and that record's
        // revision guards the write: an admin lowering the quota meanwhile
        // fails this transaction instead of letting it through at the old
        // one. (The caller's quota counts only where no record exists.)
        let tkey = super::auth::tenant_key(tenant);
        let quota = match self.store.get(&tkey)? {
            Some(e) => {
                let t: super::auth::Tenant = decode(&e)?;
                guards.push(Compare::Revision(tkey, e.revision));
                t.quota
            }
            None => {
                guards.push(Compare::Absent(tkey));
                *quota
            }
        };
        let quota = &quota;
        // The snapshot reads the placements guard first; the tenant's
        // instances are read after it, so a deploy that commits meanwhile
        // fails this one's transaction: two deploys never both fit under
        // one quota.
        let (views, node_guards, bump) = self.snapshot(
            tenant,
            &record.spec.name,
            &record.spec.image,
            ready_after_ms,
        )?;
        let mine = self.instances(Some(tenant))?;
        let used = mine
            .iter()
            .fold(Resources::default(), |a, i| a.plus(i.request));
        schedule::check_quota(
            quota,
            used,
            mine.len() as u64,
            record.request.times(u64::from(count)),
            u64::from(count),
        )?;
        if !views.is_empty() && views.iter().all(|v| !v.has_image) {
            // An unknown image (a typo, or never pulled): said as such, not
            // as a placement refused by every node.
            return Err(StateError::UnknownImage {
                image: record.spec.image.clone(),
                nodes: views.len(),
            });
        }
        let p = &record.spec.placement;
        let req = Request {
            each: record.request,
            runtime: record.spec.runtime,
            labels: &p.labels,
            anti_affinity: p.anti_affinity,
            strategy: p.strategy,
        };
        let placed = schedule::place(&views, &req, count as usize)?;
        guards.extend(node_guards);
        ops.push(bump);
        let mut change = Change {
            placed: Vec::new(),
            removed: Vec::new(),
            revision: 0,
        };
        for (k, node_index) in placed.into_iter().enumerate() {
            let index = first_index + u32::try_from(k).unwrap_or(u32::MAX);
            let node = views[node_index].name.clone();
            let inst = Instance {
                tenant: tenant.clone(),
                service: record.spec.name.clone(),
                index,
                node: node.clone(),
                state: InstanceState::Pending,
                request: record.request,
                restarts: 0,
                last_exit: None,
                started_ms: None,
                exited_ms: None,
                fence: 0,
                health: None,
                ip: None,
                refused: None,
            };
            ops.push(Op::Put(
                instance_key(tenant, &record.spec.name, index),
                encode(&inst),
            ));
            change.placed.push(Placed { index, node });
        }
        Ok(change)
    }

    pub(crate) fn commit(
        &self,
        mut change: Change,
        guards: &[Compare],
        ops: &[Op],
        dry: bool,
    ) -> Result<Change, StateError> {
        if !dry {
            change.revision = self.store.txn(guards, ops)?;
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests;
