//! virtio-vsock (device type 19) with a Unix-socket host side; see
//! [`muxer`] for the host protocol and [`packet`] for the wire format.
//!
//! Queues: 0 rx (host -> guest), 1 tx (guest -> host), 2 event (unused).
//! Guest packets are parsed into a bounded buffer ([`packet::MAX_PAYLOAD`]);
//! a malformed one is dropped (or resets its connection), never more.

pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::path::Path;

use nix::sys::epoll::EpollFlags;
use virtio_queue::QueueT;

use self::muxer::Muxer;
use self::packet::{Header, HEADER_LEN, MAX_PAYLOAD};
use super::{drain_queue, ActivateError, Activation, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1};
use crate::event_loop::Registry;

const QUEUE_SIZES: [u16; 3] = [256, 256, 64];
const RX: usize = 0;
const TX: usize = 1;

#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Activation>,
    /// One packet's payload, reused.
    buf: Vec<u8>,
}

impl Vsock {
    pub fn new(cid: u64, uds_path: &Path, registry: Registry) -> std::io::Result<Self> {
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, uds_path, registry)?,
            active: None,
            buf: vec![0u8; MAX_PAYLOAD as usize],
        })
    }

    fn process_tx(&mut self) {
        let Self {
            muxer, active, buf, ..
        } = self;
        let Some(a) = active else { return };
        drain_queue(a, TX, |mem, chain| {
            let Ok(mut reader) = chain.reader(mem) else {
                return 0;
            };
            let mut raw = [0u8; HEADER_LEN];
            if reader.read_exact(&mut raw).is_err() {
                return 0;
            }
            if let Ok(h) = Header::parse(&raw) {
                // Read no more than the bounded buffer; a length past it or
                // past the chain fails the packet's checks.
                let want = (h.len as usize).min(buf.len());
                let got = read_up_to(&mut reader, &mut buf[..want]);
                muxer.from_guest(&h, &buf[..got]);
            }
            0
        });
    }

    fn process_rx(&mut self) {
        let Some(a) = &mut self.active else { return };
        let mem = &a.mem;
        let mut used_any = false;
        while self.muxer.has_work() {
            let Some(chain) = a.queues[RX].pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(mem) else {
                if a.queues[RX].add_used(mem, head, 0).is_err() {
                    break;
                }
                used_any = true;
                continue;
            };
            let Some(room) = writer.available_bytes().checked_sub(HEADER_LEN) else {
                // A buffer too small for a header is useless: give it back empty.
                if a.queues[RX].add_used(mem, head, 0).is_err() {
                    break;
                }
                used_any = true;
                continue;
            };
            let room = room.min(self.buf.len());
            let Some((h, n)) = self.muxer.to_guest(&mut self.buf[..room]) else {
                // Nothing after all: put the buffer back for next time.
                let q = &mut a.queues[RX];
                q.set_next_avail(q.next_avail().wrapping_sub(1));
                break;
            };
            let written = writer
                .write_all(&h.to_bytes())
                .and_then(|_| writer.write_all(&self.buf[..n]));
            let len = if written.is_ok() {
                crate::convert::len_u32(HEADER_LEN + n)
            } else {
                0
            };
            if a.queues[RX].add_used(mem, head, len).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any {
            a.interrupt.signal_used();
        }
    }
}

/// Reads until `buf` is full or the reader is empty; returns the count.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation);
        self.process_rx();
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        if index == TX {
            self.process_tx();
        }
        self.process_rx();
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset_all();
    }

    fn host_event(&mut self, token: u32, events: u32) {
        let ev = EpollFlags::from_bits_truncate(i32::from_ne_bytes(events.to_ne_bytes()));
        let readable = ev.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLHUP
                | EpollFlags::EPOLLERR,
        );
        let writable = ev.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR);
        self.muxer.host_event(token, readable, writable);
        self.process_rx();
    }

    fn flush_host(&mut self) {
        self.muxer.flush_host();
    }
}
