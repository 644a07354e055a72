//! The supervisor's control socket: a request, then frames both ways.
//!
//! Every frame is `kind: u8, length: u32 (LE), payload`, at most
//! [`MAX_FRAME`] bytes. The first frame from the client is a `Request`
//! (JSON). For `attach` and `exec`, data frames follow both ways until the
//! supervisor sends `Exit`; `signal`, `resize` and `stdin` frames may come
//! from the client at any time. `stop` and `signal` requests get one
//! `Reply`. The socket is root's (0600 in a 0700 dir), but a frame is still
//! checked before it is used.

use bulkhead_agent_proto::ProcessSpec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAX_FRAME: u32 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Reply = 2,
    Stdin = 3,
    StdinEof = 4,
    Stdout = 5,
    Stderr = 6,
    Exit = 7,
    Signal = 8,
    Resize = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Reply,
            3 => Kind::Stdin,
            4 => Kind::StdinEof,
            5 => Kind::Stdout,
            6 => Kind::Stderr,
            7 => Kind::Exit,
            8 => Kind::Signal,
            9 => Kind::Resize,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The main process's output from now on (and its stdin when asked).
    Attach {
        stdin: bool,
    },
    /// A new process in the workload.
    Exec {
        process: ProcessSpec,
    },
    Signal {
        signal: i32,
    },
    /// The stop signal, then SIGKILL after `timeout_s`; replies once it ended.
    Stop {
        timeout_s: u64,
    },
    /// `bulkhead cp`: the stream comes as stdout (out) or goes as stdin
    /// (in), the reason it failed as stderr, then `Exit`.
    Copy {
        spec: bulkhead_agent_proto::CopySpec,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub error: Option<String>,
}

/// How a process ended, as the client reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    /// Shell convention (128+N for signal N; 125/126/127 for start failures).
    pub code: i32,
    pub signal: Option<i32>,
    pub error: Option<String>,
    /// When the workload's process started (Unix ms), if it did.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// Start milestones on CLOCK_MONOTONIC (`bulkhead bench` reads them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Mark>,
    /// A microVM's exits to bulkhead-vmm over its life, by `KIND DEVICE`
    /// (its `--boot-timeline` report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_exits: Vec<(String, u64)>,
}

/// A start milestone: `runtime-invoked`, `agent-connected`, and for
/// bulkhead-vmm its own (`vmm-start`, `kernel-entry`, `agent-ready`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    /// CLOCK_MONOTONIC, µs.
    pub at_us: u64,
}

impl Mark {
    pub fn now(name: &str) -> Self {
        Mark {
            name: name.into(),
            at_us: bulkhead_vmm::timeline::monotonic_us(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    // The cause inline, not chained: frame errors end up in `{e}` strings.
    #[error("control socket: {0}")]
    Io(std::io::Error),
    #[error("control socket: unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("control socket: frame of {0} bytes (max {MAX_FRAME})")]
    TooLong(u32),
    #[error("control socket: bad {what}: {why}")]
    Bad { what: &'static str, why: String },
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), FrameError> {
    let head = head_of(kind, payload)?;
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// A frame's 5-byte head: kind, then the payload's length (LE).
fn head_of(kind: Kind, payload: &[u8]) -> Result<[u8; 5], FrameError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_le_bytes());
    Ok(head)
}

/// The kind and payload length a head announces, checked.
fn parse_head(head: [u8; 5]) -> Result<(Kind, usize), FrameError> {
    let kind = Kind::from_u8(head[0]).ok_or(FrameError::UnknownKind(head[0]))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    Ok((kind, len as usize))
}

/// [`write_frame`] on a blocking stream (`bulkhead cp`'s threads).
pub fn write_frame_blocking(
    w: &mut impl std::io::Write,
    kind: Kind,
    payload: &[u8],
) -> Result<(), FrameError> {
    let head = head_of(kind, payload)?;
    w.write_all(&head)?;
    w.write_all(payload)?;
    Ok(())
}

/// [`read_frame`] on a blocking stream.
pub fn read_frame_blocking(
    r: &mut impl std::io::Read,
) -> Result<Option<(Kind, Vec<u8>)>, FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (kind, len) = parse_head(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

pub async fn write_json<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    value: &impl Serialize,
) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(value).map_err(|e| FrameError::Bad {
        what: "json",
        why: e.to_string(),
    })?;
    write_frame(w, kind, &bytes).await
}

/// The next frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(Kind, Vec<u8>)>, FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (kind, len) = parse_head(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

pub fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Bad {
        what,
        why: e.to_string(),
    })
}

pub fn signal_payload(sig: i32) -> [u8; 4] {
    sig.to_le_bytes()
}

pub fn parse_signal(p: &[u8]) -> Result<i32, FrameError> {
    let b: [u8; 4] = p.try_into().map_err(|_| FrameError::Bad {
        what: "signal",
        why: format!("{} bytes", p.len()),
    })?;
    let s = i32::from_le_bytes(b);
    if (1..=64).contains(&s) {
        Ok(s)
    } else {
        Err(FrameError::Bad {
            what: "signal",
            why: s.to_string(),
        })
    }
}

pub fn resize_payload(rows: u16, cols: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&rows.to_le_bytes());
    b[2..].copy_from_slice(&cols.to_le_bytes());
    b
}

pub fn parse_resize(p: &[u8]) -> Result<(u16, u16), FrameError> {
    match p {
        [a, b, c, d] => Ok((u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d]))),
        _ => Err(FrameError::Bad {
            what: "resize",
            why: format!("{} bytes", p.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn frames_round_trip_and_malformed_ones_are_typed_errors() {
        rt().block_on(async {
            let mut buf = Vec::new();
            write_json(&mut buf, Kind::Request, &Request::Stop { timeout_s: 3 })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            write_frame(&mut buf, Kind::Stdout, b"hi")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut r = buf.as_slice();
            let (k, p) = read_frame(&mut r)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("frame"));
            assert_eq!(
                (
                    k,
                    parse::<Request>("request", &p).unwrap_or_else(|e| panic!("{e}"))
                ),
                (Kind::Request, Request::Stop { timeout_s: 3 })
            );
            assert_eq!(
                read_frame(&mut r).await.unwrap_or_else(|e| panic!("{e}")),
                Some((Kind::Stdout, b"hi".to_vec()))
            );
            assert_eq!(
                read_frame(&mut r).await.unwrap_or_else(|e| panic!("{e}")),
                None
            );

            assert!(matches!(
                read_frame(&mut &[0u8, 0, 0, 0, 0][..]).await,
                Err(FrameError::UnknownKind(0))
            ));
            assert!(matches!(
                read_frame(&mut &[5u8, 0xff, 0xff, 0xff, 0xff][..]).await,
                Err(FrameError::TooLong(_))
            ));
            assert!(
                matches!(
                    read_frame(&mut &[5u8, 9, 0, 0, 0, 1][..]).await,
                    Err(FrameError::Io(_))
                ),
                "truncated payload"
            );
            assert!(matches!(
                read_frame(&mut &[5u8, 0][..]).await,
                Ok(None) | Err(_)
            ));
        });
        assert!(parse::<Request>("request", br#"{"op":"attach","stdin":true,"extra":1}"#).is_err());
        assert!(parse::<Request>("request", br#"{"op":"reboot"}"#).is_err());
        assert!(parse_signal(&signal_payload(9)).is_ok_and(|s| s == 9));
        assert!(
            parse_signal(&signal_payload(0)).is_err()
                && parse_signal(&signal_payload(65)).is_err()
                && parse_signal(b"abc").is_err()
        );
        assert_eq!(parse_resize(&resize_payload(24, 80)).ok(), Some((24, 80)));
        assert!(parse_resize(b"abc").is_err());
    }
}
