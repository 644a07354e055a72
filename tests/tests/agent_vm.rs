//! The agent in real VMs, in the test host (nested where needed):
//! bulkhead-vmm boots our kernel with the agent initramfs and a busybox
//! ext4 root disk; the host client runs echo, exit 7, exec while running,
//! SIGTERM, and looks for the agent from inside the workload. A busybox
//! `/init` that only prints boots beside it, so the boot timeline shows
//! the agent's own cost.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use bulkhead_tests::testhost::TestHost;
use bulkhead_tests::{busybox_root, guest_initramfs, guest_probe, vm_lock};

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn agent_runs_echo_exit_codes_exec_and_sigterm_in_a_vm_then_powers_off() {
    let _vm = vm_lock();
    let agent = guest_probe::expect_static_agent();
    let initrd = bulkhead_images::agent_initramfs::cached(&agent).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("root.img");
    busybox_root::ext4(dir.path(), &disk).unwrap();
    let scratch = dir.path().join("scratch.img");
    let status = std::process::Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&scratch)
        .arg("16M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(status.success());
    let scratch_back = dir.path().join("scratch-back.img");
    let baseline = dir.path().join("baseline.cpio");
    std::fs::write(
        &baseline,
        guest_initramfs::busybox(
            "#!/bin/sh\necho BASELINE-INIT\n/bin/busybox poweroff -f\n",
            &[],
        )
        .unwrap(),
    )
    .unwrap();

    let out = TestHost::new()
        .unwrap()
        .stage(&initrd, "/t/agent.cpio")
        .stage(&disk, "/t/root.img")
        .stage(&baseline, "/t/baseline.cpio")
        .stage(&scratch, "/t/scratch.img")
        .collect("/t/scratch.img", &scratch_back)
        .timeout(Duration::from_secs(500))
        .run(&["sh", "-c", "bulkhead-testkit agent-e2e \"$BULKHEAD_KERNEL\" /t/agent.cpio /t/root.img /t/baseline.cpio /t/scratch.img"])
        .unwrap();
    let stdout = out.stdout_str();
    let report = format!("stdout:\n{stdout}\nstderr:\n{}", out.stderr_str());
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    let failed: Vec<&&str> = checks
        .iter()
        .filter(|l| l.split_whitespace().nth(2).is_none_or(|s| s != "ok"))
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}\n{report}");
    for want in [
        "hello-from-agent",
        "echo-output",
        "echo-exit",
        "echo-vmm-exit-0",
        "exit-7",
        "exit7-vmm-exit-0",
        "main-ready",
        "exec-while-running",
        "proc-1-exe-is-the-workload",
        "agent-unreachable",
        "hostname-set",
        "sigterm",
        "exec-vmm-exit-0",
        "baseline-printed",
    ] {
        assert!(
            checks
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(want)),
            "check {want} did not run\n{report}"
        );
    }
    assert_eq!(out.status, 0, "{report}");
    // The workload's write went to the scratch disk's upper layer and
    // reached the disk before power-off.
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /upper/data.txt"])
        .arg(&scratch_back)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "persisted\n",
        "{report}"
    );

    // The boot timeline, in emulated microseconds since the VMM started
    // (ratios only: the test host is emulated).
    let agent_t = stdout
        .lines()
        .find(|l| l.starts_with("TIMING agent "))
        .unwrap_or_else(|| panic!("{report}"));
    let base_t = stdout
        .lines()
        .find(|l| l.starts_with("TIMING baseline "))
        .unwrap_or_else(|| panic!("{report}"));
    let (k, init, ready, conn, work, first) = (
        field(agent_t, "kernel_entry_us"),
        field(agent_t, "init_started_us"),
        field(agent_t, "agent_ready_us"),
        field(agent_t, "host_connected_us"),
        field(agent_t, "workload_started_us"),
        field(agent_t, "first_output_us"),
    );
    assert!(
        0 < k && k < init && init <= ready && ready <= work && work <= first,
        "timeline out of order: {agent_t}"
    );
    assert!(conn <= first, "{agent_t}");
    let base_first = field(base_t, "first_output_us");
    assert!(base_first > 0, "{base_t}");
    println!("boot timeline (test host, emulated µs since VMM start):");
    println!("  agent:   kernel entry {k}, agent started {init}, agent connected {ready} (host saw it at {conn}), workload started {work}, first output of echo {first}");
    println!(
        "  busybox: kernel entry {}, first output of /init {base_first}",
        field(base_t, "kernel_entry_us")
    );
    let base_k = field(base_t, "kernel_entry_us");
    println!(
        "  from kernel entry: agent started +{}, connected +{}, workload started +{}, echo's output +{}; busybox /init's output +{}",
        init - k,
        ready - k,
        work - k,
        first - k,
        base_first.saturating_sub(base_k)
    );
}
