//! `bulkhead cp` with the container runtime, natively (crun); the same
//! cases run for microVMs in the test host (run_microvm.rs). What keeps
//! tenants and the node apart here: the container's end of a copy runs in
//! the container's own user and mount namespaces (or, stopped, chrooted in
//! its root with its ids), so it can touch nothing the container's root
//! cannot; a symlink that leads out of the root is refused both ways; the
//! host unpacks what a container sends as hostile (entries only under the
//! asked-for name, no setuid bit, no whiteouts). Every workload runs with
//! `--network none`: nothing leaves the host.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use bulkhead_tests::run_cases::{self, Ctx};

#[test]
fn cp_moves_trees_both_ways_and_stays_inside_the_container() {
    bulkhead_images::debian::ensure_packages(&["crun"], &mut |m| eprintln!("{m}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead_tests::bulkhead(), &data, false).unwrap();
    let c = Ctx {
        bulkhead: bulkhead_tests::bulkhead(),
        data,
        runtime: "container".into(),
        oci_runtime: Some("crun".into()),
        netns: None,
    };
    let checks = bulkhead_tests::copy_cases::run_table(&c);
    let failed: Vec<String> = checks
        .iter()
        .filter(|k| !k.ok)
        .map(|k| format!("{}: {}", k.name, k.detail))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(checks.len(), 7, "every case ran");
    // After `rm`, the stopped container's kept root is gone too.
    let left = run_cases::leftovers(&c);
    assert!(left.is_empty(), "{left:?}");
}
