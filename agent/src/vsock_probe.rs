//! vsock diagnostics: a one-connection echo server and a one-shot call to
//! the host, for checking a VM's vsock path end to end.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use nix::sys::socket::{
    accept, bind, connect, listen, shutdown, socket, AddressFamily, Backlog, Shutdown, SockFlag,
    SockType, VsockAddr,
};

/// The host's CID.
const HOST_CID: u32 = 2;
const ANY_CID: u32 = u32::MAX;

fn stream() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn file(fd: OwnedFd) -> std::fs::File {
    std::fs::File::from(fd)
}

/// Accepts one connection on `port`, reads it to EOF, writes it all back.
pub fn echo(port: u32) -> ExitCode {
    let run = || -> Result<usize, String> {
        let l = stream().map_err(|e| format!("socket: {e}"))?;
        bind(l.as_raw_fd(), &VsockAddr::new(ANY_CID, port)).map_err(|e| format!("bind: {e}"))?;
        listen(&l, Backlog::new(1).map_err(|e| e.to_string())?)
            .map_err(|e| format!("listen: {e}"))?;
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe {
            OwnedFd::from_raw_fd(accept(l.as_raw_fd()).map_err(|e| format!("accept: {e}"))?)
        };
        let mut f = file(conn);
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(|e| format!("read: {e}"))?;
        f.write_all(&data).map_err(|e| format!("write: {e}"))?;
        Ok(data.len())
    };
    match run() {
        Ok(n) => {
            println!("vsock-echo: echoed {n} bytes");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to host `port`, sends `message`, half-closes, prints the reply.
pub fn call(port: u32, message: &str) -> ExitCode {
    let run = || -> Result<String, String> {
        let s = stream().map_err(|e| format!("socket: {e}"))?;
        connect(s.as_raw_fd(), &VsockAddr::new(HOST_CID, port))
            .map_err(|e| format!("connect: {e}"))?;
        let mut f = file(s);
        f.write_all(message.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        shutdown(f.as_raw_fd(), Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
        let mut reply = String::new();
        f.read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        Ok(reply)
    };
    match run() {
        Ok(reply) => {
            println!("vsock-call: reply {reply:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-call: {e}");
            ExitCode::FAILURE
        }
    }
}
