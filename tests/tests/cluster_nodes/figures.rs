//! Figures of a tenant's network (benchmarks, not timed tests): TCP
//! throughput and connect latency between two of a tenant's instances on
//! one node, across nodes through the overlay, and host to host over the
//! same link. Each end is a thread that entered that end's network
//! namespace (an instance's: its container's first process's), so no
//! container process or exec is in the way: what is measured is the path.
//! `cargo bench -p bulkhead-tests --bench overlay` prints full runs for the
//! WireGuard overlay and `--overlay plain`; the overlay test runs the same
//! code small, so it keeps working and every transfer is checked whole.

use super::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};

/// How much each path is measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    pub(super) bytes: usize,
    pub(super) transfers: usize,
    pub(super) connects: usize,
}

/// What the test runs: a few MiB, to keep the code working.
pub(super) const SMOKE: Sizes = Sizes {
    bytes: 8 << 20,
    transfers: 2,
    connects: 20,
};

/// What the bench runs.
#[allow(dead_code)] // the tests run SMOKE
pub(super) const FULL: Sizes = Sizes {
    bytes: 256 << 20,
    transfers: 7,
    connects: 500,
};

/// The server's port in every end's namespace.
const PORT: u16 = 5201;

/// One end: a network namespace and the address it is reached at there.
pub(super) struct End {
    ns: PathBuf,
    addr: Ipv4Addr,
}

/// One path's samples.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) path: String,
    /// The path's very first connect (a tunnel's handshake, a neighbour
    /// resolved), before the warm-up transfer that the samples follow.
    pub(super) first_connect_us: f64,
    pub(super) mib_s: Vec<f64>,
    pub(super) connect_us: Vec<f64>,
}

/// Node host `i` (its lan address).
pub(super) fn host_end(c: &Cluster, i: usize) -> End {
    End {
        ns: c.hosts[i].path(),
        addr: Ipv4Addr::new(10, 78, 0, 11 + u8::try_from(i).unwrap()),
    }
}

/// Running instance `index` of the tenant's `service`: its container's
/// first process (the pid file crun wrote in its node's data dir) holds the
/// namespace.
pub(super) fn instance_end(c: &Cluster, service: &str, index: u64) -> End {
    let all = c.api(&c.tenant, &["instance", "ls"]);
    let i = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == service && i["index"] == index && i["state"] == "running")
        .unwrap_or_else(|| panic!("{service}/{index} is not running: {all}"))
        .clone();
    let node = i["node"]
        .as_str()
        .and_then(|n| n.strip_prefix('n'))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap()
        - 1;
    let name = format!("bh-{}-{index}", i["fence"]);
    let id = c
        .local(node)
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("no local workload {name} on n{}", node + 1));
    let pid_file = c.data[node].join("workloads").join(&id).join("bundle/pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    End {
        ns: PathBuf::from(format!("/proc/{}/ns/net", pid.trim())),
        addr: i["ip"].as_str().unwrap().parse().unwrap(),
    }
}

/// A server in `ns`: drains each connection and answers with how many
/// bytes it got; a connection that opens with `Q` ends it.
fn serve(ns: PathBuf) -> std::thread::JoinHandle<()> {
    let (ready, listening) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let l = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
        ready.send(()).unwrap();
        let mut buf = vec![0u8; 1 << 18];
        for mut conn in l.incoming().flatten() {
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if total == 0 && buf[0] == b'Q' => return,
                    Ok(n) => total += n as u64,
                }
            }
            let _ = conn.write_all(&total.to_le_bytes());
        }
    });
    listening.recv().unwrap();
    server
}

/// `transfers` transfers of `bytes` (each timed from connect to the
/// server's count, which must be all of it), then `connects` connects
/// (each waited out before the next).
pub(super) fn measure(path: &str, from: &End, to: &End, sizes: Sizes) -> Row {
    let server = serve(to.ns.clone());
    let dst = SocketAddrV4::new(to.addr, PORT);
    let ns = from.ns.clone();
    let (first_connect_us, mib_s, connect_us) = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let chunk = vec![0u8; 1 << 18];
        let t = Instant::now();
        let mut warm = TcpStream::connect(dst).unwrap();
        let first_connect_us = t.elapsed().as_secs_f64() * 1e6;
        warm.write_all(&chunk).unwrap();
        warm.shutdown(std::net::Shutdown::Write).unwrap();
        warm.read_exact(&mut [0u8; 8]).unwrap();
        let mut mib_s = Vec::new();
        for _ in 0..sizes.transfers {
            let t = Instant::now();
            let mut s = TcpStream::connect(dst).unwrap();
            let mut left = sizes.bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = [0u8; 8];
            s.read_exact(&mut got).unwrap();
            assert_eq!(
                u64::from_le_bytes(got),
                sizes.bytes as u64,
                "{dst} got every byte"
            );
            mib_s.push(sizes.bytes as f64 / f64::from(1 << 20) / t.elapsed().as_secs_f64());
        }
        let mut connect_us = Vec::new();
        for _ in 0..sizes.connects {
            let t = Instant::now();
            let mut s = TcpStream::connect(dst).unwrap();
            connect_us.push(t.elapsed().as_secs_f64() * 1e6);
            // Until the server is done with it: the next one finds it listening.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = s.read(&mut [0u8; 8]);
        }
        TcpStream::connect(dst).unwrap().write_all(b"Q").unwrap();
        (first_connect_us, mib_s, connect_us)
    })
    .join()
    .unwrap();
    server.join().unwrap();
    Row {
        path: path.to_string(),
        first_connect_us,
        mib_s,
        connect_us,
    }
}

/// The `pct`th percentile of `v` (nearest rank).
fn percentile(v: &[f64], pct: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (pct * s.len()).div_ceil(100).clamp(1, s.len().max(1));
    s.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// Medians (and p90 of the connects) as a table.
pub(super) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<34} {:>10} {:>10} {:>12} {:>12} {:>14}\n",
        "path", "MiB/s", "runs", "connect µs", "p90 µs", "first conn µs"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>10.0} {:>10} {:>12.0} {:>12.0} {:>14.0}\n",
            r.path,
            percentile(&r.mib_s, 50),
            r.mib_s.len(),
            percentile(&r.connect_us, 50),
            percentile(&r.connect_us, 90),
            r.first_connect_us,
        ));
    }
    out
}

/// Three instances of the tenant (two on n1, one on n2), the three paths
/// measured, the instances removed again.
pub(super) fn figures(c: &Cluster, sizes: Sizes) -> Vec<Row> {
    let before: Vec<usize> = (0..c.hosts.len()).map(|i| c.local(i).len()).collect();
    for (name, host) in [("fig-srv", "n1"), ("fig-near", "n1"), ("fig-far", "n2")] {
        deploy(c, &format!("name: {name}\nimage: {}\nruntime: container\ncpus: 0.1\nmemory: 32m\nplacement: {{labels: {{host: {host}}}}}\ncommand: [sleep, '3600']\n", run_cases::IMAGE));
    }
    let running = |s: &str| {
        c.api(&c.tenant, &["instance", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["service"] == s && i["state"] == "running")
    };
    wait_for(
        c,
        "the figures' instances running",
        Duration::from_secs(60),
        || {
            ["fig-srv", "fig-near", "fig-far"]
                .iter()
                .all(|s| running(s))
        },
    );
    let srv = instance_end(c, "fig-srv", 0);
    let rows = vec![
        measure(
            "instance to instance, one node",
            &instance_end(c, "fig-near", 0),
            &srv,
            sizes,
        ),
        measure(
            "instance to instance, across nodes",
            &instance_end(c, "fig-far", 0),
            &srv,
            sizes,
        ),
        measure(
            "host to host, same link",
            &host_end(c, 1),
            &host_end(c, 0),
            sizes,
        ),
    ];
    for s in ["fig-srv", "fig-near", "fig-far"] {
        c.api(&c.tenant, &["service", "rm", s]);
    }
    wait_for(
        c,
        "the figures' instances gone",
        Duration::from_secs(60),
        || (0..c.hosts.len()).all(|i| c.local(i).len() == before[i]),
    );
    rows
}

/// A cluster of its own (three hosts, the overlay test's timing; the
/// WireGuard overlay or `--overlay plain`) and its figures: the bench's.
#[allow(dead_code)] // the tests call `figures` on their own cluster
pub(super) fn on_own_cluster(plain: bool, sizes: Sizes) -> Vec<Row> {
    let _l = lock();
    bulkhead_images::debian::ensure_packages(&["wireguard-tools"], &mut |m| eprintln!("{m}"))
        .unwrap();
    let mut timing: Vec<&'static str> = super::overlay::TIMING.to_vec();
    if plain {
        timing.extend(["--overlay", "plain"]);
    }
    let c = setup(Shape {
        hosts: 3,
        etcd_members: 0,
        fd_limit: None,
        timing: Box::leak(timing.into_boxed_slice()),
    });
    let _reaper = super::overlay::Reaper::of(&c);
    let rows = figures(&c, sizes);
    // Nothing of the tenant's left on the hosts (bridges, tunnels,
    // resolvers) before the daemons go.
    wait_for(
        &c,
        "the tenant's networks gone",
        Duration::from_secs(60),
        || {
            (0..c.hosts.len()).all(|i| {
                super::overlay::node_networks(&c, i)
                    .iter()
                    .all(|n| n["tenant"].is_null())
            })
        },
    );
    rows
}
