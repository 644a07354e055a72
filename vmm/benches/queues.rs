//! The VMM's device hot paths without a guest: a virtio-blk request (a
//! 4 KiB read and a 4 KiB write through a three-descriptor chain popped
//! from a split virtqueue in guest memory), and the vsock packet path from
//! the guest to a host Unix socket (4 KiB RW packets on an established
//! connection, the host side reading them).
//!
//! `cargo bench -p bulkhead-vmm --bench queues`

use std::io::Read;

use bulkhead_vmm::devices::virtio::block::{Backend, MemDisk};
use bulkhead_vmm::devices::virtio::vsock::muxer::Muxer;
use bulkhead_vmm::devices::virtio::vsock::packet::{op, Header, HOST_CID, TYPE_STREAM};
use bulkhead_vmm::event_loop::EventLoop;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;

fn blk(c: &mut Criterion) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]) else {
        return;
    };
    let mut backend = Backend::new(Box::new(MemDisk::new(vec![0u8; 1 << 20])), false, "bench");
    let mut g = c.benchmark_group("virtio-blk");
    g.throughput(Throughput::Bytes(4096));
    for (name, kind, data_flags) in [
        ("read 4 KiB", 0u32, WRITE | NEXT),
        ("write 4 KiB", 1u32, NEXT),
    ] {
        // struct virtio_blk_outhdr: type, reserved, sector.
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&8u64.to_le_bytes());
        if mem.write_slice(&hdr, GuestAddress(HDR)).is_err() {
            return;
        }
        let chain = [
            RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 4096, data_flags, 2)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, WRITE, 0)),
        ];
        // Measured only if it works: the status byte must come back VIRTIO_BLK_S_OK.
        let _ = mem.write_obj(0xffu8, GuestAddress(STATUS));
        let vq = MockSplitQueue::new(&mem, 16);
        if let Ok(c) = vq.build_desc_chain(&chain) {
            let _ = backend.process_request(&mem, c);
        }
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).ok(),
            Some(0),
            "{name}: the request failed"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let vq = MockSplitQueue::new(&mem, 16);
                if let Ok(c) = vq.build_desc_chain(&chain) {
                    let _ = backend.process_request(&mem, c);
                }
            })
        });
    }
    g.finish();
}

fn header(op: u16, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 1024,
        len,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn vsock(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let uds = dir.path().join("v");
    let Ok(listener) = std::os::unix::net::UnixListener::bind(format!("{}_1024", uds.display()))
    else {
        return;
    };
    let Ok(events) = EventLoop::new() else { return };
    let Ok(mut mux) = Muxer::new(3, &uds, events.registry(0)) else {
        return;
    };
    mux.from_guest(&header(op::REQUEST, 0), &[]);
    let Ok((mut host, _)) = listener.accept() else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    while mux.to_guest(&mut buf).is_some() {} // the RESPONSE
    let payload = vec![0xa5u8; 4096];
    let rw = header(op::RW, 4096);
    let mut got = vec![0u8; 4096];
    mux.from_guest(&rw, &payload);
    assert!(
        host.read_exact(&mut got).is_ok() && got == payload,
        "the packet did not reach the host socket"
    );
    let mut g = c.benchmark_group("vsock");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("guest to host 4 KiB RW packet", |b| {
        b.iter(|| {
            mux.from_guest(&rw, &payload);
            let _ = host.read_exact(&mut got);
            // Credit updates for the guest, as the device would send them.
            while mux.to_guest(&mut buf).is_some() {}
        })
    });
    g.finish();
}

criterion_group!(benches, blk, vsock);
criterion_main!(benches);
