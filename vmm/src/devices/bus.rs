//! A bus: address ranges mapped to devices. Two of them per VM (port I/O and
//! MMIO). Built before the vCPUs start and read-only afterwards, so lookups
//! need no lock; each device has its own.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range it was
/// inserted at. Both get guest-chosen sizes (1, 2, 4 or 8 bytes, but treat
/// any length as possible).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {start:#x}+{len:#x} is empty or overflows")]
    BadRange { start: u64, len: u64 },
    #[error("range {start:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { start: u64, len: u64 },
}

struct Entry {
    start: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    /// Sorted by start, non-overlapping.
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{:#x}+{:#x}", e.start, e.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = start
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { start, len })?;
        let pos = self.entries.partition_point(|e| e.start < start);
        let overlaps_prev =
            pos > 0 && self.entries[pos - 1].start + self.entries[pos - 1].len > start;
        let overlaps_next = pos < self.entries.len() && self.entries[pos].start < end;
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { start, len });
        }
        self.entries.insert(pos, Entry { start, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.start <= addr);
        let e = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - e.start;
        // The whole access must fall inside the range.
        (offset.checked_add(len as u64)? <= e.len).then_some((e, offset))
    }

    /// Reads from the device at `addr`; false (and `data` left alone) when
    /// nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                e.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                e.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5)
            .unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(a.lock().unwrap().last_write, Some((7, vec![9])));
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.read(0x3f7, &mut d));
    }

    #[test]
    fn accesses_that_straddle_the_end_miss() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 4)
            .unwrap();
        let mut d = [0xaau8; 4];
        assert!(!bus.read(0x1002, &mut d));
        assert_eq!(d, [0xaa; 4]);
        assert!(!bus.write(u64::MAX, &[1, 2]));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let dev = || -> Arc<Mutex<dyn BusDevice>> { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap {
                start: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev(), 0xf8, 9),
            Err(BusError::Overlap {
                start: 0xf8,
                len: 9
            })
        );
        assert!(bus.insert(dev(), 0xf8, 8).is_ok());
        assert!(bus.insert(dev(), 0x110, 1).is_ok());
        assert_eq!(
            bus.insert(dev(), 0x200, 0),
            Err(BusError::BadRange {
                start: 0x200,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::BadRange {
                start: u64::MAX,
                len: 2
            })
        );
    }
}
