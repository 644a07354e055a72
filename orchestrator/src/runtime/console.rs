//! A container's terminal, as conmon takes it: the OCI runtime makes the
//! pty inside the container and passes its master end over
//! `--console-socket`; the supervisor reads it until the last holder of the
//! other end is gone. (Running `crun run` in the foreground on a pty of ours
//! instead lets crun copy between the two, and crun stops copying once its
//! child exits: a quick `echo` under `-t` lost its output on a loaded host.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use super::attach::Kind;
use super::workload::{pump_reader, pump_writer, set_winsize};

/// How a process that asked for a terminal gets one.
#[derive(Debug)]
pub enum Tty {
    /// crun makes the pty in the container and passes the master here.
    Console(ConsoleSocket),
    /// runc takes no console socket in the foreground: it gets our pty's
    /// other end as its controlling terminal and copies to it.
    Pty { master: OwnedFd, slave: OwnedFd },
}

/// A process's pty once it is ours, and the size the client asked for
/// (which may come first).
#[derive(Debug, Default)]
pub struct Terminal {
    master: Option<OwnedFd>,
    size: Option<(u16, u16)>,
}

impl Terminal {
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.size = Some((rows, cols));
        if let Some(m) = &self.master {
            set_winsize(m, rows, cols);
        }
    }

    pub fn close(&mut self) {
        self.master = None;
    }
}

pub fn lock(t: &Mutex<Terminal>) -> MutexGuard<'_, Terminal> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads and writes a pty master (stdin's end writes ^D); returns the reader.
pub fn attach_terminal(
    master: OwnedFd,
    terminal: &Mutex<Terminal>,
    output: mpsc::Sender<(Kind, Vec<u8>)>,
    stdin: Option<mpsc::Receiver<Option<Vec<u8>>>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let ends = master
        .try_clone()
        .and_then(PtyMaster::new)
        .and_then(|r| Ok((r, PtyMaster::new(master.try_clone()?)?)));
    let (read, write) = match ends {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bulkhead supervisor: the workload's terminal: {e}");
            return None;
        }
    };
    if let Some(stdin) = stdin {
        pump_writer(write, stdin, Some(b"\x04"));
    }
    let mut t = lock(terminal);
    if let Some((rows, cols)) = t.size {
        set_winsize(&master, rows, cols);
    }
    t.master = Some(master);
    Some(pump_reader(read, Kind::Stdout, output))
}

/// The socket an OCI runtime connects to, to hand over a pty master.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `dir/name` (a stale socket of that name goes first).
    pub fn bind(dir: &Path, name: &str) -> io::Result<Self> {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Self {
            listener: UnixListener::bind(&path)?,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection's file descriptor.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || take_fd(stream.as_fd())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One message's descriptor (the first; any others are closed). The
/// runtime is ours, but a message without one is an error, not a hang.
fn take_fd(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 1024];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut first = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just put this descriptor in our table
                // for this message; nothing else refers to it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                first.get_or_insert(owned);
            }
        }
    }
    match first {
        Some(fd) => Ok(fd),
        None if msg.bytes == 0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the OCI runtime closed its console socket without a terminal",
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the OCI runtime's console message carried no terminal",
        )),
    }
}

/// A pty master in non-blocking mode, read and written through the
/// reactor (one per direction: each is its own dup of the master).
#[derive(Debug)]
pub struct PtyMaster(AsyncFd<OwnedFd>);

impl PtyMaster {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as
        // long as the AsyncFd owns it.
        Ok(Self(unsafe { AsyncFd::register(fd) }?))
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO once every holder of the other end is gone: the end.
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn send(path: &Path, fds: &[std::os::fd::RawFd], bytes: &[u8]) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect: {e}"));
        let iov = [io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        if !(bytes.is_empty() && fds.is_empty()) {
            sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
                .unwrap_or_else(|e| panic!("sendmsg: {e}"));
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pty_master_passed_over_the_socket_carries_output_until_the_other_end_closes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        runtime().block_on(async {
            let sock = ConsoleSocket::bind(dir.path(), "console.sock")
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let path = sock.path().to_path_buf();
            let pty = nix::pty::openpty(None, None).unwrap_or_else(|e| panic!("{e}"));
            let raw = pty.master.as_raw_fd();
            let sender = std::thread::spawn(move || send(&path, &[raw], b"terminal"));
            let master = sock
                .receive()
                .await
                .unwrap_or_else(|e| panic!("receive: {e}"));
            let _ = sender.join();
            drop(pty.master);
            drop(sock);
            assert!(
                !dir.path().join("console.sock").exists(),
                "socket left behind"
            );
            let mut w = PtyMaster::new(master.try_clone().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
            // Input goes in through the master: the slave's side reads it.
            w.write_all(b"in\n")
                .await
                .unwrap_or_else(|e| panic!("write: {e}"));
            let mut line = [0u8; 8];
            let n = nix::unistd::read(&pty.slave, &mut line).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&line[..n], b"in\n");
            let mut r = PtyMaster::new(master).unwrap_or_else(|e| panic!("{e}"));
            // The slave's side: written, then closed; every byte still arrives.
            nix::unistd::write(&pty.slave, b"quick\n").unwrap_or_else(|e| panic!("{e}"));
            drop(pty.slave);
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            assert!(
                String::from_utf8_lossy(&got).contains("quick"),
                "lost: {got:?}"
            );
        });
    }

    #[test]
    fn a_runtime_that_sends_no_descriptor_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        runtime().block_on(async {
            for (name, bytes) in [("empty.sock", &b""[..]), ("words.sock", &b"terminal"[..])] {
                let sock = ConsoleSocket::bind(dir.path(), name).unwrap_or_else(|e| panic!("{e}"));
                let path = sock.path().to_path_buf();
                let sender = std::thread::spawn(move || send(&path, &[], bytes));
                let got = sock.receive().await;
                let _ = sender.join();
                assert!(
                    got.is_err(),
                    "{name}: accepted a message without a terminal"
                );
            }
        });
    }
}
