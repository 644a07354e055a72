//! A vCPU: boot configuration, the run loop, and exit handling as a plain
//! function that tests call without KVM.

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::{cpuid, regs};
use crate::boot::Entry;
use crate::devices::Bus;
use crate::exit::{ExitReason, ExitSignal};
use crate::timeline::{Milestone, Timeline};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: {what}")]
    Kvm {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {1}")]
    Regs(#[source] regs::RegsError, u8),
}

/// What the vCPU loop needs from the rest of the VM.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    pub io: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub timeline: Arc<Timeline>,
}

#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

impl Vcpu {
    pub fn new(fd: VcpuFd, id: u8) -> Self {
        Self { fd, id }
    }

    /// CPUID, MSRs, FPU and LINT pins for every vCPU; registers and
    /// segments for the boot vCPU only (the others wait for INIT/SIPI in the
    /// in-kernel LAPIC).
    pub fn configure(
        &self,
        mem: &GuestMemoryMmap,
        entry: &Entry,
        count: u8,
        supported: &CpuId,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let kvm = |what: &'static str| move |source| VcpuError::Kvm { id, what, source };
        let entries = cpuid::for_vcpu(supported.as_slice(), id, count);
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::Kvm {
            id,
            what: "too many CPUID entries",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        let msrs = regs::boot_msrs().map_err(|e| VcpuError::Regs(e, id))?;
        self.fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(kvm("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic.regs);
        self.fd.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        if id == 0 {
            let base = self.fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            let sregs = regs::boot_sregs(mem, entry, &base).map_err(|e| VcpuError::Regs(e, id))?;
            self.fd.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(kvm("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    /// Runs until the VM is to stop; reports why through `ctx.exit`.
    pub fn run(mut self, ctx: &VcpuContext) {
        if self.id == 0 {
            ctx.timeline.record(Milestone::KernelEntry);
        }
        loop {
            match self.fd.run() {
                Ok(exit) => {
                    if let VcpuAction::Stop(reason) = handle_exit(exit, ctx) {
                        ctx.exit.request(reason);
                        return;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    ctx.exit.request(ExitReason::Crash(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.id
                    )));
                    return;
                }
            }
            if ctx.exit.is_requested() {
                return;
            }
        }
    }
}

/// What the loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    Continue,
    Stop(ExitReason),
}

/// Handles one exit. Port and MMIO accesses go to the buses; nothing there
/// reads as all ones and swallows writes, like an empty ISA bus.
pub fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.io.read(u64::from(port), data) {
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            ctx.io.write(u64::from(port), data);
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            VcpuAction::Continue
        }
        // With the LAPIC in the kernel these are handled there; seeing one
        // is harmless.
        VcpuExit::Hlt | VcpuExit::IoapicEoi(_) | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {
            VcpuAction::Continue
        }
        VcpuExit::Shutdown => {
            VcpuAction::Stop(ExitReason::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()))
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            SYSTEM_EVENT_SHUTDOWN => VcpuAction::Stop(ExitReason::PowerOff),
            SYSTEM_EVENT_RESET => VcpuAction::Stop(ExitReason::Reset),
            SYSTEM_EVENT_CRASH => VcpuAction::Stop(ExitReason::Panic),
            other => VcpuAction::Stop(ExitReason::Crash(format!(
                "unknown KVM system event {other}"
            ))),
        },
        VcpuExit::FailEntry(reason, cpu) => VcpuAction::Stop(ExitReason::Crash(format!(
            "VM entry failed on CPU {cpu}: hardware reason {reason:#x}"
        ))),
        VcpuExit::InternalError => VcpuAction::Stop(ExitReason::Crash(
            "KVM internal error (emulation failure?)".into(),
        )),
        other => VcpuAction::Stop(ExitReason::Crash(format!("unexpected vCPU exit {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::AcpiPm;
    use std::sync::Mutex;

    fn ctx() -> VcpuContext {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut io = Bus::new();
        io.insert(
            Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
            0x600,
            3,
            "acpi-pm",
        )
        .unwrap();
        VcpuContext {
            io: Arc::new(io),
            mmio: Arc::new(Bus::new()),
            exit,
            timeline: Arc::new(Timeline::default()),
        }
    }

    #[test]
    fn unclaimed_reads_are_all_ones() {
        let c = ctx();
        let mut d = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x1234, &mut d), &c),
            VcpuAction::Continue
        );
        assert_eq!(d, [0xff; 4]);
        let mut d = [0u8; 8];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xdead_0000, &mut d), &c),
            VcpuAction::Continue
        );
        assert_eq!(d, [0xff; 8]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xdead_0000, &[1, 2]), &c),
            VcpuAction::Continue
        );
    }

    #[test]
    fn port_writes_reach_devices_that_can_stop_the_vm() {
        let c = ctx();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x600, &[(5 << 2) | (1 << 5)]), &c),
            VcpuAction::Continue
        );
        assert_eq!(c.exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn fatal_exits_stop_with_a_crash_reason() {
        let c = ctx();
        assert!(matches!(
            handle_exit(VcpuExit::Shutdown, &c),
            VcpuAction::Stop(ExitReason::Crash(_))
        ));
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &c),
            VcpuAction::Stop(ExitReason::Crash(_))
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &c),
            VcpuAction::Stop(ExitReason::Crash(_))
        ));
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]), &c),
            VcpuAction::Stop(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH, &[]), &c),
            VcpuAction::Stop(ExitReason::Panic)
        );
    }
}
