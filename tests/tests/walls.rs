//! The walls between tenants, the node they run on and the control plane,
//! tried as an attacker would (issue 20), natively with the container
//! runtime. Everything lives in network namespaces the test makes: a
//! management network (the server, its etcd, a tenant's database on the
//! LAN, the cloud metadata address, and an address standing for the
//! internet) and two node hosts on it.
//!
//! Tenant `evil` runs commands in its own instance through the server, as
//! any tenant can, and tries tenant `acme`'s unpublished port, the store,
//! the server, the metadata service; each listener counts zero while the
//! internet answers. The controls show the checks can fail: acme's own
//! second instance reaches acme's port, an `egress.allow` opens the LAN
//! database (never the store or the server). A second node daemon joining
//! under the first one's name is refused and changes nothing; a node will
//! not send its secrets over http://. Last, the data dirs walked as an
//! unprivileged user show nothing, beside a control file that user can read.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::etcd::Etcd;
use bulkhead_tests::netns::{self, Listener, NetNs};
use bulkhead_tests::{bulkhead, run_cases, Killed as Proc};
use serde_json::Value;

const SERVER: &str = "172.31.9.1";
const ETCD: &str = "172.31.9.2";
const LAN_DB: &str = "172.31.9.3";
const NODE1: &str = "172.31.9.11";
const NODE2: &str = "172.31.9.12";
const METADATA: &str = "169.254.169.254";
const INTERNET: &str = "198.51.100.20";
const API: &str = "https://172.31.9.1:7443";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "{:?} stdout={:?} stderr={:?}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn nc_get(ip: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}; echo")
}

struct World {
    mgmt: NetNs,
    hosts: Vec<NetNs>,
    dir: tempfile::TempDir,
    cacert: PathBuf,
    admin: String,
}

impl World {
    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    /// `bulkhead ARGS` on the management network, trusting the server's certificate.
    fn bh(&self, token: &str, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--server", API]);
        let mut c = Command::new(bulkhead());
        c.args(&all)
            .env("BULKHEAD_TOKEN", token)
            .env("BULKHEAD_CACERT", &self.cacert)
            .stdin(Stdio::null());
        netns::command_in(&mut c, &self.mgmt.path()).unwrap();
        c.output().unwrap()
    }

    fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let o = self.bh(token, &all);
        assert!(o.status.success(), "bulkhead {args:?}: {}", show(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// A node daemon on host `i` (its own data dir) as `name`, joining
    /// with `join` (from the environment, as a service manager gives it).
    fn node(&self, i: usize, name: &str, join: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(bulkhead());
        c.args([
            "node",
            "--name",
            name,
            "--runtime",
            "container",
            "--cpus",
            "4",
            "--memory",
            "4g",
        ]);
        c.args(extra)
            .env("BULKHEAD_JOIN_TOKEN", join)
            .env("BULKHEAD_DATA", self.data(i))
            .stdin(Stdio::null());
        netns::command_in(&mut c, &self.hosts[i].path()).unwrap();
        c
    }

    /// The local runtime of host `i`.
    fn local(&self, i: usize, args: &[&str]) -> Output {
        let mut c = Command::new(bulkhead());
        c.args(args)
            .env("BULKHEAD_DATA", self.data(i))
            .stdin(Stdio::null());
        netns::command_in(&mut c, &self.hosts[i].path()).unwrap();
        c.output().unwrap()
    }

    /// Runs `script` in `service`'s instance 0 through the server, as its tenant.
    fn exec(&self, token: &str, service: &str, script: &str) -> Output {
        self.bh(
            token,
            &["instance", "exec", service, "0", "--", "sh", "-c", script],
        )
    }

    fn nodes(&self) -> Value {
        let mut v = self.json(&self.admin, &["node", "ls"]);
        v.as_array_mut()
            .unwrap()
            .iter_mut()
            .for_each(|n| n["heartbeat_age_ms"] = Value::Null); // the clock moves on
        v
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deploy(w: &World, token: &str, yaml: &str) {
    let f = w.dir.path().join("svc.yaml");
    std::fs::write(&f, yaml).unwrap();
    let o = w.bh(token, &["deploy", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "deploy {yaml}: {}", show(&o));
}

fn service(name: &str, command: &str, extra: &str) -> String {
    format!("name: {name}\nimage: {}\nruntime: container\ncpus: 0.1\nmemory: 32m\ncommand: [sh, -c, '{command}']\n{extra}", run_cases::IMAGE)
}

/// Everything readable under `dir` as an unprivileged user (no groups).
fn readable_by(user: (u32, u32), dir: &Path) -> Vec<String> {
    let o = Command::new("setpriv")
        .args([
            "--reuid",
            &user.0.to_string(),
            "--regid",
            &user.1.to_string(),
            "--clear-groups",
            "find",
        ])
        .arg(dir)
        .args(["-readable", "-print"])
        .output()
        .unwrap();
    text(&o.stdout).lines().map(str::to_string).collect()
}

/// The unprivileged test user (`tests/setup-test-user`, which `make test` runs too).
fn test_user() -> (u32, u32) {
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, "bulkhead-test"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| text(&o.stdout).trim().parse().ok())
    };
    if id("-u").is_none() {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup-test-user");
        assert!(
            Command::new(&setup).status().unwrap().success(),
            "{}",
            setup.display()
        );
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// Files under `root` whose mode lets group or others in, skipping what
/// images own (trees, disks, blobs: modes from the image, under 0700 dirs).
fn open_entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let image_content = ["trees/", "disks/", "blobs/sha256/", "tmp/"]
            .iter()
            .any(|d| rel.starts_with(d))
            || rel.contains("/rootfs")
            || rel.contains("/upper")
            || rel.contains("/work/")
            || rel.starts_with("workloads/") && rel.ends_with("/etc");
        if m.file_type().is_symlink() || image_content {
            continue;
        }
        if m.permissions().mode() & 0o077 != 0
            && !rel.ends_with("/etc/hosts")
            && !rel.ends_with("/etc/hostname")
            && !rel.ends_with("/etc/resolv.conf")
        {
            out.push(format!("{rel} {:o}", m.permissions().mode() & 0o7777));
        }
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    out
}

#[test]
fn tenants_reach_neither_each_other_nor_the_node_nor_the_control_plane() {
    bulkhead_images::debian::ensure_packages(
        &["crun", "nftables", "iproute2", "etcd-server"],
        &mut |m| eprintln!("{m}"),
    )
    .unwrap();
    let user = test_user();
    let dir = tempfile::tempdir().unwrap();
    // Others may enter the test's dir: the walk at the end then tests the data dirs' own modes.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The management network and two node hosts on it.
    let mgmt = NetNs::create("bhtest-wmgmt").unwrap();
    mgmt.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    mgmt.ip(&["address", "add", &format!("{SERVER}/24"), "dev", "br0"])
        .unwrap();
    for a in [ETCD, LAN_DB, METADATA, INTERNET] {
        mgmt.ip(&["address", "add", &format!("{a}/32"), "dev", "br0"])
            .unwrap();
    }
    mgmt.ip(&["link", "set", "br0", "up"]).unwrap();
    let mut hosts = Vec::new();
    for (i, addr) in [NODE1, NODE2].iter().enumerate() {
        let h = NetNs::create(&format!("bhtest-wn{}", i + 1)).unwrap();
        let veth = format!("veth{i}");
        mgmt.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &h.name,
        ])
        .unwrap();
        mgmt.ip(&["link", "set", &veth, "master", "br0", "up"])
            .unwrap();
        h.ip(&["address", "add", &format!("{addr}/24"), "dev", "eth0"])
            .unwrap();
        h.ip(&["link", "set", "eth0", "up"]).unwrap();
        h.ip(&["route", "add", "default", "via", SERVER]).unwrap();
        run_cases::prepare_store(&bulkhead(), &dir.path().join(format!("n{}", i + 1)), false)
            .unwrap();
        hosts.push(h);
    }
    // What tenants must never reach, and what they may.
    let listen = |addr: &str, tag: &str| Listener::start(&mgmt, addr, tag).unwrap();
    let (store_standin, server_side, metadata) = (
        listen(&format!("{ETCD}:2379"), "etcd"),
        listen(&format!("{SERVER}:2380"), "server"),
        listen(&format!("{METADATA}:80"), "metadata"),
    );
    let (lan_db, internet) = (
        listen(&format!("{LAN_DB}:5432"), "landb"),
        listen(&format!("{INTERNET}:9000"), "internet"),
    );

    // The control plane: etcd, and a server over it with TLS as it comes:
    // a certificate from the cluster CA it makes. The CLI trusts that CA
    // (the file the server writes); the nodes are given nothing but the
    // join token, whose hash names the CA.
    let etcd = Etcd::start(dir.path(), ETCD, 1, Some(&mgmt.path())).unwrap();
    let token_file = dir.path().join("admin-token");
    let cacert = dir.path().join("cluster-ca.crt");
    let mut server = Command::new(bulkhead());
    server.args(["server", "--listen", &format!("{SERVER}:7443")]);
    // etcd over TLS with a client certificate, as it comes.
    server.args(etcd.server_args());
    server.args([
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--heartbeat-grace",
        "2s",
        "--lease",
        "3s",
        "--stop-time",
        "3s",
    ]);
    server
        .env("BULKHEAD_DATA", dir.path().join("server"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    netns::command_in(&mut server, &mgmt.path()).unwrap();
    let mut child = server.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let _server = Proc(child);
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the server ended before it listened"
        );
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || {
        err.lines()
            .map_while(Result::ok)
            .for_each(|l| eprintln!("server: {l}"))
    });
    let admin = wait_for("the admin token", Duration::from_secs(30), || {
        std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let mut w = World {
        mgmt,
        hosts,
        dir,
        cacert,
        admin,
    };
    let admin = w.admin.clone();
    let acme = w.json(
        &admin,
        &["tenant", "create", "acme", "--runtimes", "container"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let evil = w.json(
        &admin,
        &["tenant", "create", "evil", "--runtimes", "container"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let join = text(&w.bh(&admin, &["node", "token", "create"]).stdout)
        .trim()
        .to_string();

    // No secret over plain http: refused before anything is sent.
    let o = w
        .node(
            0,
            "n1",
            &join,
            &["--server", &format!("http://{SERVER}:7443")],
        )
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o.stderr).contains("refusing to join over http://"),
        "{}",
        show(&o)
    );
    assert_eq!(w.nodes(), Value::Array(vec![]), "nothing joined");

    let _n1 = Proc(
        w.node(
            0,
            "n1",
            &join,
            &["--server", API, "--listen", &format!("{NODE1}:7071")],
        )
        .spawn()
        .unwrap(),
    );
    wait_for("n1 ready", Duration::from_secs(30), || {
        (w.nodes()[0]["ready"] == true).then_some(())
    });

    deploy(
        &w,
        &acme,
        &service(
            "db",
            "mkdir -p /www && echo acme-secret > /www/index.html && exec httpd -f -p 5432 -h /www",
            "ports: ['18080:5432']\n",
        ),
    );
    deploy(&w, &acme, &service("client", "exec sleep 3600", ""));
    deploy(&w, &evil, &service("probe", "exec sleep 3600", ""));
    deploy(
        &w,
        &evil,
        &service(
            "lan",
            "exec sleep 3600",
            "egress: {allow: ['172.31.9.0/24']}\n",
        ),
    );
    let running = |token: &str, n: usize| {
        (w.json(token, &["instance", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["state"] == "running")
            .count()
            == n)
            .then_some(())
    };
    wait_for(
        "acme's and evil's instances running",
        Duration::from_secs(60),
        || running(&acme, 2).and(running(&evil, 2)),
    );

    // One network per tenant: their own bridges and subnets on the node.
    let nets =
        serde_json::from_slice::<Value>(&w.local(0, &["network", "ls", "--format", "json"]).stdout)
            .unwrap();
    let net = |t: &str| {
        nets.as_array()
            .unwrap()
            .iter()
            .find(|n| n["tenant"] == t)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (a, e) = (net("acme"), net("evil"));
    assert!(
        a["workloads"] == 2
            && e["workloads"] == 2
            && a["bridge"] != e["bridge"]
            && a["subnet"] != e["subnet"],
        "{nets}"
    );
    let inspect =
        serde_json::from_slice::<Value>(&w.local(0, &["network", "inspect", "t-evil"]).stdout)
            .unwrap();
    assert!(
        inspect["protected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == &format!("{SERVER}/32"))
            && inspect["protected"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == &format!("{ETCD}/32")),
        "the server and its etcd: {inspect}"
    );
    let addr = text(&w.exec(&acme, "db", "ip -4 -o addr show eth0").stdout);
    let acme_db = addr
        .split_whitespace()
        .skip_while(|f| *f != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string();
    assert!(acme_db.starts_with("10."), "acme's db address: {addr:?}");

    // The control: acme's own instance reaches acme's port; the internet answers evil.
    let o = w.exec(&acme, "client", &nc_get(&acme_db, 5432));
    assert!(
        text(&o.stdout).contains("acme-secret"),
        "acme reaches its own db: {}",
        show(&o)
    );
    // Names: acme's client finds db by its service name and the long
    // forms, and reaches it by name; evil's instance resolves none of
    // acme's names (its resolver knows evil's services only), and
    // `.internal` never goes to the host's resolvers.
    let names = format!(
        "nslookup db; nslookup db.acme.internal; nslookup 0.db; {}",
        nc_get("db", 5432)
    );
    // `db` and its long form name db's service address, `0.db` the
    // instance; by name, the client reaches db through the service
    // address (translated on the node, back to the same bridge).
    let out = wait_for("acme's names", Duration::from_secs(30), || {
        let out = text(&w.exec(&acme, "client", &names).stdout);
        let addrs: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Address: "))
            .collect();
        (addrs.len() == 3 && addrs[0] == addrs[1] && addrs[0] != acme_db && addrs[2] == acme_db)
            .then_some(out)
    });
    assert!(out.contains("acme-secret"), "db reached by name: {out}");
    let o = w.exec(
        &evil,
        "probe",
        "nslookup db.acme.internal; nslookup db; echo tried",
    );
    let out = text(&o.stdout);
    assert!(
        out.contains("tried") && out.matches("NXDOMAIN").count() >= 3 && !out.contains(&acme_db),
        "{}",
        show(&o)
    );
    // acme's published port (no address given): on the node's public
    // address, from the other host and from the node itself; never on the
    // node's loopback, where its own services live.
    let from_host = |i: usize, ip: &str| {
        let mut c = Command::new("/bin/busybox");
        c.args([
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {ip} 18080; echo"),
        ]);
        netns::command_in(&mut c, &w.hosts[i].path()).unwrap();
        text(&c.output().unwrap().stdout)
    };
    assert!(from_host(1, NODE1).contains("acme-secret"), "from the LAN");
    assert!(from_host(0, NODE1).contains("acme-secret"), "from the node");
    assert!(
        !from_host(0, "127.0.0.1").contains("acme-secret"),
        "never on the node's loopback"
    );
    // The attacks, from evil's instance.
    let attacks = [
        (acme_db.as_str(), 5432),
        (ETCD, 2379),
        (SERVER, 2380),
        (SERVER, 7443),
        (METADATA, 80),
        (NODE1, 7071),
        (LAN_DB, 5432),
        (INTERNET, 9000),
    ];
    let script: Vec<String> = attacks.iter().map(|(ip, port)| nc_get(ip, *port)).collect();
    let o = w.exec(&evil, "probe", &script.join("; "));
    let out = text(&o.stdout);
    assert!(
        out.contains("from-internet")
            && !out.contains("acme-secret")
            && !out.contains("from-landb")
            && !out.contains("HTTP/1.1"),
        "{}",
        show(&o)
    );
    // An allowed range opens the LAN database, never the store or the server in it.
    let o = w.exec(
        &evil,
        "lan",
        &[
            nc_get(LAN_DB, 5432),
            nc_get(ETCD, 2379),
            nc_get(SERVER, 2380),
            nc_get(METADATA, 80),
        ]
        .join("; "),
    );
    assert!(text(&o.stdout).contains("from-landb"), "{}", show(&o));
    let counts = [
        store_standin.peers().len(),
        server_side.peers().len(),
        metadata.peers().len(),
    ];
    assert_eq!(
        counts,
        [0, 0, 0],
        "the store, the server, metadata: each counted zero"
    );
    assert_eq!(
        (lan_db.peers().len(), internet.peers().len()),
        (1, 1),
        "the allowed database and the internet, once each"
    );

    // A second join under n1's name, from another host: refused, nothing changes.
    let before = w.nodes();
    let mut taker = w
        .node(
            1,
            "n1",
            &join,
            &["--server", API, "--listen", &format!("{NODE2}:7071")],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_for("the second n1 to give up", Duration::from_secs(30), || {
        taker.try_wait().unwrap()
    });
    let mut said = String::new();
    std::io::Read::read_to_string(taker.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert!(
        !ended.success() && said.contains("holds a token") && said.contains("node rm n1"),
        "{said}"
    );
    assert_eq!(
        w.nodes(),
        before,
        "n1 is still the first host (its API, secret and token)"
    );
    assert!(w.nodes()[0]["node"]["api"]
        .as_str()
        .is_some_and(|a| a.contains(NODE1)));
    assert!(running(&acme, 2).is_some(), "and its instances still run");

    // Tenants' networks go with their last instance.
    for (token, svcs) in [(&acme, ["db", "client"]), (&evil, ["probe", "lan"])] {
        for s in svcs {
            assert!(w.bh(token, &["service", "rm", s]).status.success());
        }
    }
    wait_for(
        "the tenants' networks and workloads removed",
        Duration::from_secs(60),
        || {
            let nets = serde_json::from_slice::<Value>(
                &w.local(0, &["network", "ls", "--format", "json"]).stdout,
            )
            .ok()?;
            // And every workload's record, which goes after its files.
            let left = serde_json::from_slice::<Value>(
                &w.local(0, &["ps", "-a", "--format", "json"]).stdout,
            )
            .ok()?;
            (nets.as_array()?.iter().all(|n| n["tenant"].is_null()) && left.as_array()?.is_empty())
                .then_some(())
        },
    );

    // The data dirs: an unprivileged user reads nothing in them (but the control beside them).
    let control = w.dir.path().join("control.txt");
    std::fs::write(&control, "anyone").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();
    let seen = readable_by(user, w.dir.path());
    assert!(
        seen.iter().any(|p| Path::new(p) == control),
        "the walk works: {seen:?}"
    );
    let inside: Vec<&String> = seen
        .iter()
        .filter(|p| {
            Path::new(p).starts_with(w.data(0))
                || Path::new(p).starts_with(w.data(1))
                || Path::new(p).starts_with(w.dir.path().join("server"))
        })
        .collect();
    assert!(inside.is_empty(), "readable by another user: {inside:?}");
    assert!(
        !seen
            .iter()
            .any(|p| p.ends_with("admin-token") || p.ends_with("cluster.key")),
        "{seen:?}"
    );
    // And inside, nothing that holds state, configs, logs or secrets is open to others.
    for i in 0..2 {
        let open = open_entries(&w.data(i));
        assert!(open.is_empty(), "{}: {open:?}", w.data(i).display());
    }
    assert!(
        w.data(0).join("node/identity.json").is_file(),
        "n1 keeps its token"
    );
    drop(_n1);
    w.hosts.clear();
}
