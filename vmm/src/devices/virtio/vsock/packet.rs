//! virtio-vsock packet headers (virtio 1.2, 5.10.6), parsed from guest
//! bytes and checked before anything acts on them.

pub const HEADER_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
/// Largest payload we accept from or send to the guest in one packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("header is {0} bytes, need {HEADER_LEN}")]
    Short(usize),
    #[error("packet from CID {0}, not the guest's")]
    WrongSource(u64),
    #[error("packet to CID {0}, not the host")]
    WrongDestination(u64),
    #[error("socket type {0} is not STREAM")]
    Type(u16),
    #[error("unknown op {0}")]
    Op(u16),
    #[error("payload of {0} bytes is over the limit")]
    TooLong(u32),
    #[error("{op} packet carries {len} payload bytes")]
    UnexpectedPayload { op: u16, len: u32 },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Reads a header from its wire form.
    pub fn parse(b: &[u8]) -> Result<Self, PacketError> {
        if b.len() < HEADER_LEN {
            return Err(PacketError::Short(b.len()));
        }
        Ok(Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            kind: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        })
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a packet the guest sent: from its own CID, to the host,
    /// STREAM, a known op, payload only on RW and within the limit.
    pub fn check_from_guest(&self, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSource(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDestination(self.dst_cid));
        }
        if self.kind != TYPE_STREAM {
            return Err(PacketError::Type(self.kind));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::Op(self.op));
        }
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(self.len));
        }
        if self.op != op::RW && self.len != 0 {
            return Err(PacketError::UnexpectedPayload {
                op: self.op,
                len: self.len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 1024,
            kind: TYPE_STREAM,
            op: op::RW,
            len: 10,
            ..Default::default()
        }
    }

    #[test]
    fn round_trips() {
        let h = Header {
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 99,
            ..good()
        };
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
        assert_eq!(
            Header::parse(&h.to_bytes()[..43]),
            Err(PacketError::Short(43))
        );
        assert_eq!(Header::parse(&[]), Err(PacketError::Short(0)));
    }

    #[test]
    fn guest_packets_are_checked() {
        assert_eq!(good().check_from_guest(3), Ok(()));
        assert_eq!(good().check_from_guest(4), Err(PacketError::WrongSource(3)));
        assert_eq!(
            Header {
                dst_cid: 7,
                ..good()
            }
            .check_from_guest(3),
            Err(PacketError::WrongDestination(7))
        );
        assert_eq!(
            Header { kind: 2, ..good() }.check_from_guest(3),
            Err(PacketError::Type(2))
        );
        assert_eq!(
            Header { op: 0, ..good() }.check_from_guest(3),
            Err(PacketError::Op(0))
        );
        assert_eq!(
            Header { op: 99, ..good() }.check_from_guest(3),
            Err(PacketError::Op(99))
        );
        assert_eq!(
            Header {
                len: MAX_PAYLOAD + 1,
                ..good()
            }
            .check_from_guest(3),
            Err(PacketError::TooLong(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            Header {
                op: op::REQUEST,
                len: 5,
                ..good()
            }
            .check_from_guest(3),
            Err(PacketError::UnexpectedPayload {
                op: op::REQUEST,
                len: 5
            })
        );
    }
}
