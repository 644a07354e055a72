//! `bulkhead-guest-probe`: boot the guest kernel with the kernel probe under
//! QEMU (microvm, software emulation) and report. Used by `make demo` until
//! `bulkhead run` exists.

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
    /// vCPUs of the probe VM.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Seconds before the boot is abandoned.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Show the whole console, not only the probe's lines.
    #[arg(short, long)]
    verbose: bool,
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
    eprintln!(
        "booting {} on {} vCPUs under QEMU microvm (software emulation)...",
        kernel.display(),
        args.cpus
    );
    let verbose = args.verbose;
    let mut pending = Vec::new();
    let report = guest_probe::boot(
        &kernel,
        &agent,
        args.cpus,
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
