//! A userspace IOAPIC for KVM's split irqchip (the LAPICs stay in the
//! kernel). The guest programs redirection entries over MMIO; a device
//! interrupt on a pin becomes an MSI to the LAPIC the entry names.
//!
//! Every pin is delivered edge-triggered: our devices (8250, virtio-mmio)
//! are acknowledged by reading their own status, so no remote-IRR/EOI
//! bookkeeping is needed, and a guest cannot wedge a pin by never EOIing.

use std::sync::{Arc, Mutex};

use super::BusDevice;
use crate::convert::{hi32, lo32};
use crate::layout::{IOAPIC_PINS, IOAPIC_PINS_U8};

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION_BASE: u8 = 0x10;
const VERSION: u32 = 0x11;

const ENTRY_MASKED: u64 = 1 << 16;
/// Bits the guest cannot write: delivery status (12) and remote IRR (14).
const ENTRY_READ_ONLY: u64 = (1 << 12) | (1 << 14);

/// An MSI as KVM_SIGNAL_MSI takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    pub address: u64,
    pub data: u32,
}

/// Where MSIs go: KVM in the VMM, a recorder in tests.
pub trait MsiSink: Send + Sync {
    fn send(&self, msi: Msi) -> std::io::Result<()>;
}

pub struct Ioapic {
    id: u8,
    select: u8,
    entries: [u64; IOAPIC_PINS],
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for Ioapic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioapic")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Ioapic {
    pub fn new(id: u8, sink: Arc<dyn MsiSink>) -> Self {
        Self {
            id,
            select: 0,
            entries: [ENTRY_MASKED; IOAPIC_PINS],
            sink,
        }
    }

    /// Raises `pin` once. Masked or out-of-range pins drop the interrupt.
    pub fn service_irq(&self, pin: usize) -> bool {
        let Some(entry) = self.entries.get(pin).copied() else {
            return false;
        };
        if entry & ENTRY_MASKED != 0 {
            return false;
        }
        self.sink.send(entry_to_msi(entry)).is_ok()
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => u32::from(self.id) << 24,
            REG_VERSION => ((u32::from(IOAPIC_PINS_U8) - 1) << 16) | VERSION,
            r if r >= REG_REDIRECTION_BASE => {
                let idx = usize::from(r - REG_REDIRECTION_BASE);
                match self.entries.get(idx / 2) {
                    Some(e) if idx % 2 == 0 => lo32(*e),
                    Some(e) => hi32(*e),
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.select {
            REG_ID => self.id = ((value >> 24) & 0x0f) as u8,
            r if r >= REG_REDIRECTION_BASE => {
                let idx = usize::from(r - REG_REDIRECTION_BASE);
                if let Some(e) = self.entries.get_mut(idx / 2) {
                    let written = if idx % 2 == 0 {
                        (*e & 0xffff_ffff_0000_0000) | u64::from(value)
                    } else {
                        (*e & 0x0000_0000_ffff_ffff) | (u64::from(value) << 32)
                    };
                    *e = (written & !ENTRY_READ_ONLY) | (*e & ENTRY_READ_ONLY);
                }
            }
            _ => {}
        }
    }
}

/// Redirection entry -> MSI (Intel SDM 10.11 / IOAPIC datasheet): vector,
/// delivery mode and destination carry over; the trigger is always edge.
pub fn entry_to_msi(entry: u64) -> Msi {
    let vector = (entry & 0xff) as u32;
    let delivery_mode = ((entry >> 8) & 0x7) as u32;
    let dest_mode = (entry >> 11) & 1;
    let dest = (entry >> 56) & 0xff;
    Msi {
        address: 0xfee0_0000 | (dest << 12) | (dest_mode << 2),
        data: vector | (delivery_mode << 8),
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            // The select register is the written word's low byte.
            IOREGSEL => self.select = value.to_le_bytes()[0],
            IOWIN => self.write_register(value),
            // EOI register (0x40): nothing to do for edge-only delivery.
            _ => {}
        }
    }
}

/// One IOAPIC pin that a device raises.
#[derive(Clone)]
pub struct IrqLine {
    ioapic: Arc<Mutex<Ioapic>>,
    pin: usize,
}

impl std::fmt::Debug for IrqLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IrqLine({})", self.pin)
    }
}

impl IrqLine {
    pub fn new(ioapic: Arc<Mutex<Ioapic>>, pin: u32) -> Self {
        Self {
            ioapic,
            pin: pin as usize,
        }
    }

    pub fn raise(&self) {
        self.ioapic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .service_irq(self.pin);
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.raise();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Msi>>);

    impl MsiSink for Recorder {
        fn send(&self, msi: Msi) -> std::io::Result<()> {
            self.0.lock().unwrap().push(msi);
            Ok(())
        }
    }

    fn program(io: &mut Ioapic, pin: u8, low: u32, high: u32) {
        io.write(IOREGSEL, &[REG_REDIRECTION_BASE + 2 * pin]);
        io.write(IOWIN, &low.to_le_bytes());
        io.write(IOREGSEL, &[REG_REDIRECTION_BASE + 2 * pin + 1]);
        io.write(IOWIN, &high.to_le_bytes());
    }

    #[test]
    fn masked_pins_stay_quiet_and_programmed_ones_send_msis() {
        let rec = Arc::new(Recorder::default());
        let mut io = Ioapic::new(2, rec.clone());
        assert!(!io.service_irq(4), "entries start masked");
        program(&mut io, 4, 0x31, 1 << 24); // vector 0x31, fixed, physical, dest 1
        assert!(io.service_irq(4));
        assert_eq!(
            rec.0.lock().unwrap()[0],
            Msi {
                address: 0xfee0_1000,
                data: 0x31
            }
        );
        program(&mut io, 4, 0x31 | (1 << 16), 0);
        assert!(!io.service_irq(4));
        assert!(!io.service_irq(99), "pins past the end are ignored");
    }

    #[test]
    fn id_version_and_read_only_bits() {
        let mut io = Ioapic::new(3, Arc::new(Recorder::default()));
        let mut d = [0u8; 4];
        io.write(IOREGSEL, &[REG_VERSION]);
        io.read(IOWIN, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0017_0011);
        io.write(IOREGSEL, &[REG_ID]);
        io.read(IOWIN, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 24, 3);
        // The guest cannot set delivery status or remote IRR.
        program(&mut io, 0, 0x40 | (1 << 12) | (1 << 14), 0);
        io.write(IOREGSEL, &[REG_REDIRECTION_BASE]);
        io.read(IOWIN, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x40);
        // Odd sizes and offsets do not panic.
        io.read(0x7, &mut [0u8; 3]);
        io.write(IOWIN, &[]);
        io.write(IOREGSEL, &[0xff]);
        io.read(IOWIN, &mut d);
        io.write(IOWIN, &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn logical_destination_and_delivery_mode_carry_into_the_msi() {
        let msi = entry_to_msi(0x0300_0000_0000_0000 | (1 << 11) | (0b001 << 8) | 0x55 | (1 << 15));
        assert_eq!(msi.address, 0xfee0_3004);
        assert_eq!(msi.data, 0x155, "trigger mode is dropped: always edge");
    }
}
