//! virtio-net on a TAP device.
//!
//! Frames pass through with their 12-byte virtio-net header: the TAP is set
//! up with the same header (IFF_VNET_HDR) and no offloads are negotiated,
//! so nothing needs translating. A frame the guest sends that is larger
//! than any Ethernet frame is dropped; a frame from the host that does not
//! fit the guest's buffer is dropped (counted by the guest as an rx error).
//! When the guest has no rx buffers, one frame waits here and the TAP is
//! read no further until buffers come back.

pub mod tap;

use std::io::{ErrorKind, Read};

use virtio_queue::QueueT;

use self::tap::{Tap, VNET_HDR_LEN};
use super::{
    drain_queue, read_config_bytes, ActivateError, Activation, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::event_loop::{Registry, READ_EDGE};

const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const LINK_UP: u16 = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
/// Largest frame with its header: no GSO, so an Ethernet frame up to a
/// 64 KiB MTU at most.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_535 + 14;
const TAP_TOKEN: u32 = 0;

#[derive(Debug)]
pub struct Net {
    tap: Tap,
    config: [u8; 8],
    active: Option<Activation>,
    /// A frame read from the TAP, waiting for a guest rx buffer.
    pending_rx: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], registry: &Registry) -> std::io::Result<Self> {
        registry.add(std::os::fd::AsFd::as_fd(&tap), TAP_TOKEN, READ_EDGE)?;
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        Ok(Self {
            tap,
            config,
            active: None,
            pending_rx: None,
            rx_buf: vec![0u8; MAX_FRAME],
            tx_buf: vec![0u8; MAX_FRAME],
        })
    }

    fn process_tx(&mut self) {
        let Self {
            tap,
            active,
            tx_buf,
            ..
        } = self;
        let Some(a) = active else { return };
        drain_queue(a, TX, |mem, chain| {
            if let Ok(mut reader) = chain.reader(mem) {
                let len = reader.available_bytes();
                if (VNET_HDR_LEN..=MAX_FRAME).contains(&len)
                    && reader.read_exact(&mut tx_buf[..len]).is_ok()
                {
                    // No offload was offered, so the guest's header means
                    // nothing: zeroed, the host's TAP never acts on a
                    // checksum or segmentation request from it.
                    tx_buf[..VNET_HDR_LEN].fill(0);
                    // A full TAP queue drops the frame, as a NIC would.
                    let _ = tap.write_frame(&tx_buf[..len]);
                }
            }
            0
        });
    }

    fn process_rx(&mut self) {
        let Some(a) = &mut self.active else { return };
        let mem = &a.mem;
        let mut used_any = false;
        loop {
            let len = match self.pending_rx.take() {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                },
            };
            let Some(chain) = a.queues[RX].pop_descriptor_chain(mem) else {
                self.pending_rx = Some(len);
                break;
            };
            let head = chain.head_index();
            // Without MRG_RXBUF every frame takes exactly one buffer.
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= len => {
                    std::io::Write::write_all(&mut w, &self.rx_buf[..len])
                        .map(|_| len)
                        .unwrap_or(0)
                }
                _ => 0,
            };
            if a.queues[RX]
                .add_used(mem, head, crate::convert::len_u32(written))
                .is_err()
            {
                break;
            }
            used_any = true;
        }
        if used_any {
            a.interrupt.signal_used();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation);
        self.process_rx();
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        if index == TX {
            self.process_tx();
        } else {
            self.process_rx();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending_rx = None;
    }

    fn host_event(&mut self, _token: u32, _events: u32) {
        self.process_rx();
    }
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if super::rng::getrandom(&mut mac).is_err() {
        mac[5] = std::process::id().to_le_bytes()[0];
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    //! Against a real TAP device, with an AF_PACKET socket on the host side
    //! of the interface (needs root and /dev/net/tun, as CI has).

    use super::*;
    use crate::event_loop::EventLoop;
    use std::os::fd::{FromRawFd, OwnedFd};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const ETHERTYPE: [u8; 2] = [0x88, 0xb5]; // local experimental

    fn packet_socket(ifname: &str) -> OwnedFd {
        let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0);
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET.try_into().unwrap(),
            sll_protocol: proto,
            sll_ifindex: index.try_into().unwrap(),
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `addr` is a sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>().try_into().unwrap(),
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>().try_into().unwrap(),
            )
        };
        fd
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
        f.extend_from_slice(&ETHERTYPE);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_cross_a_real_tap_both_ways() {
        let name = format!("bhnet{}", std::process::id() % 100_000);
        let tap = Tap::open(&name).expect("open a TAP (root and /dev/net/tun needed)");
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        assert!(std::process::Command::new("ip")
            .args(["link", "set", &name, "up"])
            .status()
            .unwrap()
            .success());
        let host = std::fs::File::from(packet_socket(&name));

        let events = EventLoop::new().unwrap();
        let mut net = Net::new(tap, [2, 0, 0, 0, 0, 1], &events.registry(0)).unwrap();
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);

        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0x0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x4000), 16);
        // Guest TX: header + frame; also a runt (no header) that must be dropped.
        // The header asks for offloads never negotiated (NEEDS_CSUM, TCPv4
        // segmentation, a checksum far outside the frame): the host's TAP
        // would refuse the write; sanitized, the frame arrives.
        let out = frame(b"from the guest");
        let mut with_hdr = vec![1u8, 1, 14, 0, 1, 0, 0xe8, 0x03, 0xd0, 0x07, 0, 0];
        assert_eq!(with_hdr.len(), VNET_HDR_LEN);
        with_hdr.extend_from_slice(&out);
        m.write_slice(&with_hdr, GuestAddress(0x2_0000)).unwrap();
        txq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(0x2_0000, 4, 0, 0))],
            0,
        )
        .unwrap();
        txq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x2_0000,
                with_hdr.len().try_into().unwrap(),
                0,
                0,
            ))],
            1,
        )
        .unwrap();
        // Guest RX buffers.
        for i in 0..8u16 {
            rxq.add_desc_chains(
                &[RawDescriptor::from(Descriptor::new(
                    0x3_0000 + u64::from(i) * 0x1000,
                    2048,
                    2,
                    0,
                ))],
                i,
            )
            .unwrap();
        }
        let (interrupt, _) = crate::devices::virtio::mmio::tests::interrupt();
        let queues: Vec<Queue> = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
        net.activate(Activation {
            mem: m.clone(),
            queues,
            interrupt,
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();

        net.queue_notify(TX);
        assert_eq!(txq.used().idx().load(), 2, "both chains returned");
        let mut got = vec![0u8; 2048];
        loop {
            let n = std::io::Read::read(&mut &host, &mut got)
                .expect("the guest's frame on the host side");
            if got[12..14] == ETHERTYPE {
                assert_eq!(&got[..n], &out[..]);
                break;
            }
        }

        let back = frame(b"from the host");
        assert_eq!(
            std::io::Write::write(&mut &host, &back).unwrap(),
            back.len()
        );
        net.host_event(TAP_TOKEN, 0);
        let used = rxq.used().idx().load();
        let found = (0..used).any(|i| {
            let u = rxq.used().ring().ref_at(usize::from(i)).unwrap().load();
            let mut buf = vec![0u8; u.len() as usize];
            m.read_slice(
                &mut buf,
                GuestAddress(0x3_0000 + u64::from(u.id()) * 0x1000),
            )
            .unwrap();
            buf.len() == VNET_HDR_LEN + back.len()
                && buf[VNET_HDR_LEN..] == back[..]
                && buf[10..12] == [1, 0]
        });
        assert!(
            found,
            "the host's frame in a guest rx buffer, num_buffers = 1"
        );
    }

    #[test]
    fn bad_tap_names_and_fds_are_refused() {
        assert!(Tap::open("a-name-longer-than-15").is_err());
        assert!(Tap::open("fd:notanumber").is_err());
        assert!(Tap::open("fd:987654").is_err());
        // An open fd that is not a TAP.
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        assert!(Tap::open(&format!("fd:{fd}")).is_err());
    }
}
