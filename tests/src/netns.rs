//! Network namespaces the tests make for themselves, so no test touches the
//! machine's own network: a "host" namespace where bulkhead runs (its
//! bridge, rules and published ports live there) and an "outside" one
//! joined to it by a veth pair, playing another machine on the LAN.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The host's address on the LAN between the test host and the outside.
pub const HOST_ADDR: &str = "192.168.77.1";
pub const OUTSIDE_ADDR: &str = "192.168.77.2";
/// The outside also plays the internet (a TEST-NET-2 address: the host's
/// default route leads there) and the cloud's metadata service.
pub const INTERNET_ADDR: &str = "198.51.100.7";
pub const METADATA_ADDR: &str = "169.254.169.254";

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e} (apt-get install iproute2)"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// A named namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(name: &str) -> Result<Self, String> {
        let _ = ip(&["netns", "del", name]); // a crashed earlier run's
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T, String> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| "thread panicked".to_string())?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {}: {e}", path.display()))
}

/// Makes `cmd` start inside the namespace at `path`.
pub fn command_in(cmd: &mut Command, path: &Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fd = f.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `f` (captured) keeps the fd open until the closure is dropped after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &f;
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    Ok(())
}

/// The test host and the outside, joined by a veth pair.
#[derive(Debug)]
pub struct Lan {
    pub host: NetNs,
    pub outside: NetNs,
}

impl Lan {
    pub fn create(tag: &str) -> Result<Self, String> {
        let host = NetNs::create(&format!("bhtest-host-{tag}"))?;
        let outside = NetNs::create(&format!("bhtest-out-{tag}"))?;
        let (h, o) = ("lan0", "lan1");
        host.ip(&[
            "link",
            "add",
            h,
            "type",
            "veth",
            "peer",
            "name",
            o,
            "netns",
            &outside.name,
        ])?;
        host.ip(&["address", "add", &format!("{HOST_ADDR}/24"), "dev", h])?;
        host.ip(&["link", "set", h, "up"])?;
        outside.ip(&["address", "add", &format!("{OUTSIDE_ADDR}/24"), "dev", o])?;
        for a in [INTERNET_ADDR, METADATA_ADDR] {
            outside.ip(&["address", "add", &format!("{a}/32"), "dev", o])?;
        }
        outside.ip(&["link", "set", o, "up"])?;
        host.ip(&["route", "add", "default", "via", OUTSIDE_ADDR])?;
        Ok(Lan { host, outside })
    }
}

/// A UDP socket on a thread inside a namespace that counts the datagrams
/// it receives (one datagram is enough to prove a path is open).
#[derive(Debug)]
pub struct UdpCounter {
    count: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl UdpCounter {
    pub fn start(ns: &NetNs, bind: &str) -> Result<Self, String> {
        let bind: SocketAddr = bind.parse().map_err(|e| format!("{bind}: {e}"))?;
        let (count, stop) = (Arc::new(Mutex::new(0u64)), Arc::new(AtomicBool::new(false)));
        let (c, s, path) = (Arc::clone(&count), Arc::clone(&stop), ns.path());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sock = enter(&path).and_then(|()| {
                std::net::UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))
            });
            let sock = match sock.and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .map(|()| s)
                    .map_err(|e| e.to_string())
            }) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if sock.recv_from(&mut buf).is_ok() {
                    *c.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                }
            }
        });
        ready_rx.recv().map_err(|e| e.to_string())??;
        Ok(UdpCounter { count, stop })
    }

    pub fn count(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `GET /` over HTTP/1.0 from inside `ns`: the response body, or why not.
pub fn http_get(ns: &NetNs, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    ns.run(move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or(out))
    })?
}

/// A TCP listener on a thread inside a namespace: answers every connection
/// with `from-<tag> peer=<address>` and remembers who connected.
#[derive(Debug)]
pub struct Listener {
    pub peers: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    local: SocketAddr,
    ns: PathBuf,
}

impl Listener {
    pub fn start(ns: &NetNs, bind: &str, tag: &str) -> Result<Self, String> {
        let bind: SocketAddr = bind.parse().map_err(|e| format!("{bind}: {e}"))?;
        let (peers, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s, tag) = (Arc::clone(&peers), Arc::clone(&stop), tag.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = ns.path();
        std::thread::spawn(move || {
            let l = enter(&path)
                .and_then(|()| TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}")));
            let l = match l {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(peer.clone());
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    format!("HTTP/1.0 200 OK\r\n\r\nfrom-{tag} peer={peer}\n").as_bytes(),
                );
            }
        });
        ready_rx.recv().map_err(|e| e.to_string())??;
        Ok(Listener {
            peers,
            stop,
            local: bind,
            ns: ns.path(),
        })
    }

    pub fn peers(&self) -> Vec<String> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag and ends.
        let (ns, addr) = (self.ns.clone(), self.local);
        let _ = std::thread::spawn(move || {
            if enter(&ns).is_ok() {
                let target = if addr.ip().is_unspecified() {
                    SocketAddr::from(([127, 0, 0, 1], addr.port()))
                } else {
                    addr
                };
                let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
            }
        })
        .join();
    }
}
