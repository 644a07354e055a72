//! A microVM service deployed through the control plane: `bulkhead server`
//! (one-host store, loopback) and one `bulkhead node` offering the microvm
//! runtime, where real Linux guests boot (the test host on machines whose
//! /dev/kvm cannot). Each case prints `CHECK cluster/<name> ok|FAIL`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::run_cases::{self, record, show, text, Check, Ctx};

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 250 ms for up to `limit`; its last answer.
pub(crate) fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The node's limit on a root disk build in this table (the default is
/// 600 s): above the server's default lease (15 s), so the running
/// instance must be renewed through the whole hang.
const DISK_TIMEOUT_S: u64 = 25;

/// A `bulkhead server` with a one-host store, killed on drop.
pub(crate) struct Server {
    _proc: Killed,
    pub(crate) url: String,
    pub(crate) admin: String,
}

impl Server {
    /// Starts one on `listen` (in `ctx`'s namespace) with its store and
    /// admin token in `dir`, and waits for its address and token. Plain
    /// HTTP (--insecure): the walls test covers the default TLS.
    pub(crate) fn start(ctx: &Ctx, dir: &std::path::Path, listen: &str) -> Result<Self, String> {
        let token_file = dir.join("admin-token");
        let store = format!("file:{}", dir.join("cluster.redb").display());
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = ctx.cmd(&[
            "server",
            "--insecure",
            "--listen",
            listen,
            "--store",
            &store,
            "--admin-token-file",
            token_file.to_str().unwrap_or(""),
        ]);
        let mut child = server
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start bulkhead server: {e}"))?;
        let err = child.stderr.take();
        let proc = Killed(child);
        let mut url = None;
        let mut said = Vec::new();
        if let Some(err) = err {
            let mut lines = BufReader::new(err).lines();
            for line in lines.by_ref().take(10).map_while(Result::ok) {
                said.push(line.clone());
                if let Some(a) = line.trim().strip_prefix("bulkhead server: listening on ") {
                    url = Some(a.to_string());
                    break;
                }
            }
            std::thread::spawn(move || lines.for_each(drop));
        }
        let admin = poll(Duration::from_secs(20), || {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        match (url, admin) {
            (Some(url), Some(admin)) => Ok(Server {
                _proc: proc,
                url,
                admin,
            }),
            _ => Err(format!(
                "no address or no admin token; the server said {said:?}"
            )),
        }
    }

    /// `bulkhead ARGS` against this server as `token` (in `ctx`'s
    /// namespace). The connection flags go before a `--` (after it is the
    /// command); the token goes in the environment, never as an argument.
    pub(crate) fn api(&self, ctx: &Ctx, token: &str, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--server", self.url.as_str()]);
        let mut c = ctx.cmd(&all);
        c.env("BULKHEAD_TOKEN", token);
        ctx.out(c)
    }
}

pub fn run_table(ctx: &Ctx) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, "cluster/", name, ok, detail);
    let dir = ctx.data.with_file_name("cluster");
    let server = match Server::start(ctx, &dir, "127.0.0.1:0") {
        Ok(s) => s,
        Err(e) => {
            check("server", false, e);
            return checks;
        }
    };
    let api = |token: &str, args: &[&str]| server.api(ctx, token, args);
    let admin = server.admin.clone();
    let url = server.url.clone();
    let join = text(&api(&admin, &["node", "token", "create"]).stdout)
        .trim()
        .to_string();
    let tenant = text(&api(&admin, &["tenant", "create", "acme"]).stdout)
        .trim()
        .to_string();
    let node_log = dir.join("node.log");
    let node = std::fs::File::create(&node_log).and_then(|log| {
        ctx.cmd(&[
            "node",
            "--insecure",
            "--server",
            &url,
            "--name",
            "vm1",
            "--runtime",
            "microvm",
            "--cpus",
            "2",
            "--memory",
            "1g",
            "--listen",
            "127.0.0.1:0",
            "--disk-timeout",
            &DISK_TIMEOUT_S.to_string(),
        ])
        .env("BULKHEAD_JOIN_TOKEN", &join)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
    });
    let Ok(node) = node.map(Killed) else {
        check("node", false, "cannot start bulkhead node".into());
        return checks;
    };
    let ready = poll(Duration::from_secs(20), || {
        let v: serde_json::Value =
            serde_json::from_slice(&api(&admin, &["node", "ls", "--format", "json"]).stdout)
                .ok()?;
        (v[0]["ready"] == true).then_some(())
    });
    check(
        "node-joined",
        ready.is_some() && !join.is_empty() && tenant.starts_with("bh_"),
        format!("join token {join:?}"),
    );

    let spec = dir.join("vm.yaml");
    let yaml = format!("name: vm\nimage: {}\nruntime: microvm\nmemory: 128m\ncommand: [sh, -c, 'echo hello from $BULKHEAD_SERVICE/$BULKHEAD_INSTANCE; exec sleep 1000']\n", run_cases::IMAGE);
    let deployed = std::fs::write(&spec, yaml)
        .map_err(|e| e.to_string())
        .map(|()| api(&tenant, &["deploy", "-f", spec.to_str().unwrap_or("")]));
    let started = Instant::now();
    let running = poll(Duration::from_secs(180), || {
        let v: serde_json::Value =
            serde_json::from_slice(&api(&tenant, &["instance", "ls", "--format", "json"]).stdout)
                .ok()?;
        (v[0]["state"] == "running")
            .then(|| v[0]["fence"].as_u64())
            .flatten()
    });
    check(
        "deploy-running",
        running.is_some(),
        format!(
            "deploy: {:?}; running after {:?}",
            deployed.as_ref().map(show),
            started.elapsed()
        ),
    );
    let Some(fence) = running else { return checks };

    let name = format!("bh-{fence}-0");
    let logs = poll(Duration::from_secs(30), || {
        let o = api(&tenant, &["instance", "logs", "vm", "0"]);
        text(&o.stdout).contains("hello from vm/0").then_some(o)
    });
    check(
        "logs-through-the-server",
        logs.is_some(),
        format!("{:?}", logs.as_ref().map(show)),
    );
    let exec = api(
        &tenant,
        &[
            "instance",
            "exec",
            "vm",
            "0",
            "--",
            "sh",
            "-c",
            "echo in-guest $(uname -s); exit 3",
        ],
    );
    check(
        "exec-through-the-server",
        exec.status.code() == Some(3) && text(&exec.stdout) == "in-guest Linux\n",
        show(&exec),
    );
    let problems = match run_cases::pid_of(ctx, &name, "runtime") {
        Some(pid) => run_cases::vmm_jail_problems(ctx, &name, "acme", pid, 1, 128, false),
        None => vec![format!("no VMM pid for {name}")],
    };
    check("vmm-jailed", problems.is_empty(), format!("{problems:?}"));
    check_hung_disk_build(ctx, &api, &tenant, &name, fence, &node_log, &mut check);

    // Scaled to zero: the workload is removed, and with the tenant's last
    // instance its network on this node (`t-acme`) goes too.
    let scaled = api(&tenant, &["service", "scale", "vm", "0"]);
    let gone = poll(Duration::from_secs(60), || {
        let v: serde_json::Value =
            serde_json::from_slice(&ctx.bh(&["ps", "-a", "--format", "json"]).stdout).ok()?;
        let nets = text(&ctx.bh(&["network", "ls", "--format", "json"]).stdout);
        // Its rules and bridge too: the node is killed right after this.
        let rules = text(&ctx.tool("nft", &["list", "ruleset"]).stdout);
        let links = text(&ctx.tool("ip", &["-o", "link"]).stdout);
        (v.as_array().is_some_and(|a| a.is_empty())
            && !nets.contains("t-acme")
            && !rules.contains("t-acme")
            && !links.contains("t-acme"))
        .then_some(())
    });
    check(
        "scaled-to-zero-removed",
        scaled.status.success() && gone.is_some(),
        show(&scaled),
    );
    drop(node);
    drop(server);
    let left = run_cases::leftovers(ctx);
    check("nothing-left", left.is_empty(), format!("{left:?}"));
    checks
}

/// A tenant's image whose root disk build hangs: the build runs in a child
/// (`bulkhead image disk`), so the node daemon goes on renewing the lease of
/// the instance it runs already (same fence, deadline moving) for as long
/// as the build hangs, kills the build (with what it started) at its
/// `--disk-timeout`, and reports the instance failed. A hang cannot be made
/// on demand from layer bytes (every parser has limits), so the image's
/// layer blob is swapped for a FIFO no one writes: opening it blocks
/// forever, exactly where a hostile layer would hold the unpacker.
fn check_hung_disk_build(
    ctx: &Ctx,
    api: &dyn Fn(&str, &[&str]) -> std::process::Output,
    tenant: &str,
    running: &str,
    fence: u64,
    node_log: &std::path::Path,
    check: &mut dyn FnMut(&str, bool, String),
) {
    let inspect: serde_json::Value = serde_json::from_slice(
        &ctx.bh(&["image", "inspect", run_cases::NOPATH_IMAGE])
            .stdout,
    )
    .unwrap_or_default();
    let Some(layer) = inspect["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
    else {
        check("hung-disk-build", false, format!("no layer in {inspect}"));
        return;
    };
    let blob = ctx.data.join("blobs/sha256").join(layer);
    let aside = blob.with_extension("aside");
    // The image's disk built earlier in this table goes aside too: the
    // node must build it anew.
    let manifest = inspect["manifest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:");
    let disk = ctx.data.join("disks").join(format!("{manifest}.ext4"));
    let disk_aside = disk.with_extension("aside");
    let disk_moved = std::fs::rename(&disk, &disk_aside).is_ok();
    let fifo = std::fs::rename(&blob, &aside)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| e.to_string())
        });
    let lease = ctx.data.join("node/leases").join(running);
    let deadline = || -> Option<u64> { std::fs::read_to_string(&lease).ok()?.trim().parse().ok() };
    let spec = ctx.data.with_file_name("cluster").join("hang.yaml");
    let yaml = format!("name: hang\nimage: {}\nruntime: microvm\nmemory: 128m\nrestart: never\ncommand: [\"true\"]\n", run_cases::NOPATH_IMAGE);
    let deployed = std::fs::write(&spec, yaml)
        .map(|()| api(tenant, &["deploy", "-f", spec.to_str().unwrap_or("")]));
    let data = ctx.data.display().to_string();
    let builds = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| {
                let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
                let cmd = text(&cmd).replace('\0', " ");
                let env = text(&std::fs::read(p.path().join("environ")).unwrap_or_default());
                (cmd.contains(" image disk ") && env.contains(&data))
                    .then(|| p.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect()
    };
    let hung = poll(Duration::from_secs(60), || {
        (!builds().is_empty()).then_some(())
    });
    let first = deadline();
    // Renewed while the build hangs: the deadline moves at least twice.
    let mut seen = std::collections::BTreeSet::new();
    let start = Instant::now();
    let ended = poll(Duration::from_secs(DISK_TIMEOUT_S + 60), || {
        seen.extend(deadline());
        let v: serde_json::Value =
            serde_json::from_slice(&api(tenant, &["instance", "ls", "--format", "json"]).stdout)
                .ok()?;
        let hang = v
            .as_array()?
            .iter()
            .find(|i| i["service"] == "hang")?
            .clone();
        (hang["state"] == "exited" && builds().is_empty()).then_some(hang)
    });
    let waited = start.elapsed();
    let v: serde_json::Value =
        serde_json::from_slice(&api(tenant, &["instance", "ls", "--format", "json"]).stdout)
            .unwrap_or_default();
    let vm = v
        .as_array()
        .and_then(|a| a.iter().find(|i| i["service"] == "vm").cloned())
        .unwrap_or_default();
    let log = std::fs::read_to_string(node_log).unwrap_or_default();
    let removed = api(tenant, &["service", "rm", "hang"]);
    // The blob back, so nothing after this sees the FIFO.
    let _ = std::fs::remove_file(&blob);
    let restored = std::fs::rename(&aside, &blob).is_ok()
        && (!disk_moved || std::fs::rename(&disk_aside, &disk).is_ok());
    check(
        "hung-disk-build-leaves-leases-renewed",
        fifo.is_ok()
            && deployed.as_ref().is_ok_and(|o| o.status.success())
            && hung.is_some()
            && seen.len() >= 3
            && first.is_some_and(|f| seen.iter().all(|d| *d >= f))
            && ended.as_ref().is_some_and(|h| h["last_exit"] == 125)
            && waited >= Duration::from_secs(DISK_TIMEOUT_S.saturating_sub(5))
            && vm["state"] == "running"
            && vm["fence"].as_u64() == Some(fence)
            && log.contains("took longer than")
            && removed.status.success()
            && restored,
        format!(
            "fifo {fifo:?}; deploy {:?}; hung {hung:?}; deadlines {seen:?} from {first:?}; hang {ended:?} after {waited:?}; vm {vm}; node log {:?}; rm {}",
            deployed.as_ref().map(show),
            log.lines().rev().take(5).collect::<Vec<_>>(),
            show(&removed)
        ),
    );
}
