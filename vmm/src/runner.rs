//! Running a built VM: one thread per vCPU; the main thread runs the event
//! loop (device host-side events) until the end (a device, a vCPU or a
//! signal), flushes what devices hold for the host, and reports why the VM
//! stopped.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Barrier};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::builder::BuiltVm;
use crate::event_loop::Wake;
use crate::exit::ExitReason;
use crate::memory_report::{self, MemoryReport};
use crate::seccomp::{self, ThreadKind, Violation};

/// How the VM ended, and what the VMM measured on the way.
#[derive(Debug)]
pub struct Ended {
    pub reason: ExitReason,
    pub memory: Option<MemoryReport>,
}

/// How to run a built VM.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take the memory report once the VM has stopped.
    pub measure: bool,
    /// Install the seccomp filters (off only with `--no-seccomp`).
    pub seccomp: bool,
    /// Tests only: this thread kind makes this forbidden call once its
    /// filter is in (the process must die of SIGSYS).
    pub violation: Option<(ThreadKind, Violation)>,
}

/// Runs the VM to its end. SIGINT and SIGTERM stop it. Every thread's
/// seccomp filter is in before any vCPU enters the guest.
pub fn run(vm: BuiltVm, opts: &RunOptions) -> std::io::Result<Ended> {
    // Block the stop signals in every thread (vCPU threads inherit the
    // mask) and read them from a signalfd here.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().map_err(std::io::Error::from)?;
    let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(std::io::Error::from)?;

    let BuiltVm {
        vm,
        mem,
        vcpus,
        ctx,
        serial,
        event_loop,
    } = vm;
    // SAFETY: the eventfd is owned by `ctx.exit`, which outlives this
    // borrow (the Arc is held until the process exits).
    let exit_fd = unsafe { BorrowedFd::borrow_raw(ctx.exit.eventfd().as_raw_fd()) };
    event_loop.watch_exit(exit_fd)?;
    event_loop.watch_signals(signals.as_fd())?;
    // The memory report's /proc files are opened now: no open(2) later.
    let report_files = if opts.measure {
        Some(memory_report::Files::open()?)
    } else {
        None
    };
    // Each vCPU thread installs its filter, then all wait here until the
    // main thread has its own: only then does a vCPU enter the guest.
    let gate = Arc::new(Barrier::new(vcpus.len() + 1));
    // Compiled once, here; each thread only installs.
    let filters = if opts.seccomp {
        Some((
            seccomp::filter(ThreadKind::Main).map_err(std::io::Error::other)?,
            Arc::new(seccomp::filter(ThreadKind::Vcpu).map_err(std::io::Error::other)?),
        ))
    } else {
        None
    };
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (ctx, gate, opts) = (ctx.clone(), gate.clone(), opts.clone());
        let vcpu_filter = filters.as_ref().map(|f| f.1.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let filtered =
                    vcpu_filter.map_or(Ok(()), |f| seccomp::install(ThreadKind::Vcpu, &f));
                gate.wait();
                match filtered {
                    Ok(()) => {
                        if let Some((ThreadKind::Vcpu, v)) = opts.violation {
                            let _ = seccomp::violate(v);
                        }
                        vcpu.run(&ctx);
                    }
                    Err(e) => ctx.exit.request(ExitReason::Crash(e.to_string())),
                }
            })?;
    }
    let filtered = filters
        .as_ref()
        .map_or(Ok(()), |f| seccomp::install(ThreadKind::Main, &f.0));
    gate.wait();
    filtered.map_err(std::io::Error::other)?;
    if let Some((ThreadKind::Main, v)) = opts.violation {
        let _ = seccomp::violate(v);
    }

    loop {
        if event_loop.run_until_wake()? == Wake::Signal {
            if let Ok(Some(info)) = signals.read_signal() {
                ctx.exit.request(ExitReason::Signal(
                    i32::try_from(info.ssi_signo).unwrap_or(i32::MAX),
                ));
            }
        }
        if let Some(reason) = ctx.exit.reason() {
            serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush_output();
            event_loop.flush_devices();
            let memory = report_files.and_then(|f| memory_report::measure(&mem, f).ok());
            // The vCPU threads may still be inside KVM_RUN: the process exit
            // that follows ends them; the VM and memory go with it.
            std::mem::forget(vm);
            std::mem::forget(mem);
            std::mem::forget(event_loop);
            return Ok(Ended { reason, memory });
        }
    }
}
