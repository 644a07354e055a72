//! The main thread's event loop: the VM's end (exit eventfd), stop signals,
//! and host-side events of devices (Unix sockets, TAP). Devices register
//! file descriptors through a [`Registry`] that tags each with the device's
//! index, so an event goes straight to the device that asked for it.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::devices::virtio::mmio::MmioTransport;

/// Readable, edge-triggered (the device reads until EAGAIN or remembers it
/// stopped early).
pub const READ_EDGE: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);
/// Readable and writable, edge-triggered.
pub const READ_WRITE_EDGE: EpollFlags = READ_EDGE.union(EpollFlags::EPOLLOUT);
/// Readable, level-triggered (listeners).
pub const READ_LEVEL: EpollFlags = EpollFlags::EPOLLIN;

const TOKEN_EXIT: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;

fn device_token(device: u32, inner: u32) -> u64 {
    ((u64::from(device) + 1) << 32) | u64::from(inner)
}

/// What a device uses to watch its file descriptors.
#[derive(Debug, Clone)]
pub struct Registry {
    epoll: Arc<Epoll>,
    device: u32,
}

impl Registry {
    pub fn add(&self, fd: BorrowedFd<'_>, inner: u32, flags: EpollFlags) -> std::io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(flags, device_token(self.device, inner)))
            .map_err(std::io::Error::from)
    }

    pub fn remove(&self, fd: BorrowedFd<'_>) {
        // The fd is about to be closed, which removes it anyway.
        let _ = self.epoll.delete(fd);
    }
}

/// What woke the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Exit,
    Signal,
}

pub struct EventLoop {
    epoll: Arc<Epoll>,
    devices: Vec<Arc<Mutex<MmioTransport>>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl EventLoop {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?),
            devices: Vec::new(),
        })
    }

    /// A registry for the device that will be added as index `device`.
    pub fn registry(&self, device: u32) -> Registry {
        Registry {
            epoll: self.epoll.clone(),
            device,
        }
    }

    /// The device whose registry has index `self.devices.len()`.
    pub fn add_device(&mut self, transport: Arc<Mutex<MmioTransport>>) -> u32 {
        self.devices.push(transport);
        crate::convert::len_u32(self.devices.len() - 1)
    }

    pub fn next_device_index(&self) -> u32 {
        crate::convert::len_u32(self.devices.len())
    }

    pub fn watch_exit(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(READ_LEVEL, TOKEN_EXIT))
            .map_err(std::io::Error::from)
    }

    pub fn watch_signals(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(READ_LEVEL, TOKEN_SIGNAL))
            .map_err(std::io::Error::from)
    }

    /// Dispatches device events until the exit eventfd or a signal fires.
    pub fn run_until_wake(&self) -> std::io::Result<Wake> {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut wake = None;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_EXIT => wake = Some(Wake::Exit),
                    TOKEN_SIGNAL => wake = wake.or(Some(Wake::Signal)),
                    token => {
                        let Some(device) = crate::convert::u64_to_usize(token >> 32).checked_sub(1)
                        else {
                            continue;
                        };
                        if let Some(t) = self.devices.get(device) {
                            t.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .device()
                                .host_event(
                                    crate::convert::lo32(token),
                                    u32::from_ne_bytes(ev.events().bits().to_ne_bytes()),
                                );
                        }
                    }
                }
            }
            if let Some(w) = wake {
                return Ok(w);
            }
        }
    }

    /// Lets every device hand over what it still holds for the host.
    pub fn flush_devices(&self) {
        for t in &self.devices {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .device()
                .flush_host();
        }
    }
}
