//! Between the server and its nodes: what a node is told to run (its
//! assignments, each with a fence), what it reports back (running, exited
//! with a code), and the reconciler's actions applied to the store.
//!
//! Fencing: an instance's fence is the store revision that last wrote its
//! assignment (placing or restarting it). A node runs only the copy whose
//! fence it was given, stops any other, and a report about any other fence
//! changes nothing; every write here is guarded by the revision it read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::backoff::BackoffPolicy;
use super::reconcile::{self, Action, Seen, Timing};
use super::schedule::Quota;
use super::spec::ServiceSpec;
use super::state::{
    decode, encode, instance_key, service_key, status_key, Cluster, Instance, InstanceState,
    InstanceStatus, ServiceRecord, StateError,
};
use super::store::{Compare, Op, StoreError};

/// One instance a node must run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub tenant: String,
    pub service: String,
    pub index: u32,
    pub fence: u64,
    pub spec: ServiceSpec,
}

/// What a node saw of one of its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Observed {
    Running,
    Exited { code: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub tenant: String,
    pub service: String,
    pub index: u32,
    pub fence: u64,
    #[serde(flatten)]
    pub observed: Observed,
    /// A running instance's health, where it has a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::state::health::HealthStatus>,
    /// A running instance's address on its tenant's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Packets of a running instance that its node's walls refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
}

/// What one reconciler pass did.
#[derive(Debug, Default)]
pub struct Pass {
    pub applied: Vec<Action>,
    /// Actions that could not be applied now (no room, over quota, a
    /// concurrent change): the next pass tries again.
    pub failed: Vec<(Action, String)>,
}

impl Cluster {
    /// The instances assigned to `node`, with their services' specs.
    pub fn assignments(&self, node: &str) -> Result<Vec<Assignment>, StateError> {
        let mut specs: BTreeMap<(String, String), Option<ServiceSpec>> = BTreeMap::new();
        let mut internet: BTreeMap<String, bool> = BTreeMap::new();
        let mut out = Vec::new();
        for i in self.instances(None)?.into_iter().filter(|i| i.node == node) {
            let key = (i.tenant.clone(), i.service.clone());
            if !specs.contains_key(&key) {
                if !internet.contains_key(&i.tenant) {
                    let allowed = match self.tenant(&i.tenant) {
                        Ok(t) => t.internet,
                        // Services kept from before tenants had records: as then.
                        Err(StateError::NoService(_)) => true,
                        Err(e) => return Err(e),
                    };
                    internet.insert(i.tenant.clone(), allowed);
                }
                let allowed = internet.get(&i.tenant).copied().unwrap_or(false);
                // The tenant's policy is folded in: the node obeys what it gets.
                let spec = self
                    .store
                    .get(&service_key(&i.tenant, &i.service))?
                    .map(|e| decode::<ServiceRecord>(&e))
                    .transpose()?
                    .map(|r| ServiceSpec {
                        egress: r.spec.egress.under(allowed),
                        ..r.spec
                    });
                specs.insert(key.clone(), spec);
            }
            if let Some(Some(spec)) = specs.get(&key) {
                out.push(Assignment {
                    tenant: i.tenant,
                    service: i.service,
                    index: i.index,
                    fence: i.fence,
                    spec: spec.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Applies `node`'s reports at `now_ms`; returns how many changed
    /// something. Reports about other nodes' instances or old fences are
    /// ignored (a partitioned node coming back changes nothing).
    pub fn report(
        &self,
        node: &str,
        reports: &[Report],
        now_ms: u64,
        backoff: &BackoffPolicy,
    ) -> Result<usize, StateError> {
        let mut changed = 0;
        for r in reports {
            let key = instance_key(&r.tenant, &r.service, r.index);
            let Some(e) = self.store.get(&key)? else {
                continue;
            };
            let inst: Instance = decode(&e)?;
            if e.revision != r.fence || inst.node != node {
                continue;
            }
            let skey = status_key(&r.tenant, &r.service, r.index);
            let old = self.store.get(&skey)?;
            let mut st: InstanceStatus = old.as_ref().map(decode).transpose()?.unwrap_or_default();
            let current = st.fence == r.fence;
            match r.observed {
                Observed::Running
                    if current
                        && st.state == Some(InstanceState::Running)
                        && st.health == r.health
                        && st.ip == r.ip
                        && st.refused == r.refused =>
                {
                    continue
                }
                Observed::Running if current && st.state == Some(InstanceState::Running) => {
                    st.health = r.health;
                    st.ip = r.ip;
                    st.refused = r.refused;
                }
                Observed::Running => {
                    st.state = Some(InstanceState::Running);
                    st.started_ms = Some(now_ms);
                    st.exited_ms = None;
                    st.last_exit = None;
                    st.health = r.health;
                    st.ip = r.ip;
                    st.refused = r.refused;
                }
                Observed::Exited { .. } if current && st.state == Some(InstanceState::Exited) => {
                    continue
                }
                Observed::Exited { code } => {
                    let Some(svc) = self.store.get(&service_key(&r.tenant, &r.service))? else {
                        continue;
                    };
                    let svc: ServiceRecord = decode(&svc)?;
                    let started = if current {
                        st.started_ms.unwrap_or(now_ms)
                    } else {
                        now_ms
                    };
                    st.restarts
                        .ended(svc.spec.restart, backoff, code, started, now_ms);
                    st.state = Some(InstanceState::Exited);
                    st.health = None;
                    st.ip = None;
                    st.refused = None;
                    st.last_exit = Some(code);
                    st.exited_ms = Some(now_ms);
                }
            }
            st.fence = r.fence;
            let status_guard = match &old {
                Some(o) => Compare::Revision(skey.clone(), o.revision),
                None => Compare::Absent(skey.clone()),
            };
            match self.store.txn(
                &[Compare::Revision(key, r.fence), status_guard],
                &[Op::Put(skey, encode(&st))],
            ) {
                Ok(_) => changed += 1,
                Err(StoreError::Conflict(_)) => {} // reassigned meanwhile: the report is stale
                Err(e) => return Err(e.into()),
            }
        }
        Ok(changed)
    }

    /// One reconciler pass at `now_ms`: reads everything, decides, applies.
    pub fn reconcile_pass(&self, now_ms: u64, timing: &Timing) -> Result<Pass, StateError> {
        let services: Vec<ServiceRecord> = self
            .store
            .list("/services/")?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        let seen: Vec<Seen> = self
            .instances_with_status(None)?
            .into_iter()
            .map(|(instance, st)| Seen {
                instance,
                restarts: st.restarts,
            })
            .collect();
        let mut heartbeats = BTreeMap::new();
        for (n, _) in self.nodes()? {
            let at = self.last_heartbeat_ms(&n.name)?;
            heartbeats.insert(n.name, at);
        }
        let mut actions = reconcile::reconcile(&services, &seen, &heartbeats, now_ms, timing);
        // Removals first: a lost node's instance makes way for its replacement.
        actions.sort_by_key(|a| !matches!(a, Action::Remove { .. }));
        let mut pass = Pass::default();
        let ready_after = now_ms.saturating_sub(timing.grace_ms);
        for a in actions {
            match self.apply(&a, ready_after) {
                Ok(()) => pass.applied.push(a),
                Err(e) => pass.failed.push((a, e.to_string())),
            }
        }
        Ok(pass)
    }

    fn apply(&self, a: &Action, ready_after_ms: u64) -> Result<(), StateError> {
        match a {
            Action::Place {
                tenant,
                service,
                count,
            } => {
                let e = self
                    .store
                    .get(&service_key(tenant, service))?
                    .ok_or_else(|| StateError::NoService(service.clone()))?;
                let record: ServiceRecord = decode(&e)?;
                let quota = self
                    .tenant(tenant)
                    .map(|t| t.quota)
                    .unwrap_or_else(|_| Quota::default());
                let next = self
                    .store
                    .list(&format!("/instances/{tenant}/{service}/"))?
                    .iter()
                    .map(decode::<Instance>)
                    .collect::<Result<Vec<_>, _>>()?
                    .iter()
                    .map(|i| i.index + 1)
                    .max()
                    .unwrap_or(0);
                let mut guards = vec![Compare::Revision(e.key.clone(), e.revision)];
                let mut ops = Vec::new();
                let change = self.place_more(
                    &record,
                    &quota,
                    next,
                    *count,
                    ready_after_ms,
                    &mut guards,
                    &mut ops,
                )?;
                self.commit(change, &guards, &ops, false)?;
            }
            Action::Restart {
                tenant,
                service,
                index,
            } => {
                let key = instance_key(tenant, service, *index);
                let e = self
                    .store
                    .get(&key)?
                    .ok_or_else(|| StateError::NoService(format!("{service}/{index}")))?;
                let skey = status_key(tenant, service, *index);
                let old = self.store.get(&skey)?.ok_or_else(|| {
                    StateError::Corrupt(
                        skey.clone(),
                        "an exited instance without its status".into(),
                    )
                })?;
                let mut st: InstanceStatus = decode(&old)?;
                st.restarts.started();
                // Rewriting the assignment gives it a new fence: the node starts a new copy.
                let guards = [
                    Compare::Revision(key.clone(), e.revision),
                    Compare::Revision(skey.clone(), old.revision),
                ];
                self.store.txn(
                    &guards,
                    &[Op::Put(key, e.value), Op::Put(skey, encode(&st))],
                )?;
            }
            Action::Remove {
                tenant,
                service,
                index,
            } => {
                let key = instance_key(tenant, service, *index);
                let Some(e) = self.store.get(&key)? else {
                    return Ok(());
                };
                let (placements, bump) = self.placements_guard()?;
                self.store.txn(
                    &[Compare::Revision(key.clone(), e.revision), placements],
                    &[
                        Op::Delete(key),
                        Op::Delete(status_key(tenant, service, *index)),
                        bump,
                    ],
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::spec::{self, Resources};
    use crate::cluster::state::Node;
    use crate::cluster::store::FileStore;
    use crate::state::record::RuntimeKind;

    pub(crate) fn cluster(nodes: &[&str]) -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        for n in nodes {
            let node = Node {
                name: n.to_string(),
                labels: BTreeMap::new(),
                capacity: None,
                allocatable: Resources {
                    millicpus: 4000,
                    memory_mib: 4096,
                },
                runtimes: vec![RuntimeKind::Container],
                cordoned: false,
                api: None,
                images: None,
            };
            c.register_node(node).unwrap_or_else(|e| panic!("{e}"));
            c.heartbeat(n, 1_000).unwrap_or_else(|e| panic!("{e}"));
        }
        (dir, c)
    }

    pub(crate) fn deploy(c: &Cluster, text: &str) {
        let s = spec::parse(text).unwrap_or_else(|e| panic!("{e}"));
        c.deploy("t", &Quota::default(), &s, 0, false)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) fn report(a: &Assignment, observed: Observed) -> Report {
        Report {
            tenant: a.tenant.clone(),
            service: a.service.clone(),
            index: a.index,
            fence: a.fence,
            observed,
            health: None,
            ip: None,
            refused: None,
        }
    }

    /// Exit, backoff, restart with a new fence; the old fence's reports
    /// and another node's change nothing.
    #[test]
    fn exits_restart_under_a_new_fence_and_stale_reports_change_nothing() {
        let (_d, c) = cluster(&["a"]);
        deploy(
            &c,
            "name: job\nimage: bb\nruntime: container\nrestart: on-failure\n",
        );
        let backoff = BackoffPolicy {
            initial_ms: 1_000,
            cap_ms: 4_000,
            reset_after_ms: 60_000,
        };
        let t = Timing {
            grace_ms: 5_000,
            lease_ms: 5_000,
            stop_ms: 1_000,
        };
        let first = c.assignments("a").unwrap_or_default();
        assert_eq!(first.len(), 1);
        assert_eq!(
            c.report(
                "b",
                &[report(&first[0], Observed::Running)],
                1_000,
                &backoff
            )
            .ok(),
            Some(0),
            "not b's instance"
        );
        assert_eq!(
            c.report(
                "a",
                &[report(&first[0], Observed::Running)],
                1_000,
                &backoff
            )
            .ok(),
            Some(1)
        );
        assert_eq!(
            c.report(
                "a",
                &[report(&first[0], Observed::Running)],
                1_100,
                &backoff
            )
            .ok(),
            Some(0),
            "nothing new"
        );
        assert_eq!(
            c.instances(None).unwrap_or_default()[0].state,
            InstanceState::Running
        );
        assert_eq!(
            c.report(
                "a",
                &[report(&first[0], Observed::Exited { code: 3 })],
                2_000,
                &backoff
            )
            .ok(),
            Some(1)
        );
        c.heartbeat("a", 2_000).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.reconcile_pass(2_500, &t)
                .map(|p| p.applied)
                .unwrap_or_default()
                .is_empty(),
            "backoff: not before 3 s"
        );
        let pass = c
            .reconcile_pass(3_000, &t)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pass.applied,
            [Action::Restart {
                tenant: "t".into(),
                service: "job".into(),
                index: 0
            }]
        );
        let second = c.assignments("a").unwrap_or_default();
        assert!(second[0].fence > first[0].fence, "a restart is a new fence");
        let i = &c.instances(None).unwrap_or_default()[0];
        assert_eq!(
            (i.state, i.restarts, i.last_exit),
            (InstanceState::Pending, 1, None)
        );
        assert_eq!(
            c.report(
                "a",
                &[report(&first[0], Observed::Exited { code: 9 })],
                3_100,
                &backoff
            )
            .ok(),
            Some(0),
            "the old copy's report is stale"
        );
        assert_eq!(
            c.report(
                "a",
                &[report(&second[0], Observed::Exited { code: 0 })],
                3_200,
                &backoff
            )
            .ok(),
            Some(1)
        );
        c.heartbeat("a", 60_000).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.reconcile_pass(60_000, &t)
                .map(|p| p.applied)
                .unwrap_or_default()
                .iter()
                .all(|a| !matches!(a, Action::Restart { .. })),
            "exit 0 under on-failure stays down"
        );
        assert_eq!(c.instances(None).unwrap_or_default()[0].last_exit, Some(0));
    }

    /// A node goes silent at 1 s: its instance is replaced on the other
    /// node at its last beat + lease + stop time (6 s), not a step before;
    /// the lost node then has nothing assigned.
    #[test]
    fn a_lost_nodes_instances_move_after_lease_and_stop_time() {
        let (_d, c) = cluster(&["a", "b"]);
        deploy(
            &c,
            "name: web\nimage: bb\nruntime: container\nreplicas: 2\n",
        );
        let t = Timing {
            grace_ms: 2_000,
            lease_ms: 3_000,
            stop_ms: 2_000,
        };
        assert_eq!(
            (
                c.assignments("a").unwrap_or_default().len(),
                c.assignments("b").unwrap_or_default().len()
            ),
            (1, 1)
        );
        let mut first = None;
        for now in (1_500..12_000).step_by(500) {
            c.heartbeat("b", now).unwrap_or_else(|e| panic!("{e}"));
            let pass = c.reconcile_pass(now, &t).unwrap_or_else(|e| panic!("{e}"));
            assert!(pass.failed.is_empty(), "{pass:?}");
            if !pass.applied.is_empty() && first.is_none() {
                first = Some((now, pass.applied));
            }
        }
        let (at, mut applied) = first.unwrap_or_default();
        applied.sort();
        assert_eq!(at, 6_000);
        assert_eq!(
            applied,
            [
                Action::Place {
                    tenant: "t".into(),
                    service: "web".into(),
                    count: 1
                },
                Action::Remove {
                    tenant: "t".into(),
                    service: "web".into(),
                    index: 0
                }
            ]
        );
        assert!(
            c.assignments("a").unwrap_or_default().is_empty(),
            "nothing left on the lost node"
        );
        let on_b: Vec<u32> = c
            .assignments("b")
            .unwrap_or_default()
            .iter()
            .map(|a| a.index)
            .collect();
        assert_eq!(on_b, [1, 2], "the replacement is a new instance");
    }
}
