//! Replays the committed fuzz corpora (vmm/fuzz/corpus/<target>/) through
//! the fuzz entry points: every input a fuzzer ever kept must still run
//! without a panic. Long fuzzing runs live in .ci/fuzz.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}

#[test]
fn blk_request_corpus() {
    replay("blk_request", bulkhead_vmm::fuzzing::blk_request);
}

#[test]
fn vsock_packets_corpus() {
    replay("vsock_packets", bulkhead_vmm::fuzzing::vsock_packets);
}

#[test]
fn mmio_program_corpus() {
    replay("mmio_program", bulkhead_vmm::fuzzing::mmio_program);
}

#[test]
fn net_device_corpus() {
    replay("net_device", bulkhead_vmm::fuzzing::net_device);
}

#[test]
fn the_net_seed_really_moves_frames_both_ways() {
    // A guard that the net seed is not silently dead: it activates the
    // device, the host's frame lands in the guest's rx buffer, and the
    // guest's frame (sent with a non-zero virtio-net header) reaches the
    // host with that header zeroed.
    use bulkhead_vmm::devices::virtio::mmio::MmioTransport;
    use bulkhead_vmm::devices::virtio::net::{tap::Tap, Net};
    use bulkhead_vmm::devices::BusDevice;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/net_device/seed-tx-rx"),
    )
    .unwrap();
    let (dev_end, host_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK,
    )
    .unwrap();
    let host_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let host_frame = &data[3..3 + host_len];
    nix::unistd::write(&host_end, host_frame).unwrap();
    let rest = &data[3 + host_len..];
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
            .unwrap();
    vm_memory::Bytes::write_slice(&mem, &rest[..4096], vm_memory::GuestAddress(0x8000)).unwrap();
    let tx_header: [u8; 12] =
        vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x8a00)).unwrap();
    assert!(tx_header.iter().any(|b| *b != 0), "the seed sends a header");
    let events = bulkhead_vmm::event_loop::EventLoop::new().unwrap();
    let net = Net::new(
        Tap::for_fuzzing(dev_end),
        [2, 0, 0, 0, 0, 1],
        &events.registry(0),
    )
    .unwrap();
    let ioapic = std::sync::Arc::new(std::sync::Mutex::new(
        bulkhead_vmm::devices::ioapic::Ioapic::new(0, std::sync::Arc::new(Sink)),
    ));
    let irq = bulkhead_vmm::devices::ioapic::IrqLine::new(ioapic, 5);
    let mut t = MmioTransport::new(
        Box::new(net),
        mem.clone(),
        std::sync::Arc::new(bulkhead_vmm::devices::virtio::VirtioInterrupt::new(irq)),
    );
    for step in rest[4096..].chunks_exact(7) {
        if step[0] & 1 == 0 {
            t.write(
                u64::from(u16::from_le_bytes([step[1], step[2]])),
                &step[3..7],
            );
        }
    }
    assert!(t.is_activated());
    let rx_used: u16 = vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x8202)).unwrap();
    assert_eq!(rx_used, 1, "the host's frame was delivered");
    let mut got = vec![0u8; host_len];
    vm_memory::Bytes::read_slice(&mem, &mut got, vm_memory::GuestAddress(0x8800)).unwrap();
    assert_eq!(got[12..], host_frame[12..], "into the guest's buffer");
    let mut sent = vec![0u8; 4096];
    let n = nix::unistd::read(&host_end, &mut sent).unwrap();
    assert_eq!(n, 72, "the guest's frame reached the host");
    assert_eq!(sent[..12], [0u8; 12], "with its virtio-net header zeroed");
    let mut frame = [0u8; 60];
    vm_memory::Bytes::read_slice(&mem, &mut frame, vm_memory::GuestAddress(0x8a0c)).unwrap();
    assert_eq!(sent[12..72], frame[..], "and its frame intact");
}

#[test]
fn the_mmio_seed_really_reaches_the_block_device() {
    // A guard that the seed is not silently dead: the bring-up program
    // must activate the device and complete the read request it carries.
    use bulkhead_vmm::devices::virtio::block::{Block, MemDisk};
    use bulkhead_vmm::devices::virtio::mmio::MmioTransport;
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/mmio_program/seed-block-read"),
    )
    .unwrap();
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
            .unwrap();
    vm_memory::Bytes::write_slice(&mem, &data[1..4097], vm_memory::GuestAddress(0x8000)).unwrap();
    let ioapic = std::sync::Arc::new(std::sync::Mutex::new(
        bulkhead_vmm::devices::ioapic::Ioapic::new(0, std::sync::Arc::new(Sink)),
    ));
    let irq = bulkhead_vmm::devices::ioapic::IrqLine::new(ioapic, 5);
    let dev = Block::new(Box::new(MemDisk::new(vec![7u8; 16 * 1024])), false, "seed");
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        std::sync::Arc::new(bulkhead_vmm::devices::virtio::VirtioInterrupt::new(irq)),
    );
    use bulkhead_vmm::devices::BusDevice;
    for step in data[4097..].chunks_exact(7) {
        if step[0] & 1 == 0 {
            t.write(
                u64::from(u16::from_le_bytes([step[1], step[2]])),
                &step[3..7],
            );
        }
    }
    assert!(t.is_activated());
    let used_idx: u16 = vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x8202)).unwrap();
    assert_eq!(used_idx, 1);
    let status: u8 = vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x8900)).unwrap();
    assert_eq!(status, 0, "S_OK");
    let byte: u8 = vm_memory::Bytes::read_obj(&mem, vm_memory::GuestAddress(0x8600)).unwrap();
    assert_eq!(byte, 7, "the disk's data landed in the guest buffer");
}

struct Sink;
impl bulkhead_vmm::devices::ioapic::MsiSink for Sink {
    fn send(&self, _: bulkhead_vmm::devices::ioapic::Msi) -> std::io::Result<()> {
        Ok(())
    }
}
