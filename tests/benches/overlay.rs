//! `cargo bench -p bulkhead-tests --bench overlay`: figures of a tenant's
//! network on three netns node hosts, as the cluster test builds them (see
//! tests/cluster_nodes/figures.rs): TCP throughput and connect latency
//! instance to instance on one node and across nodes, next to host to host
//! over the same link; once with the default WireGuard overlay (userspace
//! where the kernel has none) and once with `--overlay plain` (VXLAN).
//! Medians of 7 transfers of 256 MiB (after one warm-up) and of 500
//! connects per path, and the path's very first connect;
//! `-- --smoke` runs the tests' small sizes. Root, as the tests.

#![allow(clippy::unwrap_used)] // a bench fails loudly
#![allow(dead_code)] // the cluster test's helpers, of which this uses a few

#[path = "../tests/cluster_nodes/figures.rs"]
mod figures;
#[path = "../tests/cluster_nodes/harness.rs"]
mod harness;
#[path = "../tests/cluster_nodes/overlay.rs"]
mod overlay;
use harness::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_tests::etcd::Etcd;
use bulkhead_tests::netns::{self, NetNs};
use bulkhead_tests::{bulkhead, run_cases, Killed as Proc};
use serde_json::Value;

fn main() {
    let sizes = if std::env::args().any(|a| a == "--smoke") {
        figures::SMOKE
    } else {
        figures::FULL
    };
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("host: {host}, {cpus} CPUs; {sizes:?}");
    for (overlay, plain) in [
        ("WireGuard (the default)", false),
        ("--overlay plain (VXLAN)", true),
    ] {
        let rows = figures::on_own_cluster(plain, sizes);
        println!("\n{overlay}\n{}", figures::table(&rows));
    }
}
