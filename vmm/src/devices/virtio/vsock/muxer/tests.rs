use super::*;
use crate::event_loop::EventLoop;

const GUEST: u64 = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mux: Muxer,
    _events: EventLoop,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let events = EventLoop::new().unwrap();
    let mux = Muxer::new(GUEST, &uds, events.registry(0)).unwrap();
    Fixture {
        _dir: dir,
        uds,
        mux,
        _events: events,
    }
}

impl Muxer {
    /// Acts as if every registered fd fired.
    fn service_all(&mut self) {
        self.host_event(LISTENER_TOKEN, true, false);
        let pending: Vec<u32> = self.pending.keys().copied().collect();
        for t in pending {
            self.host_event(t, true, false);
        }
        let tokens: Vec<u32> = self.by_token.keys().copied().collect();
        for t in tokens {
            self.host_event(t, true, true);
        }
    }

    fn next(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; MAX_PAYLOAD as usize];
        self.to_guest(&mut buf).map(|(h, n)| (h, buf[..n].to_vec()))
    }
}

fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Default::default()
    }
}

fn rw(src: u32, dst: u32, data: &[u8]) -> (Header, Vec<u8>) {
    (
        Header {
            len: data.len().try_into().unwrap(),
            ..from_guest(op::RW, src, dst)
        },
        data.to_vec(),
    )
}

/// A guest connection to a host listener on `port`: returns the host side.
fn guest_connected(f: &mut Fixture, port: u32) -> UnixStream {
    let path = format!("{}_{port}", f.uds.display());
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    f.mux.from_guest(&from_guest(op::REQUEST, 7000, port), &[]);
    let (h, _) = f.mux.next().unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, port, 7000));
    l.accept().unwrap().0
}

#[test]
fn guest_to_host_data_both_ways() {
    let mut f = fixture();
    let mut host = guest_connected(&mut f, 6000);
    let (h, d) = rw(7000, 6000, b"hello host");
    f.mux.from_guest(&h, &d);
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");
    host.write_all(b"hello guest").unwrap();
    f.mux.service_all();
    let (h, d) = f.mux.next().unwrap();
    assert_eq!(
        (h.op, h.len, d.as_slice()),
        (op::RW, 11, &b"hello guest"[..])
    );
    assert_eq!(h.fwd_cnt, 10, "we report what reached the host");
    // Host half-close: the guest hears SHUTDOWN(SEND) and can still write.
    host.shutdown(Shutdown::Write).unwrap();
    f.mux.service_all();
    let (h, _) = f.mux.next().unwrap();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    let (h, d) = rw(7000, 6000, b"after");
    f.mux.from_guest(&h, &d);
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
}

#[test]
fn nobody_listening_and_duplicates_get_rst() {
    let mut f = fixture();
    f.mux.from_guest(&from_guest(op::REQUEST, 7000, 6001), &[]);
    assert_eq!(f.mux.next().unwrap().0.op, op::RST);
    let _host = guest_connected(&mut f, 6000);
    f.mux.from_guest(&from_guest(op::REQUEST, 7000, 6000), &[]);
    assert_eq!(f.mux.next().unwrap().0.op, op::RST);
    // Data for a connection that does not exist.
    let (h, d) = rw(7001, 6000, b"x");
    f.mux.from_guest(&h, &d);
    assert_eq!(f.mux.next().unwrap().0.op, op::RST);
}

#[test]
fn credit_lies_reset_the_connection_and_bound_memory() {
    let mut f = fixture();
    let _host = guest_connected(&mut f, 6000); // never reads
    let chunk = vec![0x55u8; MAX_PAYLOAD as usize];
    let mut reset = false;
    for _ in 0..(2 * CONN_BUF / MAX_PAYLOAD + 64) {
        let (h, d) = rw(7000, 6000, &chunk);
        f.mux.from_guest(&h, &d);
        if f.mux.connection_count() == 0 {
            reset = true;
            break;
        }
        let buffered: usize = f.mux.conns.values().map(|c| c.to_host.len()).sum();
        assert!(buffered <= CONN_BUF as usize);
    }
    assert!(reset, "a guest past its credit must be reset");
    while let Some((h, _)) = f.mux.next() {
        if h.op == op::RST {
            return;
        }
    }
    panic!("no RST sent");
}

#[test]
fn invalid_packets_are_dropped_or_reset_their_connection() {
    let mut f = fixture();
    let _host = guest_connected(&mut f, 6000);
    // Wrong source CID, wrong destination, bad type: dropped, connection kept.
    for h in [
        Header {
            src_cid: 9,
            ..from_guest(op::RW, 7000, 6000)
        },
        Header {
            dst_cid: 5,
            ..from_guest(op::RW, 7000, 6000)
        },
        Header {
            kind: 2,
            ..from_guest(op::CREDIT_REQUEST, 1, 2)
        },
        Header {
            op: 42,
            ..from_guest(op::RW, 1, 2)
        },
    ] {
        f.mux.from_guest(&h, &[]);
    }
    assert!(f.mux.next().is_none());
    // An oversized or short payload on a live connection resets it.
    let big = Header {
        len: MAX_PAYLOAD + 1,
        ..from_guest(op::RW, 7000, 6000)
    };
    f.mux.from_guest(&big, &[]);
    assert_eq!(f.mux.next().unwrap().0.op, op::RST);
    assert_eq!(f.mux.connection_count(), 0);
    let _host = guest_connected(&mut f, 6000);
    let short = Header {
        len: 10,
        ..from_guest(op::RW, 7000, 6000)
    };
    f.mux.from_guest(&short, b"abc");
    assert_eq!(f.mux.next().unwrap().0.op, op::RST);
}

#[test]
fn host_initiated_connection_handshake() {
    let mut f = fixture();
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client.write_all(b"CONNECT 5000\n").unwrap();
    f.mux.service_all();
    let (req, _) = f.mux.next().unwrap();
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (op::REQUEST, 5000, GUEST)
    );
    let resp = Header {
        src_port: 5000,
        dst_port: req.src_port,
        ..from_guest(op::RESPONSE, 0, 0)
    };
    f.mux.from_guest(&resp, &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {}\n", req.src_port).as_bytes());
    // The guest refuses a second one.
    let mut c2 = UnixStream::connect(&f.uds).unwrap();
    c2.write_all(b"CONNECT 5001\n").unwrap();
    f.mux.service_all();
    let (req2, _) = f.mux.next().unwrap();
    f.mux.from_guest(
        &Header {
            src_port: 5001,
            dst_port: req2.src_port,
            ..from_guest(op::RST, 0, 0)
        },
        &[],
    );
    let mut rest = Vec::new();
    c2.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "refused: EOF without OK");
}

#[test]
fn malformed_connect_lines_are_closed() {
    let mut f = fixture();
    for bad in [
        &b"CONNECT x\n"[..],
        b"HELLO 1\n",
        b"CONNECT \n",
        b"CONNECT 99999999999\n",
        &[b'9'; 100][..],
    ] {
        let mut c = UnixStream::connect(&f.uds).unwrap();
        c.write_all(bad).unwrap();
        f.mux.service_all();
        assert!(f.mux.next().is_none(), "{bad:?}");
        // Closed: EOF, or a reset when our bytes were left unread; a
        // timeout would mean the muxer kept the connection.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{bad:?}"),
        }
    }
    assert_eq!(f.mux.connection_count(), 0);
    assert!(f.mux.pending.is_empty());
}

#[test]
fn no_credit_no_data_until_the_guest_updates() {
    let mut f = fixture();
    let l = UnixListener::bind(format!("{}_6000", f.uds.display())).unwrap();
    let mut req = from_guest(op::REQUEST, 7000, 6000);
    req.buf_alloc = 4;
    f.mux.from_guest(&req, &[]);
    assert_eq!(f.mux.next().unwrap().0.op, op::RESPONSE);
    let mut host = l.accept().unwrap().0;
    host.write_all(b"0123456789").unwrap();
    f.mux.service_all();
    let (h, d) = f.mux.next().unwrap();
    assert_eq!(d, b"0123", "only the guest's credit");
    assert!(f.mux.next().is_none(), "no credit left");
    let update = Header {
        buf_alloc: 4,
        fwd_cnt: 4,
        ..from_guest(op::CREDIT_UPDATE, 7000, 6000)
    };
    f.mux.from_guest(&update, &[]);
    let (_, d) = f.mux.next().unwrap();
    assert_eq!(d, b"4567");
    assert_eq!(h.op, op::RW);
    f.mux
        .from_guest(&from_guest(op::CREDIT_REQUEST, 7000, 6000), &[]);
    assert_eq!(f.mux.next().unwrap().0.op, op::CREDIT_UPDATE);
}

#[test]
fn parse_connect_accepts_only_the_documented_form() {
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
    for bad in [
        &b"connect 1"[..],
        b"CONNECT",
        b"CONNECT -1",
        b"CONNECT 1 2",
        b"CONNECT 4294967296",
        b"\xff\xfe",
    ] {
        assert_eq!(parse_connect(bad), None, "{bad:?}");
    }
}
