//! A bus: address ranges mapped to devices. Two of them per VM (port I/O and
//! MMIO). Built before the vCPUs start and read-only afterwards, so lookups
//! need no lock; each device has its own. Every access is a VM exit to us:
//! each range counts its reads and writes (relaxed atomics, a tally and
//! not a clock), so a boot shows where its exits went.

use std::sync::atomic::{AtomicU64, Ordering};
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
    name: &'static str,
    device: Arc<Mutex<dyn BusDevice>>,
    reads: AtomicU64,
    writes: AtomicU64,
}

#[derive(Default)]
pub struct Bus {
    /// Sorted by start, non-overlapping.
    entries: Vec<Entry>,
    /// Accesses where no device is.
    unclaimed_reads: AtomicU64,
    unclaimed_writes: AtomicU64,
}

/// Reads and writes that went to the devices of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCount {
    pub device: &'static str,
    pub reads: u64,
    pub writes: u64,
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

    /// Puts `device` at `start..start+len`; `name` is what its accesses
    /// are counted under (devices of one kind may share it).
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
        name: &'static str,
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
        self.entries.insert(
            pos,
            Entry {
                start,
                len,
                name,
                device,
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            },
        );
        Ok(())
    }

    /// Accesses so far by device name (in address order of each name's
    /// first range), then `unclaimed`; names with none are left out.
    pub fn access_counts(&self) -> Vec<AccessCount> {
        let mut out: Vec<AccessCount> = Vec::new();
        let ranges = self.entries.iter().map(|e| {
            (
                e.name,
                e.reads.load(Ordering::Relaxed),
                e.writes.load(Ordering::Relaxed),
            )
        });
        let unclaimed = (
            "unclaimed",
            self.unclaimed_reads.load(Ordering::Relaxed),
            self.unclaimed_writes.load(Ordering::Relaxed),
        );
        for (device, reads, writes) in ranges.chain(std::iter::once(unclaimed)) {
            match out.iter_mut().find(|c| c.device == device) {
                Some(c) => {
                    c.reads += reads;
                    c.writes += writes;
                }
                None => out.push(AccessCount {
                    device,
                    reads,
                    writes,
                }),
            }
        }
        out.retain(|c| c.reads + c.writes > 0);
        out
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
                e.reads.fetch_add(1, Ordering::Relaxed);
                e.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                self.unclaimed_reads.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                e.writes.fetch_add(1, Ordering::Relaxed);
                e.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                self.unclaimed_writes.fetch_add(1, Ordering::Relaxed);
                false
            }
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
        bus.insert(a.clone(), 0x3f8, 8, "dev").unwrap();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5, "dev")
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
    fn accesses_are_counted_by_device_name() {
        let mut bus = Bus::new();
        let dev = || -> Arc<Mutex<dyn BusDevice>> { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(dev(), 0x3f8, 8, "serial").unwrap();
        bus.insert(dev(), 0x1000, 0x200, "virtio-blk").unwrap();
        bus.insert(dev(), 0x1200, 0x200, "virtio-blk").unwrap();
        bus.insert(dev(), 0x60, 5, "i8042").unwrap();
        let mut d = [0u8; 4];
        for _ in 0..3 {
            bus.write(0x3f8, &[1]);
        }
        bus.read(0x3fd, &mut d[..1]);
        bus.write(0x1050, &[1, 0, 0, 0]);
        bus.write(0x1250, &[1, 0, 0, 0]);
        bus.read(0x1100, &mut d);
        // Nothing there, or straddling a range's end: unclaimed.
        bus.read(0x5000, &mut d);
        bus.write(0x3fe, &[1, 2, 3]);
        let c = |device, reads, writes| AccessCount {
            device,
            reads,
            writes,
        };
        assert_eq!(
            bus.access_counts(),
            [
                c("serial", 1, 3),
                c("virtio-blk", 1, 2),
                c("unclaimed", 1, 1)
            ],
            "by name, i8042 (never touched) left out"
        );
    }

    #[test]
    fn accesses_that_straddle_the_end_miss() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 4, "dev")
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
        bus.insert(dev(), 0x100, 0x10, "dev").unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10f, 1, "dev"),
            Err(BusError::Overlap {
                start: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev(), 0xf8, 9, "dev"),
            Err(BusError::Overlap {
                start: 0xf8,
                len: 9
            })
        );
        assert!(bus.insert(dev(), 0xf8, 8, "dev").is_ok());
        assert!(bus.insert(dev(), 0x110, 1, "dev").is_ok());
        assert_eq!(
            bus.insert(dev(), 0x200, 0, "dev"),
            Err(BusError::BadRange {
                start: 0x200,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2, "dev"),
            Err(BusError::BadRange {
                start: u64::MAX,
                len: 2
            })
        );
    }
}
