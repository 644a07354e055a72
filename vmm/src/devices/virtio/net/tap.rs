//! A TAP device: opened by name (TUNSETIFF, created if missing) or taken
//! from an inherited file descriptor (`fd:N`), with the 12-byte virtio-net
//! header on every frame and no offloads.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct virtio_net_hdr_v1`: what a modern driver puts before each frame.
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    pub name: String,
}

impl Tap {
    /// `name` is an interface name, or `fd:N` for an open TAP fd passed in.
    pub fn open(name: &str) -> std::io::Result<Self> {
        let file = match name.strip_prefix("fd:") {
            Some(n) => {
                let fd: i32 = n.parse().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{name}: not fd:<number>"),
                    )
                })?;
                // SAFETY: fcntl on an arbitrary number only queries it; an
                // invalid fd makes it fail with EBADF, checked here.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: the caller passed this fd to us to own (the
                // documented `fd:N` contract); it is open (checked above).
                File::from(unsafe { OwnedFd::from_raw_fd(fd) })
            }
            None => {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/net/tun")?;
                let mut req = ifreq(name)?;
                req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
                // SAFETY: TUNSETIFF reads an ifreq; `req` is one, alive for the call.
                if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                file
            }
        };
        let mut req = ifreq("")?;
        // SAFETY: TUNGETIFF writes an ifreq into `req`, which is large enough.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name}: not a TAP device"),
            ));
        }
        if req.flags & IFF_TAP == 0 || req.flags & IFF_VNET_HDR == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name}: needs a TAP opened with IFF_VNET_HDR"),
            ));
        }
        let real_name: String = req
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| char::from(c.to_ne_bytes()[0]))
            .collect();
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, valid for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // No checksum or segmentation offloads: we negotiate none with the guest.
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: F_GETFL/F_SETFL on our own open fd.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self {
            file,
            name: real_name,
        })
    }

    /// A "TAP" over any datagram fd (a SOCK_SEQPACKET socketpair end), for
    /// the fuzz target: frames in and out with the same framing.
    #[cfg(feature = "fuzzing")]
    pub fn for_fuzzing(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            name: "fuzz".into(),
        }
    }

    /// One frame (with its vnet header) into `buf`.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn ifreq(name: &str) -> std::io::Result<IfReq> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?}: interface names are at most 15 bytes"),
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    Ok(req)
}
