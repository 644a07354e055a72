//! The Intel MultiProcessor table: how guests without ACPI (or built without
//! it) find their CPUs, the IOAPIC and the ISA interrupt wiring.
//!
//! Layout per MP spec 1.4: a 16-byte floating pointer at the start of the
//! EBDA, then the configuration table with processor, bus, IOAPIC, I/O
//! interrupt and local interrupt entries.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{EBDA_START, IOAPIC_ADDR32, IOAPIC_PINS_U8, LAPIC_ADDR32, RSDP_ADDR};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": edge, active high on ISA.
const INT_FLAGS_CONFORM: u16 = 0;
const ISA_BUS_ID: u8 = 0;

/// The IOAPIC's ID: after the CPUs' APIC IDs (0..vcpus).
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// Builds the floating pointer and table bytes for `vcpus` CPUs, to live at
/// `base` (the pointer) and `base + 16` (the table).
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let mut table = Vec::new();
    let mut entries: u16 = 0;
    for cpu in 0..vcpus {
        table.push(0); // processor entry
        table.push(cpu); // local APIC id
        table.push(APIC_VERSION);
        table.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        table.extend_from_slice(&0x0600u32.to_le_bytes()); // signature: family 6
        table.extend_from_slice(&0x0201u32.to_le_bytes()); // features: FPU, APIC
        table.extend_from_slice(&[0u8; 8]);
        entries += 1;
    }
    table.extend_from_slice(&[1, ISA_BUS_ID]);
    table.extend_from_slice(b"ISA   ");
    entries += 1;
    let ioapic = ioapic_id(vcpus);
    table.extend_from_slice(&[2, ioapic, IOAPIC_VERSION, 1]);
    table.extend_from_slice(&IOAPIC_ADDR32.to_le_bytes());
    entries += 1;
    for pin in 0..IOAPIC_PINS_U8 {
        let kind = if pin == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        table.extend_from_slice(&[3, kind]);
        table.extend_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
        table.extend_from_slice(&[ISA_BUS_ID, pin, ioapic, pin]);
        entries += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        table.extend_from_slice(&[4, kind]);
        table.extend_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
        table.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
        entries += 1;
    }

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    // `write` refuses a table that outgrows the EBDA (far below 64 KiB).
    let length = u16::try_from(44 + table.len()).unwrap_or(u16::MAX);
    header.extend_from_slice(&length.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"BULKHEAD");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&entries.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR32.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut config = header;
    config.extend_from_slice(&table);
    config[7] = checksum(&config);

    let mut pointer = Vec::with_capacity(16);
    pointer.extend_from_slice(b"_MP_");
    // `base` is in the EBDA, below 1 MiB.
    pointer.extend_from_slice(&u32::try_from(base + 16).unwrap_or(u32::MAX).to_le_bytes());
    pointer.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, rev, checksum, features
    pointer[10] = checksum(&pointer);

    let mut out = pointer;
    out.extend_from_slice(&config);
    out
}

/// Writes the MP table at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BootError> {
    let bytes = build(vcpus, EBDA_START);
    if EBDA_START + bytes.len() as u64 > RSDP_ADDR {
        return Err(BootError::Tables(format!(
            "MP table of {} bytes runs into the ACPI area",
            bytes.len()
        )));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|source| BootError::GuestMemory {
            what: "MP table",
            source,
        })
}

/// The byte that makes `bytes` sum to zero.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for vcpus in [1u8, 2, 64] {
            let b = build(vcpus, EBDA_START);
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0);
            let table = &b[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let entries = u16::from_le_bytes([table[34], table[35]]) as usize;
            assert_eq!(
                entries,
                usize::from(vcpus) + 1 + 1 + crate::layout::IOAPIC_PINS + 2
            );
            // First processor is the BSP, others are not.
            assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BSP);
            if vcpus > 1 {
                assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
            }
        }
    }

    #[test]
    fn fits_before_the_acpi_area_at_the_most_vcpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem, crate::config::MAX_VCPUS).unwrap();
    }
}
