//! `bulkhead run` with the microvm runtime: the shared table of cases
//! (`run_cases`) and 5 run/rm cycles, a microVM service deployed through
//! `bulkhead server` and `bulkhead node` (`cluster_cases`), a stack of a
//! microVM and a container on two nodes reaching each other by name
//! (`cluster_across`) and the networking table (`net_cases`), all in one boot of the test host
//! (nested on machines whose /dev/kvm cannot boot Linux). Also: on such a
//! machine `run --runtime microvm` itself refuses at once.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use bulkhead_tests::run_cases;
use bulkhead_tests::testhost::{Mode, TestHost};

use bulkhead_tests::bulkhead;

/// One table of checks that `bulkhead-testkit` runs: its name, its
/// arguments after the data dir (cycles, or a store), the prefix of its
/// CHECK names and the checks that must have run.
struct Table {
    name: &'static str,
    args: &'static str,
    prefix: &'static str,
    wants: &'static [&'static str],
}

/// `run_cases` with microVMs, and 5 run/rm cycles.
const RUN: Table = Table {
    name: "run-cases",
    args: "5",
    prefix: "microvm/",
    wants: &[
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
        "health-failing-makes-unhealthy",
        "health-passing-makes-healthy",
        "health-bad-settings-refused",
        "vmm-seccomp",
        "vmm-jailed",
        "jailer-killed-vm-ends-reported",
        "5-run-rm-cycles",
        "nothing-left",
    ],
};

/// Named volumes in microVMs (`volume_cases`): block volumes made,
/// filled, kept, read-only, `--read-only` with `--tmpfs`, one writer, a
/// dir volume refused, a power cut mid-write that the next VM's journal
/// replay and e2fsck find clean, a smashed superblock harming nothing else.
const VOLUMES: Table = Table {
    name: "volume-cases",
    args: "",
    prefix: "microvm/vol/",
    wants: &[
        "made-on-first-use-and-filled",
        "kept-at-their-paths-ro-and-read-only-root",
        "one-writer-at-a-time",
        "dir-volume-refused",
        "power-cut-mid-write-then-fsck-clean",
        "corrupt-superblock-harms-only-its-volume",
        "volumes-removed",
    ],
};

/// `bulkhead cp` with a microVM (`copy_cases`): a tree in and out through
/// the agent with owners, modes, symlinks and content; a symlink out of
/// the root refused both ways; nothing setuid made on the host; a stopped
/// microVM's layer gone, and said so.
const COPY: Table = Table {
    name: "copy-cases",
    args: "",
    prefix: "microvm/cp/",
    wants: &[
        "round-trip-keeps-owners-modes-symlinks-content",
        "without-a-owners-are-the-receivers",
        "symlink-out-of-the-root-refused",
        "no-setuid-on-the-host-and-no-whiteouts",
        "bad-input-clear-errors",
        "after-it-stopped",
        "removed",
    ],
};

/// A microVM service through the control plane: deployed, running on the
/// node, its logs and an exec through the server, its VMM jailed, scaled
/// to zero and gone.
const CLUSTER: Table = Table {
    name: "cluster-cases",
    args: "1",
    prefix: "cluster/",
    wants: &[
        "node-joined",
        "deploy-running",
        "logs-through-the-server",
        "exec-through-the-server",
        "vmm-jailed",
        "scaled-to-zero-removed",
        "nothing-left",
    ],
};

/// A stack of two services, a microVM on one node and a container on
/// another (`cluster_across`): each reaches the other by name through the
/// tenant's overlay, on kernel WireGuard; removed, nothing stays. Then
/// both runtimes on one local network, by name.
const ACROSS: Table = Table {
    name: "cluster-across",
    args: "/t/ct-store",
    prefix: "across/",
    wants: &[
        "nodes-joined",
        "stack-running-on-two-nodes",
        "container-reaches-microvm-by-name",
        "microvm-reaches-container-by-name",
        "other-tenant-reaches-nothing",
        "overlay-on-kernel-wireguard",
        "stack-removed-nothing-left-on-the-nodes",
        "microvm-and-container-reach-each-other-by-name",
        "later-container-found-from-the-microvm",
        "removed-container-not-found-from-the-microvm",
        "mixed-network-removed",
        "nothing-left",
    ],
};

/// Workload networking (`net_cases`) with microVMs: TAPs on the bridge, the
/// guest configured by the agent, published ports, egress walls (the
/// guest's root tries the LAN, metadata and the host's loopback; the walls
/// fail closed when flushed), isolation, spoofing.
const NET: Table = Table {
    name: "net-cases",
    args: "3",
    prefix: "microvm/net/",
    wants: &[
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
        "names-resolve-on-the-network",
        "resolver-runs-as-nobody",
        "names-of-later-workloads-resolve",
        "names-of-removed-workloads-do-not",
        "names-stay-on-their-network",
        "resolver-goes-with-its-network",
        "3-network-cycles",
        "nothing-left-per-workload",
        "networks-removed",
    ],
};

/// What went wrong in one table's part of the output (empty: it passed).
fn table_failures(t: &Table, lines: &[&str], exit: Option<&str>) -> Vec<String> {
    let checks: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("CHECK "))
        .collect();
    let mut out: Vec<String> = checks
        .iter()
        .filter(|l| l.split_whitespace().nth(2) != Some("ok"))
        .map(|l| format!("{}: {l}", t.name))
        .collect();
    for want in t.wants {
        let name = format!("{}{want}", t.prefix);
        if !checks
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some(name.as_str()))
        {
            out.push(format!("{}: check {want} did not run", t.name));
        }
    }
    if exit != Some("0") {
        out.push(format!("{}: bulkhead-testkit exited {exit:?}", t.name));
    }
    out
}

/// The microVM tables in one test-host boot (a nested boot is the
/// slow part) and one data dir, as on a real host. Their order leaves each
/// what the next expects: the run table, the control plane, then
/// networking, which removes the default network at its end. A table's
/// CHECK lines are those before its `TABLE name exit N` marker.
#[test]
fn the_microvm_tables_pass_in_one_test_host() {
    let _vm = bulkhead_tests::vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The root disk is built here: the test host has no mkfs.
    run_cases::prepare_store(&bulkhead(), &data, true).unwrap();
    bulkhead_images::debian::ensure_packages(&["e2fsck-static"], &mut |m| eprintln!("{m}"))
        .unwrap();
    bulkhead_tests::volume_cases::prepare_fsck_image(&bulkhead(), &data).unwrap();
    // The container node's store: images only.
    let ct_store = dir.path().join("ct-store");
    run_cases::prepare_store(&bulkhead(), &ct_store, false).unwrap();
    // `BULKHEAD_TEST_TABLES=cluster-across,...`: only those (for working
    // on one; each still needs what the ones before it leave).
    let only = std::env::var("BULKHEAD_TEST_TABLES").unwrap_or_default();
    let tables: Vec<Table> = [RUN, VOLUMES, COPY, CLUSTER, ACROSS, NET]
        .into_iter()
        .filter(|t| only.is_empty() || only.split(',').any(|n| n == t.name))
        .collect();
    let script: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "bulkhead-testkit {name} /t/data {args}; echo \"TABLE {name} exit $?\"",
                name = t.name,
                args = t.args
            )
        })
        .collect();
    let out = TestHost::new()
        .unwrap()
        .stage(&data, "/t/data")
        .stage(&ct_store, "/t/ct-store")
        .env("BULKHEAD_CACHE", "/t/cache")
        // Up to four 256 MiB VMs at once in the networking table.
        .memory_mib(3072)
        .timeout(Duration::from_secs(1800))
        .run(&["sh", "-c", &script.join("\n")])
        .unwrap();
    let stdout = out.stdout_str();
    let report = format!("stdout:\n{stdout}\nstderr:\n{}", out.stderr_str());
    let mut failures = Vec::new();
    let mut lines = stdout.lines();
    for t in &tables {
        let marker = format!("TABLE {} exit ", t.name);
        let mut part = Vec::new();
        let mut exit = None;
        for l in lines.by_ref() {
            if let Some(code) = l.strip_prefix(&marker) {
                exit = Some(code);
                break;
            }
            part.push(l);
        }
        failures.extend(table_failures(t, &part, exit));
    }
    assert!(failures.is_empty(), "failed: {failures:#?}\n{report}");
    assert_eq!(out.status, 0, "{report}");
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
