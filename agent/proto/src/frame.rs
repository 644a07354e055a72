//! Length-prefixed frames: the wire format under every message.
//!
//! ```text
//! offset 0  u8   protocol version (PROTOCOL_VERSION)
//!        1  u8   kind: 1 control (JSON message), 2 data, 3 credit
//!        2  u16  reserved, must be 0
//!        4  u32  stream id (LE): 0 for control, else a stdio stream
//!        8  u32  payload length (LE), at most MAX_PAYLOAD
//!       12  ...  payload
//! ```
//!
//! A data frame with an empty payload closes its stream (EOF). A credit
//! frame's payload is a u32 (LE): the receiver of a stream grants its sender
//! that many more bytes. Both sides treat the other's bytes as hostile: the
//! decoder checks the header before buffering a payload and returns a typed
//! error for anything it does not understand; it never panics.

use crate::PROTOCOL_VERSION;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest payload of any frame (a control message or a data chunk).
pub const MAX_PAYLOAD: u32 = 256 * 1024;
/// Largest data chunk a sender puts in one frame.
pub const DATA_CHUNK: usize = 32 * 1024;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_CREDIT: u8 = 3;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A serialized control message (JSON), decoded by the caller into the
    /// message type of its direction.
    Control(Vec<u8>),
    /// Stdio bytes on a stream; empty means end of stream.
    Data { stream: StreamId, bytes: Vec<u8> },
    /// The receiver of `stream` lets the sender send `bytes` more.
    Credit { stream: StreamId, bytes: u32 },
}

/// A stdio stream: one process (host-chosen id) and one of its fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u32);

/// Which stdio stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fd {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

/// Process ids are host-chosen and at most this (the rest of the stream id
/// holds the fd).
pub const MAX_PROCESS_ID: u32 = u32::MAX >> 2;

impl StreamId {
    /// The stream of `fd` of process `process` (1..=MAX_PROCESS_ID).
    pub fn new(process: u32, fd: Fd) -> Option<Self> {
        (process != 0 && process <= MAX_PROCESS_ID).then_some(Self((process << 2) | fd as u32))
    }

    pub fn process(self) -> u32 {
        self.0 >> 2
    }

    pub fn fd(self) -> Fd {
        match self.0 & 3 {
            0 => Fd::Stdin,
            1 => Fd::Stdout,
            _ => Fd::Stderr,
        }
    }

    pub fn raw(self) -> u32 {
        self.0
    }

    fn from_raw(raw: u32) -> Result<Self, FrameError> {
        if raw >> 2 == 0 || raw & 3 == 3 {
            return Err(FrameError::BadStream(raw));
        }
        Ok(Self(raw))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bits set ({0:#x})")]
    Reserved(u16),
    #[error("frame payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
    #[error("stream id {0:#x} is not a process's stdin/stdout/stderr")]
    BadStream(u32),
    #[error("control frame on stream {0} (control uses stream 0)")]
    ControlOnStream(u32),
    #[error("credit frame with a {0}-byte payload (want 4)")]
    CreditSize(u32),
    #[error("zero credit")]
    ZeroCredit,
    #[error("the connection closed in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
}

impl Frame {
    /// Appends the encoded frame to `out`. Panics never; a payload over
    /// [`MAX_PAYLOAD`] is the caller's bug and is refused.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (kind, stream, payload): (u8, u32, &[u8]) = match self {
            Frame::Control(p) => (KIND_CONTROL, 0, p),
            Frame::Data { stream, bytes } => (KIND_DATA, stream.raw(), bytes),
            Frame::Credit { stream, bytes } => {
                if *bytes == 0 {
                    return Err(FrameError::ZeroCredit);
                }
                out.extend_from_slice(&header(KIND_CREDIT, stream.raw(), 4));
                out.extend_from_slice(&bytes.to_le_bytes());
                return Ok(());
            }
        };
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or(FrameError::TooLarge(u32::MAX))?;
        out.extend_from_slice(&header(kind, stream, len));
        out.extend_from_slice(payload);
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// The protocol version as the header's first byte (it fits: checked here).
const VERSION_BYTE: u8 = PROTOCOL_VERSION.to_le_bytes()[0];
const _: () = assert!(
    PROTOCOL_VERSION <= 0xff,
    "the frame header has one byte for the version"
);

fn header(kind: u8, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = VERSION_BYTE;
    h[1] = kind;
    h[4..8].copy_from_slice(&stream.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
/// After an error the connection is beyond repair; the decoder keeps
/// returning that error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decode_one() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Call at end of input: an incomplete frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        match (&self.failed, self.buf.len()) {
            (Some(e), _) => Err(e.clone()),
            (None, 0) => Ok(()),
            (None, n) => Err(FrameError::Truncated(n)),
        }
    }

    fn decode_one(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(h) = self.buf.get(..HEADER_LEN) else {
            // Check what we have of the header early: a peer speaking another
            // protocol is told so without waiting for 12 bytes.
            if let Some(&v) = self.buf.first() {
                if u32::from(v) != PROTOCOL_VERSION {
                    return Err(FrameError::Version(v));
                }
            }
            return Ok(None);
        };
        let version = h[0];
        let kind = h[1];
        let reserved = u16::from_le_bytes([h[2], h[3]]);
        let stream = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if u32::from(version) != PROTOCOL_VERSION {
            return Err(FrameError::Version(version));
        }
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        match kind {
            KIND_CONTROL if stream != 0 => return Err(FrameError::ControlOnStream(stream)),
            KIND_CONTROL => {}
            KIND_DATA => {
                StreamId::from_raw(stream)?;
            }
            KIND_CREDIT => {
                StreamId::from_raw(stream)?;
                if len != 4 {
                    return Err(FrameError::CreditSize(len));
                }
            }
            other => return Err(FrameError::UnknownKind(other)),
        }
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(match kind {
            KIND_CONTROL => Frame::Control(payload),
            KIND_DATA => Frame::Data {
                stream: StreamId::from_raw(stream)?,
                bytes: payload,
            },
            _ => {
                let bytes = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if bytes == 0 {
                    return Err(FrameError::ZeroCredit);
                }
                Frame::Credit {
                    stream: StreamId::from_raw(stream)?,
                    bytes,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: u32, fd: Fd) -> StreamId {
        StreamId::new(p, fd).unwrap()
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = FrameDecoder::new();
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_round_trip_even_byte_by_byte() {
        let frames = vec![
            Frame::Control(br#"{"type":"shutdown","id":1}"#.to_vec()),
            Frame::Data {
                stream: s(1, Fd::Stdout),
                bytes: b"hello\n".to_vec(),
            },
            Frame::Data {
                stream: s(7, Fd::Stdin),
                bytes: vec![],
            },
            Frame::Credit {
                stream: s(MAX_PROCESS_ID, Fd::Stderr),
                bytes: 65536,
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        assert_eq!(decode_all(&wire).unwrap(), frames);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.pending(), 0);
    }

    fn raw(version: u8, kind: u8, reserved: u16, stream: u32, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![version, kind];
        v.extend_from_slice(&reserved.to_le_bytes());
        v.extend_from_slice(&stream.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_malformed_header_class_is_a_typed_error() {
        let stdout1 = s(1, Fd::Stdout).raw();
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (raw(9, 1, 0, 0, 0, b""), FrameError::Version(9)),
            (vec![0x47], FrameError::Version(0x47)), // "GET ..." from the wrong peer, detected on byte one
            (raw(1, 9, 0, 0, 0, b""), FrameError::UnknownKind(9)),
            (raw(1, 0, 0, 0, 0, b""), FrameError::UnknownKind(0)),
            (raw(1, 1, 1, 0, 0, b""), FrameError::Reserved(1)),
            (
                raw(1, 1, 0, 0, MAX_PAYLOAD + 1, b""),
                FrameError::TooLarge(MAX_PAYLOAD + 1),
            ),
            (
                raw(1, 2, 0, 0, u32::MAX, b""),
                FrameError::TooLarge(u32::MAX),
            ),
            (
                raw(1, 1, 0, stdout1, 0, b""),
                FrameError::ControlOnStream(stdout1),
            ),
            (raw(1, 2, 0, 0, 1, b"x"), FrameError::BadStream(0)),
            (raw(1, 2, 0, 3, 1, b"x"), FrameError::BadStream(3)),
            (
                raw(1, 2, 0, (5 << 2) | 3, 1, b"x"),
                FrameError::BadStream((5 << 2) | 3),
            ),
            (raw(1, 3, 0, stdout1, 2, b"ab"), FrameError::CreditSize(2)),
            (
                raw(1, 3, 0, stdout1, 4, &[0, 0, 0, 0]),
                FrameError::ZeroCredit,
            ),
            (
                raw(1, 2, 0, stdout1, 10, b"short"),
                FrameError::Truncated(HEADER_LEN + 5),
            ),
            (
                raw(1, 2, 0, stdout1, 0, b"")[..7].to_vec(),
                FrameError::Truncated(7),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(&bytes), Err(want.clone()), "{bytes:?}");
        }
    }

    #[test]
    fn an_oversized_length_fails_before_the_payload_is_buffered() {
        let mut d = FrameDecoder::new();
        d.push(&raw(1, 2, 0, s(1, Fd::Stdout).raw(), MAX_PAYLOAD + 1, b""));
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(MAX_PAYLOAD + 1)));
        d.push(&[0u8; 4096]);
        assert_eq!(d.pending(), 0, "a failed decoder buffers nothing more");
        assert!(d.next_frame().is_err(), "and stays failed");
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would() {
        let big = Frame::Control(vec![b' '; MAX_PAYLOAD as usize + 1]);
        assert!(big.to_bytes().is_err());
        assert_eq!(
            Frame::Credit {
                stream: s(1, Fd::Stdin),
                bytes: 0
            }
            .to_bytes(),
            Err(FrameError::ZeroCredit)
        );
        assert!(StreamId::new(0, Fd::Stdout).is_none());
        assert!(StreamId::new(MAX_PROCESS_ID + 1, Fd::Stdout).is_none());
        let id = s(42, Fd::Stderr);
        assert_eq!((id.process(), id.fd()), (42, Fd::Stderr));
    }
}
