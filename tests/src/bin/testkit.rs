//! `bulkhead-testkit`: small host-side tools the end-to-end tests run inside
//! the test host (which has busybox and little else).
//!
//!   vsock-connect UDS PORT MESSAGE  Firecracker-style: CONNECT PORT over the
//!                                   VMM's Unix socket, send MESSAGE, half-close,
//!                                   print the reply
//!   vsock-listen PATH REPLY         accept one connection on the Unix socket
//!                                   PATH (a VMM's <uds>_<port>), print what
//!                                   arrives until EOF, answer REPLY

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["vsock-connect", uds, port, msg] => vsock_connect(uds, port, msg),
        ["vsock-listen", path, reply] => vsock_listen(path, reply),
        _ => Err("usage: bulkhead-testkit vsock-connect UDS PORT MESSAGE | vsock-listen PATH REPLY".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn vsock_connect(uds: &str, port: &str, msg: &str) -> Result<(), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).map_err(|e| e.to_string())? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(format!("handshake answer {line:?}"));
    }
    println!("vsock-connect: {line}");
    s.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    println!("vsock-connect: reply {reply:?}");
    Ok(())
}

fn vsock_listen(path: &str, reply: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    println!("vsock-listen: ready");
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    let mut got = String::new();
    s.read_to_string(&mut got).map_err(|e| e.to_string())?;
    println!("vsock-listen: got {got:?}");
    s.write_all(reply.as_bytes()).map_err(|e| e.to_string())?;
    Ok(())
}
