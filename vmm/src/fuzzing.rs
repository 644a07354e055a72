//! Entry points of the fuzz targets (`vmm/fuzz`), kept here so the corpora
//! replay as ordinary tests (`tests/fuzz_corpus.rs`) through the same code.
//! Each takes arbitrary bytes and must never panic, hang or allocate
//! without bound.

use std::io::Write;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::ioapic::{Ioapic, IrqLine, Msi, MsiSink};
use crate::devices::virtio::block::{self, MemDisk};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::muxer::Muxer;
use crate::devices::virtio::vsock::packet::{Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::BusDevice;
use crate::event_loop::EventLoop;

const MEM_SIZE: usize = 1 << 20;
const GUEST_CID: u64 = 3;

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _: Msi) -> std::io::Result<()> {
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("1 MiB of guest memory")
}

fn interrupt() -> std::sync::Arc<VirtioInterrupt> {
    let ioapic = std::sync::Arc::new(std::sync::Mutex::new(Ioapic::new(
        0,
        std::sync::Arc::new(NoMsi),
    )));
    std::sync::Arc::new(VirtioInterrupt::new(IrqLine::new(ioapic, 5)))
}

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([
        d.get(i).copied().unwrap_or(0),
        d.get(i + 1).copied().unwrap_or(0),
    ])
}

fn u32_at(d: &[u8], i: usize) -> u32 {
    u32::from(u16_at(d, i)) | (u32::from(u16_at(d, i + 2)) << 16)
}

/// A virtio-blk request: the first byte picks the descriptor count and the
/// disk's read-only flag, then 12 bytes per descriptor (address, length,
/// flags); the rest is guest memory at 0x10000 (headers and data).
pub fn blk_request(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(first & 0x0f) + 1;
    let read_only = first & 0x10 != 0;
    let (descs, contents) = rest.split_at((count * 12).min(rest.len()));
    let mem = memory();
    let _ = mem.write_slice(
        &contents[..contents.len().min(MEM_SIZE - 0x10000)],
        GuestAddress(0x10000),
    );
    let raw: Vec<RawDescriptor> = descs
        .chunks(12)
        .map(|c| {
            // Addresses land mostly inside memory, sometimes past its end.
            let addr = u64::from(u32_at(c, 0)) % (2 * MEM_SIZE as u64);
            RawDescriptor::from(Descriptor::new(
                addr,
                u32_at(c, 4),
                u16_at(c, 8),
                u16_at(c, 10),
            ))
        })
        .collect();
    if raw.is_empty() {
        return;
    }
    let vq = MockSplitQueue::new(&mem, 16);
    let Ok(chain) = vq.build_desc_chain(&raw) else {
        return;
    };
    let mut backend = block::Backend::new(
        Box::new(MemDisk::new(vec![0u8; 64 * 1024])),
        read_only,
        "fuzz-disk",
    );
    let _ = backend.process_request(&mem, chain);
}

/// A stream of vsock packets from the guest, each a 44-byte header (with
/// the source/destination CIDs forced right when the flag byte says so,
/// to reach the deeper paths) and its payload, interleaved with reads of
/// what the host side sends back. A host listener serves port 1024.
pub fn vsock_packets(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let uds = dir.path().join("v");
    let Ok(events) = EventLoop::new() else { return };
    let Ok(mut mux) = Muxer::new(GUEST_CID, &uds, events.registry(0)) else {
        return;
    };
    let _listener = std::os::unix::net::UnixListener::bind(format!("{}_1024", uds.display()));
    let mut buf = vec![0u8; MAX_PAYLOAD as usize];
    let mut rest = data;
    while let Some((&flags, after)) = rest.split_first() {
        if after.len() < HEADER_LEN {
            break;
        }
        let Ok(mut h) = Header::parse(&after[..HEADER_LEN]) else {
            break;
        };
        if flags & 1 != 0 {
            h.src_cid = GUEST_CID;
            h.dst_cid = HOST_CID;
            h.kind = 1;
        }
        if flags & 2 != 0 {
            h.dst_port = 1024;
        }
        let body = &after[HEADER_LEN..];
        let n = (h.len as usize).min(body.len()).min(buf.len());
        mux.from_guest(&h, &body[..n]);
        rest = &body[n..];
        if flags & 4 != 0 {
            for _ in 0..4 {
                if mux.to_guest(&mut buf).is_none() {
                    break;
                }
            }
        }
    }
    while mux.to_guest(&mut buf).is_some() {}
}

/// A register program against a virtio-mmio transport: the first byte picks
/// the device (block, rng or vsock), the next 4 KiB become guest memory at
/// 0x8000 (where a program can point its queues), then 7 bytes per step:
/// read or write, offset, value. Queue notifies run the device on whatever
/// the rings hold.
pub fn mmio_program(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().ok();
    let events = EventLoop::new().ok();
    let device: Box<dyn VirtioDevice> = match which % 3 {
        0 => Box::new(block::Block::new(
            Box::new(MemDisk::new(vec![0u8; 16 * 1024])),
            which & 0x80 != 0,
            "fuzz",
        )),
        1 => Box::new(Rng::new()),
        _ => match (dir.as_ref(), events.as_ref()) {
            (Some(d), Some(e)) => match Vsock::new(GUEST_CID, &d.path().join("v"), e.registry(0)) {
                Ok(v) => Box::new(v),
                Err(_) => return,
            },
            _ => return,
        },
    };
    run_program(device, rest);
}

/// 4 KiB of guest memory at 0x8000, then the register program (7 bytes a
/// step), against `device` behind a virtio-mmio transport.
fn run_program(device: Box<dyn VirtioDevice>, rest: &[u8]) {
    let mem = memory();
    let (image, program) = rest.split_at(rest.len().min(4096));
    let _ = mem.write_slice(image, GuestAddress(0x8000));
    let mut t = MmioTransport::new(device, mem, interrupt());
    for step in program.chunks_exact(7) {
        let offset = u64::from(u16_at(step, 1) % 0x200);
        let value = u32_at(step, 3);
        if step[0] & 1 == 0 {
            t.write(offset, &value.to_le_bytes());
        } else {
            let mut out = [0u8; 4];
            t.read(offset, &mut out);
        }
    }
    let _ = std::io::sink().flush();
}

/// virtio-net driven by a hostile guest, its TAP a socketpair: the first
/// byte says how many frames (0-15) the host side holds for the guest,
/// each a little-endian u16 length (cut to 2 KiB) and its bytes; the rest
/// is memory and a register program as in [`mmio_program`]. What reaches
/// the host must be whole frames with a zeroed virtio-net header (no
/// offload was negotiated) and no longer than an Ethernet frame: anything
/// else panics, so the fuzzer finds it.
pub fn net_device(data: &[u8]) {
    use crate::devices::virtio::net::{tap::Tap, tap::VNET_HDR_LEN, Net};
    let Some((&n, mut rest)) = data.split_first() else {
        return;
    };
    let Ok((dev_end, host_end)) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    ) else {
        return;
    };
    for _ in 0..(n & 0x0f) {
        if rest.len() < 2 {
            break;
        }
        let len = usize::from(u16_at(rest, 0)).min(2048).min(rest.len() - 2);
        let _ = nix::unistd::write(&host_end, &rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    let Ok(events) = EventLoop::new() else { return };
    let Ok(net) = Net::new(
        Tap::for_fuzzing(dev_end),
        [2, 0, 0, 0, 0, 1],
        &events.registry(0),
    ) else {
        return;
    };
    run_program(Box::new(net), rest);
    let mut buf = vec![0u8; 1 << 17];
    while let Ok(len) = nix::unistd::read(&host_end, &mut buf) {
        if len == 0 {
            break;
        }
        assert!(
            (VNET_HDR_LEN..=VNET_HDR_LEN + 65_535 + 14).contains(&len),
            "a {len}-byte frame reached the host"
        );
        assert!(
            buf[..VNET_HDR_LEN].iter().all(|b| *b == 0),
            "a guest's virtio-net header reached the host: {:?}",
            &buf[..VNET_HDR_LEN]
        );
    }
}
