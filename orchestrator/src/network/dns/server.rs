//! `bulkhead __dns --bridge BRIDGE`: one network's resolver. As root it
//! takes the network's lock, reads its names and the host's nameservers,
//! binds the gateway's port 53 (UDP and TCP) and forks away (a session of
//! its own; the lock records the child); then, before it reads a single
//! query, it becomes nobody (no groups, no capabilities, no new
//! privileges). It answers per `answer.rs`, re-reading the names file when
//! it changes, and forwards the rest to the host's nameservers (at most
//! `MAX_FORWARDS` at once; an answer must carry the query's id). It ends
//! when it is killed (`dns::stop`) or its names file is gone.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::answer::{answer, Reply};
use super::{Table, NOBODY};
use crate::network::daemon;

/// Queries in flight upstream at once; past that, SERVFAIL.
const MAX_FORWARDS: usize = 128;
/// TCP connections at once.
const MAX_CONNECTIONS: usize = 64;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE: Duration = Duration::from_secs(10);
/// How often it checks that its names file is still there.
const WATCH: Duration = Duration::from_secs(5);

pub fn main(bridge: &str) -> ExitCode {
    match run(bridge) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead __dns {bridge}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(bridge: &str) -> Result<(), String> {
    let Some(mut lock) = daemon::take_lock(&super::lock_path(bridge))? else {
        return daemon::ready(); // another one serves already
    };
    let names = Names::new(super::table_path(bridge), super::cluster_path(bridge));
    let table = names.current().ok_or("no names file")?;
    let gateway = table.subnet.gateway();
    let upstreams = upstreams(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        gateway,
    );
    let udp = std::net::UdpSocket::bind((gateway, 53))
        .map_err(|e| format!("bind {gateway}:53/udp: {e}"))?;
    let tcp = std::net::TcpListener::bind((gateway, 53))
        .map_err(|e| format!("bind {gateway}:53/tcp: {e}"))?;
    for s in [
        std::os::fd::AsFd::as_fd(&udp),
        std::os::fd::AsFd::as_fd(&tcp),
    ] {
        nix::fcntl::fcntl(
            s,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| format!("nonblocking: {e}"))?;
    }
    daemon::detach(&mut lock)?;
    drop_privileges()?;
    // As nobody now: a names file it cannot read is an error its spawner
    // hears, not a resolver that quietly ends at its first query.
    names
        .current()
        .ok_or("cannot read the names file as nobody")?;
    daemon::ready()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(udp, tcp, Arc::new(names), Arc::new(upstreams)))
}

/// nobody, no supplementary groups, no way back (setuid from root to
/// another user clears every capability).
fn drop_privileges() -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let (u, g) = (Uid::from_raw(NOBODY), Gid::from_raw(NOBODY));
    setgroups(&[])
        .and_then(|()| setresgid(g, g, g))
        .and_then(|()| setresuid(u, u, u))
        .map_err(|e| format!("drop privileges: {e}"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err("no_new_privs".into());
    }
    Ok(())
}

/// The host's nameservers (loopback ones too: the host reaches them),
/// never this network's own gateway.
pub fn upstreams(resolv_conf: &str, gateway: Ipv4Addr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| *a != IpAddr::V4(gateway) && !a.is_unspecified())
        .map(|a| SocketAddr::new(a, 53))
        .take(3)
        .collect()
}

/// A file's inode, size and mtime: when they change, it is read again.
type Stamp = (u64, u64, i64, i64);
/// The workloads' names file's, and the cluster names file's if it exists.
type Stamps = (Stamp, Option<Stamp>);

/// The names files (the workloads', and a cluster tenant's service names
/// where its node wrote them), read again when either changes.
struct Names {
    path: PathBuf,
    cluster: PathBuf,
    cached: Mutex<Option<(Stamps, Arc<Table>)>>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl Names {
    fn new(path: PathBuf, cluster: PathBuf) -> Self {
        Self {
            path,
            cluster,
            cached: Mutex::new(None),
        }
    }

    /// The table now; `None` once the workloads' file is gone (the
    /// resolver ends).
    fn current(&self) -> Option<Arc<Table>> {
        let stamps = (stamp(&self.path)?, stamp(&self.cluster));
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, t)) = c.as_ref() {
            if *s == stamps {
                return Some(t.clone());
            }
        }
        let mut t: Table = read_json(&self.path)?;
        if stamps.1.is_some() {
            let cluster: super::ClusterNames = read_json(&self.cluster).unwrap_or_default();
            for (name, ips) in cluster {
                let have = t.names.entry(name).or_default();
                for ip in ips {
                    if !have.contains(&ip) {
                        have.push(ip);
                    }
                }
            }
        }
        let t = Arc::new(t);
        *c = Some((stamps, t.clone()));
        Some(t)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn serve(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    names: Arc<Names>,
    upstreams: Arc<Vec<SocketAddr>>,
) -> Result<(), String> {
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).map_err(|e| e.to_string())?);
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| e.to_string())?;
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    tokio::spawn(serve_tcp(tcp, names.clone(), upstreams.clone()));
    let watched = names.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH);
        loop {
            tick.tick().await;
            if watched.current().is_none() {
                std::process::exit(0);
            }
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        let SocketAddr::V4(from4) = from else {
            continue;
        };
        let Some(table) = names.current() else {
            return Ok(());
        };
        let query = &buf[..n];
        match answer(&table, *from4.ip(), query) {
            Reply::Answer(b) => {
                let _ = udp.send_to(&b, from).await;
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Some(b) = servfail(query) {
                        let _ = udp.send_to(&b, from).await;
                    }
                    continue;
                };
                let (udp, ups, q) = (udp.clone(), upstreams.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = match forward_udp(&ups, &q).await {
                        Some(r) => Some(r),
                        None => servfail(&q),
                    };
                    if let Some(r) = reply {
                        let _ = udp.send_to(&r, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Whether `reply` answers `query`: a response with the same id.
fn answers(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= 12 && query.len() >= 2 && reply[..2] == query[..2] && reply[2] & 0x80 != 0
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        .to_vec()
        .ok()
}

async fn forward_udp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = match up {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(s) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        if s.connect(up).await.is_err() || s.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            if answers(query, &buf[..n]) {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

async fn forward_tcp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(up).await.ok()?;
            let len = u16::try_from(query.len()).ok()?;
            s.write_all(&len.to_be_bytes()).await.ok()?;
            s.write_all(query).await.ok()?;
            let n = s.read_u16().await.ok()?;
            let mut reply = vec![0u8; usize::from(n)];
            s.read_exact(&mut reply).await.ok()?;
            answers(query, &reply).then_some(reply)
        };
        if let Ok(Some(r)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(r);
        }
    }
    None
}

async fn serve_tcp(
    tcp: tokio::net::TcpListener,
    names: Arc<Names>,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, SocketAddr::V4(from))) = tcp.accept().await else {
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let (names, ups) = (names.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _ = tcp_session(stream, *from.ip(), &names, &ups).await;
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection until it idles or closes.
async fn tcp_session(
    mut s: tokio::net::TcpStream,
    from: Ipv4Addr,
    names: &Names,
    upstreams: &[SocketAddr],
) -> Option<()> {
    loop {
        let n = tokio::time::timeout(IDLE, s.read_u16()).await.ok()?.ok()?;
        let mut q = vec![0u8; usize::from(n)];
        tokio::time::timeout(IDLE, s.read_exact(&mut q))
            .await
            .ok()?
            .ok()?;
        let table = names.current()?;
        let reply = match answer(&table, from, &q) {
            Reply::Answer(b) => b,
            Reply::Drop => return None,
            Reply::Forward => match forward_tcp(upstreams, &q).await {
                Some(r) => r,
                None => servfail(&q)?,
            },
        };
        let len = u16::try_from(reply.len()).ok()?;
        s.write_all(&len.to_be_bytes()).await.ok()?;
        s.write_all(&reply).await.ok()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_the_hosts_nameservers_but_never_the_gateway() {
        let gw = Ipv4Addr::new(10, 89, 0, 1);
        assert_eq!(
            upstreams(
                "# x\nnameserver 127.0.0.53\nnameserver 10.89.0.1\nnameserver ::1\nnameserver bad\nsearch lan\n",
                gw
            ),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}")),
                "[::1]:53".parse().unwrap_or_else(|e| panic!("{e}")),
            ]
        );
        assert!(upstreams("", gw).is_empty());
    }

    #[test]
    fn only_a_response_with_the_querys_id_is_relayed() {
        let q = [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut r = q;
        r[2] = 0x81;
        assert!(answers(&q, &r));
        assert!(!answers(&q, &q), "a query is no answer");
        r[1] = 0x35;
        assert!(!answers(&q, &r), "another id");
        assert!(!answers(&q, &r[..5]));
        assert!(servfail(&[]).is_none());
    }
}
