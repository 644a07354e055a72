//! A microVM service deployed through the control plane: `bulkhead server`
//! (one-host store, loopback) and one `bulkhead node` offering the microvm
//! runtime, where real Linux guests boot (the test host on machines whose
//! /dev/kvm cannot). Each case prints `CHECK cluster/<name> ok|FAIL`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::run_cases::{self, record, show, text, Check, Ctx};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 250 ms for up to `limit`; its last answer.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
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

pub fn run_table(ctx: &Ctx) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, "cluster/", name, ok, detail);
    let dir = ctx.data.with_file_name("cluster");
    let token_file = dir.join("admin-token");
    let store = format!("file:{}", dir.join("cluster.redb").display());
    // Plain HTTP on the test host's loopback (--insecure): the walls test
    // covers the default TLS.
    let mut server = ctx.cmd(&[
        "server",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
        "--admin-token-file",
        token_file.to_str().unwrap_or(""),
    ]);
    let Ok(mut child) = server.stdin(Stdio::null()).stderr(Stdio::piped()).spawn() else {
        check("server", false, "cannot start bulkhead server".into());
        return checks;
    };
    let err = child.stderr.take();
    let server = Killed(child);
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
    let (Some(url), Some(admin)) = (url, admin) else {
        check(
            "server",
            false,
            format!("no address or no admin token; the server said {said:?}"),
        );
        return checks;
    };
    // The connection flags go before a `--` (after it is the command).
    // The token goes in the environment: never as an argument.
    let api = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--server", url.as_str()]);
        let mut c = ctx.cmd(&all);
        c.env("BULKHEAD_TOKEN", token);
        ctx.out(c)
    };
    let join = text(&api(&admin, &["node", "token", "create"]).stdout)
        .trim()
        .to_string();
    let tenant = text(&api(&admin, &["tenant", "create", "acme"]).stdout)
        .trim()
        .to_string();
    let node = ctx
        .cmd(&[
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
        ])
        .env("BULKHEAD_JOIN_TOKEN", &join)
        .stdin(Stdio::null())
        .spawn();
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
        Some(pid) => run_cases::vmm_jail_problems(ctx, &name, pid, 1, 128, false),
        None => vec![format!("no VMM pid for {name}")],
    };
    check("vmm-jailed", problems.is_empty(), format!("{problems:?}"));

    // Scaled to zero: the workload is removed, and with the tenant's last
    // instance its network on this node (`t-acme`) goes too.
    let scaled = api(&tenant, &["service", "scale", "vm", "0"]);
    let gone = poll(Duration::from_secs(60), || {
        let v: serde_json::Value =
            serde_json::from_slice(&ctx.bh(&["ps", "-a", "--format", "json"]).stdout).ok()?;
        let nets = text(&ctx.bh(&["network", "ls", "--format", "json"]).stdout);
        (v.as_array().is_some_and(|a| a.is_empty()) && !nets.contains("t-acme")).then_some(())
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
