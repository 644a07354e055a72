//! The control plane with real node daemons, natively: three "hosts" (network
//! namespaces on a bridge of the test's own, in a "lan" namespace where
//! etcd (Debian's etcd-server: one member, or three for the failover test),
//! two servers and a counting listener run), each running `bulkhead node`
//! with its own data dir, running container instances through `bulkhead run`.
//!
//! Every instance connects to the listener and says who it is; the listener
//! keeps every connect and disconnect, so "never more copies than desired"
//! is checked at every moment, not sampled. The cluster's timing is
//! shortened by configuration (grace 2 s, lease 3 s, stop time 3 s, backoff
//! 1 s doubling to 4 s); the default schedule is the unit tests'.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "cluster_nodes/figures.rs"]
mod figures;
#[path = "cluster_nodes/harness.rs"]
mod harness;
#[path = "cluster_nodes/overlay.rs"]
mod overlay;
use harness::*;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_tests::etcd::Etcd;
use bulkhead_tests::netns::{self, NetNs};
use bulkhead_tests::{bulkhead, run_cases, Killed as Proc};
use serde_json::Value;

#[test]
fn nodes_run_spread_scale_readopt_fence_replace_and_back_off() {
    let _l = lock();
    let mut c = setup(Shape {
        hosts: 3,
        etcd_members: 1,
        fd_limit: None,
        timing: &[
            "--heartbeat-grace",
            "2s",
            "--lease",
            "3s",
            "--stop-time",
            "3s",
            "--backoff-initial",
            "1s",
            "--backoff-cap",
            "4s",
            "--tenant-pool",
            "10.200.0.0/16",
            "--tenant-range",
            "22",
            "--node-slice",
            "26",
        ],
    });
    c.counter = Counter::start(&c.lan);
    let counter = c.counter.clone();

    // Each node's own API is https (its certificate pinned by the server);
    // each says its host's capacity beside what it offers (--cpus 4 --memory 4g).
    let host_cpus = std::thread::available_parallelism().unwrap().get() as u64;
    for n in c.api(&c.admin, &["node", "ls"]).as_array().unwrap() {
        assert!(
            n["node"]["api"]
                .as_str()
                .is_some_and(|a| a.starts_with("https://")),
            "{n}"
        );
        assert_eq!(
            n["node"]["capacity"]["millicpus"].as_u64(),
            Some(host_cpus * 1000),
            "{n}"
        );
        assert!(
            n["node"]["capacity"]["memory_mib"]
                .as_u64()
                .is_some_and(|m| m > 0),
            "{n}"
        );
        assert_eq!(
            (
                n["node"]["allocatable"]["millicpus"].as_u64(),
                n["node"]["allocatable"]["memory_mib"].as_u64()
            ),
            (Some(4000), Some(4096)),
            "{n}"
        );
    }
    // An image in no node's store: refused at deploy, nothing made.
    let nope = c._dir.path().join("nope.yaml");
    std::fs::write(
        &nope,
        "name: nope\nimage: bb:no-such-tag\nruntime: container\n",
    )
    .unwrap();
    let o = c.bh_as(
        &c.lan,
        &c.tenant,
        &["deploy", "-f", nope.to_str().unwrap(), "--server", &c.url],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("image \"bb:no-such-tag\" is in the store of none of the 3 nodes"),
        "{err}"
    );
    assert_eq!(
        c.api(&c.tenant, &["service", "ls"])
            .as_array()
            .map(Vec::len),
        Some(0),
        "nothing deployed"
    );

    // 6 replicas spread 2/2/2; 9 -> 3/3/3; back to 3 -> 1/1/1, the rest stopped and removed.
    deploy(&c, &web(6));
    for (n, per) in [(6, 2), (9, 3), (3, 1)] {
        if n != 6 {
            c.api(&c.tenant, &["service", "scale", "web", &n.to_string()]);
        }
        let want: BTreeMap<String, usize> = ["n1", "n2", "n3"]
            .iter()
            .map(|s| (s.to_string(), per))
            .collect();
        let took = wait_for(
            &c,
            &format!("{n} running {per}/{per}/{per}"),
            Duration::from_secs(60),
            || c.running_per_node("web") == want && counter.connected("web").len() == n,
        );
        wait_for(
            &c,
            "only the assigned copies run locally",
            Duration::from_secs(30),
            || (0..3).all(|i| c.local(i).len() == per),
        );
        eprintln!("{n} replicas running and connected after {took:?}");
    }
    // Each node put the tenant's copies on a network of its own, on its own
    // /26 slice of acme's /22 range of the server's pool (no two nodes hand
    // out one address), and keeps them from the control plane (the servers
    // and etcd share LAN_ADDR).
    let mut slices = Vec::new();
    for d in &c.data {
        let o = Command::new(bulkhead())
            .env("BULKHEAD_DATA", d)
            .args(["network", "inspect", "t-acme"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        assert!(
            v["tenant"] == "acme" && v["workloads"].as_array().map(Vec::len) == Some(1),
            "{}: {v}",
            d.display()
        );
        assert_eq!(
            v["protected"],
            serde_json::json!([format!("{LAN_ADDR}/32")]),
            "{v}"
        );
        slices.push(v["subnet"].as_str().unwrap_or_default().to_string());
    }
    let mut apart = slices.clone();
    apart.sort();
    apart.dedup();
    assert!(
        apart.len() == 3
            && slices.iter().all(|s| s.starts_with("10.200.")
                && s.ends_with("/26")
                && s.split('.')
                    .nth(2)
                    .and_then(|o| o.parse::<u8>().ok())
                    .is_some_and(|o| o < 4)),
        "acme's slices: {slices:?}"
    );
    // Names: from one of web's instances, `web` (and its long form) names
    // web's service address, from the last slice of acme's range;
    // `<index>.web` one instance. (Names reach a node with its next sync
    // after the instance runs: asked until they all answer.)
    let (index, _) = c
        .instances()
        .into_iter()
        .find(|i| i.0 == "web")
        .map(|i| (i.1, i.2))
        .unwrap();
    let mut said = String::new();
    wait_for(
        &c,
        "web's names, from every node",
        Duration::from_secs(30),
        || {
            let o = c.exec_in(
                &c.tenant,
                "web",
                index,
                &[
                    "sh",
                    "-c",
                    &format!("nslookup web; nslookup web.acme.internal; nslookup {index}.web"),
                ],
            );
            said = String::from_utf8_lossy(&o.stdout).into_owned();
            said.matches("Address: 10.200.").count() == 3
        },
    );
    let addrs: Vec<&str> = said
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .collect();
    assert!(
        addrs[0] == addrs[1] && addrs[0].starts_with("10.200.3.") && addrs[2] != addrs[0],
        "web's address twice, from acme's range's last /26, then one instance's: {said}"
    );
    // The copies that stayed spoke without a pause while the others were stopped and removed.
    std::thread::sleep(Duration::from_secs(3)); // longer than the counter's silence limit
    let visits = counter.0.lock().unwrap().clone();
    for who in counter.connected("web") {
        let mine: Vec<&Visit> = visits.iter().filter(|v| v.who == who).collect();
        assert_eq!(mine.len(), 1, "{who} fell silent for 2 s or more: {mine:?}");
    }

    // Logs and exec through the server, from the instance's node; another
    // tenant gets "not found".
    let (index, node) = c
        .instances()
        .into_iter()
        .find(|i| i.0 == "web")
        .map(|i| (i.1, i.2))
        .unwrap();
    let o = c.bh_as(
        &c.lan,
        &c.tenant,
        &[
            "instance",
            "logs",
            "web",
            &index.to_string(),
            "--server",
            &c.url,
        ],
    );
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stdout) == format!("started web/{index}\n"),
        "logs from {node}: {o:?}"
    );
    let o = c.exec_in(
        &c.tenant,
        "web",
        index,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned()
        ),
        (Some(7), "out\n".into(), "err\n".into()),
        "exec on {node}"
    );
    // A command that looks like a flag is the tenant's command, not one
    // of bulkhead's flags: `--help` is run (and not found), not answered.
    let o = c.exec_in(&c.tenant, "web", index, &["--help"]);
    assert!(
        o.status.code() == Some(127) && !String::from_utf8_lossy(&o.stdout).contains("Usage"),
        "exec --help on {node}: {o:?}"
    );
    let other = c.api(
        &c.admin,
        &["tenant", "create", "other", "--runtimes", "container"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    for args in [
        &["instance", "logs", "web", "0"][..],
        &["instance", "exec", "web", "0", "--", "true"],
    ] {
        let mut all = args.to_vec();
        let pos = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(pos..pos, ["--server", c.url.as_str()]);
        let o = c.bh_as(&c.lan, &other, &all);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no service"),
            "another tenant: {o:?}"
        );
    }

    // Restart node n1's daemon: its instance is re-adopted, not restarted.
    let before: Vec<_> = c.instances().into_iter().filter(|i| i.2 == "n1").collect();
    let local_before = c.local(0);
    c.signal_node(0, nix::sys::signal::Signal::SIGTERM);
    let _ = c.nodes[0].take();
    c.start_node(0);
    // Longer than a lease and the kill after it: a copy nobody renewed would be gone.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        c.local(0),
        local_before,
        "the same local workload, still running"
    );
    let after: Vec<_> = c.instances().into_iter().filter(|i| i.2 == "n1").collect();
    assert_eq!(after, before, "same instance, fence and restart count");

    // SIGSTOP n2's daemon past grace + lease + stop time: its copy fences
    // itself before the replacement starts; SIGCONT: it removes its copy.
    let since = Instant::now();
    // Stopped holding neither its network lock nor its state store's
    // (its copy's supervisor needs both to end, and `ps` below the store),
    // taken in the daemon's own order.
    let held: Vec<_> = ["network.lock", "state.lock"]
        .iter()
        .map(|l| {
            let f = std::fs::File::open(c.data[1].join(l)).unwrap();
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).unwrap()
        })
        .collect();
    c.signal_node(1, nix::sys::signal::Signal::SIGSTOP);
    drop(held);
    let took = wait_for(
        &c,
        "n2's instance replaced",
        Duration::from_secs(30),
        || {
            let per = c.running_per_node("web");
            !per.contains_key("n2")
                && per.values().sum::<usize>() == 3
                && counter.connected("web").len() == 3
        },
    );
    eprintln!("SIGSTOP: replaced after {took:?}");
    assert!(
        c.local(1).is_empty(),
        "n2's copy stopped itself (its lease ran out) while its daemon was stopped"
    );
    c.signal_node(1, nix::sys::signal::Signal::SIGCONT);
    wait_for(
        &c,
        "n2's stopped copy removed",
        Duration::from_secs(20),
        || {
            let o = Command::new(bulkhead())
                .env("BULKHEAD_DATA", &c.data[1])
                .args(["ps", "-a", "--format", "json"])
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&o.stdout)
                .unwrap()
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    assert!(
        counter.most_at_once("web", since) <= 3,
        "never more than 3 copies at once: {:?}",
        counter.0.lock().unwrap()
    );

    // SIGKILL n3's daemon and its workloads' supervisors, leaving the
    // containers (and crun) running: fencing below the supervisor (the
    // fence watcher) stops each by its deadline, before the replacement
    // runs on the other nodes within 30 s.
    let since = Instant::now();
    c.signal_node(2, nix::sys::signal::Signal::SIGKILL);
    let mut orphans = Vec::new();
    for (_, id) in c.local(2) {
        let o = Command::new(bulkhead())
            .env("BULKHEAD_DATA", &c.data[2])
            .args(["inspect", &id])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        // The container's init (all in its pid namespace die with it), the OCI runtime, the supervisor.
        let init = std::fs::read_to_string(
            Path::new(v["paths"]["dir"].as_str().unwrap()).join("bundle/pid"),
        )
        .unwrap();
        let pids = [
            init.trim().parse::<i64>().ok(),
            v["pids"]["runtime"].as_i64(),
            v["pids"]["supervisor"].as_i64(),
        ];
        assert!(pids.iter().all(Option::is_some), "{v}");
        let pid = |p: Option<i64>| nix::unistd::Pid::from_raw(i32::try_from(p.unwrap()).unwrap());
        nix::sys::signal::kill(pid(pids[2]), nix::sys::signal::Signal::SIGKILL).unwrap();
        orphans.push(pid(pids[0]));
    }
    assert!(!orphans.is_empty());
    assert!(
        orphans
            .iter()
            .all(|p| nix::sys::signal::kill(*p, None).is_ok()),
        "the containers outlive their supervisors for now"
    );
    let took = wait_for(
        &c,
        "n3's instance replaced on n1/n2",
        Duration::from_secs(30),
        || {
            let per = c.running_per_node("web");
            !per.contains_key("n3")
                && per.values().sum::<usize>() == 3
                && counter.connected("web").len() == 3
        },
    );
    eprintln!("SIGKILL: replaced after {took:?}");
    assert!(
        counter.most_at_once("web", since) <= 3,
        "never more than 3 copies at once: {:?}",
        counter.0.lock().unwrap()
    );
    assert!(
        orphans
            .iter()
            .all(|p| nix::sys::signal::kill(*p, None).is_err()),
        "the orphaned containers were stopped by their deadline"
    );
    c.start_node(2);
    wait_for(&c, "n3 back", Duration::from_secs(30), || {
        c.api(&c.admin, &["node", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["ready"] == true)
            .count()
            == 3
    });

    // A crash loop backs off 1, 2, 4, 4 s (the schedule shortened for CI).
    deploy(&c, &format!("name: crash\nimage: {}\nruntime: container\nrestart: on-failure\ncommand: [sh, -c, 'exit 3']\nplacement:\n  labels: {{host: n3}}\n", run_cases::IMAGE));
    let mut seen_at: Vec<(u64, Instant)> = Vec::new();
    wait_for(
        &c,
        "5 restarts of the crash loop",
        Duration::from_secs(60),
        || {
            let r = c
                .instances()
                .into_iter()
                .find(|i| i.0 == "crash")
                .map_or(0, |i| i.4);
            if seen_at.last().is_none_or(|(n, _)| *n != r) {
                seen_at.push((r, Instant::now()));
            }
            r >= 5
        },
    );
    let gaps: Vec<f64> = seen_at
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .collect();
    eprintln!(
        "crash loop: restarts seen {:?}, gaps {gaps:?}",
        seen_at.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let last = c.instances().into_iter().find(|i| i.0 == "crash").unwrap();
    assert_eq!(last.2, "n3");
    // Seen one by one (polled far more often than restarts come): the gap
    // before restart k+1 is backoff k+1 (2, 4, 4, 4 s) plus a short run,
    // measured to within a poll; the cap holds (4 s plus a few syncs, never 8).
    assert_eq!(
        seen_at.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5],
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= 1.7 && gaps[2] >= 3.5 && gaps[3] >= 3.5 && gaps[4] >= 3.5,
        "the backoff doubles to its cap: {gaps:?}"
    );
    assert!(gaps[2] > gaps[1] + 1.0, "it doubled: {gaps:?}");
    assert!(
        gaps[3] < 7.5 && gaps[4] < 7.5,
        "and stays at the cap: {gaps:?}"
    );
    // Instance times (server wall clock): a running copy has started and
    // not exited; an exited copy has ended, no earlier than it started.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .try_into()
            .unwrap()
    };
    let listed = |service: &str, state: &str| -> Option<Value> {
        c.api(&c.tenant, &["instance", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["service"] == service && i["state"] == state)
            .cloned()
    };
    let web = listed("web", "running").expect("web runs");
    let started = web["started_ms"].as_u64().expect("a start time");
    assert!(
        started <= now_ms() && now_ms() - started < 600_000 && web["exited_ms"].is_null(),
        "{web}"
    );
    let mut exited = None;
    wait_for(
        &c,
        "the crash loop's copy exited",
        Duration::from_secs(15),
        || {
            exited = listed("crash", "exited");
            exited.is_some()
        },
    );
    // It exits at once: seen running or not (no start time then), its end is known.
    let exited = exited.unwrap();
    let to = exited["exited_ms"].as_u64().expect("an exit time");
    assert!(
        to <= now_ms() && exited["started_ms"].as_u64().is_none_or(|from| from <= to),
        "{exited}"
    );
    check_health(&c, &listed);
}

/// Health checks in the service file: an HTTP check on a serving port is
/// reported healthy (the node probes from the host, through the tenant's
/// bridge); a failing exec check makes its instance unhealthy, and its node
/// stops it; with `restart: never` it stays exited, where
/// without the check it would sleep for an hour.
fn check_health(c: &Cluster, listed: &dyn Fn(&str, &str) -> Option<Value>) {
    deploy(c, &format!("name: fine\nimage: {}\nruntime: container\ncommand: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www']\nhealth: {{http: {{port: 80, path: /index.html}}, interval: 1s, timeout: 1s}}\n", run_cases::IMAGE));
    deploy(c, &format!("name: sick\nimage: {}\nruntime: container\nrestart: never\ncommand: [sleep, '3600']\nhealth: {{exec: [sh, -c, 'test -f /tmp/ok'], interval: 1s, retries: 2}}\n", run_cases::IMAGE));
    wait_for(c, "fine reported healthy", Duration::from_secs(60), || {
        listed("fine", "running").is_some_and(|i| i["health"] == "healthy")
    });
    let mut sick = None;
    wait_for(
        c,
        "sick stopped for its health",
        Duration::from_secs(60),
        || {
            sick = listed("sick", "exited");
            sick.is_some()
        },
    );
    let sick = sick.unwrap();
    // Stopped: SIGTERM, then SIGKILL past the stop time (sleep as PID 1
    // ignores SIGTERM), never its own exit.
    assert!(
        sick["last_exit"] == 143 || sick["last_exit"] == 137,
        "stopped: {sick}"
    );
    assert_eq!(sick["restarts"], 0, "restart: never: {sick}");
    // A bad check is refused at deploy, naming the field; nothing made.
    let bad = c._dir.path().join("bad-health.yaml");
    std::fs::write(
        &bad,
        format!(
            "name: badh\nimage: {}\nruntime: container\nhealth: {{tcp: 80, http: {{port: 80}}}}\n",
            run_cases::IMAGE
        ),
    )
    .unwrap();
    let o = c.bh_as(
        &c.lan,
        &c.tenant,
        &["deploy", "-f", bad.to_str().unwrap(), "--server", &c.url],
    );
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("health: one of exec, tcp or http"),
        "{o:?}"
    );
    assert!(listed("badh", "pending").is_none() && listed("badh", "running").is_none());
}

/// Two servers on a 3-member etcd, one node. The leader is SIGKILLed
/// amid a run of scale changes (each retried until acknowledged, through
/// either server): the standby takes over, every acknowledged change is
/// there and the instances run. Then the new leader is SIGSTOPped: the
/// restarted first server takes over; once resumed, the old leader's
/// write is refused and changes nothing.
#[test]
fn a_standby_takes_over_from_a_killed_or_stopped_leader_and_the_old_one_writes_nothing() {
    let _l = lock();
    // Leader lease 2 s; the workloads' lease (10 s) outlasts a failover.
    let mut c = setup(Shape {
        hosts: 1,
        etcd_members: 3,
        fd_limit: None,
        timing: &[
            "--heartbeat-grace",
            "5s",
            "--lease",
            "10s",
            "--stop-time",
            "3s",
        ],
    });
    c.counter = Counter::start(&c.lan);
    deploy(&c, &web(1));
    let leads = |c: &Cluster, i: usize| -> bool {
        let o = c.bh_as(
            &c.lan,
            &c.admin,
            &[
                "node",
                "ls",
                "--server",
                &format!("http://{LAN_ADDR}:{}", 7070 + i),
            ],
        );
        o.status.success()
    };
    // Retried until acknowledged (a failover answers 503 or nothing meanwhile).
    let scale = |c: &Cluster, n: u32| {
        let start = Instant::now();
        loop {
            let o = c.bh_as(
                &c.lan,
                &c.tenant,
                &[
                    "service",
                    "scale",
                    "web",
                    &n.to_string(),
                    "--server",
                    &c.url,
                ],
            );
            if o.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "scale {n} never acknowledged: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let first = (0..2).find(|i| leads(&c, *i)).expect("one server leads");
    let mut acked = 1;
    for n in 2..=6 {
        if n == 4 {
            let p = c.servers[first].take().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(p.0.id()).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            drop(p);
            eprintln!("SIGKILLed the leader, server {first}");
        }
        scale(&c, n);
        acked = n;
    }
    let second = 1 - first;
    assert!(leads(&c, second), "the standby took over");
    let took = wait_for(
        &c,
        "the acknowledged replicas all running",
        Duration::from_secs(60),
        || {
            let svc = c.api(&c.tenant, &["service", "inspect", "web"]);
            svc["service"]["spec"]["replicas"] == acked
                && c.running_per_node("web").values().sum::<usize>() == acked as usize
                && c.counter.connected("web").len() == acked as usize
        },
    );
    eprintln!("after the failover: {acked} replicas running {took:?} later");

    // The killed server comes back (a standby); the leader is SIGSTOPped.
    start_server(&mut c, first);
    signal_server(&c, second, nix::sys::signal::Signal::SIGSTOP);
    let took = wait_for(
        &c,
        "the restarted server leads",
        Duration::from_secs(30),
        || leads(&c, first),
    );
    eprintln!("SIGSTOP: server {first} leads after {took:?}");
    scale(&c, 3);
    // A write to the stopped old leader waits in its socket; it is served
    // the moment it resumes, before it can have heard it lost: refused anyway.
    let mut write = Command::new(bulkhead());
    write
        .args([
            "service",
            "scale",
            "web",
            "9",
            "--server",
            &format!("http://{LAN_ADDR}:{}", 7070 + second),
        ])
        .env("BULKHEAD_TOKEN", &c.tenant)
        .stdin(Stdio::null());
    netns::command_in(&mut write, &c.lan.path()).unwrap();
    let pending = write
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // the request is sent (nothing to wait on: the server is stopped)
    signal_server(&c, second, nix::sys::signal::Signal::SIGCONT);
    let o = pending.wait_with_output().unwrap();
    assert!(
        !o.status.success(),
        "the old leader's write went through: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    eprintln!(
        "the resumed old leader said: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    assert_eq!(
        c.api(&c.tenant, &["service", "inspect", "web"])["service"]["spec"]["replicas"],
        3,
        "its write changed nothing"
    );
    wait_for(&c, "3 running", Duration::from_secs(60), || {
        c.running_per_node("web").values().sum::<usize>() == 3
            && c.counter.connected("web").len() == 3
    });
    assert!(!leads(&c, second), "the old leader stands by");
}
