//! Running a built VM: one thread per vCPU, the main thread waits for the
//! end (a device, a vCPU or a signal), flushes what devices hold for the
//! host, and reports why the VM stopped.

use std::os::fd::AsRawFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::builder::BuiltVm;
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

    let BuiltVm { vm, mem, vcpus, ctx, serial } = vm;
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let ctx = ctx.clone();
        std::thread::Builder::new().name(format!("vcpu{i}")).spawn(move || vcpu.run(&ctx))?;
    }

    let exit_fd = ctx.exit.eventfd().as_raw_fd();
    let sig_fd = signals.as_raw_fd();
    loop {
        let mut fds = [libc::pollfd { fd: exit_fd, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: sig_fd, events: libc::POLLIN, revents: 0 }];
        // SAFETY: `fds` is a valid array of two pollfd structs that lives
        // across the call; poll only writes their `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            if let Ok(Some(info)) = signals.read_signal() {
                ctx.exit.request(ExitReason::Signal(info.ssi_signo as i32));
            }
        }
        if let Some(reason) = ctx.exit.reason() {
            serial.lock().unwrap_or_else(|p| p.into_inner()).flush_output();
            let memory = if measure { memory_report::measure(&mem).ok() } else { None };
            // The vCPU threads may still be inside KVM_RUN: the process exit
            // that follows ends them; the VM and memory go with it.
            std::mem::forget(vm);
            std::mem::forget(mem);
            return Ok(Ended { reason, memory });
        }
    }
}
