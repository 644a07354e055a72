//! virtio-rng: fills the guest's buffers from the host's getrandom(2), so
//! the guest's CRNG is seeded at boot without waiting for entropy.

use std::io::Write;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::{drain_queue, ActivateError, Activation, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};

const QUEUE_SIZE: u16 = 64;
/// Most bytes served per request; a guest asking for gigabytes gets this much.
const MAX_PER_REQUEST: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Rng {
    active: Option<Activation>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }

    fn process_queue(&mut self) {
        if let Some(a) = &mut self.active {
            drain_queue(a, 0, fill_random);
        }
    }
}

/// Fills the chain's writable part (up to [`MAX_PER_REQUEST`]); returns the
/// bytes written.
fn fill_random(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    let Ok(mut w) = chain.writer(mem) else {
        return 0;
    };
    let want = w.available_bytes().min(MAX_PER_REQUEST);
    let mut buf = [0u8; 4096];
    let mut written = 0usize;
    while written < want {
        let n = (want - written).min(buf.len());
        if getrandom(&mut buf[..n]).is_err() || w.write_all(&buf[..n]).is_err() {
            break;
        }
        written += n;
    }
    crate::convert::len_u32(written)
}

/// Fills `buf` from the host's getrandom(2).
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which is valid for writes for the duration of the call.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n.unsigned_abs(); // n >= 0 here
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation);
        Ok(())
    }
    fn queue_notify(&mut self, _index: usize) {
        self.process_queue();
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers_and_caps_huge_requests() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(0x8000, 256, 2, 0))],
            0,
        )
        .unwrap();
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x1_0000, 0xf_0000, 2, 0,
            ))],
            1,
        )
        .unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let (interrupt, counter) = crate::devices::virtio::mmio::tests::interrupt();
        let mut rng = Rng::new();
        rng.activate(Activation {
            mem: m.clone(),
            queues: vec![q],
            interrupt,
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        rng.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 2);
        let mut first = [0u8; 256];
        m.read_slice(&mut first, GuestAddress(0x8000)).unwrap();
        assert!(first.iter().any(|b| *b != 0));
        let used = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!(used.len(), u32::try_from(MAX_PER_REQUEST).unwrap());
        assert_eq!(*counter.0.lock().unwrap(), 1);
    }
}
