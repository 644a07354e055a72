//! virtio devices on the virtio-mmio transport (version 2, "modern").
//!
//! [`mmio::MmioTransport`] owns the register interface and the queues until
//! the driver sets DRIVER_OK; then it hands them to the device
//! ([`VirtioDevice::activate`]). Queue notifications run the device's queue
//! handling on the notifying vCPU's thread; host-side events (sockets, TAP)
//! come from the event loop. Both reach the device through its transport's
//! mutex.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::ioapic::IrqLine;

/// VIRTIO_F_VERSION_1: every device offers it (modern transport only).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// The interrupt status register's bits and the line behind them.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: IrqLine,
}

impl VirtioInterrupt {
    pub const USED_BUFFER: u32 = 1;
    pub const CONFIG_CHANGE: u32 = 2;

    pub fn new(irq: IrqLine) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used(&self) {
        self.status.fetch_or(Self::USED_BUFFER, Ordering::SeqCst);
        self.irq.raise();
    }

    pub fn signal_config(&self) {
        self.status.fetch_or(Self::CONFIG_CHANGE, Ordering::SeqCst);
        self.irq.raise();
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// One per [`VirtioDevice::queue_max_sizes`] entry, validated.
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// Features the driver acknowledged (a subset of the offered ones).
    pub features: u64,
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("queues", &self.queues.len())
            .field("features", &self.features)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{0}")]
    Device(String),
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Device config space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Config space writes; ignored unless a device has writable fields.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (already checked to exist).
    fn queue_notify(&mut self, index: usize);
    /// Back to the state before activation (the driver wrote status 0).
    fn reset(&mut self);
    /// A file descriptor the device registered became ready (`events`:
    /// epoll bits). Runs on the event loop thread.
    fn host_event(&mut self, _token: u32, _events: u32) {}
    /// Hands over what the device still holds for the host (VM exit).
    fn flush_host(&mut self) {}
}

/// Hands every available chain of queue `index` to `handle`, which returns
/// how many bytes it wrote into the chain, and puts each on the used ring.
/// Re-checks once after re-enabling notifications, so with EVENT_IDX a chain
/// that raced in is not left behind; interrupts the guest once, if it wants
/// one.
///
/// The avail index is guest-written: when it claims chains that cannot be
/// popped (an index far ahead of ours), "more available" stays true forever.
/// A round that pops nothing after such a claim ends the loop, so a broken
/// ring costs one extra look, not a spinning vCPU.
pub fn drain_queue(
    a: &mut Activation,
    index: usize,
    mut handle: impl FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
) {
    let Activation {
        mem,
        queues,
        interrupt,
        ..
    } = a;
    let mem: &GuestMemoryMmap = mem;
    let Some(q) = queues.get_mut(index) else {
        return;
    };
    let mut used_any = false;
    let mut empty_rounds = 0;
    loop {
        let mut popped = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = handle(mem, chain);
            // A used ring the guest made unwritable: nothing more to do.
            if q.add_used(mem, head, len).is_err() {
                return;
            }
            used_any = true;
            popped = true;
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        match q.enable_notification(mem) {
            Ok(true) if empty_rounds < 2 => continue,
            _ => break,
        }
    }
    if used_any && q.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used();
    }
}

/// Copies `config[offset..]` into `data`, zero where out of range.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn a_bogus_avail_index_does_not_spin() {
        // Found by the mmio_program fuzzer: avail.idx far ahead of the
        // device made "more available" true forever while nothing could be
        // popped.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let q: Queue = vq.create_queue().unwrap();
        mem.write_obj(0x8000u16, GuestAddress(vq.avail_addr().0 + 2))
            .unwrap();
        let (interrupt, _) = mmio::tests::interrupt();
        let mut a = Activation {
            mem: mem.clone(),
            queues: vec![q],
            interrupt,
            features: VIRTIO_F_VERSION_1,
        };
        let mut calls = 0;
        drain_queue(&mut a, 0, |_, _| {
            calls += 1;
            0
        });
        assert_eq!(calls, 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
