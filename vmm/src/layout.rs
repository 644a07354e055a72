//! The guest's physical address map and port map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (PVH and 64-bit entry)
//! 0x0000_6000  PVH start_info, module list, memory map
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_9000  identity page tables for the 64-bit entry (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA; reserved in the E820 map up to 1 MiB)
//! 0x000e_0000  ACPI: RSDP, then XSDT, FADT, DSDT, MADT
//! 0x0010_0000  high memory: kernel, then initrd at the top of low memory
//! 0xc000_0000  32-bit MMIO hole up to 4 GiB: virtio-mmio, IOAPIC, LAPIC
//! 4 GiB        the rest of guest memory
//! ```

/// GDT for the boot vCPU state.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`, then its module list and memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Linux boot protocol zero page.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Identity page tables for the 64-bit Linux entry.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line, and its largest size (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel scans for the RSDP (and where the ACPI tables go).
pub const RSDP_ADDR: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// First byte of high memory.
pub const HIMEM_START: u64 = 0x10_0000;
/// Guest memory below 4 GiB stops here; the MMIO hole follows.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;

/// virtio-mmio device windows: one 4 KiB window each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// `addr` for a table field of 32 bits (MP table, MADT, boot params): the
/// constants below are checked when they are compiled.
#[allow(clippy::cast_possible_truncation)] // checked just before
const fn below_4g(addr: u64) -> u32 {
    assert!(addr < FOUR_GIB, "a 32-bit field cannot hold this address");
    addr as u32
}
pub const IOAPIC_ADDR32: u32 = below_4g(IOAPIC_ADDR);
pub const LAPIC_ADDR32: u32 = below_4g(LAPIC_ADDR);
pub const CMDLINE_ADDR32: u32 = below_4g(CMDLINE_ADDR);

/// IOAPIC pins.
pub const IOAPIC_PINS: usize = 24;
/// The same, as the MP table and the IOAPIC's version register count them.
pub const IOAPIC_PINS_U8: u8 = 24;
const _: () = assert!(IOAPIC_PINS == IOAPIC_PINS_U8 as usize);
pub const IRQ_SERIAL: u32 = 4;
/// virtio devices take ISA IRQs (edge-triggered, active high by default in
/// both the MP table and ACPI): 5 to 15, except 8 (RTC).
pub const VIRTIO_IRQS: [u32; 10] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15];

/// I/O ports.
pub const PORT_COM1: u16 = 0x3f8;
pub const PORT_I8042: u16 = 0x60;
/// Hardware-reduced ACPI: sleep control, sleep status and reset registers.
pub const PORT_ACPI_SLEEP_CONTROL: u16 = 0x600;
pub const PORT_ACPI_SLEEP_STATUS: u16 = 0x601;
pub const PORT_ACPI_RESET: u16 = 0x602;
/// The value written to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP for S5 (soft off), as the DSDT's `_S5` package says.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// pvpanic (QEMU's ISA port, `QEMU0001` in the DSDT).
pub const PORT_PVPANIC: u16 = 0x505;

/// The guest's RAM ranges for `mem_bytes` of memory: below the MMIO hole,
/// then above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FOUR_GIB, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (FOUR_GIB, 1 << 30)]
        );
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (GDT_ADDR, 0x100),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MODLIST_ADDR, 0x40),
            (PVH_MEMMAP_ADDR, 0xf80),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x1000),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
            (EBDA_START, RSDP_ADDR - EBDA_START),
            (RSDP_ADDR, ACPI_TABLES_END - RSDP_ADDR),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
