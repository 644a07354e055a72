//! VMM boot benchmark: a tiny PVH guest that prints one line and resets,
//! started by the real `bulkhead-vmm` on this host's /dev/kvm.
//!
//! Per run: process start (spawn) -> first guest serial byte on the pipe,
//! and -> process reaped (the VM fully torn down), plus the VMM's memory
//! overhead (peak RSS minus the guest mapping's resident pages, from
//! `--memory-report`). The static build (as shipped, `make static`), the
//! same with `--no-seccomp` (what the filters cost) and the plain workspace
//! build run alternately to cancel drift.
//!
//! Then, where the project's guest kernel is built (`$BULKHEAD_KERNEL`, else
//! the newest `~/.cache/bulkhead/kernel/*/vmlinux`): the shipped VMM with
//! that vmlinux, 256 MiB and a 4 MB initramfs, process start -> kernel
//! entry from its `--boot-timeline` (the kernel's first serial line proves
//! it got there; then it is stopped: on kvm_pvm Linux gets no further).
//!
//! `cargo bench -p bulkhead-vmm --bench boot [-- RUNS]` (default 30 runs,
//! 3 warm-up runs discarded).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_vmm::tiny_guest::Program;

const LINE: &str = "Hello from the boot benchmark\n";

struct Sample {
    first_byte: Duration,
    exit: Duration,
    overhead_kib: u64,
}

fn run_once(vmm: &Path, extra: &[&str], kernel: &Path) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .args(extra)
        .arg("--kernel")
        .arg(kernel)
        .arg("--memory-report")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bulkhead-vmm");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    out.read_exact(&mut first).expect("no guest output");
    let first_byte = start.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).expect("read guest output");
    let err = stderr_of(&mut child);
    let status = child.wait().expect("wait");
    let exit = start.elapsed();
    assert!(status.success(), "bulkhead-vmm failed: {status}: {err}");
    assert_eq!([&first[..], &rest[..]].concat(), LINE.as_bytes());
    let overhead_kib = err
        .split_whitespace()
        .find_map(|w| w.strip_prefix("overhead_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memory report in: {err}"));
    Sample {
        first_byte,
        exit,
        overhead_kib,
    }
}

/// All the child's stderr, to its end.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    err
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // p in 0..=1: an index in the slice
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, samples: &[Sample]) {
    let ms = |f: &dyn Fn(&Sample) -> Duration| {
        let mut v: Vec<f64> = samples.iter().map(|s| f(s).as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let fb = ms(&|s| s.first_byte);
    let ex = ms(&|s| s.exit);
    let mut mem: Vec<u64> = samples.iter().map(|s| s.overhead_kib).collect();
    mem.sort();
    println!("{name} ({} runs)", samples.len());
    for (label, v, target) in [
        ("start -> first serial byte", &fb, 3.0),
        ("start -> exit (reaped)", &ex, 6.0),
    ] {
        let med = percentile(v, 0.5);
        let verdict = if med <= target { "meets" } else { "MISSES" };
        println!(
            "  {label:<28} median {med:6.2} ms  p90 {:6.2}  min {:6.2}  max {:6.2}   target <= {target} ms: {verdict}",
            percentile(v, 0.9),
            v[0],
            v[v.len() - 1]
        );
    }
    let med_mem = mem[mem.len() / 2];
    let verdict = if med_mem <= 3072 { "meets" } else { "MISSES" };
    println!(
        "  {:<28} median {:6.2} MiB (min {:.2}, max {:.2})   target <= 3 MiB: {verdict}",
        "VMM memory overhead",
        med_mem as f64 / 1024.0,
        mem[0] as f64 / 1024.0,
        mem[mem.len() - 1] as f64 / 1024.0
    );
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let dynamic = PathBuf::from(env!("CARGO_BIN_EXE_bulkhead-vmm"));
    let static_build = dynamic
        .parent()
        .and_then(|d| d.parent())
        .map(|t| t.join("x86_64-unknown-linux-gnu/release/bulkhead-vmm"));
    let mut builds: Vec<(&str, PathBuf, &[&str])> =
        vec![("workspace build (dynamic)", dynamic, &[])];
    match static_build.filter(|p| p.is_file()) {
        Some(p) => {
            // What the seccomp filters cost: the shipped binary without them.
            builds.insert(
                0,
                (
                    "static build, --no-seccomp (debugging only)",
                    p.clone(),
                    &["--no-seccomp"],
                ),
            );
            builds.insert(0, ("static build (as shipped)", p, &[]));
        }
        None => println!("(no static build: run `make static` to measure the shipped binary too)"),
    }

    let dir = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, Program::new().print(LINE).reset_i8042().elf()).expect("write guest");

    println!(
        "bulkhead-vmm boot benchmark: tiny PVH guest, 1 vCPU, 128 MiB, host KVM: {}",
        bulkhead_vmm::host::detect()
    );
    for (_, vmm, extra) in &builds {
        for _ in 0..3 {
            run_once(vmm, extra, &kernel);
        }
    }
    let mut results: Vec<Vec<Sample>> = builds.iter().map(|_| Vec::with_capacity(runs)).collect();
    for _ in 0..runs {
        for (i, (_, vmm, extra)) in builds.iter().enumerate() {
            results[i].push(run_once(vmm, extra, &kernel));
        }
    }
    for ((name, _, _), samples) in builds.iter().zip(&results) {
        report(name, samples);
    }
    if let (Some(vmlinux), Some((_, vmm, _))) = (built_kernel(), builds.first()) {
        kernel_entry(vmm, &vmlinux, &dir, runs);
    } else {
        println!("(no guest kernel built: `bulkhead kernel build` to measure kernel entry too)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `$BULKHEAD_KERNEL`, else the newest `~/.cache/bulkhead/kernel/*/vmlinux`.
fn built_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("BULKHEAD_KERNEL").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    let root = PathBuf::from(std::env::var_os("HOME")?).join(".cache/bulkhead/kernel");
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Process start -> kernel entry of `vmlinux` (µs, from the timeline).
fn kernel_entry_once(vmm: &Path, extra: &[&str], vmlinux: &Path, initrd: &Path) -> u64 {
    let mut child = Command::new(vmm)
        .args(extra)
        .args(["--memory", "256", "--boot-timeline", "--cmdline"])
        .arg("console=ttyS0 earlyprintk=serial")
        .arg("--kernel")
        .arg(vmlinux)
        .arg("--initrd")
        .arg(initrd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bulkhead-vmm");
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("no serial output from the kernel");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop bulkhead-vmm");
    let err = stderr_of(&mut child);
    let _ = child.wait();
    bulkhead_vmm::timeline::parse_report(&err)
        .marks
        .iter()
        .find(|(m, _)| m == "kernel-entry")
        .map(|(_, us)| *us)
        .unwrap_or_else(|| panic!("no kernel-entry in: {err}"))
}

fn kernel_entry(vmm: &Path, vmlinux: &Path, dir: &Path, runs: usize) {
    let initrd = dir.join("initrd.cpio");
    // Incompressible bytes: the loader's cost, not the kernel's (it stops
    // long before reading them).
    let bytes: Vec<u8> = (0u32..4_000_000)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    std::fs::write(&initrd, bytes).expect("write initrd");
    // Copied (huge pages while loading, the default), and mapped from the
    // files (`--share-boot-files`), alternating.
    let variants: [(&str, &[&str]); 2] = [
        ("copied (default)", &[]),
        ("mapped, --share-boot-files", &["--share-boot-files"]),
    ];
    for _ in 0..3 {
        for (_, extra) in &variants {
            kernel_entry_once(vmm, extra, vmlinux, &initrd);
        }
    }
    let mut samples = vec![Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, (_, extra)) in variants.iter().enumerate() {
            samples[i].push(kernel_entry_once(vmm, extra, vmlinux, &initrd) as f64 / 1e3);
        }
    }
    println!(
        "static build, {} ({} MB), 256 MiB, 4 MB initramfs ({runs} runs each)",
        vmlinux.display(),
        std::fs::metadata(vmlinux)
            .map(|m| m.len() >> 20)
            .unwrap_or(0),
    );
    for ((name, _), mut v) in variants.iter().zip(samples) {
        v.sort_by(f64::total_cmp);
        let med = percentile(&v, 0.5);
        let target = 1.5;
        let verdict = if med <= target { "meets" } else { "MISSES" };
        println!(
            "  start -> kernel entry, {name:<26} median {med:6.2} ms  p90 {:6.2}  min {:6.2}  max {:6.2}   target <= {target} ms: {verdict}",
            percentile(&v, 0.9),
            v[0],
            v[v.len() - 1]
        );
    }
}
