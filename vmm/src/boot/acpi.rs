//! ACPI tables: RSDP -> XSDT -> {FADT -> DSDT, MADT}.
//!
//! Hardware-reduced ACPI: no PM1 blocks or GPEs, power-off through the FADT's
//! sleep control register and reboot through its reset register (both I/O
//! ports the VMM serves). The MADT lists the CPUs and the IOAPIC; the DSDT
//! describes COM1, the pvpanic device, the virtio-mmio devices and the S5
//! sleep type.
//!
//! virtio-mmio devices are declared here rather than with
//! `virtio_mmio.device=` on the command line: with a split irqchip there is
//! no legacy PIC, so Linux preallocates no ISA IRQ descriptors and a raw IRQ
//! number from the command line fails `request_irq` (-EINVAL). Declared in
//! ACPI, each interrupt goes through the GSI mapping and just works.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{
    ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_TABLES_END, IOAPIC_ADDR32, IRQ_SERIAL, LAPIC_ADDR32,
    PORT_ACPI_RESET, PORT_ACPI_SLEEP_CONTROL, PORT_ACPI_SLEEP_STATUS, PORT_COM1, PORT_PVPANIC,
    RSDP_ADDR,
};

const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;

/// IA-PC boot architecture flags: no VGA, no MSI (no PCI), no ASPM, no CMOS
/// RTC (the clock comes from kvmclock).
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_MSI: u16 = 1 << 3;
const IAPC_NO_ASPM: u16 = 1 << 4;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// A virtio-mmio device as the DSDT declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// The tables as bytes, each with the address it is written at.
pub fn build(
    vcpus: u8,
    ioapic_id: u8,
    virtio: &[MmioDevice],
) -> Result<Vec<(u64, Vec<u8>)>, BootError> {
    let mut next = RSDP_ADDR + Rsdp::len() as u64;
    let mut place = |len: usize| {
        let addr = (next + 7) & !7;
        next = addr + len as u64;
        addr
    };

    let dsdt = dsdt(virtio)?;
    let dsdt_addr = place(dsdt.len());

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_ASPM | IAPC_NO_CMOS_RTC).into();
    fadt.sleep_control_reg = io_register(PORT_ACPI_SLEEP_CONTROL);
    fadt.sleep_status_reg = io_register(PORT_ACPI_SLEEP_STATUS);
    fadt.reset_reg = io_register(PORT_ACPI_RESET);
    fadt.reset_value = ACPI_RESET_VALUE;
    let fadt = bytes_of(&fadt.finalize());
    let fadt_addr = place(fadt.len());

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR32),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id, IOAPIC_ADDR32, 0));
    let madt = bytes_of(&madt);
    let madt_addr = place(madt.len());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    let xsdt_addr = place(xsdt.len());

    if next > ACPI_TABLES_END {
        return Err(BootError::Tables(format!(
            "ACPI tables end at {next:#x}, past {ACPI_TABLES_END:#x}"
        )));
    }
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (RSDP_ADDR, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Writes the tables into guest memory.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    ioapic_id: u8,
    virtio: &[MmioDevice],
) -> Result<(), BootError> {
    for (addr, bytes) in build(vcpus, ioapic_id, virtio)? {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| BootError::GuestMemory {
                what: "ACPI tables",
                source,
            })?;
    }
    Ok(())
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn dsdt(virtio: &[MmioDevice]) -> Result<Vec<u8>, BootError> {
    let mut body = Vec::new();
    // \_S5: the SLP_TYP the guest writes to the sleep control register.
    let s5_type = ACPI_S5_SLEEP_TYPE;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_type, &0u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);

    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_io = aml::IO::new(PORT_COM1, PORT_COM1, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, IRQ_SERIAL);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);

    // pvpanic: the guest writes 1 to the port when it panics.
    let pvpanic_hid: &'static str = "QEMU0001";
    let pvpanic_io = aml::IO::new(PORT_PVPANIC, PORT_PVPANIC, 1, 1);
    let pvpanic_crs = aml::ResourceTemplate::new(vec![&pvpanic_io]);
    aml::Device::new(
        "_SB_.PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &pvpanic_hid),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &pvpanic_crs),
        ],
    )
    .to_aml_bytes(&mut body);

    for (i, d) in virtio.iter().enumerate() {
        let (Ok(base), Ok(size), Ok(uid)) = (
            u32::try_from(d.base),
            u32::try_from(d.size),
            u32::try_from(i),
        ) else {
            return Err(BootError::Tables(format!(
                "virtio-mmio window {:#x}+{:#x} is not below 4 GiB",
                d.base, d.size
            )));
        };
        if i > 0xfff {
            return Err(BootError::Tables(
                "too many virtio-mmio devices for ACPI names".into(),
            ));
        }
        let hid: &'static str = "LNRO0005";
        let window = aml::Memory32Fixed::new(true, base, size);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        aml::Device::new(
            format!("_SB_.V{i:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }

    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn tables_checksum_and_point_at_each_other() {
        let tables = build(2, 2, &[]).unwrap();
        let find = |sig: &[u8]| {
            tables
                .iter()
                .find(|(_, b)| &b[..sig.len()] == sig)
                .unwrap()
                .clone()
        };
        let (_, rsdp) = find(b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(&rsdp));
        let (xsdt_addr, xsdt) = find(b"XSDT");
        assert_eq!(
            u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
            xsdt_addr
        );
        for sig in [&b"XSDT"[..], b"FACP", b"APIC", b"DSDT"] {
            let (_, t) = find(sig);
            assert!(sums_to_zero(&t), "{}", String::from_utf8_lossy(sig));
            assert_eq!(
                u32_at(&t, 4) as usize,
                t.len(),
                "{}",
                String::from_utf8_lossy(sig)
            );
        }
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (fadt_addr, fadt) = find(b"FACP");
        let (madt_addr, madt) = find(b"APIC");
        assert_eq!(entries, vec![fadt_addr, madt_addr]);
        let (dsdt_addr, _) = find(b"DSDT");
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            dsdt_addr
        ); // X_DSDT
        assert_ne!(u32_at(&fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        // MADT: header (44) + 2 LAPICs (8 each) + IOAPIC (12).
        assert_eq!(madt.len(), 44 + 16 + 12);
        for (addr, b) in &tables {
            assert!(*addr >= RSDP_ADDR && addr + b.len() as u64 <= ACPI_TABLES_END);
        }
    }

    #[test]
    fn dsdt_names_the_devices_and_s5() {
        let virtio = [
            MmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let d = dsdt(&virtio).unwrap();
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_") && has(b"COM1") && has(b"PEVT") && has(b"QEMU0001"));
        assert!(has(b"V000") && has(b"V001") && has(b"LNRO0005"));
        // Memory32Fixed descriptor (0x86) with the second window's base.
        assert!(has(&[0x86, 9, 0, 1, 0x00, 0x10, 0x00, 0xd0]));
        assert!(dsdt(&[MmioDevice {
            base: 1 << 32,
            size: 0x1000,
            irq: 5
        }])
        .is_err());
    }

    #[test]
    fn the_most_vcpus_fit() {
        let virtio: Vec<MmioDevice> = (0..10)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5,
            })
            .collect();
        build(crate::config::MAX_VCPUS, crate::config::MAX_VCPUS, &virtio).unwrap();
    }
}
