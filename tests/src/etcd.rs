//! Real etcd (Debian's etcd-server) for the control plane's tests: one
//! member or a cluster of several, on loopback ports of the test's
//! network namespace, each member with its data in a temp dir; killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Etcd {
    members: Vec<Child>,
    /// host:port of each member's client URL.
    pub clients: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// A port the kernel just handed out here (free, as far as anyone knows;
/// a fresh namespace has all of them free).
fn free_port() -> Result<u16, String> {
    TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// etcd's `/health` on a client URL says `"health":"true"`.
fn healthy(client: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &match client.parse() {
            Ok(a) => a,
            Err(_) => return false,
        },
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {client}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Etcd {
    /// `n` members on `host` (an address of the calling thread's network
    /// namespace; `command_in` puts them in another), data under `dir`.
    pub fn start(dir: &Path, host: &str, n: usize, netns: Option<&Path>) -> Result<Etcd, String> {
        let etcd = PathBuf::from("/usr/bin/etcd");
        if !etcd.exists() {
            return Err("no /usr/bin/etcd (apt-get install etcd-server)".into());
        }
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, String>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{host}:{peer}"))
            .collect();
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.join(format!("etcd-m{i}"));
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))
                .map_err(|e| e.to_string())?;
            let mut c = Command::new(&etcd);
            c.args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(&data);
            c.args([
                "--listen-client-urls",
                &format!("http://{host}:{client}"),
                "--advertise-client-urls",
                &format!("http://{host}:{client}"),
            ]);
            c.args([
                "--listen-peer-urls",
                &format!("http://{host}:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{host}:{peer}"),
            ]);
            c.args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bulkhead-test",
            ]);
            c.args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
            c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            if let Some(ns) = netns {
                crate::netns::command_in(&mut c, ns)?;
            }
            members.push(c.spawn().map_err(|e| format!("etcd: {e}"))?);
            clients.push(format!("{host}:{client}"));
        }
        let e = Etcd { members, clients };
        let start = Instant::now();
        let check = |c: &String| -> bool {
            match netns {
                Some(ns) => {
                    let (ns, c) = (ns.to_path_buf(), c.clone());
                    std::thread::spawn(move || crate::netns::enter(&ns).is_ok() && healthy(&c))
                        .join()
                        .unwrap_or(false)
                }
                None => healthy(c),
            }
        };
        while !e.clients.iter().all(check) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "etcd not healthy within 30 s (logs in {})",
                    dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(e)
    }

    /// `etcd://m1,m2,...` for `bulkhead server --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }
}
