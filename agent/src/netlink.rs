//! The guest's network setup over rtnetlink (no `ip` binary in the guest,
//! no shell-outs): bring links up, set the MTU, add an IPv4 address and a
//! default route. Messages are built by hand; there are only three. The
//! host does the same inside a container's network namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bulkhead_agent_proto::NetworkSpec;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network spec: {0}")]
    Spec(String),
    #[error("no interface {0:?} (in the guest or the namespace)")]
    NoInterface(String),
    #[error("netlink {what}")]
    Netlink {
        what: &'static str,
        source: std::io::Error,
    },
}

const NLMSG_HDR: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| NetError::Spec(format!("address {s:?} has no /prefix")))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| NetError::Spec(format!("address {addr:?} is not IPv4")))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| NetError::Spec(format!("prefix length {len:?} is not 0-32")))?;
    Ok((addr, len))
}

// Address families as the u8 the netlink headers carry.
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const _: () = assert!(libc::AF_UNSPEC == AF_UNSPEC as i32 && libc::AF_INET == AF_INET as i32);

fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    // Our messages are a few dozen bytes; a larger one is a bug, not input.
    let len = u32::try_from(NLMSG_HDR + body.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(NLMSG_HDR + body.len());
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    // Our attributes are addresses and an MTU: a few bytes, never 64 KiB.
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// RTM_NEWLINK: interface up, optionally a new MTU.
pub fn link_up(seq: u32, index: u32, mtu: Option<u32>) -> Vec<u8> {
    // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32
    let mut b = vec![AF_UNSPEC, 0, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    if let Some(mtu) = mtu {
        attr(&mut b, IFLA_MTU, &mtu.to_ne_bytes());
    }
    message(RTM_NEWLINK, 0, seq, &b)
}

/// RTM_NEWADDR: an IPv4 address with its prefix.
pub fn add_address(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope (u8 each), index u32
    let mut b = vec![AF_INET, prefix, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &addr.octets());
    attr(&mut b, IFA_ADDRESS, &addr.octets());
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq, &b)
}

/// RTM_NEWROUTE: the default route via `gateway` out of `index`.
pub fn default_route(seq: u32, index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type (u8), flags u32
    let mut b = vec![
        AF_INET,
        0,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut b, RTA_GATEWAY, &gateway.octets());
    attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq, &b)
}

/// Reads the kernel's answer to request `seq`: Ok for an ACK, the errno
/// otherwise. The kernel is trusted here, but the parse is still bounded.
pub fn parse_ack(reply: &[u8], seq: u32) -> Result<(), std::io::Error> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed netlink reply");
    let hdr = reply.get(..NLMSG_HDR).ok_or_else(bad)?;
    let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
    let got_seq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if kind != NLMSG_ERROR || got_seq != seq {
        return Err(bad());
    }
    let err = reply.get(NLMSG_HDR..NLMSG_HDR + 4).ok_or_else(bad)?;
    match i32::from_ne_bytes([err[0], err[1], err[2], err[3]]) {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(-e)),
    }
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn call(&self, what: &'static str, msg: &[u8], seq: u32) -> Result<(), NetError> {
        let err = |source| NetError::Netlink { what, source };
        // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel's
        // netlink socket address is implied for an unbound send on NETLINK_ROUTE.
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 4096];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        let n = usize::try_from(n).unwrap_or(0);
        parse_ack(&buf[..n], seq).map_err(err)
    }
}

fn index_of(name: &str) -> Result<u32, NetError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| NetError::Spec("interface name has a NUL".into()))?;
    // SAFETY: c is a valid NUL-terminated string; if_nametoindex is an ioctl, not NSS.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(NetError::NoInterface(name.to_string())),
        i => Ok(i),
    }
}

/// Brings `lo` up, then applies `spec` if given.
pub fn configure(spec: Option<&NetworkSpec>) -> Result<(), NetError> {
    let sock = Socket::open().map_err(|source| NetError::Netlink {
        what: "socket",
        source,
    })?;
    sock.call("lo up", &link_up(1, index_of("lo")?, None), 1)?;
    let Some(spec) = spec else { return Ok(()) };
    let (addr, prefix) = parse_cidr(&spec.address)?;
    let gateway = spec
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| NetError::Spec(format!("gateway {g:?} is not IPv4")))
        })
        .transpose()?;
    if let Some(mtu) = spec.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(NetError::Spec(format!("MTU {mtu} is not 68-65535")));
        }
    }
    let index = index_of(&spec.interface)?;
    sock.call("link up", &link_up(2, index, spec.mtu), 2)?;
    sock.call("address", &add_address(3, index, addr, prefix), 3)?;
    if let Some(gw) = gateway {
        sock.call("default route", &default_route(4, index, gw), 4)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            parse_cidr("10.0.0.2/24").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 2), 24)
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "10.0.0/24",
            "host/24",
            "10.0.0.2/-1",
            "::1/64",
            "",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_aligned_and_sized() {
        for m in [
            link_up(1, 2, Some(1400)),
            link_up(1, 2, None),
            add_address(3, 2, Ipv4Addr::LOCALHOST, 8),
            default_route(4, 2, Ipv4Addr::new(10, 0, 0, 1)),
        ] {
            assert_eq!(
                u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
                m.len()
            );
            assert_eq!(m.len() % 4, 0);
        }
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        let mut ack = message(NLMSG_ERROR, 0, 7, &[0u8; 20]);
        assert!(parse_ack(&ack, 7).is_ok());
        assert!(parse_ack(&ack, 8).is_err(), "wrong sequence");
        ack[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(
            parse_ack(&ack, 7).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(parse_ack(&ack[..10], 7).is_err());
        assert!(parse_ack(&ack[..NLMSG_HDR + 2], 7).is_err());
    }
}
