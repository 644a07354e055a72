//! Workload networking, one table for both runtimes: published ports (from
//! the host itself, 127.0.0.1 included, and from another machine), egress
//! through masquerade to the internet and nowhere else unless allowed (the
//! LAN, cloud metadata, the host's loopback), walls that fail closed when
//! the firewall is flushed, isolation between networks and from the host's
//! own services, anti-spoofing, names from each user network's resolver,
//! bad input, and create/remove cycles that
//! leave nothing behind. Everything happens in a [`Lan`] the table makes: a
//! host namespace where bulkhead runs and an outside one on a veth pair,
//! which also plays the internet and the metadata service.

mod names;
mod walls;
pub use names::check_mixed;
use names::*;
use walls::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::{
    self, http_get, Lan, Listener, UdpCounter, HOST_ADDR, INTERNET_ADDR, METADATA_ADDR,
    OUTSIDE_ADDR,
};
use crate::run_cases::{pid_of, pidfd_wait, record, show, text, Check, Ctx, IMAGE};

const PAGE: &str = "page-from-web";
/// Serves PAGE on port 80 (httpd daemonizes once bound), says so, stays.
const WEB: &str = "mkdir -p /www && echo page-from-web > /www/index.html && httpd -p 80 -h /www && echo ready && exec sleep 3600";

fn nc_get(ip: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")
}

/// The table; `tag` keeps namespace names apart between callers.
pub fn run_table(base: &Ctx, tag: &str, cycles: usize) -> Vec<Check> {
    let mut checks = Vec::new();
    let prefix = format!("{}/net/", base.runtime);
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, &prefix, name, ok, detail);
    let lan = match Lan::create(tag) {
        Ok(l) => l,
        Err(e) => {
            check("lan", false, e);
            return checks;
        }
    };
    let ctx = Ctx {
        netns: Some(lan.host.path()),
        ..base.clone()
    };
    let outside = Listener::start(&lan.outside, &format!("{OUTSIDE_ADDR}:9000"), "outside");
    let host_service = Listener::start(&lan.host, "0.0.0.0:9001", "host");
    let internet = Listener::start(&lan.outside, &format!("{INTERNET_ADDR}:9000"), "internet");
    let metadata = Listener::start(&lan.outside, &format!("{METADATA_ADDR}:80"), "metadata");
    let host_loopback = UdpCounter::start(&lan.host, "127.0.0.1:9003");
    let (outside, host_service, internet, metadata, host_loopback) =
        match (outside, host_service, internet, metadata, host_loopback) {
            (Ok(o), Ok(h), Ok(i), Ok(m), Ok(l)) => (o, h, i, m, l),
            (o, h, i, m, l) => {
                check(
                    "listeners",
                    false,
                    format!(
                        "{:?} {:?} {:?} {:?} {:?}",
                        o.err(),
                        h.err(),
                        i.err(),
                        m.err(),
                        l.err()
                    ),
                );
                return checks;
            }
        };

    // Published: from the host (127.0.0.1 and its LAN address) and from outside.
    let web = start_detached(&ctx, &["--name", "web", "-p", "8080:80"], WEB);
    check(
        "web-started",
        web.is_ok(),
        web.clone().err().unwrap_or_default(),
    );
    if ctx.runtime == "microvm" {
        // Jailed with its TAP passed in (the checks below need it working).
        let problems = match crate::run_cases::pid_of(&ctx, "web", "runtime") {
            Some(pid) => crate::run_cases::vmm_jail_problems(
                &ctx,
                "web",
                crate::run_cases::LOCAL_OWNER,
                pid,
                1,
                256,
                false,
            ),
            None => vec!["no VMM pid".into()],
        };
        check("web-vmm-jailed", problems.is_empty(), problems.join("; "));
    }
    let web_ip = inspect_ip(&ctx, "web").unwrap_or_default();
    for (name, ns, addr) in [
        (
            "published-127.0.0.1",
            &lan.host,
            "127.0.0.1:8080".to_string(),
        ),
        (
            "published-host-address",
            &lan.host,
            format!("{HOST_ADDR}:8080"),
        ),
        (
            "published-from-outside",
            &lan.outside,
            format!("{HOST_ADDR}:8080"),
        ),
    ] {
        let got = http_get(ns, &addr);
        check(
            name,
            got.as_deref().is_ok_and(|b| b.contains(PAGE)),
            format!("{addr}: {got:?}"),
        );
    }

    // Egress: the internet sees the host's address, not the workload's.
    let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", &nc_get(INTERNET_ADDR, 9000)]));
    check(
        "egress-masqueraded",
        text(&o.stdout).contains(&format!("from-internet peer={HOST_ADDR}")),
        format!("{} peers={:?}", show(&o), internet.peers()),
    );

    // Same network: reachable. Another network: not.
    let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", &nc_get(&web_ip, 80)]));
    check(
        "same-network-reaches",
        !web_ip.is_empty() && text(&o.stdout).contains(PAGE),
        format!("web={web_ip} {}", show(&o)),
    );
    let created = ctx.bh(&["network", "create", "--subnet", "10.99.0.0/24", "iso"]);
    let o = ctx.out(ctx.run_cmd(
        &["--rm", "--network", "iso"],
        &["sh", "-c", &format!("{}; echo tried", nc_get(&web_ip, 80))],
    ));
    check(
        "other-network-isolated",
        created.status.success()
            && text(&o.stdout).contains("tried")
            && !text(&o.stdout).contains(PAGE),
        format!("{} / {}", show(&created), show(&o)),
    );

    // The host's own services: not reachable from a workload, on any of its addresses.
    let o = ctx.out(ctx.run_cmd(
        &["--rm"],
        &[
            "sh",
            "-c",
            &format!(
                "{}; {}; echo tried",
                nc_get("10.88.0.1", 9001),
                nc_get(HOST_ADDR, 9001)
            ),
        ],
    ));
    let reached: Vec<String> = host_service.peers();
    check(
        "host-services-unreachable",
        text(&o.stdout).contains("tried")
            && !text(&o.stdout).contains("from-host")
            && reached.is_empty(),
        format!("{} host listener saw {reached:?}", show(&o)),
    );

    let walls = Walls {
        outside: &outside,
        internet: &internet,
        metadata: &metadata,
        host_service: &host_service,
        host_loopback: &host_loopback,
    };
    check_egress(&ctx, &walls, &mut check);
    check_own_egress(&ctx, &walls, &mut check);
    check_inspect(&ctx, &web_ip, &mut check);
    check_none(&ctx, &mut check);
    check_spoofing(&ctx, &internet, &mut check);
    check_crash_sweeps(&ctx, &mut check);
    check_bad_input(&ctx, &mut check);
    check_auto_subnets(&ctx, &mut check);
    check_names(&ctx, &mut check);
    let rm = ctx.bh(&["rm", "-f", "web"]);
    check("web-removed", rm.status.success(), show(&rm));
    check_cycles(&ctx, cycles, &mut check);
    let left = net_leftovers(&ctx);
    check(
        "nothing-left-per-workload",
        left.is_empty(),
        left.join("; "),
    );
    let bridges = [bridge_of(&ctx, "iso"), bridge_of(&ctx, "bulkhead")];
    let rm = ctx.bh(&["network", "rm", "iso", "bulkhead"]);
    let links = links(&ctx);
    let tables = text(&ctx.tool("nft", &["list", "tables"]).stdout);
    check(
        "networks-removed",
        rm.status.success()
            && !links
                .iter()
                .any(|l| bridges.contains(l) || l.starts_with("bulkhead") || l.starts_with("bh-"))
            && bridges.iter().all(|b| b.len() > 3)
            && !tables.contains("bulkhead"),
        format!(
            "{} bridges={bridges:?} links={links:?} tables={tables:?}",
            show(&rm)
        ),
    );
    drop(outside);
    drop(host_service);
    drop(internet);
    drop(metadata);
    drop(host_loopback);
    checks
}

/// The bridge of network `name`.
fn bridge_of(ctx: &Ctx, name: &str) -> String {
    inspect_network(ctx, name)["bridge"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn inspect_network(ctx: &Ctx, name: &str) -> serde_json::Value {
    serde_json::from_slice(&ctx.bh(&["network", "inspect", name]).stdout).unwrap_or_default()
}

/// Sends the workload's traffic for 127.0.0.0/8 to its gateway, as a
/// workload's root would to reach the host's loopback services: in a
/// microVM the guest's root does it; a container has no CAP_NET_ADMIN, so
/// the test changes its namespace from outside (as an escaped workload would).
fn route_loopback_out(ctx: &Ctx, name: &str) -> Result<(), String> {
    let steps = [
        "route del local 127.0.0.0/8 dev lo table local",
        "route del local 127.0.0.1 dev lo table local",
        "route add 127.0.0.0/8 via 10.88.0.1 dev eth0",
    ];
    if ctx.runtime == "microvm" {
        let script = steps
            .iter()
            .map(|s| format!("ip {s}"))
            .collect::<Vec<_>>()
            .join(" && ")
            + " && echo ROUTED";
        let o = ctx.bh(&["exec", name, "sh", "-c", &script]);
        return if text(&o.stdout).contains("ROUTED") {
            Ok(())
        } else {
            Err(show(&o))
        };
    }
    let ns = inspect(ctx, name)["pids"]["supervisor"]
        .as_i64()
        .and_then(|p| netns_fd_of(i32::try_from(p).expect("a pid or fd fits")))
        .ok_or("no network namespace for the container")?;
    ip_in(&ns, &steps)
}

/// `ip CMD` for each of `cmds` inside the network namespace at `ns`, as
/// the namespace's root; the first failure.
fn ip_in(ns: &Path, cmds: &[&str]) -> Result<(), String> {
    for c in cmds {
        let mut cmd = Command::new("ip");
        cmd.args(c.split_whitespace());
        netns::command_in(&mut cmd, ns)?;
        let o = cmd.output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("ip {c}: {}", text(&o.stderr)));
        }
    }
    Ok(())
}

/// `run -d ... sh -c SCRIPT`, then its log until it says `ready`.
fn start_detached(ctx: &Ctx, flags: &[&str], script: &str) -> Result<(), String> {
    let mut f = vec!["-d"];
    f.extend_from_slice(flags);
    let o = ctx.out(ctx.run_cmd(&f, &["sh", "-c", script]));
    if !o.status.success() {
        return Err(show(&o));
    }
    let id = text(&o.stdout).trim().to_string();
    let mut logs = ctx.cmd(&["logs", "-f", &id]);
    let mut child = logs
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let ready = child
        .stdout
        .take()
        .map(|out| {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "ready")
        })
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    if ready {
        Ok(())
    } else {
        Err(format!(
            "{id} ended before it was ready: {}",
            show(&ctx.bh(&["logs", &id]))
        ))
    }
}

fn inspect(ctx: &Ctx, name: &str) -> serde_json::Value {
    serde_json::from_slice(&ctx.bh(&["inspect", name]).stdout).unwrap_or_default()
}

fn inspect_ip(ctx: &Ctx, name: &str) -> Option<String> {
    inspect(ctx, name)["network"]["ip"]
        .as_str()
        .map(str::to_string)
}

/// `network inspect` shows the workload, its port and the rule for it.
fn check_inspect(ctx: &Ctx, web_ip: &str, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.bh(&["network", "inspect", "bulkhead"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let has_web = v["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w["ip"] == web_ip && w["ports"][0] == "0.0.0.0:8080->80/tcp");
    let has_rule = v["rules"].as_array().into_iter().flatten().any(|r| {
        r.as_str()
            .is_some_and(|r| r.contains(&format!("dnat ip to {web_ip}:80")))
    });
    check(
        "inspect-shows-rules",
        has_web && has_rule && v["nft_table_loaded"] == true,
        show(&o),
    );
}

/// `--network none`: loopback, no eth0, no way out.
fn check_none(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(
        &["--rm", "--network", "none"],
        &[
            "sh",
            "-c",
            &format!(
                "cat /proc/net/dev; {}; echo tried",
                nc_get(OUTSIDE_ADDR, 9000)
            ),
        ],
    ));
    let out = text(&o.stdout);
    check(
        "network-none-loopback-only",
        out.contains("lo:")
            && !out.contains("eth0")
            && out.contains("tried")
            && !out.contains("from-outside"),
        show(&o),
    );
}

/// A supervisor killed with SIGKILL leaves its interface, lease and rules;
/// the sweep at the next `run`, and `system prune`, remove them.
fn check_crash_sweeps(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    for (name, by) in [("crash1", "run"), ("crash2", "prune")] {
        let started = start_detached(
            ctx,
            &["--name", name, "-p", "8095:80"],
            "echo ready && exec sleep 3600",
        );
        let Some(sup) = pid_of(ctx, name, "supervisor").filter(|_| started.is_ok()) else {
            check(
                &format!("crash-swept-by-{by}"),
                false,
                format!("{started:?}"),
            );
            continue;
        };
        let id = inspect(ctx, name)["id"]
            .as_str()
            .map(|i| i[..12].to_string())
            .unwrap_or_default();
        let mine = |ctx: &Ctx| -> Vec<String> {
            net_leftovers(ctx)
                .into_iter()
                .filter(|t| !id.is_empty() && t.contains(&id))
                .collect()
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sup),
            nix::sys::signal::Signal::SIGKILL,
        );
        pidfd_wait(sup, 10_000);
        let before = mine(ctx);
        let swept = match by {
            "run" => ctx.out(ctx.run_cmd(&["--rm", "--network", "none"], &["true"])),
            _ => ctx.bh(&["system", "prune"]),
        };
        let after = mine(ctx);
        let rm = ctx.bh(&["rm", "-f", name]);
        let said = by == "run" || text(&swept.stdout).contains("removed lease");
        check(
            &format!("crash-swept-by-{by}"),
            !before.is_empty()
                && swept.status.success()
                && said
                && after.is_empty()
                && rm.status.success(),
            format!(
                "left before: {before:?}; {}; left after: {after:?}",
                show(&swept)
            ),
        );
    }
}

/// The supervisor holds the container's network namespace as an fd.
fn netns_fd_of(pid: i32) -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().starts_with("net:")))
}

fn count_rows(ctx: &Ctx, args: &[&str]) -> usize {
    serde_json::from_slice::<Vec<serde_json::Value>>(&ctx.bh(args).stdout)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn check_bad_input(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let before = (
        count_rows(ctx, &["ps", "-a", "--format", "json"]),
        count_rows(ctx, &["network", "ls", "--format", "json"]),
        links(ctx),
    );
    let cases: [(&str, Vec<&str>, i32, &str); 7] = [
        (
            "port-already-published",
            vec!["run", "-d", "-p", "8080:80", IMAGE, "true"],
            125,
            "already published",
        ),
        (
            "port-in-use-on-host",
            vec!["run", "-d", "-p", "9001:80", IMAGE, "true"],
            125,
            "already in use",
        ),
        (
            "invalid-port-spec",
            vec!["run", "-d", "-p", "80", IMAGE, "true"],
            125,
            "HOSTPORT:PORT",
        ),
        (
            "invalid-protocol",
            vec!["run", "-d", "-p", "8081:80/sctp", IMAGE, "true"],
            125,
            "unknown protocol",
        ),
        (
            "unknown-network",
            vec!["run", "-d", "--network", "nosuch", IMAGE, "true"],
            125,
            "no network",
        ),
        (
            "overlapping-subnet",
            vec!["network", "create", "--subnet", "10.88.5.0/24", "clash"],
            1,
            "overlaps",
        ),
        (
            "subnet-overlapping-the-host",
            vec![
                "network",
                "create",
                "--subnet",
                "192.168.77.0/28",
                "lanclash",
            ],
            1,
            "overlaps",
        ),
    ];
    for (name, mut args, code, says) in cases {
        if args[0] == "run" {
            args.splice(1..1, ["--runtime", ctx.runtime.as_str()]);
        }
        let o = ctx.bh(&args);
        check(
            name,
            o.status.code() == Some(code) && text(&o.stderr).contains(says),
            show(&o),
        );
    }
    let after = (
        count_rows(ctx, &["ps", "-a", "--format", "json"]),
        count_rows(ctx, &["network", "ls", "--format", "json"]),
        links(ctx),
    );
    check(
        "bad-input-changes-nothing",
        before == after,
        format!("before {before:?} after {after:?}"),
    );
}

/// `network create` without --subnet picks a free /16 each time.
fn check_auto_subnets(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let a = ctx.bh(&["network", "create", "auto1"]);
    let b = ctx.bh(&["network", "create", "auto2"]);
    let subnet = |n: &str| {
        serde_json::from_slice::<serde_json::Value>(&ctx.bh(&["network", "inspect", n]).stdout)
            .ok()
            .and_then(|v| v["subnet"].as_str().map(str::to_string))
    };
    let (sa, sb) = (subnet("auto1"), subnet("auto2"));
    let rm = ctx.bh(&["network", "rm", "auto1", "auto2"]);
    let fresh = |s: &Option<String>| {
        s.as_deref()
            .is_some_and(|s| s.starts_with("10.") && s.ends_with(".0.0/16") && s != "10.88.0.0/16")
    };
    check(
        "subnets-picked-when-not-given",
        a.status.success()
            && b.status.success()
            && fresh(&sa)
            && fresh(&sb)
            && sa != sb
            && rm.status.success(),
        format!("{sa:?} {sb:?} {} {}", show(&a), show(&rm)),
    );
}

/// Workloads come and go on a /29 (5 addresses), three alive at a time
/// (two for microVMs: under the test host's emulation more VMs booting side
/// by side slow each other past the boot timeout):
/// live ones never share an address, released ones come back.
fn check_cycles(ctx: &Ctx, cycles: usize, check: &mut impl FnMut(&str, bool, String)) {
    let made = ctx.bh(&["network", "create", "--subnet", "10.98.0.0/29", "small"]);
    let mut live: Vec<(String, String)> = Vec::new();
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for i in 0..cycles {
        if live.len() == if ctx.runtime == "microvm" { 2 } else { 3 } {
            let (name, _) = live.remove(0);
            let rm = ctx.bh(&["rm", "-f", &name]);
            if !rm.status.success() {
                problems.push(format!("rm {name}: {}", show(&rm)));
            }
        }
        let name = format!("cyc{i}");
        let port = format!("{}:80", 8100 + i % 4);
        let o = ctx.out(ctx.run_cmd(
            &["-d", "--name", &name, "--network", "small", "-p", &port],
            &["sleep", "3600"],
        ));
        let ip = inspect_ip(ctx, &name).unwrap_or_default();
        if !o.status.success() || ip.is_empty() {
            problems.push(format!("{name}: {}", show(&o)));
            continue;
        }
        if live.iter().any(|(_, other)| *other == ip) {
            problems.push(format!("{name} got {ip}, which a live workload holds"));
        }
        seen.push(ip.clone());
        live.push((name, ip));
    }
    for (name, _) in &live {
        let _ = ctx.bh(&["rm", "-f", name]);
    }
    let reused = seen.len() > 5 && (0..seen.len()).any(|i| seen[..i].contains(&seen[i]));
    let rm = ctx.bh(&["network", "rm", "small"]);
    check(
        &format!("{cycles}-network-cycles"),
        made.status.success()
            && problems.is_empty()
            && (cycles <= 5 || reused)
            && rm.status.success(),
        format!("{} {problems:?} seen={seen:?} {}", show(&made), show(&rm)),
    );
}

/// Interfaces where bulkhead runs.
fn links(ctx: &Ctx) -> Vec<String> {
    let o = ctx.tool("ip", &["-o", "link", "show"]);
    let mut v: Vec<String> = text(&o.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

/// What workloads' networking leaves where bulkhead runs, one entry each:
/// interfaces, rules naming them or forwarding ports, leases (`lease <id>`).
pub fn net_leftovers(ctx: &Ctx) -> Vec<String> {
    let mut v: Vec<String> = links(ctx)
        .into_iter()
        .filter(|l| ["bht", "bhv"].iter().any(|p| l.starts_with(p)))
        .collect();
    let rules = text(&ctx.tool("nft", &["list", "ruleset"]).stdout);
    v.extend(
        rules
            .lines()
            .filter(|l| l.contains("\"bht") || l.contains("\"bhv") || l.contains("dnat ip to"))
            .map(|l| l.trim().to_string()),
    );
    let nets: Vec<serde_json::Value> =
        serde_json::from_slice(&ctx.bh(&["network", "ls", "--format", "json"]).stdout)
            .unwrap_or_default();
    let mut in_use = Vec::new();
    for n in nets.iter().filter_map(|n| n["name"].as_str()) {
        let v2: serde_json::Value =
            serde_json::from_slice(&ctx.bh(&["network", "inspect", n]).stdout).unwrap_or_default();
        if v2["workloads"].as_array().is_some_and(|w| !w.is_empty()) {
            in_use.extend(v2["bridge"].as_str().map(|b| format!("{b}.")));
        }
        v.extend(
            v2["workloads"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w["id"].as_str())
                .map(|id| format!("lease {id} on {n}")),
        );
    }
    // Networks' resolvers: their names, lock and log go with them.
    let resolvers: Vec<String> = std::fs::read_dir("/run/bulkhead/dns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // A network with workloads has its resolver; one without, none.
        .filter(|f| !in_use.iter().any(|b| f.starts_with(b.as_str())))
        .collect();
    if !resolvers.is_empty() {
        v.push(format!(
            "resolver files in /run/bulkhead/dns: {resolvers:?}"
        ));
    }
    v
}
