//! One running process of a workload (the main one or an exec), the same
//! shape whatever runs it: output chunks, a stdin channel, control (signal,
//! resize), and how it ended.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::attach::{ExitReport, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Signal(i32),
    Resize(u16, u16),
}

#[derive(Debug)]
pub struct Proc {
    /// (Stdout or Stderr, bytes); closed once every stream ended.
    pub output: mpsc::Receiver<(Kind, Vec<u8>)>,
    /// `None` closes the process's stdin.
    pub stdin: mpsc::Sender<Option<Vec<u8>>>,
    pub control: mpsc::Sender<Control>,
    pub exit: oneshot::Receiver<ExitReport>,
}

/// The ends a backend keeps when it builds a [`Proc`].
#[derive(Debug)]
pub struct ProcEnds {
    pub output: mpsc::Sender<(Kind, Vec<u8>)>,
    pub stdin: mpsc::Receiver<Option<Vec<u8>>>,
    pub control: mpsc::Receiver<Control>,
    pub exit: oneshot::Sender<ExitReport>,
}

pub fn proc_pair() -> (Proc, ProcEnds) {
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let (exit_tx, exit_rx) = oneshot::channel();
    (
        Proc {
            output: out_rx,
            stdin: in_tx,
            control: ctl_tx,
            exit: exit_rx,
        },
        ProcEnds {
            output: out_tx,
            stdin: in_rx,
            control: ctl_rx,
            exit: exit_tx,
        },
    )
}

/// A failure of bulkhead itself (exit code 125).
pub fn failed(why: impl Into<String>) -> ExitReport {
    ExitReport {
        code: 125,
        signal: None,
        error: Some(why.into()),
        started_ms: None,
        timeline: Vec::new(),
        vm_exits: Vec::new(),
    }
}

/// Copies a readable stream into `out` as `kind` chunks until it ends.
pub fn pump_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    kind: Kind,
    out: mpsc::Sender<(Kind, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break, // EOF, or EIO from a pty whose other side closed
                Ok(n) => {
                    if out.send((kind, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Feeds `stdin` into a writable stream; closing the channel or `None` closes it.
pub fn pump_writer<W: tokio::io::AsyncWrite + Unpin + Send + 'static>(
    mut w: W,
    mut stdin: mpsc::Receiver<Option<Vec<u8>>>,
    eof: Option<&'static [u8]>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Some(data)) = stdin.recv().await {
            if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        if let Some(eof) = eof {
            let _ = w.write_all(eof).await;
            let _ = w.flush().await;
        }
    })
}

/// A pty for a process that wants a terminal: (master, slave).
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let p = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    // Raw on our side's view: no echo or line editing between the workload and the client.
    if let Ok(mut t) = nix::sys::termios::tcgetattr(&p.slave) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::tcsetattr(&p.slave, nix::sys::termios::SetArg::TCSANOW, &t);
    }
    Ok((p.master, p.slave))
}

pub fn set_winsize(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// stdio for a child: the pty slave three times, or three pipes.
pub fn stdio_for(slave: Option<&OwnedFd>) -> std::io::Result<(Stdio, Stdio, Stdio)> {
    Ok(match slave {
        Some(s) => (
            Stdio::from(s.try_clone()?),
            Stdio::from(s.try_clone()?),
            Stdio::from(s.try_clone()?),
        ),
        None => (Stdio::piped(), Stdio::piped(), Stdio::piped()),
    })
}

/// Appends to a file, moving it to `<name>.1` once it would pass `limit`,
/// so a chatty workload or guest cannot fill the disk.
#[derive(Debug)]
pub struct RotatingLog {
    path: std::path::PathBuf,
    limit: u64,
    file: Option<std::fs::File>,
    size: u64,
}

impl RotatingLog {
    pub fn new(path: std::path::PathBuf, limit: u64) -> Self {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self {
            path,
            limit,
            file: None,
            size,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        use std::io::Write;
        if self.size + data.len() as u64 > self.limit && self.size > 0 {
            self.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("1"));
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = bulkhead_images::private::append(&self.path).ok();
        }
        if let Some(f) = &mut self.file {
            if f.write_all(data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }
}

/// The last `n` whole lines of `bytes` (a final newline ends the last one).
pub fn last_lines(bytes: &[u8], n: usize) -> &[u8] {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &bytes[i + 1..];
            }
        }
    }
    if n == 0 {
        &bytes[bytes.len()..]
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_whole_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn the_log_rotates_once_past_its_limit_and_keeps_one_old_file() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("log");
        let mut log = RotatingLog::new(p.clone(), 10);
        log.write(b"0123456");
        log.write(b"789");
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"0123456789");
        log.write(b"abc");
        assert_eq!(
            std::fs::read(p.with_extension("1")).unwrap_or_default(),
            b"0123456789"
        );
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"abc");
        log.write(b"defghijklmnop"); // larger than the limit: rotates, then written whole
        assert_eq!(
            std::fs::read(p.with_extension("1")).unwrap_or_default(),
            b"abc"
        );
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"defghijklmnop");
    }
}
