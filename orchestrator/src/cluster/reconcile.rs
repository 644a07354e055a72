//! The reconciler's decisions: level-driven, a pure function of what is
//! desired (services) and observed (instances, node heartbeats, the
//! clock), so a lost or repeated event can never wedge it: each pass looks
//! at everything again. The server applies the actions (placing through
//! `schedule`) and runs the next pass.

use std::collections::BTreeMap;

use super::backoff::{wants_restart, Restarts};
use super::state::{Instance, InstanceState, ServiceRecord};

/// How long things may take before the reconciler acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A node silent this long is lost (its instances are not counted).
    pub grace_ms: u64,
    /// A lost node's supervisors stop their workloads this long after the
    /// node's last renewal (their lease deadline)...
    pub lease_ms: u64,
    /// ...and take at most this long to do it. Only then is a replacement
    /// started elsewhere: never two copies at once.
    pub stop_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace_ms: 10_000,
            lease_ms: 15_000,
            stop_ms: 10_000,
        }
    }
}

/// One instance with what the reconciler needs beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub instance: Instance,
    /// Its restart bookkeeping (the exit report set `next_at_ms`).
    pub restarts: Restarts,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Place this many new instances of the service.
    Place {
        tenant: String,
        service: String,
        count: u32,
    },
    /// Start this exited instance again (its backoff is over).
    Restart {
        tenant: String,
        service: String,
        index: u32,
    },
    /// Delete the instance record (scaled down, service gone, or its lost
    /// node's lease and stop time are over: a `Place` replaces it).
    Remove {
        tenant: String,
        service: String,
        index: u32,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Place {
                tenant,
                service,
                count,
            } => write!(f, "place {count} of {tenant}/{service}"),
            Action::Restart {
                tenant,
                service,
                index,
            } => write!(f, "restart {tenant}/{service}/{index}"),
            Action::Remove {
                tenant,
                service,
                index,
            } => write!(f, "remove {tenant}/{service}/{index}"),
        }
    }
}

/// The actions that bring what is observed to what is desired, at `now_ms`.
/// `heartbeats`: each node's last heartbeat (a node not in it never sent one).
pub fn reconcile(
    services: &[ServiceRecord],
    seen: &[Seen],
    heartbeats: &BTreeMap<String, u64>,
    now_ms: u64,
    t: &Timing,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let last = |node: &str| heartbeats.get(node).copied().unwrap_or(0);
    let mut by_service: BTreeMap<(&str, &str), Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        by_service
            .entry((s.instance.tenant.as_str(), s.instance.service.as_str()))
            .or_default()
            .push(s);
    }
    for svc in services {
        let key = (svc.tenant.as_str(), svc.spec.name.as_str());
        let mut mine = by_service.remove(&key).unwrap_or_default();
        mine.sort_by_key(|s| s.instance.index);
        let id = |i: &Seen| (svc.tenant.clone(), svc.spec.name.clone(), i.instance.index);
        let mut counted = 0u32;
        let mut keep = Vec::new();
        for s in mine {
            let hb = last(&s.instance.node);
            let lost = now_ms.saturating_sub(hb) > t.grace_ms;
            if lost {
                // Replace only once its copy has surely stopped.
                if now_ms >= hb.saturating_add(t.lease_ms).saturating_add(t.stop_ms) {
                    let (tenant, service, index) = id(s);
                    actions.push(Action::Remove {
                        tenant,
                        service,
                        index,
                    });
                } else {
                    counted += 1; // still holds its slot: no second copy yet
                }
                continue;
            }
            counted += 1;
            keep.push(s);
        }
        // Scaled down: the highest-numbered go.
        let want = svc.spec.replicas;
        if counted > want {
            keep.sort_by_key(|s| std::cmp::Reverse(s.instance.index));
            for s in keep.iter().take((counted - want) as usize) {
                let (tenant, service, index) = id(s);
                actions.push(Action::Remove {
                    tenant,
                    service,
                    index,
                });
            }
            let extra = (counted - want) as usize;
            keep.drain(..extra.min(keep.len()));
        } else if counted < want {
            actions.push(Action::Place {
                tenant: svc.tenant.clone(),
                service: svc.spec.name.clone(),
                count: want - counted,
            });
        }
        for s in keep {
            let exited = s.instance.state == InstanceState::Exited;
            let code = s.instance.last_exit.unwrap_or(0);
            if exited && wants_restart(svc.spec.restart, code) && s.restarts.due(now_ms) {
                let (tenant, service, index) = id(s);
                actions.push(Action::Restart {
                    tenant,
                    service,
                    index,
                });
            }
        }
    }
    // Instances of services that are gone.
    for ((tenant, service), rest) in by_service {
        for s in rest {
            actions.push(Action::Remove {
                tenant: tenant.into(),
                service: service.into(),
                index: s.instance.index,
            });
        }
    }
    actions.sort();
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::backoff::{BackoffPolicy, Clock, FakeClock};
    use crate::cluster::spec::{self, Resources, RestartPolicy};
    use std::time::Duration;

    fn svc(name: &str, replicas: u32, restart: &str) -> ServiceRecord {
        let s = spec::parse(&format!(
            "name: {name}\nimage: bb\nreplicas: {replicas}\nrestart: {restart}\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        ServiceRecord {
            tenant: "t".into(),
            spec: s.spec,
            request: s.request,
        }
    }

    fn inst(service: &str, index: u32, node: &str, state: InstanceState) -> Seen {
        let instance = Instance {
            tenant: "t".into(),
            service: service.into(),
            index,
            node: node.into(),
            state,
            request: Resources::default(),
            restarts: 0,
            last_exit: None,
            started_ms: None,
            exited_ms: None,
            fence: 0,
            health: None,
            ip: None,
            refused: None,
        };
        Seen {
            instance,
            restarts: Restarts::default(),
        }
    }

    fn beats(nodes: &[(&str, u64)]) -> BTreeMap<String, u64> {
        nodes.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn missing_replicas_are_placed_extra_and_orphans_removed_and_passes_repeat() {
        let services = [svc("web", 3, "always")];
        let seen = [
            inst("web", 0, "a", InstanceState::Running),
            inst("gone", 0, "a", InstanceState::Running),
        ];
        let hb = beats(&[("a", 1_000)]);
        let t = Timing::default();
        let acts = reconcile(&services, &seen, &hb, 2_000, &t);
        assert_eq!(
            acts,
            [
                Action::Place {
                    tenant: "t".into(),
                    service: "web".into(),
                    count: 2
                },
                Action::Remove {
                    tenant: "t".into(),
                    service: "gone".into(),
                    index: 0
                }
            ]
        );
        assert_eq!(
            reconcile(&services, &seen, &hb, 2_000, &t),
            acts,
            "the same picture, the same answer"
        );
        let down = [svc("web", 1, "always")];
        let seen = [
            inst("web", 0, "a", InstanceState::Running),
            inst("web", 4, "a", InstanceState::Running),
            inst("web", 2, "a", InstanceState::Pending),
        ];
        let acts = reconcile(&down, &seen, &hb, 2_000, &t);
        assert_eq!(
            acts,
            [
                Action::Remove {
                    tenant: "t".into(),
                    service: "web".into(),
                    index: 2
                },
                Action::Remove {
                    tenant: "t".into(),
                    service: "web".into(),
                    index: 4
                }
            ]
        );
    }

    /// A node goes silent at 10 s: nothing happens until its lease (15 s)
    /// and the stop time (10 s) are over; then its instance is removed and
    /// a new one placed. Never both copies counted as gone early.
    #[test]
    fn a_lost_nodes_instances_are_replaced_only_after_lease_and_stop_time() {
        let clock = FakeClock::at(10_000);
        let services = [svc("web", 2, "always")];
        let seen = [
            inst("web", 0, "a", InstanceState::Running),
            inst("web", 1, "b", InstanceState::Running),
        ];
        let t = Timing::default();
        let mut first_action = None;
        for _ in 0..40 {
            clock.advance(Duration::from_secs(1));
            let now = clock.now_ms();
            let hb = beats(&[("a", 10_000), ("b", now)]); // a silent from 10 s on
            let acts = reconcile(&services, &seen, &hb, now, &t);
            if !acts.is_empty() && first_action.is_none() {
                first_action = Some((now, acts));
            }
        }
        let (at, acts) = first_action.unwrap_or_default();
        assert_eq!(at, 10_000 + 15_000 + 10_000, "lease then stop time");
        assert_eq!(
            acts,
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
    }

    /// Crash loop on a fake clock: restarts come when the backoff says.
    #[test]
    fn exited_instances_restart_by_policy_when_their_backoff_is_over() {
        let clock = FakeClock::at(0);
        let policy = BackoffPolicy::default();
        let services = [
            svc("web", 1, "on-failure"),
            svc("job", 1, "on-failure"),
            svc("once", 1, "never"),
        ];
        let mut web = inst("web", 0, "a", InstanceState::Exited);
        web.instance.last_exit = Some(1);
        let mut job = inst("job", 0, "a", InstanceState::Exited);
        job.instance.last_exit = Some(0);
        let mut once = inst("once", 0, "a", InstanceState::Exited);
        once.instance.last_exit = Some(3);
        let t = Timing {
            grace_ms: u64::MAX,
            ..Timing::default()
        };
        let mut restarts_at = Vec::new();
        let mut started = 0;
        for _ in 0..400 {
            clock.advance(Duration::from_secs(1));
            let now = clock.now_ms();
            if web.restarts.next_at_ms.is_none() {
                // It ran a second and failed again.
                web.restarts
                    .ended(RestartPolicy::OnFailure, &policy, 1, started, now);
            }
            let acts = reconcile(
                &services,
                &[web.clone(), job.clone(), once.clone()],
                &BTreeMap::new(),
                now,
                &t,
            );
            for a in acts {
                assert_eq!(
                    a,
                    Action::Restart {
                        tenant: "t".into(),
                        service: "web".into(),
                        index: 0
                    },
                    "exit 0 under on-failure and never stay down"
                );
                restarts_at.push(now / 1000);
                web.restarts.started();
                started = now + 1000;
                clock.advance(Duration::from_secs(1));
            }
        }
        let gaps: Vec<u64> = restarts_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(restarts_at.first(), Some(&11), "the first after 10 s");
        assert_eq!(
            gaps,
            [22, 42, 82, 162],
            "each wait twice the last (plus the second it ran and the second it took)"
        );
    }
}
