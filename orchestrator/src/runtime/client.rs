//! The CLI's side of the control socket: attach or exec sessions that
//! carry the terminal's stdin, signals and window size to the workload and
//! its output back, and one-shot requests (signal, stop).

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::attach::{self, ExitReport, Kind, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cause sits mid-sentence, before the hint: printed once, here
    /// (not chained).
    #[error("cannot reach the workload's supervisor at {path}: {error} (is it still running? `bulkhead ps -a`)")]
    Connect { path: String, error: std::io::Error },
    #[error(transparent)]
    Frame(#[from] attach::FrameError),
    #[error("the supervisor closed the connection without an exit status")]
    NoExit,
    #[error("{0}")]
    Refused(String),
}

pub async fn connect(sock: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(sock)
        .await
        .map_err(|error| ClientError::Connect {
            path: sock.display().to_string(),
            error,
        })
}

/// Sends a one-shot request (signal, stop) and waits for its reply.
pub async fn request(sock: &Path, req: &Request) -> Result<(), ClientError> {
    let mut s = connect(sock).await?;
    attach::write_json(&mut s, Kind::Request, req).await?;
    match attach::read_frame(&mut s).await? {
        Some((Kind::Reply, p)) => match attach::parse::<Reply>("reply", &p)?.error {
            None => Ok(()),
            Some(e) => Err(ClientError::Refused(e)),
        },
        _ => Err(ClientError::NoExit),
    }
}

/// Puts the local terminal in raw mode while alive (for `-t` on a terminal).
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter(on: bool) -> Self {
        if !on || !std::io::stdin().is_terminal() {
            return Self(None);
        }
        let stdin = std::io::stdin();
        let Ok(saved) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Runs an attach or exec session to its end: our stdin to the process
/// (with `stdin`), its output to ours, SIGINT/SIGTERM/SIGHUP/SIGQUIT
/// forwarded, the window size followed (with `tty`). Returns how it ended.
pub async fn session(
    mut stream: UnixStream,
    req: &Request,
    stdin: bool,
    tty: bool,
) -> Result<ExitReport, ClientError> {
    attach::write_json(&mut stream, Kind::Request, req).await?;
    let (mut rd, wr) = stream.into_split();
    let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
    let _raw = RawTerminal::enter(tty);
    let mut tasks = Vec::new();
    if tty {
        if let Some((r, c)) = window_size() {
            let _ = attach::write_frame(
                &mut *wr.lock().await,
                Kind::Resize,
                &attach::resize_payload(r, c),
            )
            .await;
        }
        let w = wr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((r, c)) = window_size() {
                    let _ = attach::write_frame(
                        &mut *w.lock().await,
                        Kind::Resize,
                        &attach::resize_payload(r, c),
                    )
                    .await;
                }
            }
        }));
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        let w = wr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig))
            else {
                return;
            };
            while s.recv().await.is_some() {
                let _ = attach::write_frame(
                    &mut *w.lock().await,
                    Kind::Signal,
                    &attach::signal_payload(sig),
                )
                .await;
            }
        }));
    }
    if stdin {
        let w = wr.clone();
        tasks.push(tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ =
                            attach::write_frame(&mut *w.lock().await, Kind::StdinEof, &[]).await;
                        return;
                    }
                    Ok(n) => {
                        if attach::write_frame(&mut *w.lock().await, Kind::Stdin, &buf[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }));
    }
    let result = loop {
        match attach::read_frame(&mut rd).await {
            Ok(Some((Kind::Stdout, d))) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&d);
                let _ = o.flush();
            }
            Ok(Some((Kind::Stderr, d))) => {
                let _ = std::io::stderr().write_all(&d);
            }
            Ok(Some((Kind::Exit, p))) => {
                break attach::parse::<ExitReport>("exit", &p).map_err(ClientError::from)
            }
            Ok(Some((Kind::Reply, p))) => {
                break Err(ClientError::Refused(
                    attach::parse::<Reply>("reply", &p)
                        .ok()
                        .and_then(|r| r.error)
                        .unwrap_or_default(),
                ))
            }
            Ok(Some(_)) | Ok(None) => break Err(ClientError::NoExit),
            Err(e) => break Err(e.into()),
        }
    };
    for t in tasks {
        t.abort();
    }
    result
}
