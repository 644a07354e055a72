//! Small port-I/O devices: the i8042 reset line, the hardware-reduced ACPI
//! sleep/reset registers, pvpanic, and the boot-stage port.

use std::sync::Arc;

use vm_superio::I8042Device;

use super::BusDevice;
use crate::exit::{ExitReason, ExitSignal};
use crate::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE};
use crate::timeline::{Milestone, Timeline};

/// Ends the VM with a reset when the i8042 is told to pulse the reset line.
#[derive(Debug, Clone)]
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The keyboard controller, only for `reboot=k` (0xfe to port 0x64).
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("I8042")
    }
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset)
            .map(|o| self.inner.read(o))
            .unwrap_or(0xff);
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(o), Some(v)) = (u8::try_from(offset), data.first()) {
            let _ = self.inner.write(o, *v);
        }
    }
}

/// Hardware-reduced ACPI: sleep control (offset 0), sleep status (1) and
/// the reset register (2).
#[derive(Debug)]
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    pub const SLEEP_CONTROL: u64 = 0;
    pub const SLEEP_STATUS: u64 = 1;
    pub const RESET: u64 = 2;
    /// SLP_EN in the sleep control register.
    const SLEEP_ENABLE: u8 = 1 << 5;

    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            Self::SLEEP_CONTROL
                if v & Self::SLEEP_ENABLE != 0 && (v >> 2) & 0x7 == ACPI_S5_SLEEP_TYPE =>
            {
                self.exit.request(ExitReason::PowerOff)
            }
            Self::RESET if v == ACPI_RESET_VALUE => self.exit.request(ExitReason::Reset),
            _ => {}
        }
    }
}

/// pvpanic: reads give the events we understand; a write with either bit
/// set means the guest kernel panicked (or is about to kdump).
#[derive(Debug)]
pub struct PvPanic {
    exit: Arc<ExitSignal>,
}

impl PvPanic {
    const PANICKED: u8 = 1 << 0;
    const CRASH_LOADED: u8 = 1 << 1;

    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = Self::PANICKED | Self::CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data
            .first()
            .is_some_and(|v| v & (Self::PANICKED | Self::CRASH_LOADED) != 0)
        {
            self.exit.request(ExitReason::Panic);
        }
    }
}

/// The boot-stage port: each byte the guest writes is a code, timestamped.
#[derive(Debug)]
pub struct BootStagePort {
    timeline: Arc<Timeline>,
}

impl BootStagePort {
    pub fn new(timeline: Arc<Timeline>) -> Self {
        Self { timeline }
    }
}

impl BusDevice for BootStagePort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.timeline.record(Milestone::Guest(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit() -> Arc<ExitSignal> {
        Arc::new(ExitSignal::new().unwrap())
    }

    #[test]
    fn acpi_sleep_s5_powers_off_other_values_do_not() {
        let e = exit();
        let mut pm = AcpiPm::new(e.clone());
        pm.write(AcpiPm::SLEEP_CONTROL, &[ACPI_S5_SLEEP_TYPE << 2]); // no SLP_EN
        pm.write(AcpiPm::SLEEP_CONTROL, &[(3 << 2) | (1 << 5)]); // S3: not supported
        pm.write(AcpiPm::RESET, &[0x7]);
        pm.write(AcpiPm::SLEEP_CONTROL, &[]);
        assert_eq!(e.reason(), None);
        pm.write(
            AcpiPm::SLEEP_CONTROL,
            &[(ACPI_S5_SLEEP_TYPE << 2) | (1 << 5)],
        );
        assert_eq!(e.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn acpi_reset_register_resets() {
        let e = exit();
        AcpiPm::new(e.clone()).write(AcpiPm::RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(e.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn i8042_reset_command() {
        let e = exit();
        let mut kbd = I8042::new(e.clone());
        kbd.write(4, &[0x01]);
        kbd.write(0, &[0xfe]);
        assert_eq!(e.reason(), None);
        kbd.write(4, &[0xfe]);
        assert_eq!(e.reason(), Some(ExitReason::Reset));
        kbd.write(1000, &[0xfe]);
    }

    #[test]
    fn pvpanic_reports_capabilities_and_panics() {
        let e = exit();
        let mut p = PvPanic::new(e.clone());
        let mut d = [0u8; 1];
        p.read(0, &mut d);
        assert_eq!(d[0], 3);
        p.write(0, &[0]);
        assert_eq!(e.reason(), None);
        p.write(0, &[1]);
        assert_eq!(e.reason(), Some(ExitReason::Panic));
    }
}
