//! How the agent reaches the host: vsock to CID 2 in a VM, or a Unix
//! socket in the namespace-based tests (`--unix PATH`). Nothing else in the
//! agent knows the difference.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// The host's vsock CID.
const HOST_CID: u32 = 2;
/// How long the agent keeps dialing a host that is not listening yet.
const DIAL_PATIENCE: Duration = Duration::from_secs(10);

/// The host could not be reached in [`DIAL_PATIENCE`]; the cause is the
/// last attempt's error.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the host over {transport:?}")]
pub struct DialError {
    transport: Transport,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, Clone)]
pub enum Transport {
    Vsock { port: u32 },
    Unix { path: std::path::PathBuf },
}

impl Transport {
    /// Dials the host, retrying briefly: the host listens before the VM
    /// starts, so a refusal here is rare and short.
    pub fn dial(&self) -> Result<OwnedFd, DialError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match self.dial_once() {
                Ok(fd) => return Ok(fd),
                Err(source) if started.elapsed() >= DIAL_PATIENCE => {
                    return Err(DialError {
                        transport: self.clone(),
                        source,
                    })
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn dial_once(&self) -> std::io::Result<OwnedFd> {
        match self {
            Transport::Vsock { port } => {
                let s = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(std::io::Error::from)?;
                connect(s.as_raw_fd(), &VsockAddr::new(HOST_CID, *port))?;
                Ok(s)
            }
            Transport::Unix { path } => {
                std::os::unix::net::UnixStream::connect(path).map(OwnedFd::from)
            }
        }
    }
}
