//! Boot state of the vCPUs: segments, control registers and page tables for
//! the entry protocol, general registers, FPU, MSRs, LAPIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::Entry;
use crate::layout::{GDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot tables into guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("building the MSR list: {0}")]
    Msrs(String),
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Stack for the 64-bit entry (below the zero page, unused by anything else).
const BOOT_STACK: u64 = 0x8ff0;

/// A GDT descriptor from (flags, base, limit), the form the SDM tables use.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The bits of `entry` above `shift` under `mask` (a descriptor field of
/// at most 8 bits).
fn field(entry: u64, shift: u32, mask: u64) -> u8 {
    u8::try_from((entry >> shift) & mask).unwrap_or(u8::MAX)
}

/// The segment register a descriptor loads as.
fn segment(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = u32::try_from((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)).unwrap_or(0);
    let g = field(entry, 55, 1);
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(index) * 8,
        type_: field(entry, 40, 0xf),
        present: field(entry, 47, 1),
        dpl: field(entry, 45, 3),
        db: field(entry, 54, 1),
        s: field(entry, 44, 1),
        l: field(entry, 53, 1),
        g,
        avl: field(entry, 52, 1),
        unusable: 0,
        padding: 0,
    }
}

/// GDT: null, code (32-bit for PVH, 64-bit otherwise), data, TSS.
fn gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        gdt_entry(0xa09b, 0, 0xfffff)
    } else {
        gdt_entry(0xc09b, 0, 0xfffff)
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Segments, control registers and (for the 64-bit entry) identity page
/// tables for the first GiB. Writes the GDT and tables into `mem`.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    entry: &Entry,
    base: &kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let long_mode = matches!(entry, Entry::Linux64 { .. });
    let table = gdt(long_mode);
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    let mut s = *base;
    s.gdt.base = GDT_ADDR;
    // The limit is the table's last byte (four 8-byte entries).
    s.gdt.limit = u16::try_from(table.len() * 8 - 1).unwrap_or(u16::MAX);
    s.idt.base = 0;
    s.idt.limit = 0;
    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(table[3], 3);
    if long_mode {
        // PML4[0] -> PDPT, PDPT[0] -> PD, PD: 512 x 2 MiB pages.
        mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
        mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))?;
        let pd: Vec<u8> = (0u64..512)
            .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
            .collect();
        mem.write_slice(&pd, GuestAddress(PD_ADDR))?;
        s.cr3 = PML4_ADDR;
        s.cr4 |= X86_CR4_PAE;
        s.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
        s.efer |= EFER_LME | EFER_LMA;
    } else {
        s.cr0 = X86_CR0_PE | X86_CR0_ET;
        s.cr4 = 0;
        s.efer = 0;
    }
    Ok(s)
}

/// General registers at the entry point.
pub fn boot_regs(entry: &Entry) -> kvm_regs {
    match entry {
        Entry::Pvh(addr) => kvm_regs {
            rip: addr.0,
            rbx: PVH_INFO_ADDR,
            rflags: 0x2,
            ..Default::default()
        },
        Entry::Linux64 { entry, .. } => kvm_regs {
            rip: entry.0,
            rsi: ZERO_PAGE_ADDR,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it guest memory is
/// uncached and the guest crawls.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

pub fn boot_msrs() -> Result<Msrs, RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(|e| RegsError::Msrs(format!("{e:?}")))
}

/// LAPIC LVT0 as ExtINT and LVT1 as NMI, in a `kvm_lapic_state` register page.
pub fn set_lint(regs: &mut [std::os::raw::c_char; 1024]) {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7 << 8;
    const DELIVERY_NMI: u32 = 0x4 << 8;
    for (off, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i].to_ne_bytes()[0];
        }
        let v = (u32::from_le_bytes(b) & !0x700) | mode;
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = std::os::raw::c_char::from_ne_bytes([*x]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_the_sdm_gives() {
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (
                code64.l,
                code64.db,
                code64.g,
                code64.present,
                code64.type_,
                code64.s
            ),
            (1, 0, 1, 1, 0xb, 1)
        );
        assert_eq!(code64.limit, 0xffff_ffff);
        assert_eq!(code64.selector, 8);
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment(gdt_entry(0x808b, 0, 0xfffff), 3);
        assert_eq!((tss.type_, tss.s, tss.selector), (0xb, 0, 24));
        assert_eq!(gdt_entry(0xc093, 0x1234_5678, 0xfffff) >> 56, 0x12);
    }

    #[test]
    fn long_mode_gets_identity_tables_and_pvh_does_not() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let lm = Entry::Linux64 {
            entry: GuestAddress(0x100_0000),
            header: None,
        };
        let s = boot_sregs(&mem, &lm, &kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_ADDR + 8 * 511))
                .unwrap(),
            (511 << 21) | 0x83
        );
        let pvh = boot_sregs(
            &mem,
            &Entry::Pvh(GuestAddress(0x100_0000)),
            &kvm_sregs::default(),
        )
        .unwrap();
        assert_eq!((pvh.cr0 & X86_CR0_PG, pvh.efer, pvh.cs.db), (0, 0, 1));
        assert_eq!(
            boot_regs(&Entry::Pvh(GuestAddress(0x1234))).rbx,
            PVH_INFO_ADDR
        );
        assert_eq!(boot_regs(&lm).rsi, ZERO_PAGE_ADDR);
    }

    #[test]
    fn lint_pins_are_set_and_other_bits_kept() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x10u8.cast_signed(); // a vector bit to keep
        regs[0x351] = 0x01; // delivery mode bits to replace
        set_lint(&mut regs);
        assert_eq!(
            (regs[0x350].cast_unsigned(), regs[0x351].cast_unsigned()),
            (0x10, 0x07)
        );
        assert_eq!(regs[0x361].cast_unsigned(), 0x04);
    }
}
