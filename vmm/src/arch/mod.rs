//! x86_64 vCPU state: CPUID, registers, MSRs, FPU and LAPIC at boot.

pub mod cpuid;
pub mod regs;
