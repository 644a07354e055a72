//! A tenant's network across nodes with both runtimes: a microVM instance
//! on one node and a container instance on another reach each other by
//! name, through the tenant's encrypted overlay, as a stack deployed
//! through the server. Runs where real Linux guests boot (the test host on
//! machines whose /dev/kvm cannot), whose kernel has WireGuard: so this is
//! also the overlay on kernel WireGuard, where the native cluster test runs
//! on the userspace one. Three namespaces: a lan with the server, and two
//! node hosts on it. Then, the daemons gone, the same two runtimes on one
//! local network find each other by name (`bulkhead run --network`).
//! Each case prints `CHECK across/<name> ok|FAIL`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cluster_cases::{poll, Killed, Server};
use crate::netns::NetNs;
use crate::run_cases::{self, record, show, text, Check, Ctx};

const LAN_ADDR: &str = "10.79.0.1";
const DB_PAGE: &str = "db-page-in-a-microvm";
const WEB_PAGE: &str = "web-page-in-a-container";

/// The lan and the two node hosts on it (10.79.0.11 and .12).
fn namespaces() -> Result<(NetNs, Vec<NetNs>), String> {
    let lan = NetNs::create("bhx-lan")?;
    lan.ip(&["link", "add", "br0", "type", "bridge"])?;
    lan.ip(&["address", "add", &format!("{LAN_ADDR}/24"), "dev", "br0"])?;
    lan.ip(&["link", "set", "br0", "up"])?;
    let mut hosts = Vec::new();
    for i in 1..=2 {
        let h = NetNs::create(&format!("bhx-n{i}"))?;
        let outside = format!("veth{i}");
        lan.ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &h.name,
        ])?;
        lan.ip(&["link", "set", &outside, "master", "br0", "up"])?;
        h.ip(&[
            "address",
            "add",
            &format!("10.79.0.{}/24", 10 + i),
            "dev",
            "eth0",
        ])?;
        h.ip(&["link", "set", "eth0", "up"])?;
        h.ip(&["route", "add", "default", "via", LAN_ADDR])?;
        hosts.push(h);
    }
    Ok((lan, hosts))
}

/// An ext4 filesystem (a sparse file on a loop device) mounted at `at`,
/// holding a copy of `store`: a container node's data dir. The test host's
/// root is a tmpfs, and its kernel (6.1) idmaps no tmpfs mount, which is
/// how a container sees its image's tree. Unmounted on drop.
struct Ext4Store(PathBuf);

impl Ext4Store {
    fn make(store: &Path, at: &Path) -> Result<Self, String> {
        let image = at.with_extension("ext4");
        let run = |prog: &str, args: &[&str]| -> Result<(), String> {
            let o = std::process::Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{prog}: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!("{prog} {args:?}: {}", show(&o)))
            }
        };
        let image_path = image.to_str().unwrap_or("");
        let at_path = at.to_str().unwrap_or("");
        std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        std::fs::File::create(&image)
            // Sparse: the node keeps 512 MiB free for itself.
            .and_then(|f| f.set_len(2 << 30))
            .map_err(|e| format!("{image_path}: {e}"))?;
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                image_path,
            ],
        )?;
        run("mount", &["-o", "loop", image_path, at_path])?;
        let mounted = Ext4Store(at.to_path_buf());
        run("cp", &["-a", &format!("{}/.", store.display()), at_path])?;
        Ok(mounted)
    }
}

impl Drop for Ext4Store {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `bulkhead node` for `ctx` (its data, its namespace) offering `runtime`.
fn start_node(
    ctx: &Ctx,
    server: &Server,
    join: &str,
    name: &str,
    log: &Path,
) -> Result<Killed, String> {
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    ctx.cmd(&[
        "node",
        "--insecure",
        "--server",
        &server.url,
        "--name",
        name,
        "--runtime",
        &ctx.runtime,
        "--cpus",
        "2",
        "--memory",
        "1g",
    ])
    .env("BULKHEAD_JOIN_TOKEN", join)
    .stdin(Stdio::null())
    .stderr(log)
    .spawn()
    .map(Killed)
    .map_err(|e| format!("cannot start the {name} node: {e}"))
}

/// The stack: `db` in a microVM, `web` in a container, each serving its page.
fn stack() -> String {
    let serve = |page: &str, port: u16| {
        format!("[sh, -c, 'mkdir -p /w && echo {page} > /w/index.html && exec httpd -f -p {port} -h /w']")
    };
    format!(
        "name: shop\nservices:\n  db:\n    image: {img}\n    runtime: microvm\n    memory: 128m\n    command: {db}\n  web:\n    image: {img}\n    runtime: container\n    memory: 32m\n    command: {web}\n",
        img = run_cases::IMAGE,
        db = serve(DB_PAGE, 5432),
        web = serve(WEB_PAGE, 8080),
    )
}

/// The first address busybox's nslookup printed after the server's.
fn resolved(out: &str) -> Option<String> {
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .find_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
}

pub fn run_table(ctx: &Ctx, container_store: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, "across/", name, ok, detail);
    let dir = ctx.data.with_file_name("across");
    let (lan, hosts) = match namespaces() {
        Ok(n) => n,
        Err(e) => {
            check("namespaces", false, e);
            return checks;
        }
    };
    let ct_data = dir.join("ct-data");
    let ext4 = Ext4Store::make(container_store, &ct_data);
    let on = |base: &Ctx, ns: &NetNs| Ctx {
        netns: Some(ns.path()),
        ..base.clone()
    };
    let lan_ctx = on(ctx, &lan);
    let vm_ctx = on(ctx, &hosts[0]);
    let ct_ctx = Ctx {
        data: ct_data.clone(),
        runtime: "container".into(),
        oci_runtime: None,
        netns: Some(hosts[1].path()),
        bulkhead: ctx.bulkhead.clone(),
    };
    let server = match ext4
        .and_then(|e| Server::start(&lan_ctx, &dir, &format!("{LAN_ADDR}:7070")).map(|s| (e, s)))
    {
        Ok((e, s)) => (e, s),
        Err(e) => {
            check("server", false, e);
            return checks;
        }
    };
    let (ext4, server) = server;
    let api = |token: &str, args: &[&str]| server.api(&lan_ctx, token, args);
    let join = text(&api(&server.admin, &["node", "token", "create"]).stdout)
        .trim()
        .to_string();
    let tenant = text(
        &api(
            &server.admin,
            &[
                "tenant",
                "create",
                "acme",
                "--runtimes",
                "microvm,container",
            ],
        )
        .stdout,
    )
    .trim()
    .to_string();
    let logs = [dir.join("vm-node.log"), dir.join("ct-node.log")];
    let nodes = start_node(&vm_ctx, &server, &join, "vm-node", &logs[0])
        .and_then(|a| start_node(&ct_ctx, &server, &join, "ct-node", &logs[1]).map(|b| (a, b)));
    let ready = nodes.is_ok()
        && poll(Duration::from_secs(30), || {
            let v: serde_json::Value = serde_json::from_slice(
                &api(&server.admin, &["node", "ls", "--format", "json"]).stdout,
            )
            .ok()?;
            (v.as_array()?.iter().filter(|n| n["ready"] == true).count() == 2).then_some(())
        })
        .is_some();
    let node_logs = || {
        logs.iter()
            .map(|l| {
                let t = std::fs::read_to_string(l).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(8).collect();
                format!("{}: {tail:?}", l.display())
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    check(
        "nodes-joined",
        ready && tenant.starts_with("bh_"),
        format!(
            "nodes {:?}; tenant {tenant:?}; {}",
            nodes.as_ref().err(),
            node_logs()
        ),
    );
    if !ready {
        return checks;
    }

    let file = dir.join("stack.yaml");
    let deployed = std::fs::write(&file, stack())
        .map_err(|e| e.to_string())
        .map(|()| api(&tenant, &["deploy", "-f", file.to_str().unwrap_or("")]));
    let started = Instant::now();
    // (db's node, web's node, db's address) once both run.
    let placed = poll(Duration::from_secs(240), || {
        let v: serde_json::Value =
            serde_json::from_slice(&api(&tenant, &["instance", "ls", "--format", "json"]).stdout)
                .ok()?;
        let running = |s: &str, key: &str| {
            v.as_array()?
                .iter()
                .find(|i| i["service"] == s && i["state"] == "running")
                .and_then(|i| i[key].as_str().map(str::to_string))
        };
        Some((
            running("db", "node")?,
            running("web", "node")?,
            running("db", "ip")?,
        ))
    });
    check(
        "stack-running-on-two-nodes",
        placed
            .as_ref()
            .is_some_and(|(db, web, _)| db == "vm-node" && web == "ct-node"),
        format!(
            "deploy {:?}; placed {placed:?} after {:?}; {}",
            deployed.as_ref().map(show),
            started.elapsed(),
            node_logs()
        ),
    );
    let Some((_, _, db_ip)) = placed else {
        return checks;
    };
    let exec = |service: &str, script: &str| {
        api(
            &tenant,
            &["instance", "exec", service, "0", "--", "sh", "-c", script],
        )
    };

    // The container finds the microVM by name and fetches its page: across
    // nodes, through the tunnel. The first tries may come before the
    // nodes have each other's keys (a sync away).
    let mut last = None;
    let web_to_db = poll(Duration::from_secs(60), || {
        let o = exec("web", "nslookup db; timeout 10 wget -q -O- http://db:5432/");
        let ok = text(&o.stdout).contains(DB_PAGE);
        last = Some(show(&o));
        ok.then_some(o)
    });
    let vip = web_to_db.as_ref().and_then(|o| resolved(&text(&o.stdout)));
    check(
        "container-reaches-microvm-by-name",
        web_to_db.is_some() && vip.is_some(),
        format!("service address {vip:?}; {last:?}"),
    );
    // And the other way, by the service's full name and by its instance's.
    let mut last = None;
    let db_to_web = poll(Duration::from_secs(60), || {
        let o = exec(
            "db",
            "timeout 10 wget -q -O- http://web.acme.internal:8080/ && timeout 10 wget -q -O- http://0.web:8080/",
        );
        let ok = text(&o.stdout).matches(WEB_PAGE).count() == 2;
        last = Some(show(&o));
        ok.then_some(())
    });
    check(
        "microvm-reaches-container-by-name",
        db_to_web.is_some(),
        format!("{last:?}"),
    );

    // Another tenant beside web on the container node: acme's names do not
    // resolve for it, and neither db's service address nor its instance's
    // (behind the tunnel) answers it. Bounded: 5 s a try.
    let evil = text(
        &api(
            &server.admin,
            &["tenant", "create", "evil", "--runtimes", "container"],
        )
        .stdout,
    )
    .trim()
    .to_string();
    let probe = dir.join("probe.yaml");
    let probe_yaml = format!(
        "name: probe\nimage: {}\nruntime: container\nmemory: 32m\ncommand: [sleep, '3600']\n",
        run_cases::IMAGE
    );
    let probe_running = std::fs::write(&probe, probe_yaml).is_ok()
        && api(&evil, &["deploy", "-f", probe.to_str().unwrap_or("")])
            .status
            .success()
        && poll(Duration::from_secs(60), || {
            let v: serde_json::Value =
                serde_json::from_slice(&api(&evil, &["instance", "ls", "--format", "json"]).stdout)
                    .ok()?;
            (v[0]["state"] == "running").then_some(())
        })
        .is_some();
    let vip = vip.unwrap_or_default();
    let tried = api(
        &evil,
        &[
            "instance", "exec", "probe", "0", "--", "sh", "-c",
            &format!("nslookup db; nslookup db.acme.internal; for a in {vip} {db_ip}; do timeout 5 wget -q -O- http://$a:5432/; done; echo tried"),
        ],
    );
    let said = text(&tried.stdout);
    check(
        "other-tenant-reaches-nothing",
        probe_running
            && !vip.is_empty()
            && said.contains("tried")
            && !said.contains(DB_PAGE)
            && !said.contains(&vip)
            && !said.contains(&db_ip),
        show(&tried),
    );
    let evil_removed = api(&evil, &["service", "rm", "probe"]).status.success();

    // The tunnels are kernel WireGuard here (the kernel has it): no
    // userspace tunnel runs, and each node's is a wireguard link.
    let kernel_wg: Vec<String> = [&vm_ctx, &ct_ctx]
        .iter()
        .map(|c| {
            text(
                &c.tool("ip", &["-o", "-d", "link", "show", "type", "wireguard"])
                    .stdout,
            )
        })
        .collect();
    let userspace = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| {
            text(&std::fs::read(p.path().join("cmdline")).unwrap_or_default()).contains("\0__wg\0")
        })
        .count();
    check(
        "overlay-on-kernel-wireguard",
        kernel_wg.iter().all(|l| l.contains("mtu 1420")) && userspace == 0,
        format!("links {kernel_wg:?}; userspace tunnels {userspace}"),
    );

    // Removed together; each node lets go of everything of the tenant.
    let removed = api(&tenant, &["service", "rm", "--stack", "shop"]);
    let gone = poll(Duration::from_secs(90), || {
        [&vm_ctx, &ct_ctx]
            .iter()
            .all(|c| {
                let ps = text(&c.bh(&["ps", "-a", "--format", "json"]).stdout);
                let links = text(&c.tool("ip", &["-o", "link"]).stdout);
                let tunnels = c.tool("ip", &["-o", "link", "show", "type", "wireguard"]);
                let nets = text(&c.bh(&["network", "ls", "--format", "json"]).stdout);
                ps.trim() == "[]"
                    && !links.contains("t-acme")
                    && !nets.contains("t-acme")
                    && !nets.contains("t-evil")
                    && tunnels.status.success()
                    && tunnels.stdout.is_empty()
            })
            .then_some(())
    });
    check(
        "stack-removed-nothing-left-on-the-nodes",
        removed.status.success() && evil_removed && gone.is_some(),
        format!("{}; {}", show(&removed), node_logs()),
    );
    drop(nodes);
    drop(server);
    // Locally on the container node's store, the daemons gone: one
    // network, both runtimes, names both ways.
    let local_vm = Ctx {
        data: ct_data.clone(),
        runtime: "microvm".into(),
        oci_runtime: None,
        netns: None,
        bulkhead: ctx.bulkhead.clone(),
    };
    let local_ct = Ctx {
        runtime: "container".into(),
        ..local_vm.clone()
    };
    crate::net_cases::check_mixed(&local_vm, &local_ct, &mut check);
    drop(ext4);
    let left: Vec<String> = [&vm_ctx, &ct_ctx]
        .iter()
        .flat_map(|c| run_cases::leftovers(c))
        .collect();
    check("nothing-left", left.is_empty(), format!("{left:?}"));
    checks
}
