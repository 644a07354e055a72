//! Running a built VM: one thread per vCPU; the main thread runs the event
//! loop (device host-side events) until the end (a device, a vCPU or a
//! signal), flushes what devices hold for the host, and reports why the VM
//! stopped.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::builder::BuiltVm;
use crate::event_loop::Wake;
use crate::exit::ExitReason;
use crate::memory_report::{self, MemoryReport};

/// How the VM ended, and what the VMM measured on the way.
#[derive(Debug)]
pub struct Ended {
    pub reason: ExitReason,
    pub memory: Option<MemoryReport>,
}

/// Runs the VM to its end. SIGINT and SIGTERM stop it. With `measure`,
/// the memory report is taken once the VM has stopped.
pub fn run(vm: BuiltVm, measure: bool) -> std::io::Result<Ended> {
    // Block the stop signals in every thread (vCPU threads inherit the
    // mask) and read them from a signalfd here.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().map_err(std::io::Error::from)?;
    let signals = SignalFd::with_flags(&stop, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(std::io::Error::from)?;

    let BuiltVm { vm, mem, vcpus, ctx, serial, event_loop } = vm;
    // SAFETY: the eventfd is owned by `ctx.exit`, which outlives this
    // borrow (the Arc is held until the process exits).
    let exit_fd = unsafe { BorrowedFd::borrow_raw(ctx.exit.eventfd().as_raw_fd()) };
    event_loop.watch_exit(exit_fd)?;
    event_loop.watch_signals(signals.as_fd())?;
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let ctx = ctx.clone();
        std::thread::Builder::new().name(format!("vcpu{i}")).spawn(move || vcpu.run(&ctx))?;
    }

    loop {
        if event_loop.run_until_wake()? == Wake::Signal {
            if let Ok(Some(info)) = signals.read_signal() {
                ctx.exit.request(ExitReason::Signal(info.ssi_signo as i32));
            }
        }
        if let Some(reason) = ctx.exit.reason() {
            serial.lock().unwrap_or_else(|p| p.into_inner()).flush_output();
            event_loop.flush_devices();
            let memory = if measure { memory_report::measure(&mem).ok() } else { None };
            // The vCPU threads may still be inside KVM_RUN: the process exit
            // that follows ends them; the VM and memory go with it.
            std::mem::forget(vm);
            std::mem::forget(mem);
            std::mem::forget(event_loop);
            return Ok(Ended { reason, memory });
        }
    }
}
