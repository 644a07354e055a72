//! Real etcd (Debian's etcd-server) for the control plane's tests: one
//! member or a cluster of several, on loopback ports of the test's
//! network namespace, each member with its data in a temp dir; killed on drop.
//!
//! By default clients reach it as production does: TLS with a serving
//! certificate from a CA made here and `--client-cert-auth` (a client
//! shows a certificate from the same CA); [`Etcd::start_plain`] is the
//! `--insecure-store` case. Health is read on a separate plain metrics
//! listener.

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
    /// The TLS material, when clients must use TLS.
    pub tls: Option<EtcdTls>,
}

/// PEM files for a TLS etcd: the CA, and a client certificate and key
/// from it (the server's own are beside them).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn pem_files(dir: &Path, host: &str) -> Result<(EtcdTls, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let leaf = |names: Vec<String>, purpose| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(names).map_err(e)?;
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec![host.to_string(), "localhost".into()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        vec!["bulkhead-server".into()],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let tls = EtcdTls {
        ca: write("etcd-ca.crt", &ca_cert.pem())?,
        client_cert: write("etcd-client.crt", &client_cert)?,
        client_key: write("etcd-client.key", &client_key)?,
    };
    Ok((
        tls,
        write("etcd-server.crt", &server_cert)?,
        write("etcd-server.key", &server_key)?,
    ))
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
    /// namespace; `command_in` puts them in another), data under `dir`;
    /// clients over TLS with client certificates.
    pub fn start(dir: &Path, host: &str, n: usize, netns: Option<&Path>) -> Result<Etcd, String> {
        Self::start_with(dir, host, n, netns, true)
    }

    /// The same, reached in the clear (`etcd://`, `--insecure-store`).
    pub fn start_plain(
        dir: &Path,
        host: &str,
        n: usize,
        netns: Option<&Path>,
    ) -> Result<Etcd, String> {
        Self::start_with(dir, host, n, netns, false)
    }

    fn start_with(
        dir: &Path,
        host: &str,
        n: usize,
        netns: Option<&Path>,
        tls: bool,
    ) -> Result<Etcd, String> {
        let etcd = PathBuf::from("/usr/bin/etcd");
        if !etcd.exists() {
            return Err("no /usr/bin/etcd (apt-get install etcd-server)".into());
        }
        let (tls, server_pem) = if tls {
            let (t, cert, key) = pem_files(dir, host)?;
            (Some(t), Some((cert, key)))
        } else {
            (None, None)
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_, String>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("m{i}=http://{host}:{peer}"))
            .collect();
        let mut members = Vec::new();
        let mut clients = Vec::new();
        let mut metrics = Vec::new();
        for (i, (client, peer, metric)) in ports.iter().enumerate() {
            let data = dir.join(format!("etcd-m{i}"));
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))
                .map_err(|e| e.to_string())?;
            let mut c = Command::new(&etcd);
            c.args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(&data);
            c.args([
                "--listen-client-urls",
                &format!("{scheme}://{host}:{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://{host}:{client}"),
                "--listen-metrics-urls",
                &format!("http://{host}:{metric}"),
            ]);
            if let (Some(t), Some((cert, key))) = (&tls, &server_pem) {
                c.arg("--cert-file")
                    .arg(cert)
                    .arg("--key-file")
                    .arg(key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
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
            metrics.push(format!("{host}:{metric}"));
        }
        let e = Etcd {
            members,
            clients,
            tls,
        };
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
        while !metrics.iter().all(check) {
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

    /// `etcds://m1,m2,...` (`etcd://` when plain) for `bulkhead server --store`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}", self.clients.join(","))
    }

    /// `bulkhead server`'s flags for this store: the URL and, with TLS,
    /// the CA and client certificate; plain, `--insecure-store`.
    pub fn server_args(&self) -> Vec<String> {
        let mut args = vec!["--store".to_string(), self.url()];
        match &self.tls {
            Some(t) => {
                for (flag, path) in [
                    ("--store-ca", &t.ca),
                    ("--store-cert", &t.client_cert),
                    ("--store-key", &t.client_key),
                ] {
                    args.push(flag.into());
                    args.push(path.display().to_string());
                }
            }
            None => args.push("--insecure-store".into()),
        }
        args
    }
}
