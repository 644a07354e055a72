//! `bulkhead run` with the microvm runtime: the shared table of cases
//! (`run_cases`) and 5 run/rm cycles, inside the test host (nested on
//! machines whose /dev/kvm cannot boot Linux), then a count of leftovers.
//! Also: on such a machine `run --runtime microvm` itself refuses at once.
//! And the networking table (`net_cases`) with microVMs, in the test host,
//! and a microVM service deployed through `bulkhead server` and `bulkhead
//! node` there (`cluster_cases`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use bulkhead_tests::run_cases;
use bulkhead_tests::testhost::{Mode, TestHost};

use bulkhead_tests::bulkhead;

/// Runs `bulkhead-testkit TABLE /t/data CYCLES` in the test host against a
/// fresh store, and checks that every CHECK passed and each of `wants`
/// (prefixed) ran.
fn table_in_test_host(table: &str, cycles: &str, memory_mib: u32, prefix: &str, wants: &[&str]) {
    let _vm = bulkhead_tests::vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The root disk is built here: the test host has no mkfs.
    run_cases::prepare_store(&bulkhead(), &data, true).unwrap();
    let out = TestHost::new()
        .unwrap()
        .stage(&data, "/t/data")
        .env("BULKHEAD_CACHE", "/t/cache")
        .memory_mib(memory_mib)
        .timeout(Duration::from_secs(900))
        .run(&["bulkhead-testkit", table, "/t/data", cycles])
        .unwrap();
    let stdout = out.stdout_str();
    let report = format!("stdout:\n{stdout}\nstderr:\n{}", out.stderr_str());
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    let failed: Vec<&&str> = checks
        .iter()
        .filter(|l| l.split_whitespace().nth(2) != Some("ok"))
        .collect();
    assert!(failed.is_empty(), "failed: {failed:#?}\n{report}");
    for want in wants {
        assert!(
            checks
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(&format!("{prefix}{want}"))),
            "check {want} did not run\n{report}"
        );
    }
    assert_eq!(out.status, 0, "{report}");
}

#[test]
fn the_run_table_passes_in_microvms() {
    let wants = [
        "echo",
        "exit-7",
        "not-found-127",
        "tty",
        "sigkill-137",
        "exec",
        "exec-default-path",
        "8-clis-at-once",
        "stop",
        "writes-do-not-leak",
        "sigterm-forwarded",
        "limits",
        "memory-refused-before-anything",
        "stop-with-closed-output",
        "orphan-reported-and-cleaned",
        "vmm-seccomp",
        "vmm-jailed",
        "jailer-killed-vm-ends-reported",
        "5-run-rm-cycles",
        "nothing-left",
    ];
    table_in_test_host("run-cases", "5", 2048, "microvm/", &wants);
}

/// A microVM service through the control plane: deployed, running on the
/// node, its logs and an exec through the server, its VMM jailed, scaled
/// to zero and gone.
#[test]
fn a_microvm_service_deploys_through_server_and_node() {
    let wants = [
        "node-joined",
        "deploy-running",
        "logs-through-the-server",
        "exec-through-the-server",
        "vmm-jailed",
        "scaled-to-zero-removed",
        "nothing-left",
    ];
    table_in_test_host("cluster-cases", "1", 2048, "cluster/", &wants);
}

/// Workload networking (`net_cases`) with microVMs: TAPs on the bridge, the
/// guest configured by the agent, published ports, egress walls (the
/// guest's root tries the LAN, metadata and the host's loopback; the walls
/// fail closed when flushed), isolation, spoofing.
#[test]
fn workload_networking_in_microvms() {
    let wants = [
        "web-vmm-jailed",
        "published-127.0.0.1",
        "published-host-address",
        "published-from-outside",
        "egress-masqueraded",
        "same-network-reaches",
        "other-network-isolated",
        "host-services-unreachable",
        "egress-allowed-by-flag",
        "egress-denied-by-default",
        "walls-fail-closed-when-flushed",
        "control-loopback-open-without-the-walls",
        "walls-restored-by-prune",
        "forged-ip-dropped",
        "forged-mac-dropped",
        "inspect-shows-rules",
        "network-none-loopback-only",
        "crash-swept-by-run",
        "crash-swept-by-prune",
        "bad-input-changes-nothing",
        "subnets-picked-when-not-given",
        "3-network-cycles",
        "nothing-left-per-workload",
        "networks-removed",
    ];
    // Up to four 256 MiB VMs at once.
    table_in_test_host("net-cases", "3", 3072, "microvm/net/", &wants);
}

#[test]
fn without_hardware_virtualization_a_microvm_run_fails_fast_and_says_why() {
    if Mode::detect().unwrap() == Mode::Direct {
        // This host boots microVMs; the table above covers it.
        assert_eq!(
            bulkhead_vmm::host::detect(),
            bulkhead_vmm::host::KvmKind::Hardware
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    let o = std::process::Command::new(bulkhead())
        .env("BULKHEAD_DATA", &data)
        .args(["run", run_cases::IMAGE, "echo", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("cannot boot a microVM")
            && err.contains("--runtime container")
            && err.contains("testhost"),
        "{err}"
    );
    let ps = std::process::Command::new(bulkhead())
        .env("BULKHEAD_DATA", &data)
        .args(["ps", "-a", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "[]",
        "a refused run leaves no record"
    );
}
