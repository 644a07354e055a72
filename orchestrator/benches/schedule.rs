//! The scheduler at scale: 100k instances placed on 1k simulated nodes, as
//! 1000 services of 100 replicas each (every decision sees the load the
//! earlier ones left), then one service of 100k replicas. Prints the
//! per-decision latency (mean, p50, p99, max over the 1000 calls of 100
//! decisions), then criterion's figure for one 100-replica call on the
//! half-full cluster.

use std::collections::BTreeMap;
use std::time::Instant;

use bulkhead::cluster::schedule::{place, NodeView, Request};
use bulkhead::cluster::spec::{Resources, Strategy};
use bulkhead::state::record::RuntimeKind;
use criterion::Criterion;

const NODES: usize = 1000;
const SERVICES: usize = 1000;
const REPLICAS: usize = 100;

fn cluster() -> Vec<NodeView> {
    (0..NODES)
        .map(|i| NodeView {
            name: format!("node-{i:04}"),
            labels: [("zone".to_string(), ["a", "b", "c", "d"][i % 4].to_string())].into(),
            allocatable: Resources {
                millicpus: 64_000,
                memory_mib: 256 << 10,
            },
            allocated: Resources::default(),
            cordoned: i % 97 == 0,
            ready: true,
            runtimes: vec![RuntimeKind::Microvm, RuntimeKind::Container],
            has_image: true,
            this_service: 0,
        })
        .collect()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // p in 0..=1: an index in the slice
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut nodes = cluster();
    let none = BTreeMap::new();
    let zone_b: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
    let mut per_decision_us = Vec::with_capacity(SERVICES);
    let start = Instant::now();
    for s in 0..SERVICES {
        let each = Resources {
            millicpus: 100 + (s as u64 % 4) * 100,
            memory_mib: 256 + (s as u64 % 3) * 128 + 64,
        };
        let req = Request {
            each,
            runtime: if s % 2 == 0 {
                RuntimeKind::Microvm
            } else {
                RuntimeKind::Container
            },
            labels: if s % 10 == 0 { &zone_b } else { &none },
            anti_affinity: s % 7 == 0,
            strategy: if s % 5 == 0 {
                Strategy::Binpack
            } else {
                Strategy::Spread
            },
        };
        for n in nodes.iter_mut() {
            n.this_service = 0;
        }
        let t = Instant::now();
        let placed = place(&nodes, &req, REPLICAS).unwrap_or_else(|e| panic!("service {s}: {e}"));
        per_decision_us.push(t.elapsed().as_secs_f64() * 1e6 / REPLICAS as f64);
        for i in placed {
            nodes[i].allocated = nodes[i].allocated.plus(each);
            nodes[i].this_service += 1;
        }
    }
    let total = start.elapsed();
    per_decision_us.sort_by(f64::total_cmp);
    let mean = per_decision_us.iter().sum::<f64>() / per_decision_us.len() as f64;
    println!(
        "schedule: {} instances on {NODES} nodes in {:.2} s; per decision: mean {mean:.2} us, p50 {:.2} us, p99 {:.2} us, max {:.2} us",
        SERVICES * REPLICAS,
        total.as_secs_f64(),
        percentile(&per_decision_us, 0.5),
        percentile(&per_decision_us, 0.99),
        per_decision_us[per_decision_us.len() - 1]
    );
    let empty = cluster();
    let one = Request {
        each: Resources {
            millicpus: 100,
            memory_mib: 64,
        },
        runtime: RuntimeKind::Container,
        labels: &none,
        anti_affinity: false,
        strategy: Strategy::Spread,
    };
    let t = Instant::now();
    let placed =
        place(&empty, &one, SERVICES * REPLICAS).unwrap_or_else(|e| panic!("one big service: {e}"));
    println!(
        "schedule: one service of {} replicas in one call: {:.2} us per decision",
        placed.len(),
        t.elapsed().as_secs_f64() * 1e6 / placed.len() as f64
    );

    let mut c = Criterion::default().sample_size(20).configure_from_args();
    let half_full: Vec<NodeView> = nodes
        .iter()
        .map(|n| NodeView {
            this_service: 0,
            ..n.clone()
        })
        .collect();
    let req = Request {
        each: Resources {
            millicpus: 500,
            memory_mib: 320,
        },
        runtime: RuntimeKind::Microvm,
        labels: &none,
        anti_affinity: false,
        strategy: Strategy::Spread,
    };
    c.bench_function("place 100 replicas on 1000 nodes", |b| {
        b.iter(|| place(&half_full, &req, REPLICAS))
    });
    c.final_summary();
}
