//! The host side of virtio-vsock, Firecracker-compatible:
//!
//! - A host client connects to the Unix socket `uds_path`, writes
//!   `CONNECT <port>\n`, and once the guest accepts gets `OK <hostport>\n`
//!   and a byte stream to the guest's listener on `<port>`.
//! - A guest connection to host port P is connected to the Unix socket
//!   `<uds_path>_P`; nobody listening means RST.
//!
//! Credit-based flow control both ways: the guest may have at most
//! [`CONN_BUF`] bytes in flight to the host (we advertise it and report how
//! much we forwarded); a guest that sends past its credit is reset, so the
//! VMM never buffers without bound. Towards the guest we send no more than
//! the guest's advertised credit; the rest stays in the host socket.

use crate::convert::len_u32;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::packet::{
    op, Header, PacketError, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::event_loop::{Registry, READ_LEVEL, READ_WRITE_EDGE};

/// Per-connection buffer for guest->host bytes, advertised as buf_alloc.
pub const CONN_BUF: u32 = 256 * 1024;
const MAX_CONNS: usize = 1024;
/// Control packets waiting for guest rx buffers; beyond this a guest that
/// never posts buffers loses them.
const MAX_CONTROL: usize = 4096;
const MAX_PENDING_HOST: usize = 64;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
const LISTENER_TOKEN: u32 = 0;
/// Host-side ports for host-initiated connections start here.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Bound on how long the exit flush may wait on one host socket.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The host-side port.
    pub local: u32,
    /// The guest-side port.
    pub peer: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A host client asked; REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    token: u32,
    state: State,
    /// Guest bytes not yet written to the host socket.
    to_host: VecDeque<u8>,
    /// Guest bytes delivered to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// The fwd_cnt the guest last heard.
    fwd_cnt_told: Wrapping<u32>,
    /// Bytes sent to the guest.
    sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// The guest will send no more.
    peer_done_sending: bool,
    /// The host socket reached EOF; SHUTDOWN sent.
    host_eof: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, state: State) -> Self {
        Self {
            stream,
            token,
            state,
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_done_sending: false,
            host_eof: false,
        }
    }

    /// Bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.sent - self.peer_fwd_cnt).0)
    }

    fn note_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Writes what is buffered; false when the socket failed.
    fn flush(&mut self) -> bool {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(len_u32(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.peer_done_sending {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        true
    }
}

#[derive(Debug)]
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    registry: Registry,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u32, Key>,
    pending: HashMap<u32, PendingHost>,
    next_token: u32,
    control: VecDeque<Header>,
    /// Connections whose host socket may hold data for the guest.
    readable: BTreeSet<Key>,
    next_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` (a stale socket file there is replaced; any
    /// other file is an error).
    pub fn new(guest_cid: u64, uds_path: &Path, registry: Registry) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", uds_path.display()),
                ));
            }
            std::fs::remove_file(uds_path)?;
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        registry.add(listener.as_fd(), LISTENER_TOKEN, READ_LEVEL)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            registry,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            control: VecDeque::new(),
            readable: BTreeSet::new(),
            next_port: FIRST_LOCAL_PORT,
        })
    }

    fn header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local,
            dst_port: key.peer,
            kind: TYPE_STREAM,
            op,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0),
            ..Default::default()
        }
    }

    fn push_control(&mut self, h: Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(h);
        }
    }

    fn take_token(&mut self) -> u32 {
        loop {
            self.next_token = self.next_token.wrapping_add(1).max(LISTENER_TOKEN + 1);
            if !self.by_token.contains_key(&self.next_token)
                && !self.pending.contains_key(&self.next_token)
            {
                return self.next_token;
            }
        }
    }

    fn insert_conn(&mut self, key: Key, stream: UnixStream, state: State) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        let token = self.take_token();
        self.registry.add(stream.as_fd(), token, READ_WRITE_EDGE)?;
        self.by_token.insert(token, key);
        self.conns.insert(key, Conn::new(stream, token, state));
        Ok(())
    }

    fn remove_conn(&mut self, key: Key) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        self.registry.remove(conn.stream.as_fd());
        self.by_token.remove(&conn.token);
        self.readable.remove(&key);
        Some(conn)
    }

    /// Drops the connection and tells the guest.
    fn reset(&mut self, key: Key) {
        let h = self.header(key, op::RST);
        self.remove_conn(key);
        self.push_control(h);
    }

    fn reset_if_exists(&mut self, key: Key) {
        if self.conns.contains_key(&key) {
            self.reset(key);
        }
    }

    /// Tells the guest how much we forwarded once it matters for its credit.
    fn maybe_credit_update(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if (c.fwd_cnt - c.fwd_cnt_told).0 >= CONN_BUF / 4 {
            c.fwd_cnt_told = c.fwd_cnt;
            let h = self.header(key, op::CREDIT_UPDATE);
            self.push_control(h);
        }
    }

    /// One packet the guest sent. `payload` holds exactly `hdr.len` bytes.
    pub fn from_guest(&mut self, hdr: &Header, payload: &[u8]) {
        let key = Key {
            local: hdr.dst_port,
            peer: hdr.src_port,
        };
        match hdr.check_from_guest(self.guest_cid) {
            // Not addressed to us as a stream: not ours to answer.
            Err(
                PacketError::WrongSource(_)
                | PacketError::WrongDestination(_)
                | PacketError::Type(_),
            ) => return,
            // Ours, but malformed: the connection it names is reset.
            Err(_) => return self.reset_if_exists(key),
            Ok(()) if payload.len() != hdr.len as usize => return self.reset_if_exists(key),
            Ok(()) => {}
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.note_peer_credit(hdr);
        }
        match hdr.op {
            op::REQUEST => self.guest_connects(key, hdr),
            op::RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == State::Connecting => {
                    c.state = State::Established;
                    let ok = format!("OK {}\n", key.local);
                    if c.stream.write_all(ok.as_bytes()).is_err() {
                        self.reset(key);
                    } else {
                        self.readable.insert(key);
                    }
                }
                _ => self.reset(key),
            },
            op::RST => {
                self.remove_conn(key);
            }
            op::SHUTDOWN => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return self.push_control(self.header(key, op::RST));
                };
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    c.peer_done_sending = true;
                    if c.to_host.is_empty() {
                        let _ = c.stream.shutdown(Shutdown::Write);
                    }
                }
                if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    c.flush();
                    self.reset(key);
                }
            }
            op::RW => self.guest_writes(key, payload),
            op::CREDIT_UPDATE if self.conns.contains_key(&key) => {
                self.readable.insert(key);
            }
            op::CREDIT_REQUEST => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.fwd_cnt_told = c.fwd_cnt;
                    let h = self.header(key, op::CREDIT_UPDATE);
                    self.push_control(h);
                }
            }
            _ => {}
        }
    }

    fn guest_connects(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            return self.push_control(self.header(key, op::RST));
        }
        let path = format!("{}_{}", self.uds_path.display(), key.local);
        match UnixStream::connect(&path).and_then(|s| self.insert_conn(key, s, State::Established))
        {
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.note_peer_credit(hdr);
                }
                let h = self.header(key, op::RESPONSE);
                self.push_control(h);
            }
            Err(_) => self.push_control(self.header(key, op::RST)),
        }
    }

    fn guest_writes(&mut self, key: Key, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return self.push_control(self.header(key, op::RST));
        };
        if c.state != State::Established || c.peer_done_sending {
            return self.reset(key);
        }
        // Bytes in flight may not exceed the buffer we advertised.
        if c.to_host.len() + payload.len() > CONN_BUF as usize {
            return self.reset(key);
        }
        c.to_host.extend(payload);
        if !c.flush() {
            return self.reset(key);
        }
        self.maybe_credit_update(key);
    }

    /// The next packet for the guest, its payload copied into `buf` (whose
    /// length bounds it). `None`: nothing to send now.
    pub fn to_guest(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        let keys: Vec<Key> = self.readable.iter().copied().collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                self.readable.remove(&key);
                continue;
            };
            if c.state != State::Established || c.host_eof {
                continue;
            }
            let room = (c.peer_credit() as usize)
                .min(buf.len())
                .min(MAX_PAYLOAD as usize);
            if room == 0 {
                continue;
            }
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    // The host will send no more; it may still read (a
                    // half-close), so only SEND is shut.
                    c.host_eof = true;
                    self.readable.remove(&key);
                    let mut h = self.header(key, op::SHUTDOWN);
                    h.flags = SHUTDOWN_SEND;
                    return Some((h, 0));
                }
                Ok(n) => {
                    c.sent += Wrapping(len_u32(n));
                    c.fwd_cnt_told = c.fwd_cnt;
                    let mut h = self.header(key, op::RW);
                    h.len = len_u32(n);
                    return Some((h, n));
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    self.readable.remove(&key);
                }
                Err(_) => {
                    self.remove_conn(key);
                    return Some((self.header(key, op::RST), 0));
                }
            }
        }
        None
    }

    /// Whether [`Muxer::to_guest`] may have something.
    pub fn has_work(&self) -> bool {
        !self.control.is_empty() || !self.readable.is_empty()
    }

    /// An event on a registered fd.
    pub fn host_event(&mut self, token: u32, readable: bool, writable: bool) {
        if token == LISTENER_TOKEN {
            return self.accept_host_clients();
        }
        if self.pending.contains_key(&token) {
            return self.read_connect_line(token);
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        if readable {
            self.readable.insert(key);
        }
        if writable {
            let ok = self.conns.get_mut(&key).is_none_or(|c| c.flush());
            if ok {
                self.maybe_credit_update(key);
            } else {
                self.reset(key);
            }
        }
    }

    fn accept_host_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.pending.len() >= MAX_PENDING_HOST || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.take_token();
            if self.registry.add(stream.as_fd(), token, READ_LEVEL).is_ok() {
                self.pending.insert(
                    token,
                    PendingHost {
                        stream,
                        line: Vec::new(),
                    },
                );
            }
        }
    }

    fn read_connect_line(&mut self, token: u32) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        // One byte at a time: nothing past the newline may be consumed, it
        // belongs to the guest.
        let port = loop {
            match p.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.registry.remove(p.stream.as_fd());
        let Some(peer) = port else { return };
        if self.conns.len() >= MAX_CONNS {
            return;
        }
        let local = self.free_local_port();
        let key = Key { local, peer };
        if self.insert_conn(key, p.stream, State::Connecting).is_ok() {
            let h = self.header(key, op::REQUEST);
            self.push_control(h);
        }
    }

    fn free_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local == p) {
                return p;
            }
        }
    }

    /// Delivers what guests sent but the host has not read yet, waiting at
    /// most a bounded time per socket (at VM exit).
    pub fn flush_host(&mut self) {
        for c in self.conns.values_mut() {
            if c.to_host.is_empty() {
                continue;
            }
            if c.stream.set_nonblocking(false).is_ok()
                && c.stream.set_write_timeout(Some(FLUSH_TIMEOUT)).is_ok()
            {
                let (a, b) = c.to_host.as_slices();
                let _ = c.stream.write_all(a).and_then(|_| c.stream.write_all(b));
                c.to_host.clear();
            }
        }
    }

    /// Drops every connection (the guest reset the device).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        self.control.clear();
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests;
