//! The guest kernel: cached build with every listed symbol, and a probe boot
//! that checks what containers need from it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use bulkhead_images::kernel::{self, fragment};
use bulkhead_tests::testhost::WorkspaceBinaries;
use bulkhead_tests::{guest_probe, vm_lock};

fn built() -> kernel::BuiltKernel {
    kernel::find_built()
        .unwrap_or_else(|e| panic!("{e} (CI builds it before the tests: `make kernel`)"))
}

#[test]
fn cached_kernel_has_every_listed_symbol_and_the_pvh_note() {
    let k = built();
    let requirements = fragment::parse_fragment(kernel::MICROVM_FRAGMENT).unwrap();
    let config = fragment::parse_dot_config(&std::fs::read_to_string(&k.config).unwrap());
    let dropped = fragment::check(&requirements, &config);
    assert!(
        dropped.is_empty(),
        "symbols missing from {}: {dropped:?}",
        k.config.display()
    );

    let notes = Command::new("readelf")
        .arg("-n")
        .arg(&k.vmlinux)
        .output()
        .expect("readelf (binutils)");
    let notes = String::from_utf8_lossy(&notes.stdout);
    // XEN_ELFNOTE_PHYS32_ENTRY (type 0x12) is the PVH entry point.
    assert!(
        notes
            .lines()
            .any(|l| l.trim_start().starts_with("Xen") && l.contains("0x00000012")),
        "no PVH entry note in {}:\n{notes}",
        k.vmlinux.display()
    );
}

#[test]
fn cli_kernel_path_and_a_second_build_do_no_work() {
    let bulkhead = WorkspaceBinaries::from_env().path("bulkhead").unwrap();
    let k = built();
    let path = Command::new(&bulkhead)
        .args(["kernel", "path"])
        .output()
        .unwrap();
    assert!(
        path.status.success(),
        "{}",
        String::from_utf8_lossy(&path.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&path.stdout).trim(),
        k.vmlinux.to_str().unwrap()
    );

    // Already cached: no phase is announced, the same path comes back.
    let again = Command::new(&bulkhead)
        .args(["kernel", "build"])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        "",
        "a cached build should do nothing"
    );
    assert_eq!(again.stdout, path.stdout);
}

#[test]
fn cli_kernel_path_fails_clearly_when_nothing_is_built() {
    let bulkhead = WorkspaceBinaries::from_env().path("bulkhead").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(&bulkhead)
        .args(["kernel", "path"])
        .env("BULKHEAD_CACHE", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bulkhead kernel build"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn probe_boot_passes_every_check_and_powers_off() {
    let _vm = vm_lock();
    let k = built();
    let agent = guest_probe::static_agent_path();
    assert!(
        agent.is_file(),
        "no static agent at {} (`make static`)",
        agent.display()
    );
    let report =
        guest_probe::boot(&k.vmlinux, &agent, 2, Duration::from_secs(240), &mut |_| {}).unwrap();
    for check in [
        "cpus",
        "threads",
        "epoll",
        "setuid",
        "pty",
        "shebang",
        "overlay-tmpfs",
        "filesystems",
    ] {
        assert!(
            report
                .lines
                .iter()
                .any(|l| l.starts_with(&format!("{check} ok"))),
            "check {check} did not pass: {:#?}\nconsole tail:\n{}",
            report.lines,
            bulkhead_tests::testhost::tail_lines(&report.console, 30)
        );
    }
    assert!(
        report.lines.iter().any(|l| l == "cpus ok (2 online)"),
        "{:?}",
        report.lines
    );
    assert!(report.all_ok(), "{:#?}", report.lines);
    // QEMU exits 0 by itself only through the guest's ACPI power-off.
    assert_eq!(
        report.qemu_status,
        Some(0),
        "console tail:\n{}",
        bulkhead_tests::testhost::tail_lines(&report.console, 30)
    );
}
