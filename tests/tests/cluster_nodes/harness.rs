//! The cluster test's harness: a lan namespace with a counter on "the
//! internet", servers and node daemons started and killed, waits.

use super::*;

pub(super) const LAN_ADDR: &str = "10.78.0.1";
/// The counter stands on "the internet" (a TEST-NET-2 address in the lan
/// namespace): workloads reach no private address, and never the server's.
pub(super) const COUNTER_ADDR: &str = "198.51.100.9";
pub(super) const COUNTER_PORT: u16 = 9000;

/// One connection to the counter: who, from its first word to its last.
#[derive(Debug, Clone)]
pub(super) struct Visit {
    pub(super) who: String,
    pub(super) from: Instant,
    pub(super) until: Option<Instant>,
}

/// The listener every instance connects to, on the lan.
#[derive(Clone, Default)]
pub(super) struct Counter(pub(super) Arc<Mutex<Vec<Visit>>>);

impl Counter {
    pub(super) fn start(lan: &NetNs) -> Counter {
        let c = Counter::default();
        let (visits, path) = (Arc::clone(&c.0), lan.path());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            netns::enter(&path).unwrap();
            let l = TcpListener::bind((COUNTER_ADDR, COUNTER_PORT)).unwrap();
            tx.send(()).unwrap();
            for conn in l.incoming().flatten() {
                let visits = Arc::clone(&visits);
                std::thread::spawn(move || {
                    // A copy says who it is every 200 ms. Silent for 2 s (a
                    // FIN can be lost with its namespace) it counts as gone
                    // since its last word, and as back if it speaks again;
                    // the connection is never closed from this end.
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut r = BufReader::new(conn);
                    let mut who = String::new();
                    if r.read_line(&mut who).unwrap_or(0) == 0 {
                        return;
                    }
                    let who = who.trim().to_string();
                    let open = |visits: &Arc<Mutex<Vec<Visit>>>| {
                        let mut v = visits.lock().unwrap();
                        v.push(Visit {
                            who: who.clone(),
                            from: Instant::now(),
                            until: None,
                        });
                        v.len() - 1
                    };
                    let mut slot = Some(open(&visits));
                    let mut line = String::new();
                    let mut last = Instant::now();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(n) if n > 0 => {
                                last = Instant::now();
                                if slot.is_none() {
                                    slot = Some(open(&visits));
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                if let Some(i) = slot.take() {
                                    visits.lock().unwrap()[i].until = Some(last);
                                }
                            }
                            _ => break,
                        }
                    }
                    if let Some(i) = slot {
                        visits.lock().unwrap()[i].until = Some(last);
                    }
                });
            }
        });
        rx.recv().unwrap();
        c
    }

    /// The most copies of `service` connected at once since `since`.
    pub(super) fn most_at_once(&self, service: &str, since: Instant) -> usize {
        let v = self.0.lock().unwrap().clone();
        let mine: Vec<&Visit> = v
            .iter()
            .filter(|x| {
                x.who.starts_with(&format!("{service}/")) && x.until.is_none_or(|u| u > since)
            })
            .collect();
        // At each connect: how many were connected then.
        mine.iter()
            .map(|a| {
                mine.iter()
                    .filter(|b| {
                        b.from <= a.from.max(since) && b.until.is_none_or(|u| u > a.from.max(since))
                    })
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Who of `service` is connected now.
    pub(super) fn connected(&self, service: &str) -> Vec<String> {
        let mut who: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.until.is_none() && x.who.starts_with(&format!("{service}/")))
            .map(|x| x.who.clone())
            .collect();
        who.sort();
        who
    }
}

pub(super) struct Cluster {
    pub(super) lan: NetNs,
    pub(super) hosts: Vec<NetNs>,
    pub(super) data: Vec<PathBuf>,
    pub(super) servers: Vec<Option<Proc>>,
    pub(super) server_args: Vec<Vec<String>>,
    pub(super) nodes: Vec<Option<Proc>>,
    pub(super) admin: String,
    pub(super) tenant: String,
    pub(super) join: String,
    pub(super) url: String,
    pub(super) counter: Counter,
    pub(super) fd_limit: Option<u64>,
    pub(super) _etcd: Option<Etcd>,
    pub(super) _dir: tempfile::TempDir,
}

impl Cluster {
    /// `bulkhead ARGS` in `ns` with `token` in the environment (never argv).
    pub(super) fn bh_as(&self, ns: &NetNs, token: &str, args: &[&str]) -> Output {
        let mut c = Command::new(bulkhead());
        c.args(args)
            .env("BULKHEAD_TOKEN", token)
            .stdin(Stdio::null());
        netns::command_in(&mut c, &ns.path()).unwrap();
        c.output().unwrap()
    }

    /// `instance exec SERVICE INDEX -- ARGS` through the server, as `token`.
    pub(super) fn exec_in(&self, token: &str, service: &str, index: u64, args: &[&str]) -> Output {
        let index = index.to_string();
        let mut all = vec![
            "instance", "exec", service, &index, "--server", &self.url, "--",
        ];
        all.extend(args);
        self.bh_as(&self.lan, token, &all)
    }

    pub(super) fn api(&self, token: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--server", &self.url, "--format", "json"]);
        let o = self.bh_as(&self.lan, token, &all);
        assert!(
            o.status.success(),
            "bulkhead {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    pub(super) fn start_node(&mut self, i: usize) {
        let mut c = Command::new(bulkhead());
        let name = format!("n{}", i + 1);
        // Plain http on the test's own lan (the walls test covers TLS).
        c.args([
            "node",
            "--insecure",
            "--server",
            &self.url,
            "--name",
            &name,
            "--cpus",
            "4",
            "--memory",
            "4g",
            "--runtime",
            "container",
            "--label",
            &format!("host={name}"),
        ]);
        c.env("BULKHEAD_DATA", &self.data[i])
            .env("BULKHEAD_JOIN_TOKEN", &self.join)
            .stdin(Stdio::null());
        netns::command_in(&mut c, &self.hosts[i].path()).unwrap();
        with_fd_limit(&mut c, self.fd_limit);
        self.nodes[i] = Some(Proc(c.spawn().unwrap()));
    }

    pub(super) fn signal_node(&self, i: usize, sig: nix::sys::signal::Signal) {
        let p = self.nodes[i].as_ref().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(p.0.id()).unwrap()),
            sig,
        )
        .unwrap();
    }

    /// (service, index, node, state, restarts, fence) of the tenant's instances.
    pub(super) fn instances(&self) -> Vec<(String, u64, String, String, u64, u64)> {
        let v = self.api(&self.tenant, &["instance", "ls"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["service"].as_str().unwrap().to_string(),
                    i["index"].as_u64().unwrap(),
                    i["node"].as_str().unwrap().to_string(),
                    i["state"].as_str().unwrap().to_string(),
                    i["restarts"].as_u64().unwrap(),
                    i["fence"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Running instances of `service` per node.
    pub(super) fn running_per_node(&self, service: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (s, _, node, state, _, _) in self.instances() {
            if s == service && state == "running" {
                *m.entry(node).or_default() += 1;
            }
        }
        m
    }

    /// What the server and each node hold, for a failure's message.
    pub(super) fn diagnose(&self) -> String {
        let mut out = format!(
            "instances: {:?}\ncounter: {:?}\n",
            self.instances(),
            self.counter
                .0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
        );
        for (i, d) in self.data.iter().enumerate() {
            let o = Command::new(bulkhead())
                .env("BULKHEAD_DATA", d)
                .args(["ps", "-a"])
                .output()
                .unwrap();
            out += &format!(
                "n{} workloads:\n{}\n",
                i + 1,
                String::from_utf8_lossy(&o.stdout)
            );
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000)
                .unwrap_or(0);
            for l in std::fs::read_dir(d.join("node/leases"))
                .into_iter()
                .flatten()
                .flatten()
            {
                out += &format!(
                    "  lease {}: {} (now {now})\n",
                    l.file_name().to_string_lossy(),
                    std::fs::read_to_string(l.path()).unwrap_or_default().trim()
                );
            }
            for w in std::fs::read_dir(d.join("workloads"))
                .into_iter()
                .flatten()
                .flatten()
                .take(3)
            {
                for f in ["log", "supervisor.log", "exit.json"] {
                    let text = std::fs::read_to_string(w.path().join(f)).unwrap_or_default();
                    out += &format!(
                        "  {}/{f}: {}\n",
                        w.file_name().to_string_lossy(),
                        text.chars()
                            .rev()
                            .take(400)
                            .collect::<String>()
                            .chars()
                            .rev()
                            .collect::<String>()
                    );
                }
            }
        }
        out
    }

    /// The local workloads of node `i` that run (name, id).
    pub(super) fn local(&self, i: usize) -> Vec<(String, String)> {
        let o = Command::new(bulkhead())
            .env("BULKHEAD_DATA", &self.data[i])
            .args(["ps", "--format", "json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_string(),
                    w["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

pub(super) fn signal_server(c: &Cluster, i: usize, sig: nix::sys::signal::Signal) {
    let p = c.servers[i].as_ref().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(p.0.id()).unwrap()),
        sig,
    )
    .unwrap();
}

/// One at a time: they share the namespaces' names.
pub(super) fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for `cond` (polled every 200 ms) up to `limit`; the time it took.
pub(super) fn wait_for(
    c: &Cluster,
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {what}\n{}",
            c.diagnose()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// The shape of a test cluster.
pub(super) struct Shape {
    pub(super) hosts: usize,
    /// 0: a file store and one server; else etcd members (and two servers).
    pub(super) etcd_members: usize,
    /// Server flags: timing and backoff.
    pub(super) timing: &'static [&'static str],
    /// The daemons' descriptor limit (soft and hard), as a service manager
    /// would set it; `None`: the test's own.
    pub(super) fd_limit: Option<u64>,
}

/// Makes `cmd` start with `limit` descriptors (soft and hard).
pub(super) fn with_fd_limit(cmd: &mut Command, limit: Option<u64>) {
    let Some(limit) = limit else { return };
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
}

/// Starts server `i` (its flags kept in the cluster) and waits for it to listen.
pub(super) fn start_server(c: &mut Cluster, i: usize) {
    let mut cmd = Command::new(bulkhead());
    cmd.args(&c.server_args[i])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    netns::command_in(&mut cmd, &c.lan.path()).unwrap();
    with_fd_limit(&mut cmd, c.fd_limit);
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "server {i} ended before it listened"
        );
        eprint!("server{i}: {line}");
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            eprintln!("server{i}: {line}");
        }
    });
    c.servers[i] = Some(Proc(child));
}

pub(super) fn setup(shape: Shape) -> Cluster {
    bulkhead_images::debian::ensure_packages(
        &["crun", "nftables", "iproute2", "etcd-server"],
        &mut |m| eprintln!("{m}"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lan = NetNs::create("bhtest-clan").unwrap();
    lan.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    lan.ip(&["address", "add", &format!("{LAN_ADDR}/24"), "dev", "br0"])
        .unwrap();
    lan.ip(&[
        "address",
        "add",
        &format!("{COUNTER_ADDR}/32"),
        "dev",
        "br0",
    ])
    .unwrap();
    lan.ip(&["link", "set", "br0", "up"]).unwrap();
    let mut hosts = Vec::new();
    let mut data = Vec::new();
    for i in 0..shape.hosts {
        let h = NetNs::create(&format!("bhtest-cn{}", i + 1)).unwrap();
        let (inside, outside) = ("eth0".to_string(), format!("veth{i}"));
        lan.ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &h.name,
        ])
        .unwrap();
        lan.ip(&["link", "set", &outside, "master", "br0", "up"])
            .unwrap();
        h.ip(&[
            "address",
            "add",
            &format!("10.78.0.{}/24", 11 + i),
            "dev",
            &inside,
        ])
        .unwrap();
        h.ip(&["link", "set", &inside, "up"]).unwrap();
        h.ip(&["route", "add", "default", "via", LAN_ADDR]).unwrap();
        let d = dir.path().join(format!("n{}", i + 1));
        run_cases::prepare_store(&bulkhead(), &d, false).unwrap();
        hosts.push(h);
        data.push(d);
    }
    let token_file = dir.path().join("admin-token");
    let (store, n_servers, etcd) = if shape.etcd_members == 0 {
        (
            vec![
                "--store".to_string(),
                format!("file:{}", dir.path().join("cluster.redb").display()),
            ],
            1,
            None,
        )
    } else {
        let e = Etcd::start(dir.path(), LAN_ADDR, shape.etcd_members, Some(&lan.path())).unwrap();
        (e.server_args(), 2, Some(e))
    };
    let server_args: Vec<Vec<String>> = (0..n_servers)
        .map(|i| {
            // Plain HTTP on the test's own lan (--insecure): the walls
            // test covers the default TLS.
            let mut a: Vec<String> = [
                "server",
                "--insecure",
                "--listen",
                &format!("{LAN_ADDR}:{}", 7070 + i),
                "--leader-lease",
                "2s",
                "--admin-token-file",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.push(token_file.display().to_string());
            a.extend(store.iter().cloned());
            a.extend(shape.timing.iter().map(|s| s.to_string()));
            a
        })
        .collect();
    let url = (0..n_servers)
        .map(|i| format!("http://{LAN_ADDR}:{}", 7070 + i))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (0..shape.hosts).map(|_| None).collect();
    let mut cl = Cluster {
        lan,
        hosts,
        data,
        servers: vec![None, None],
        server_args,
        nodes,
        admin: String::new(),
        tenant: String::new(),
        join: String::new(),
        url,
        counter: Counter::default(),
        fd_limit: shape.fd_limit,
        _etcd: etcd,
        _dir: dir,
    };
    for i in 0..n_servers {
        start_server(&mut cl, i);
    }
    let start = Instant::now();
    while cl.admin.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no admin token from the first leader"
        );
        std::thread::sleep(Duration::from_millis(100));
        cl.admin = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    cl.tenant = cl.api(
        &cl.admin.clone(),
        &["tenant", "create", "acme", "--runtimes", "container"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = cl.bh_as(
        &cl.lan,
        &cl.admin,
        &["node", "token", "create", "--server", &cl.url],
    );
    assert!(o.status.success(), "{o:?}");
    cl.join = String::from_utf8_lossy(&o.stdout).trim().to_string();
    for i in 0..shape.hosts {
        cl.start_node(i);
    }
    let n = shape.hosts;
    wait_for(&cl, "every node ready", Duration::from_secs(30), || {
        cl.api(&cl.admin, &["node", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["ready"] == true)
            .count()
            == n
    });
    cl
}

pub(super) fn deploy(c: &Cluster, yaml: &str) {
    let f = c._dir.path().join("svc.yaml");
    std::fs::write(&f, yaml).unwrap();
    c.api(&c.tenant, &["deploy", "-f", f.to_str().unwrap()]);
}

/// Each copy connects to the counter and says who it is, every 200 ms.
pub(super) fn web(replicas: u32) -> String {
    format!("name: web\nimage: {}\nruntime: container\nreplicas: {replicas}\ncpus: 0.1\nmemory: 32m\ncommand: [sh, -c, 'echo started $BULKHEAD_SERVICE/$BULKHEAD_INSTANCE; while :; do echo \"$BULKHEAD_SERVICE/$BULKHEAD_INSTANCE/$BULKHEAD_FENCE/$BULKHEAD_NODE\"; sleep 0.2; done | nc {COUNTER_ADDR} {COUNTER_PORT}']\n", run_cases::IMAGE)
}
