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
    let agent = guest_probe::expect_static_agent();
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

/// The boot-time probe (`bulkhead-guest-probe --boot-time`) reaches the
/// agent's ready mark through the real start path (bulkhead's command line,
/// the agent's initramfs, an erofs root disk mounted and switched into) and
/// is deterministic: the figure a kernel or agent change is judged by must
/// not move between two boots of the same input. A boot that fails to mount
/// the disk, or an agent that never prints the mark, fails here.
#[test]
fn boot_time_probe_reaches_the_agent_and_repeats() {
    let _vm = vm_lock();
    let k = built();
    let agent = guest_probe::expect_static_agent();
    let initrd = bulkhead_images::agent_initramfs::cached(&agent).unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("root.erofs");
    bulkhead_tests::busybox_root::erofs(work.path(), &disk).unwrap();
    let input = guest_probe::BootTimeInput {
        kernel: &k.vmlinux,
        initrd: &initrd,
        disk: &disk,
        fstype: "erofs",
        cpus: 1,
        memory_mib: 256,
    };
    let boot = || guest_probe::boot_time(&input, Duration::from_secs(240), &mut |_| {}).unwrap();
    let (first, second) = (boot(), boot());
    assert!(first.ready_us > 0, "{first:?}");
    // The TSC counts from the VM's reset (QEMU's firmware first),
    // CLOCK_BOOTTIME from the kernel's start: the first is the larger.
    assert!(first.since_reset_us > first.ready_us, "{first:?}");
    // They agree within tens of microseconds on a quiet host (the disk's
    // real latency is what is left); 5% leaves room for a loaded one and is
    // still below the 4 ms steps of a probe that lets the guest sleep.
    let spread = first.ready_us.abs_diff(second.ready_us);
    assert!(
        spread * 20 <= first.ready_us,
        "two boots of the same input differ by more than 5%: {} vs {} us",
        first.ready_us,
        second.ready_us
    );

    // A disk the agent cannot mount is a failed probe, not a figure.
    let ext4_named_erofs = guest_probe::BootTimeInput {
        fstype: "ext4",
        ..input
    };
    let err = guest_probe::boot_time(&ext4_named_erofs, Duration::from_secs(240), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("boot probe failed"), "{err}");
}
