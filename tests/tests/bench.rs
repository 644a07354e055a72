//! `bulkhead bench`, the short way CI can afford (`--runs 3`, density
//! `--count 3`): boot and density on the busybox image with every runtime
//! (microVMs in the nested test host on machines whose /dev/kvm cannot boot
//! Linux, which the report must say first), `--vmm-vs` against a second
//! copy of bulkhead-vmm (no Firecracker binary can be installed here), and
//! overhead with the tiny guest on this machine's /dev/kvm. Each report is
//! checked for what its numbers claim: every phase of every run in start
//! order on one clock, nothing left running, files written whole.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulkhead_tests::netns::{self, NetNs};
use bulkhead_tests::run_cases::{self, show, IMAGE};
use serde_json::Value;

fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

use bulkhead_tests::bulkhead;

/// A second bulkhead-vmm under another name: the `--vmm-vs` stand-in.
fn other_vmm(dir: &Path) -> PathBuf {
    let ours = release_dir().join("../x86_64-unknown-linux-gnu/release/bulkhead-vmm");
    assert!(ours.is_file(), "no {} (make static)", ours.display());
    let copy = dir.join("other-vmm");
    std::fs::copy(&ours, &copy).unwrap();
    copy
}

fn nested() -> bool {
    bulkhead_vmm::host::detect() != bulkhead_vmm::host::KvmKind::Hardware
}

/// `bulkhead ARGS` with the test's store, in the test's network namespace.
fn bh(data: &Path, ns: &NetNs, args: &[&str]) -> Output {
    let mut c = Command::new(bulkhead());
    c.env("BULKHEAD_DATA", data)
        .args(args)
        .stdin(std::process::Stdio::null());
    netns::command_in(&mut c, &ns.path()).unwrap();
    c.output().unwrap()
}

/// `runtime` -> phase -> samples, from a report's series.
fn series(report: &Value, runtime: &str) -> Vec<(String, Vec<f64>)> {
    report["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["runtime"] == runtime && s["unit"] != "exits")
        .map(|s| {
            (
                s["phase"].as_str().unwrap().to_string(),
                s["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

/// The phases outside the guest every runtime has, first and last.
const FRONT: &[&str] = &[
    "cli-parsed",
    "record-stored",
    "supervisor-up",
    "client-attached",
    "network-attached",
];
const TEARDOWN: &[&str] = &["workload-exited", "runtime-cleaned", "released"];

/// `FRONT`, then `middle`, then `first-output`, `TEARDOWN`, `exit`.
fn all_phases(middle: &[&'static str]) -> Vec<&'static str> {
    let mut v = FRONT.to_vec();
    v.extend_from_slice(middle);
    v.push("first-output");
    v.extend_from_slice(TEARDOWN);
    v.push("exit");
    v
}

/// Exactly `phases`, each with `runs` samples, and within every run in
/// this order (the CLI's, the supervisor's, the jailer's, the VMM's and
/// the bench's clocks agree). The first output is read by the bench from
/// another process while the supervisor goes on: it is checked against
/// the start (after the last start phase) and `exit`, not the teardown.
fn check_phases(report: &Value, runtime: &str, phases: &[&str], runs: usize) {
    let s = series(report, runtime);
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, phases, "{runtime}: {report:#}");
    for (name, v) in &s {
        assert_eq!(v.len(), runs, "{runtime} {name}: {v:?}");
        assert!(v.iter().all(|x| *x > 0.0), "{runtime} {name}: {v:?}");
    }
    let first = names.iter().position(|n| *n == "first-output");
    for run in 0..runs {
        let times: Vec<f64> = s
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != first)
            .map(|(_, (_, v))| v[run])
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{runtime} run {run}: phases out of order: {names:?} {times:?}"
        );
        if let Some(f) = first {
            let at = s[f].1[run];
            assert!(
                s[f - 1].1[run] <= at && at <= s[s.len() - 1].1[run],
                "{runtime} run {run}: first output at {at} out of order: {names:?}"
            );
        }
    }
}

fn check_facts(report: &Value, bench: &str) {
    assert_eq!(report["bench"], bench);
    let host = &report["host"];
    assert!(
        host["cpus"].as_u64().unwrap() >= 1
            && !host["cpu_model"].as_str().unwrap().is_empty()
            && !host["kernel"].as_str().unwrap().is_empty(),
        "{host}"
    );
    assert!(
        host["kvm"]
            .as_str()
            .unwrap()
            .starts_with(if nested() { "kvm_pvm" } else { "hardware" }),
        "{host}"
    );
}

fn check_nested_note(report: &Value) {
    let first = report["notes"][0].as_str().unwrap_or("");
    if nested() {
        assert!(
            first.contains("nested test host") && first.contains("NOT representative"),
            "the report must say first that microVMs were emulated: {report:#}"
        );
        assert!(
            report["microvm_host"]["kvm"]
                .as_str()
                .unwrap()
                .starts_with("nested emulation"),
            "{report:#}"
        );
    } else {
        assert!(
            report["microvm_host"].is_null() && !first.contains("NOT representative"),
            "{report:#}"
        );
    }
}

#[test]
fn boot_and_density_report_every_runtime() {
    let _vm = bulkhead_tests::vm_lock();
    bulkhead_images::debian::ensure_packages(&["crun", "runc", "iproute2"], &mut |m| {
        eprintln!("{m}")
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No root disk yet: on a nested machine the bench must build it before staging.
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    let ns = NetNs::create("bhtest-bench").unwrap();
    let vmm = other_vmm(dir.path());
    let (json, svg) = (dir.path().join("boot.json"), dir.path().join("boot.svg"));

    let out = bh(
        &data,
        &ns,
        &[
            "bench",
            "boot",
            IMAGE,
            "--runs",
            "3",
            "--warmup",
            "1",
            "--vmm-vs",
            vmm.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&json).unwrap()).unwrap(),
        report,
        "--json writes the same report"
    );
    check_facts(&report, "boot");
    check_nested_note(&report);
    assert!(
        report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("--no-api --config-file")),
        "{report:#}"
    );
    assert!(
        report["image"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{report:#}"
    );
    assert_eq!(
        report["command"],
        serde_json::json!(["echo", "bulkhead-bench"])
    );
    check_phases(
        &report,
        "microvm",
        &all_phases(&[
            "runtime-invoked",
            "jail-ready",
            "vmm-start",
            "kernel-entry",
            "agent-ready",
            "agent-connected",
        ]),
        3,
    );
    // Where the microVM's exits to the VMM went, per run: the agent's
    // stage codes to the boot-stage port, the disk's and vsock's queue
    // notifications; none counted for a container or another VMM.
    let exits = |runtime: &str| -> Vec<(String, Vec<f64>)> {
        report["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["runtime"] == runtime && s["unit"] == "exits")
            .map(|s| {
                let v = s["samples"].as_array().unwrap();
                (
                    s["phase"].as_str().unwrap().to_string(),
                    v.iter().map(|x| x.as_f64().unwrap()).collect(),
                )
            })
            .collect()
    };
    let vm = exits("microvm");
    for want in [
        "exits io-out boot-stage",
        "exits mmio-write virtio-blk",
        "exits mmio-write virtio-vsock",
    ] {
        let (_, v) = vm
            .iter()
            .find(|(n, _)| n == want)
            .unwrap_or_else(|| panic!("no {want:?} in {vm:?}"));
        assert!(v.len() == 3 && v.iter().all(|n| *n >= 1.0), "{want}: {v:?}");
    }
    for other in ["vmm-vs:other-vmm", "crun", "runc"] {
        assert!(exits(other).is_empty(), "{other}: {:?}", exits(other));
    }
    check_phases(
        &report,
        "vmm-vs:other-vmm",
        &all_phases(&["runtime-invoked", "agent-connected"]),
        3,
    );
    for oci in ["crun", "runc"] {
        check_phases(
            &report,
            oci,
            &all_phases(&["bundle-ready", "runtime-invoked"]),
            3,
        );
    }
    // Ratios of medians: VMM against VMM always stands; microVM against a
    // container only where both ran on hardware here.
    let ratios = report["ratios"].as_array().unwrap();
    let ratio = |phase: &str, a: &str, b: &str| {
        ratios
            .iter()
            .find(|r| r["phase"] == phase && r["numerator"] == a && r["denominator"] == b)
            .unwrap_or_else(|| panic!("no {phase} {a}/{b}: {report:#}"))
    };
    assert_eq!(
        ratio("exit", "vmm-vs:other-vmm", "microvm")["representative"],
        true
    );
    for oci in ["crun", "runc"] {
        let r = ratio("exit", "microvm", oci);
        assert_eq!(r["representative"], !nested(), "{r}");
        assert!(r["value"].as_f64().unwrap() > 0.0, "{r}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg")
            && plot.contains("microvm kernel-entry")
            && plot.contains("vmm-vs:other-vmm exit")
            && plot.contains("runc first-output"),
        "{plot}"
    );
    let table = bh(&data, &ns, &["ps", "-a", "--format", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&table.stdout).unwrap(),
        serde_json::json!([]),
        "--rm runs leave nothing: {}",
        show(&table)
    );

    let out = bh(
        &data,
        &ns,
        &[
            "bench", "density", IMAGE, "--count", "3", "--format", "json",
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_facts(&report, "density");
    check_nested_note(&report);
    for runtime in ["microvm", "crun", "runc"] {
        let s = series(&report, runtime);
        let get = |m: &str| {
            s.iter()
                .find(|(n, _)| n == m)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{runtime} {m}: {report:#}"))
        };
        assert!(
            get("start-rate")[0] > 0.0 && get("remove-all")[0] > 0.0,
            "{runtime}: {report:#}"
        );
        let pss = get("tree-pss");
        assert!(
            pss.len() == 3 && pss.iter().all(|p| *p > 0.0),
            "{runtime}: {pss:?}"
        );
        if runtime == "microvm" {
            let (rss, guest) = (get("vmm-rss"), get("guest-pss"));
            // The guest's memory is inside the VMM's, and far below its 256 MiB when idle.
            assert!(
                rss.iter()
                    .zip(&guest)
                    .all(|(r, g)| *g > 0.0 && g < r && *g < 256.0),
                "rss {rss:?} guest {guest:?}"
            );
        }
    }
    let table = bh(&data, &ns, &["ps", "-a", "--format", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&table.stdout).unwrap(),
        serde_json::json!([]),
        "density removes what it started: {}",
        show(&table)
    );
}

#[test]
fn overhead_with_the_tiny_guest_next_to_another_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = other_vmm(dir.path());
    let out = Command::new(bulkhead())
        .args([
            "bench",
            "overhead",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--vmm-vs",
            vmm.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_facts(&report, "overhead");
    let ours = series(&report, "bulkhead-vmm");
    let other = series(&report, "vmm-vs:other-vmm");
    let names = |s: &[(String, Vec<f64>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&ours),
        [
            "startup-cpu",
            "first-output",
            "exit",
            "peak-rss",
            "rss-beyond-guest"
        ]
    );
    assert_eq!(
        names(&other),
        ["startup-cpu", "first-output", "exit", "peak-rss"]
    );
    for (name, v) in ours.iter().chain(&other) {
        assert!(v.len() == 3 && v.iter().all(|x| *x > 0.0), "{name}: {v:?}");
    }
    let get = |s: &[(String, Vec<f64>)], m: &str| s.iter().find(|(n, _)| n == m).unwrap().1.clone();
    for i in 0..3 {
        assert!(get(&ours, "first-output")[i] <= get(&ours, "exit")[i]);
        assert!(get(&ours, "rss-beyond-guest")[i] < get(&ours, "peak-rss")[i]);
    }
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    let ns = NetNs::create("bhtest-bench-bad").unwrap();
    let json = dir.path().join("r.json");
    let j = json.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["bench", "boot", IMAGE, "--runtimes", "lxc", "--json", j],
            "microvm, crun or runc",
        ),
        (
            &["bench", "boot", IMAGE, "--runs", "0", "--json", j],
            "--runs 1 to 10000",
        ),
        (
            &["bench", "boot", "no-such-image", "--json", j],
            "no-such-image",
        ),
        (
            &[
                "bench",
                "boot",
                IMAGE,
                "--vmm-vs",
                "/no/such/vmm",
                "--json",
                j,
            ],
            "/no/such/vmm",
        ),
        (
            &[
                "bench",
                "boot",
                IMAGE,
                "--runtimes",
                "crun",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--json",
                j,
                "--",
                "true",
            ],
            "printed nothing",
        ),
        (
            &["bench", "density", IMAGE, "--count", "0", "--json", j],
            "--count 1 to 10000",
        ),
        (
            &["bench", "overhead", "--vmm-vs", "/no/such/vmm", "--json", j],
            "/no/such/vmm",
        ),
    ];
    for (args, want) in cases {
        let out = bh(&data, &ns, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", show(&out));
        assert!(err.contains(want), "{args:?}: wanted {want:?} in {err}");
        assert!(!json.exists(), "{args:?} wrote a report");
    }
    let table = bh(&data, &ns, &["ps", "-a", "--format", "json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&table.stdout).unwrap(),
        serde_json::json!([]),
        "{}",
        show(&table)
    );
}

/// `bench io` natively on containers, the short way (8 MiB files, 2 s per
/// job at most, 2 runs); with `BULKHEAD_LONG=1` microVMs too (in the nested
/// test host where /dev/kvm cannot boot Linux). Each figure is checked for
/// what it claims: one per job, place and run, above zero, MiB/s for the
/// sequential jobs and IOPS for the random ones; the bench's own volumes
/// are gone after.
#[test]
fn io_reports_fio_figures_per_runtime_and_place() {
    let long = std::env::var("BULKHEAD_LONG").is_ok_and(|v| v == "1");
    let _vm = long.then(bulkhead_tests::vm_lock);
    bulkhead_images::debian::ensure_packages(&["crun", "fio", "e2fsprogs"], &mut |m| {
        eprintln!("{m}")
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    let runtimes: &[&str] = if long {
        &["microvm", "crun"]
    } else {
        &["crun"]
    };
    let rt_list = runtimes.join(",");
    let run = |args: &[&str]| {
        Command::new(bulkhead())
            .env("BULKHEAD_DATA", &data)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[
        "bench",
        "io",
        "--runtimes",
        &rt_list,
        "--runs",
        "2",
        "--size",
        "8m",
        "--seconds",
        "2",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_facts(&report, "io");
    if long {
        check_nested_note(&report);
    }
    assert!(
        report["image"]["name"]
            .as_str()
            .unwrap()
            .starts_with("bulkhead-bench/fio:"),
        "{report:#}"
    );
    for rt in runtimes {
        for place in ["root", "volume"] {
            let got = series(&report, &format!("{rt}/{place}"));
            let jobs: Vec<&str> = got.iter().map(|(j, _)| j.as_str()).collect();
            assert_eq!(
                jobs,
                ["seq-write", "seq-read", "rand-write", "rand-read"],
                "{report:#}"
            );
            for (job, v) in &got {
                assert!(
                    v.len() == 2 && v.iter().all(|x| *x > 0.0),
                    "{rt}/{place} {job}: {v:?}"
                );
            }
        }
    }
    for s in report["series"].as_array().unwrap() {
        let want = if s["phase"].as_str().unwrap().starts_with("seq-") {
            "MiB/s"
        } else {
            "IOPS"
        };
        assert_eq!(s["unit"], want, "{s}");
    }
    let vols = run(&["volume", "ls", "--format", "json"]);
    assert_eq!(
        String::from_utf8_lossy(&vols.stdout).trim(),
        "[]",
        "{}",
        show(&vols)
    );
}
