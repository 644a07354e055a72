//! `bulkhead-guest-probe`: boot the guest kernel with the kernel probe under
//! QEMU (microvm, software emulation) and report; with `--boot-time`, time
//! the guest's own boot (kernel, agent, root disk) in QEMU's virtual time.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bulkhead_tests::guest_probe;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-guest-probe",
    about = "Boot bulkhead's guest kernel under QEMU (microvm, TCG) and check what containers need from it",
    after_help = "Exit codes: 0 every check passed, 1 a check failed or the guest did not power off, 2 bad usage, 125 could not boot"
)]
struct Args {
    /// Guest kernel (default: the one `bulkhead kernel build` cached).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Static agent binary (default: built by `make static`).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// vCPUs of the probe VM (default: 2 for the kernel probe, 1 as a
    /// microVM has for --boot-time).
    #[arg(long)]
    cpus: Option<u32>,
    /// Seconds before the boot is abandoned.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Show the whole console, not only the probe's lines.
    #[arg(short, long)]
    verbose: bool,
    /// Time the guest's own boot instead: the kernel with bulkhead's command
    /// line, the agent's initramfs as `bulkhead run` boots it, the root disk
    /// mounted and switched into, in virtual time under `-icount shift=0,sleep=off`
    /// (one nanosecond per guest instruction; it does not move with the host's
    /// load). Prints one line per boot and the median.
    #[arg(long)]
    boot_time: bool,
    /// (--boot-time) The root disk (default: an erofs disk of static busybox,
    /// made for the run).
    #[arg(long, requires = "boot_time")]
    disk: Option<PathBuf>,
    /// (--boot-time) The root disk's filesystem.
    #[arg(long, default_value = "erofs", value_parser = ["erofs", "ext4"], requires = "boot_time")]
    fstype: String,
    /// (--boot-time) Guest memory in MiB (bulkhead's default microVM size).
    #[arg(long, default_value_t = 256, requires = "boot_time")]
    memory: u32,
    /// (--boot-time) Boots to time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50), requires = "boot_time")]
    runs: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kernel = match args
        .kernel
        .clone()
        .map(Ok)
        .unwrap_or_else(|| bulkhead_images::kernel::find_built().map(|k| k.vmlinux))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bulkhead-guest-probe: {e}");
            return ExitCode::from(125);
        }
    };
    let agent = args
        .agent
        .clone()
        .unwrap_or_else(guest_probe::static_agent_path);
    if !agent.is_file() {
        eprintln!(
            "bulkhead-guest-probe: no static agent at {}; run `make static`",
            agent.display()
        );
        return ExitCode::from(125);
    }
    if args.boot_time {
        return boot_time(&args, &kernel, &agent);
    }
    let cpus = args.cpus.unwrap_or(2);
    eprintln!(
        "booting {} on {} vCPUs under QEMU microvm (software emulation)...",
        kernel.display(),
        cpus
    );
    let verbose = args.verbose;
    let mut pending = Vec::new();
    let report = guest_probe::boot(
        &kernel,
        &agent,
        cpus,
        Duration::from_secs(args.timeout),
        &mut |bytes| {
            if verbose {
                let _ = std::io::stdout().write_all(bytes);
                return;
            }
            pending.extend_from_slice(bytes);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                if line.starts_with(b"probe: ") {
                    let _ = std::io::stdout().write_all(&line);
                }
            }
        },
    );
    match report {
        Ok(r) if r.all_ok() && r.qemu_status == Some(0) => {
            println!(
                "guest kernel OK: booted, passed every check, powered off via ACPI ({:.1?})",
                r.elapsed
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "guest kernel FAILED (qemu exit {:?}); last console lines:\n{}",
                r.qemu_status,
                bulkhead_tests::testhost::tail_lines(&r.console, 20)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bulkhead-guest-probe: {e}");
            ExitCode::from(125)
        }
    }
}

/// `--boot-time`: boots `args.runs` times and prints each figure and the median.
fn boot_time(args: &Args, kernel: &std::path::Path, agent: &std::path::Path) -> ExitCode {
    let initrd = match bulkhead_images::agent_initramfs::cached(agent) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bulkhead-guest-probe: the agent's initramfs: {e}");
            return ExitCode::from(125);
        }
    };
    let work = match tempfile::tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("bulkhead-guest-probe: a work dir: {e}");
            return ExitCode::from(125);
        }
    };
    let disk = match &args.disk {
        Some(d) => d.clone(),
        None => {
            match bulkhead_tests::busybox_root::erofs(work.path(), &work.path().join("root.erofs"))
            {
                Ok(()) => work.path().join("root.erofs"),
                Err(e) => {
                    eprintln!("bulkhead-guest-probe: the busybox root disk: {e}");
                    return ExitCode::from(125);
                }
            }
        }
    };
    let input = guest_probe::BootTimeInput {
        kernel,
        initrd: &initrd,
        disk: &disk,
        fstype: &args.fstype,
        cpus: args.cpus.unwrap_or(1),
        memory_mib: args.memory,
    };
    eprintln!(
        "timing {} boots of {} (initramfs {}, disk {}) under QEMU -icount...",
        args.runs,
        kernel.display(),
        initrd.display(),
        disk.display()
    );
    let mut figures = Vec::new();
    for run in 1..=args.runs {
        let verbose = args.verbose;
        match guest_probe::boot_time(&input, Duration::from_secs(args.timeout), &mut |bytes| {
            if verbose {
                let _ = std::io::stdout().write_all(bytes);
            }
        }) {
            Ok(t) => {
                println!(
                    "boot {run}: agent ready, root mounted {} us (virtual) after the kernel started ({} us after QEMU's reset)",
                    t.ready_us, t.since_reset_us
                );
                figures.push(t.ready_us);
            }
            Err(e) => {
                eprintln!("bulkhead-guest-probe: boot {run}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    figures.sort_unstable();
    let (min, max) = (figures[0], figures[figures.len() - 1]);
    println!(
        "median {} us (min {min}, max {max}, {} boots)",
        figures[figures.len() / 2],
        figures.len()
    );
    ExitCode::SUCCESS
}
