//! Where instances go. A pure function of a snapshot (nodes with what they
//! hold, one service's request): filter (ready, not cordoned, labels,
//! runtime, the image, anti-affinity, free CPU and memory), then score (spread: the
//! fewest of this service, then the least loaded; binpack: the most loaded
//! that fits), ties broken by node name, so the same snapshot always gives
//! the same answer whatever order the nodes come in. All or nothing: a
//! request that cannot be placed whole places nothing, and says why.

use std::collections::BTreeMap;
use std::fmt;

use super::spec::{Resources, Strategy};
use crate::state::record::RuntimeKind;

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// What instances may use (the node's capacity less what it keeps).
    pub allocatable: Resources,
    /// What its instances take now (every service).
    pub allocated: Resources,
    pub cordoned: bool,
    /// Heartbeating within the grace.
    pub ready: bool,
    pub runtimes: Vec<RuntimeKind>,
    /// The service's image is in the node's store (or the node does not
    /// say what it holds).
    pub has_image: bool,
    /// Instances of the service being placed already there.
    pub this_service: u32,
}

/// One service's instances to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// Per instance, with a microVM's overhead.
    pub each: Resources,
    pub runtime: RuntimeKind,
    pub labels: &'a BTreeMap<String, String>,
    pub anti_affinity: bool,
    pub strategy: Strategy,
}

/// Why nodes were passed over, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    pub nodes: usize,
    pub not_ready: usize,
    pub cordoned: usize,
    pub labels: usize,
    pub runtime: usize,
    pub image: usize,
    pub anti_affinity: usize,
    pub cpu: usize,
    pub memory: usize,
}

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("there are no nodes");
        }
        write!(f, "of {} nodes", self.nodes)?;
        let reasons = [
            (self.not_ready, "not ready (no heartbeat)"),
            (self.cordoned, "cordoned"),
            (self.labels, "without the placement labels"),
            (self.runtime, "without the runtime"),
            (self.image, "without the image"),
            (
                self.anti_affinity,
                "holding a replica already (anti_affinity)",
            ),
            (self.cpu, "short of CPU"),
            (self.memory, "short of memory"),
        ];
        for (n, why) in reasons.iter().filter(|r| r.0 > 0) {
            write!(f, ", {n} {why}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot place {wanted} instances of {each_cpu} CPU / {each_mib} MiB: only {placed} fit; {refusals}")]
pub struct Unschedulable {
    pub wanted: usize,
    pub placed: usize,
    pub each_cpu: String,
    pub each_mib: u64,
    pub refusals: Refusals,
}

/// Load after adding `add`, in thousandths of the fuller dimension.
fn load(n: &NodeView, allocated: Resources) -> u64 {
    let part = |used: u64, cap: u64| used.saturating_mul(1000).checked_div(cap).unwrap_or(1000);
    part(allocated.millicpus, n.allocatable.millicpus)
        .max(part(allocated.memory_mib, n.allocatable.memory_mib))
}

fn static_refusal(n: &NodeView, req: &Request, r: &mut Refusals) -> bool {
    let counter = if !n.ready {
        &mut r.not_ready
    } else if n.cordoned {
        &mut r.cordoned
    } else if !req.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)) {
        &mut r.labels
    } else if !n.runtimes.contains(&req.runtime) {
        &mut r.runtime
    } else if !n.has_image {
        &mut r.image
    } else {
        return false;
    };
    *counter += 1;
    true
}

/// Places `count` instances; the index into `nodes` of each, in order.
pub fn place(nodes: &[NodeView], req: &Request, count: usize) -> Result<Vec<usize>, Unschedulable> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|a, b| nodes[*a].name.cmp(&nodes[*b].name));
    let mut static_refused = Refusals {
        nodes: nodes.len(),
        ..Default::default()
    };
    // (index, allocated now, this service's count now)
    let mut open: Vec<(usize, Resources, u32)> = order
        .iter()
        .filter(|i| !static_refusal(&nodes[**i], req, &mut static_refused))
        .map(|&i| (i, nodes[i].allocated, nodes[i].this_service))
        .collect();
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let mut best: Option<(usize, (u64, u64, usize))> = None;
        for (slot, (i, allocated, mine)) in open.iter().enumerate() {
            let n = &nodes[*i];
            let after = allocated.plus(req.each);
            if (req.anti_affinity && *mine > 0) || !after.within(n.allocatable) {
                continue;
            }
            let l = load(n, after);
            let key = match req.strategy {
                Strategy::Spread => (u64::from(*mine), l, slot),
                Strategy::Binpack => (1000u64.saturating_sub(l), u64::from(*mine), slot),
            };
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((slot, key));
            }
        }
        let Some((slot, _)) = best else {
            let mut refusals = static_refused;
            for (i, allocated, mine) in &open {
                let after = allocated.plus(req.each);
                let cap = nodes[*i].allocatable;
                if req.anti_affinity && *mine > 0 {
                    refusals.anti_affinity += 1;
                } else if after.millicpus > cap.millicpus {
                    refusals.cpu += 1;
                } else if after.memory_mib > cap.memory_mib {
                    refusals.memory += 1;
                }
            }
            let each_cpu = format!("{}", req.each.millicpus as f64 / 1000.0);
            return Err(Unschedulable {
                wanted: count,
                placed: placed.len(),
                each_cpu,
                each_mib: req.each.memory_mib,
                refusals,
            });
        };
        let entry = &mut open[slot];
        entry.1 = entry.1.plus(req.each);
        entry.2 += 1;
        placed.push(entry.0);
    }
    Ok(placed)
}

/// A tenant's limits (`None`: unlimited).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct Quota {
    pub millicpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub instances: Option<u64>,
}

/// What a new tenant gets where its admin set no limit: bounded, never
/// unlimited (an admin raises it at `tenant create` or `tenant update`).
pub const DEFAULT_QUOTA: Quota = Quota {
    millicpus: Some(64_000),
    memory_mib: Some(256 * 1024),
    instances: Some(100),
};

impl Quota {
    /// This quota with [`DEFAULT_QUOTA`]'s limit wherever it sets none.
    pub fn or_defaults(self) -> Quota {
        Quota {
            millicpus: self.millicpus.or(DEFAULT_QUOTA.millicpus),
            memory_mib: self.memory_mib.or(DEFAULT_QUOTA.memory_mib),
            instances: self.instances.or(DEFAULT_QUOTA.instances),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("over the tenant's quota of {what}: {used} in use + {asked} asked > {limit}")]
pub struct OverQuota {
    pub what: &'static str,
    pub used: u64,
    pub asked: u64,
    pub limit: u64,
}

/// Whether a tenant using `used` (and `used_instances`) may add `add`.
pub fn check_quota(
    quota: &Quota,
    used: Resources,
    used_instances: u64,
    add: Resources,
    add_instances: u64,
) -> Result<(), OverQuota> {
    let checks = [
        (
            "CPU (thousandths)",
            quota.millicpus,
            used.millicpus,
            add.millicpus,
        ),
        (
            "memory (MiB)",
            quota.memory_mib,
            used.memory_mib,
            add.memory_mib,
        ),
        ("instances", quota.instances, used_instances, add_instances),
    ];
    for (what, limit, used, asked) in checks {
        if let Some(limit) = limit {
            if used.saturating_add(asked) > limit {
                return Err(OverQuota {
                    what,
                    used,
                    asked,
                    limit,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use proptest::strategy::Strategy as _;

    fn node(name: &str, cpus: u64, mib: u64) -> NodeView {
        NodeView {
            name: name.into(),
            labels: BTreeMap::new(),
            allocatable: Resources {
                millicpus: cpus * 1000,
                memory_mib: mib,
            },
            allocated: Resources::default(),
            cordoned: false,
            ready: true,
            runtimes: vec![RuntimeKind::Microvm, RuntimeKind::Container],
            has_image: true,
            this_service: 0,
        }
    }

    fn req(labels: &BTreeMap<String, String>, strategy: Strategy, anti: bool) -> Request<'_> {
        Request {
            each: Resources {
                millicpus: 1000,
                memory_mib: 320,
            },
            runtime: RuntimeKind::Microvm,
            labels,
            anti_affinity: anti,
            strategy,
        }
    }

    fn names(nodes: &[NodeView], placed: &[usize]) -> Vec<String> {
        placed.iter().map(|i| nodes[*i].name.clone()).collect()
    }

    #[test]
    fn spread_evens_out_and_binpack_fills_one_node_first() {
        let nodes = vec![node("c", 8, 8192), node("a", 8, 8192), node("b", 8, 8192)];
        let none = BTreeMap::new();
        let six = place(&nodes, &req(&none, Strategy::Spread, false), 6).unwrap_or_default();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for n in names(&nodes, &six) {
            *per.entry(n).or_default() += 1;
        }
        assert_eq!(
            per.values().copied().collect::<Vec<_>>(),
            [2, 2, 2],
            "{per:?}"
        );
        assert_eq!(names(&nodes, &six[..3]), ["a", "b", "c"], "ties go by name");
        let packed = place(&nodes, &req(&none, Strategy::Binpack, false), 3).unwrap_or_default();
        assert_eq!(names(&nodes, &packed), ["a", "a", "a"]);
    }

    #[test]
    fn refusals_say_why_and_nothing_is_placed() {
        let mut nodes = vec![
            node("a", 1, 8192),
            node("b", 8, 256),
            node("c", 8, 8192),
            node("d", 8, 8192),
            node("e", 8, 8192),
            node("f", 8, 8192),
            node("g", 8, 8192),
        ];
        nodes[2].cordoned = true;
        nodes[3].ready = false;
        nodes[4].runtimes = vec![RuntimeKind::Container];
        nodes[5].labels.insert("zone".into(), "b".into());
        nodes[6].has_image = false;
        let zone_a: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let e = place(&nodes, &req(&zone_a, Strategy::Spread, false), 1).unwrap_err();
        assert_eq!(
            e.refusals.labels,
            7 - 2,
            "cordoned and not-ready count first: {e}"
        );
        let none = BTreeMap::new();
        // a and f take one each; the third finds them taken and b short of memory.
        let e = place(&nodes, &req(&none, Strategy::Spread, true), 3).unwrap_err();
        assert_eq!(
            (
                e.placed,
                e.refusals.cordoned,
                e.refusals.not_ready,
                e.refusals.runtime,
                e.refusals.image,
                e.refusals.anti_affinity,
                e.refusals.memory
            ),
            (2, 1, 1, 1, 1, 2, 1),
            "{e}"
        );
        assert_eq!(
            place(&nodes, &req(&none, Strategy::Spread, true), 2).map(|p| names(&nodes, &p)),
            Ok(vec!["f".to_string(), "a".to_string()]),
            "the less loaded first"
        );
        let text = e.to_string();
        assert!(
            text.contains("only 2 fit")
                && text.contains("1 cordoned")
                && text.contains("short of memory")
                && text.contains("anti_affinity")
                && text.contains("1 without the image"),
            "{text}"
        );
        assert_eq!(
            place(&[], &req(&none, Strategy::Spread, false), 1)
                .unwrap_err()
                .refusals
                .to_string(),
            "there are no nodes"
        );
        assert_eq!(
            place(&[], &req(&none, Strategy::Spread, false), 0),
            Ok(vec![])
        );
    }

    #[test]
    fn quotas() {
        let q = Quota {
            millicpus: Some(4000),
            memory_mib: None,
            instances: Some(3),
        };
        let one = Resources {
            millicpus: 1000,
            memory_mib: 1 << 20,
        };
        assert!(check_quota(&q, one.times(2), 2, one, 1).is_ok());
        let e = check_quota(&q, one.times(3), 3, one, 1).unwrap_err();
        assert_eq!(e.what, "instances");
        assert!(check_quota(&q, one.times(3), 1, one.times(2), 2)
            .unwrap_err()
            .to_string()
            .contains("CPU"));
        assert!(check_quota(&Quota::default(), one.times(1000), 1000, one, 1).is_ok());
    }

    const ZONES: [&str; 3] = ["a", "b", "c"];

    fn arb_node() -> impl proptest::strategy::Strategy<Value = NodeView> {
        (
            0u64..16,
            0u64..16384,
            0u64..16,
            0u64..16384,
            any::<bool>(),
            any::<bool>(),
            0usize..3,
            0u32..3,
            0usize..4,
            0u8..8,
        )
            .prop_map(
                |(cpu, mib, ucpu, umib, cordoned, ready, zone, mine, rts, image)| {
                    let allocatable = Resources {
                        millicpus: cpu * 1000,
                        memory_mib: mib,
                    };
                    NodeView {
                        name: String::new(),
                        labels: [("zone".to_string(), ZONES[zone].to_string())].into(),
                        allocatable,
                        allocated: Resources {
                            millicpus: (ucpu * 1000).min(allocatable.millicpus),
                            memory_mib: umib.min(mib),
                        },
                        cordoned: cordoned && zone == 0,
                        ready: ready || zone != 1,
                        runtimes: match rts {
                            0 => vec![RuntimeKind::Microvm],
                            1 => vec![RuntimeKind::Container],
                            _ => vec![RuntimeKind::Microvm, RuntimeKind::Container],
                        },
                        has_image: image != 0,
                        this_service: mine,
                    }
                },
            )
    }

    fn arb_case() -> impl proptest::strategy::Strategy<
        Value = (
            Vec<NodeView>,
            Resources,
            bool,
            bool,
            bool,
            Option<usize>,
            usize,
        ),
    > {
        (
            proptest::collection::vec(arb_node(), 0..24),
            1u64..4000,
            1u64..4096,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0usize..3),
            0usize..40,
        )
            .prop_map(|(mut nodes, cpu, mib, micro, anti, pack, zone, count)| {
                for (i, n) in nodes.iter_mut().enumerate() {
                    n.name = format!("node-{i:02}");
                }
                (
                    nodes,
                    Resources {
                        millicpus: cpu,
                        memory_mib: mib,
                    },
                    micro,
                    anti,
                    pack,
                    zone,
                    count,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never overcommits, never breaks a constraint, same input same
        /// output, whatever order the nodes come in.
        #[test]
        fn placements_respect_every_constraint_and_are_deterministic((nodes, each, micro, anti, pack, zone, count) in arb_case(), seed in any::<u64>()) {
            let labels: BTreeMap<String, String> = zone.map(|z| [("zone".to_string(), ZONES[z].to_string())].into()).unwrap_or_default();
            let runtime = if micro { RuntimeKind::Microvm } else { RuntimeKind::Container };
            let r = Request { each, runtime, labels: &labels, anti_affinity: anti, strategy: if pack { Strategy::Binpack } else { Strategy::Spread } };
            let got = place(&nodes, &r, count);
            prop_assert_eq!(&got, &place(&nodes, &r, count));
            // Shuffled input: the same node names.
            let mut shuffled = nodes.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, usize::try_from(s % (i as u64 + 1)).unwrap());
            }
            let again = place(&shuffled, &r, count);
            match (&got, &again) {
                (Ok(a), Ok(b)) => prop_assert_eq!(names(&nodes, a), names(&shuffled, b)),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "order changed the outcome"),
            }
            if let Ok(placed) = got {
                prop_assert_eq!(placed.len(), count);
                let mut added: BTreeMap<usize, u64> = BTreeMap::new();
                for i in &placed {
                    *added.entry(*i).or_default() += 1;
                }
                for (i, k) in added {
                    let n = &nodes[i];
                    prop_assert!(n.allocated.plus(each.times(k)).within(n.allocatable), "overcommitted {}", n.name);
                    prop_assert!(n.ready && !n.cordoned && n.runtimes.contains(&runtime) && n.has_image);
                    prop_assert!(labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)));
                    prop_assert!(!anti || (k == 1 && n.this_service == 0), "anti-affinity on {}", n.name);
                }
            }
        }

        /// Placing more never succeeds where placing fewer failed.
        #[test]
        fn a_failed_count_fails_for_more_too((nodes, each, micro, anti, pack, zone, count) in arb_case()) {
            let labels: BTreeMap<String, String> = zone.map(|z| [("zone".to_string(), ZONES[z].to_string())].into()).unwrap_or_default();
            let runtime = if micro { RuntimeKind::Microvm } else { RuntimeKind::Container };
            let r = Request { each, runtime, labels: &labels, anti_affinity: anti, strategy: if pack { Strategy::Binpack } else { Strategy::Spread } };
            if place(&nodes, &r, count).is_err() {
                prop_assert!(place(&nodes, &r, count + 1).is_err());
            }
        }
    }
}
