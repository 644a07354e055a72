//! bulkhead-vmm: one process, one microVM. `--help` lists flags and exit codes.

use std::process::ExitCode;

use bulkhead_vmm::cli::Args;
use bulkhead_vmm::exit::code;
use bulkhead_vmm::{arch, builder, runner, timeline, vstate};
use clap::Parser;

fn main() -> ExitCode {
    timeline::mark_process_start();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage {
                code::USAGE
            } else {
                code::GUEST_STOPPED
            });
        }
    };
    if args.dump_supported_cpuid {
        return dump_cpuid();
    }
    #[cfg(feature = "test-hooks")]
    let violation = match args
        .seccomp_violation
        .as_deref()
        .map(bulkhead_vmm::seccomp::parse_violation)
        .transpose()
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bulkhead-vmm: --seccomp-violation {e}");
            return ExitCode::from(code::USAGE);
        }
    };
    #[cfg(not(feature = "test-hooks"))]
    let violation = None;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let built = match builder::build(&config) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let timeline = built.ctx.timeline.clone();
    let (io, mmio) = (built.ctx.io.clone(), built.ctx.mmio.clone());
    let opts = runner::RunOptions {
        measure: config.memory_report,
        seccomp: config.seccomp,
        violation,
    };
    let ended = match runner::run(built, &opts) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let reason = ended.reason;
    if let Some(m) = ended.memory {
        eprintln!(
            "bulkhead-vmm: memory peak_rss_kib={} guest_rss_kib={} overhead_kib={}",
            m.peak_rss_kib,
            m.guest_rss_kib,
            m.overhead_kib()
        );
    }
    if config.boot_timeline {
        for line in timeline.report_lines() {
            eprintln!("{line}");
        }
        for line in timeline::exit_lines(&io.access_counts(), &mmio.access_counts()) {
            eprintln!("{line}");
        }
    }
    if let bulkhead_vmm::exit::ExitReason::Crash(why) = &reason {
        eprintln!("bulkhead-vmm: {why}");
    }
    ExitCode::from(reason.code())
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("bulkhead-vmm: {}", bulkhead_agent_proto::report(e));
    ExitCode::from(code::VMM_ERROR)
}

fn dump_cpuid() -> ExitCode {
    match vstate::vm::Vm::new().and_then(|vm| vm.supported_cpuid()) {
        Ok(c) => {
            print!("{}", arch::cpuid::render(c.as_slice()));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
