//! KVM smoke tests: tiny guests (a few bytes of machine code in a PVH ELF)
//! run by the real `bulkhead-vmm` binary on this machine's /dev/kvm. They
//! check serial output, MMIO dispatch, every way the VM can end and its exit
//! code, and the boot-stage timestamps. They need /dev/kvm (any kind,
//! kvm_pvm included) and fail, not skip, without it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use bulkhead_vmm::exit::code;
use bulkhead_vmm::tiny_guest::Program;

fn guest(name: &str, program: Program) -> (tempfile::TempDir, PathBuf) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.elf"));
    std::fs::write(&path, program.elf()).unwrap();
    (dir, path)
}

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-vmm"))
}

fn run(name: &str, program: Program, extra: &[&str]) -> Output {
    let (_dir, kernel) = guest(name, program);
    vmm()
        .arg("--kernel")
        .arg(&kernel)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn serial_output_then_power_off_exits_0() {
    let out = run(
        "poweroff",
        Program::new()
            .print("hello from a tiny guest\n")
            .power_off(),
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a tiny guest\n"
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(code::GUEST_STOPPED)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_elf_without_the_pvh_note_boots_through_the_64_bit_entry() {
    let (_dir, kernel) = guest("long", Program::new());
    std::fs::write(
        &kernel,
        Program::new()
            .print("long mode\n")
            .power_off()
            .elf_64bit_entry(),
    )
    .unwrap();
    let out = vmm().arg("--kernel").arg(&kernel).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "long mode\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_resets_exit_0() {
    for (name, p) in [
        ("i8042", Program::new().print("a\n").reset_i8042()),
        ("acpi", Program::new().print("b\n").reset_acpi()),
    ] {
        let out = run(name, p, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn pvpanic_gives_the_panic_code() {
    let out = run("panic", Program::new().panic(), &[]);
    assert_eq!(out.status.code(), Some(i32::from(code::GUEST_PANIC)));
}

#[test]
fn triple_fault_gives_the_crash_code_and_a_reason() {
    let out = run("triple", Program::new().triple_fault(), &[]);
    assert_eq!(out.status.code(), Some(i32::from(code::GUEST_CRASH)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("triple fault"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn mmio_reaches_the_ioapic() {
    // Select the version register, read it back through the window.
    let p = Program::new()
        .mmio_write32(0xfec0_0000, 1)
        .mmio_check32(0xfec0_0010, 0x0017_0011, "MMIO-OK\n", "MMIO-BAD\n")
        .power_off();
    let out = run("mmio", p, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "MMIO-OK\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn serial_can_go_to_a_file_or_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console.log");
    let out = run(
        "file",
        Program::new().print("to a file\n").power_off(),
        &["--serial", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "to a file\n");
    let out = run(
        "none",
        Program::new().print("nowhere\n").power_off(),
        &["--serial", "none"],
    );
    assert!(out.stdout.is_empty());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn boot_timeline_has_kernel_entry_and_guest_codes_in_order() {
    let p = Program::new()
        .out8(0x3f0, 1)
        .out8(0x3f0, 2)
        .out8(0x3f0, 3)
        .power_off();
    let out = run("timeline", p, &["--boot-timeline"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let names: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("bulkhead-vmm: boot-timeline "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kernel-entry",
            "init-started",
            "agent-ready",
            "workload-started",
            "exit"
        ],
        "{err}"
    );
    let times: Vec<u64> = err
        .lines()
        .filter_map(|l| l.strip_prefix("bulkhead-vmm: boot-timeline "))
        .map(|l| {
            l.split(' ')
                .nth(1)
                .unwrap()
                .trim_end_matches("us")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn sigterm_stops_a_spinning_guest_with_its_code() {
    let (_dir, kernel) = guest("spin", Program::new().print("spinning\n").spin());
    let mut child = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest runs (its line arrives), then signal.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "spinning\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(i32::from(code::SIGTERM)));
}

#[test]
fn bad_inputs_fail_with_code_1_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a kernel").unwrap();
    for (args, needle) in [
        (
            vec!["--kernel", junk.to_str().unwrap()],
            "neither a loadable x86_64 ELF",
        ),
        (vec!["--kernel", "/no/such/kernel"], "/no/such/kernel"),
        (vec![], "no kernel given"),
        (
            vec!["--kernel", junk.to_str().unwrap(), "--vcpus", "0"],
            "--vcpus 0",
        ),
    ] {
        let out = vmm().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(i32::from(code::VMM_ERROR)),
            "{args:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = vmm().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(i32::from(code::USAGE)));
}

#[test]
fn firecracker_config_file_form_boots_the_same_guest() {
    let (dir, kernel) = guest(
        "fc",
        Program::new()
            .print("started the Firecracker way\n")
            .out8(0x3f0, 2)
            .power_off(),
    );
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({"boot-source": {"kernel_image_path": kernel}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}});
    std::fs::write(&config, json.to_string()).unwrap();
    let out = vmm()
        .args(["--no-api", "--id", "fc1", "--config-file"])
        .arg(&config)
        .arg("--boot-timeline")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "started the Firecracker way\n"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    let report = bulkhead_vmm::timeline::parse_report(&err);
    assert!(
        report
            .monotonic_start_us
            .is_some_and(|t| t <= bulkhead_vmm::timeline::monotonic_us()),
        "{err}"
    );
    assert_eq!(
        report
            .marks
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["kernel-entry", "agent-ready", "exit"],
        "{err}"
    );
}

/// `Seccomp:` and `NoNewPrivs:` of the VMM's own threads (KVM's kernel
/// workers, `kvm-*`, live in its thread group too), by name.
fn thread_seccomp(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let name = std::fs::read_to_string(t.path().join("comm"))
            .unwrap()
            .trim()
            .to_string();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .to_string()
        };
        if !name.starts_with("kvm-") {
            out.push((name, field("Seccomp:"), field("NoNewPrivs:")));
        }
    }
    out.sort();
    out
}

#[test]
fn every_thread_runs_filtered_unless_no_seccomp() {
    for (flags, want) in [(&[][..], ("2", "1")), (&["--no-seccomp"][..], ("0", "0"))] {
        let (_dir, kernel) = guest("filtered", Program::new().print("spinning\n").spin());
        let mut child = vmm()
            .arg("--kernel")
            .arg(&kernel)
            .args(["--vcpus", "2"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "spinning\n");
        let threads = thread_seccomp(child.id());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["bulkhead-vmm", "vcpu0", "vcpu1"], "{threads:?}");
        assert!(
            threads.iter().all(|t| (t.1.as_str(), t.2.as_str()) == want),
            "{flags:?}: {threads:?}"
        );
        assert_eq!(
            status.code(),
            Some(i32::from(code::SIGTERM)),
            "the exit path works filtered: {flags:?}"
        );
    }
}

#[test]
fn forbidden_calls_kill_the_vmm_with_sigsys_on_every_thread_kind() {
    use std::os::unix::process::ExitStatusExt;
    let (_dir, kernel) = guest("violate", Program::new().print("up\n").power_off());
    for kind in ["main", "vcpu"] {
        for call in ["execve", "open", "socket", "ptrace"] {
            let out = vmm()
                .arg("--kernel")
                .arg(&kernel)
                .args(["--seccomp-violation", &format!("{kind}:{call}")])
                .output()
                .unwrap();
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGSYS),
                "{kind}:{call}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The memory report reads /proc files opened before the filters.
    let out = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--memory-report")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("overhead_kib="));
}
