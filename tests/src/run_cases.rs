//! `bulkhead run` and friends, one table of cases for both runtimes. The
//! container rows run natively (the tests call [`run_table`]); the microvm
//! rows run inside the test host (`bulkhead-testkit run-cases`), each case
//! printing `CHECK <runtime>/<name> <ok|FAIL> <detail>`.
//!
//! Every case drives the real CLI as a user would, with `BULKHEAD_DATA`
//! pointing at a store that holds the busybox image [`IMAGE`].

mod hardening;
mod health;
mod jail;
mod tty;
pub use jail::*;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The image every case runs (made by [`prepare_store`]).
pub const IMAGE: &str = "bb:test";
/// The same tree in an image whose config sets no PATH.
pub const NOPATH_IMAGE: &str = "bb:nopath";

#[derive(Debug, Clone)]
pub struct Ctx {
    pub bulkhead: PathBuf,
    pub data: PathBuf,
    /// "microvm" or "container".
    pub runtime: String,
    /// For the container runtime: crun or runc.
    pub oci_runtime: Option<String>,
    /// The network namespace bulkhead runs in (its bridge and rules go
    /// there); `None`: ours (inside the test host, a machine of its own).
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Ctx {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bulkhead);
        c.env("BULKHEAD_DATA", &self.data).args(args);
        if let Some(ns) = &self.netns {
            if let Err(e) = crate::netns::command_in(&mut c, ns) {
                // A command that cannot start there fails loudly instead of running here.
                c = Command::new("false");
                eprintln!("{e}");
            }
        }
        c
    }

    /// A host tool (`ip`, `nft`) where bulkhead runs.
    pub fn tool(&self, prog: &str, args: &[&str]) -> Output {
        let mut c = Command::new(prog);
        c.args(args);
        if let Some(ns) = &self.netns {
            if crate::netns::command_in(&mut c, ns).is_err() {
                c = Command::new("false");
            }
        }
        self.out(c)
    }

    /// `bulkhead run --runtime R [--oci-runtime O] FLAGS... IMAGE ARGS...`
    pub fn run_cmd(&self, flags: &[&str], args: &[&str]) -> Command {
        self.run_image_cmd(IMAGE, flags, args)
    }

    /// The same with another image.
    pub fn run_image_cmd(&self, image: &str, flags: &[&str], args: &[&str]) -> Command {
        let mut c = self.cmd(&["run", "--runtime", &self.runtime]);
        if let Some(o) = &self.oci_runtime {
            c.args(["--oci-runtime", o]);
        }
        c.args(flags).arg(image).args(args);
        c
    }

    pub fn out(&self, mut c: Command) -> Output {
        c.stdin(Stdio::null()).output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(125 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
    }

    pub fn bh(&self, args: &[&str]) -> Output {
        self.out(self.cmd(args))
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn show(o: &Output) -> String {
    format!(
        "code={:?} stdout={:?} stderr={:?}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Imports a busybox root (see `busybox_root`) as [`IMAGE`] into `data`,
/// and with `disk` builds its ext4 root disk too (so a test host without
/// e2fsprogs finds it cached).
pub fn prepare_store(bulkhead: &Path, data: &Path, disk: bool) -> Result<(), String> {
    let tree = tempfile::tempdir().map_err(|e| e.to_string())?;
    crate::busybox_root::build(tree.path()).map_err(|e| e.to_string())?;
    let run = |args: &[&str]| -> Result<(), String> {
        let o = Command::new(bulkhead)
            .env("BULKHEAD_DATA", data)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("bulkhead {args:?}: {}", show(&o)))
        }
    };
    run(&[
        "image",
        "import-dir",
        &tree.path().display().to_string(),
        "--name",
        IMAGE,
    ])?;
    let nopath = tempfile::tempdir().map_err(|e| e.to_string())?;
    let saved = nopath.path().join("nopath.tar");
    crate::busybox_root::docker_save_without_env(nopath.path(), &saved, NOPATH_IMAGE)
        .map_err(|e| e.to_string())?;
    run(&[
        "image",
        "import",
        &saved.display().to_string(),
        "--name",
        NOPATH_IMAGE,
    ])?;
    if disk {
        run(&["image", "disk", IMAGE])?;
        run(&["image", "disk", NOPATH_IMAGE])?;
    }
    Ok(())
}

/// Prints `CHECK <prefix><name> ok|FAIL <detail>` (one line) and keeps it.
pub fn record(checks: &mut Vec<Check>, prefix: &str, name: &str, ok: bool, detail: String) {
    let c = Check {
        name: format!("{prefix}{name}"),
        ok,
        detail: detail.replace('\n', "\\n"),
    };
    println!(
        "CHECK {} {} {}",
        c.name,
        if c.ok { "ok" } else { "FAIL" },
        c.detail
    );
    let _ = std::io::stdout().flush();
    checks.push(c);
}

/// Runs every case; never panics (a failure is a `Check` with `ok: false`).
pub fn run_table(ctx: &Ctx, cycles: usize) -> Vec<Check> {
    let mut checks = Vec::new();
    let prefix = format!("{}/", ctx.runtime);
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, &prefix, name, ok, detail);

    let o = ctx.out(ctx.run_cmd(&["--rm"], &["echo", "hi"]));
    check(
        "echo",
        o.status.code() == Some(0) && text(&o.stdout) == "hi\n",
        show(&o),
    );

    let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", "exit 7"]));
    check("exit-7", o.status.code() == Some(7), show(&o));

    let o = ctx.out(ctx.run_cmd(&["--rm"], &["nosuch-command"]));
    check(
        "not-found-127",
        o.status.code() == Some(127) && text(&o.stderr).contains("nosuch-command"),
        show(&o),
    );

    let o = ctx.out(ctx.run_cmd(&["--rm"], &["/notexec"]));
    check("not-executable-126", o.status.code() == Some(126), show(&o));

    let o = ctx.out(ctx.run_cmd(
        &[
            "--rm",
            "-e",
            "A=from-flag",
            "-w",
            "/tmp",
            "-u",
            "alice",
            "--entrypoint",
            "sh",
        ],
        &["-c", "echo $A; pwd; id -u"],
    ));
    check(
        "env-workdir-user-entrypoint",
        o.status.code() == Some(0) && text(&o.stdout) == "from-flag\n/tmp\n1000\n",
        show(&o),
    );

    let mut c = ctx.run_cmd(&["--rm", "-i"], &["cat"]);
    let o = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut i) = child.stdin.take() {
                i.write_all(b"round trip\n")?;
            }
            child.wait_with_output()
        });
    match o {
        Ok(o) => check(
            "stdin-round-trip",
            o.status.code() == Some(0) && text(&o.stdout) == "round trip\n",
            show(&o),
        ),
        Err(e) => check("stdin-round-trip", false, e.to_string()),
    }

    tty::check_tty(ctx, &mut check);
    check_sigkill(ctx, &mut check);
    check_sigterm_forwarded(ctx, &mut check);
    check_limits(ctx, &mut check);
    check_detached_lifecycle(ctx, &mut check);
    check_stop_with_closed_output(ctx, &mut check);
    check_orphan(ctx, &mut check);
    health::check_health(ctx, &mut check);
    if ctx.runtime == "microvm" {
        check_vmm_killed(ctx, &mut check);
    } else {
        hardening::check_container_walls(ctx, &mut check);
    }

    // Writes stay in one workload.
    let a = ctx.out(ctx.run_cmd(
        &["--rm"],
        &["sh", "-c", "echo x > /marker && test -e /marker"],
    ));
    let b = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", "test ! -e /marker"]));
    check(
        "writes-do-not-leak",
        a.status.code() == Some(0) && b.status.code() == Some(0),
        format!("{} / {}", show(&a), show(&b)),
    );

    // Run/rm cycles, then nothing may be left.
    let mut failures = Vec::new();
    for i in 0..cycles {
        let name = format!("cycle-{i}");
        let r = ctx.out(ctx.run_cmd(&["--name", &name], &["true"]));
        let rm = ctx.bh(&["rm", &name]);
        if r.status.code() != Some(0) || rm.status.code() != Some(0) {
            failures.push(format!("{name}: {} / {}", show(&r), show(&rm)));
        }
    }
    check(
        &format!("{cycles}-run-rm-cycles"),
        failures.is_empty(),
        failures.join("; "),
    );
    let left = leftovers(ctx);
    check("nothing-left", left.is_empty(), left.join("; "));
    checks
}

/// An attached run killed with SIGKILL exits 137.
fn check_sigkill(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let mut c = ctx.run_cmd(
        &["--rm", "--name", "killme"],
        &["sh", "-c", "echo ready; exec sleep 1000"],
    );
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return check("sigkill-137", false, e.to_string()),
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let k = ctx.bh(&["kill", "-s", "KILL", "killme"]);
    let o = child.wait_with_output();
    match o {
        Ok(o) => check(
            "sigkill-137",
            line == "ready\n" && o.status.code() == Some(137),
            format!("first line {line:?}; kill: {}; run: {}", show(&k), show(&o)),
        ),
        Err(e) => check("sigkill-137", false, e.to_string()),
    }
}

/// SIGTERM to an attached `run` reaches the workload (its trap exits 3).
fn check_sigterm_forwarded(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let mut c = ctx.run_cmd(
        &["--rm"],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let mut child = match c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return check("sigterm-forwarded", false, e.to_string()),
    };
    let mut out = BufReader::new(child.stdout.take().unwrap_or_else(|| unreachable!("piped")));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid or fd fits")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    let status = child.wait();
    let code = status.as_ref().ok().and_then(|s| s.code());
    check(
        "sigterm-forwarded",
        line == "ready\n" && rest == "got-term\n" && code == Some(3),
        format!("first {line:?} then {rest:?}, exit {code:?}"),
    );
}

/// --cpus/--memory: the VM's size, or the container's cgroup limits.
fn check_limits(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    if ctx.runtime == "microvm" {
        let o = ctx.out(ctx.run_cmd(
            &["--rm", "--cpus", "2", "--memory", "300m"],
            &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
        ));
        let t = text(&o.stdout);
        let mut lines = t.lines();
        let cpus = lines.next().unwrap_or_default().trim().to_string();
        let kb: u64 = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        // MemTotal is what the guest kernel keeps after its own reservations.
        check(
            "limits",
            o.status.code() == Some(0) && cpus == "2" && (200 * 1024..=300 * 1024).contains(&kb),
            show(&o),
        );
    } else {
        let script = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us";
        let o = ctx.out(ctx.run_cmd(
            &["--rm", "--cpus", "0.5", "--memory", "64m"],
            &["sh", "-c", script],
        ));
        let t = text(&o.stdout);
        check(
            "limits",
            o.status.code() == Some(0)
                && t.lines().next() == Some("67108864")
                && t.lines().nth(1).is_some_and(|l| l.starts_with("50000")),
            show(&o),
        );
    }
    // A size the runtime cannot take is refused before anything is made
    // (a microVM's bounds are the VMM's: 8m used to fail in the VMM, after
    // the record, the supervisor, the TAP and the jail existed).
    let small = if ctx.runtime == "microvm" { "8m" } else { "2m" };
    let before = (
        ctx.bh(&["ps", "-a", "--format", "json"]).stdout,
        std::fs::read_dir(ctx.data.join("workloads"))
            .map(Iterator::count)
            .unwrap_or(0),
    );
    let o = ctx.out(ctx.run_cmd(&["--rm", "--memory", small], &["true"]));
    let after = (
        ctx.bh(&["ps", "-a", "--format", "json"]).stdout,
        std::fs::read_dir(ctx.data.join("workloads"))
            .map(Iterator::count)
            .unwrap_or(0),
    );
    check(
        "memory-refused-before-anything",
        o.status.code() == Some(125)
            && text(&o.stderr).contains(&format!("{} workloads take", ctx.runtime))
            && before == after,
        show(&o),
    );
}

pub fn pidfd_wait(pid: i32, ms: u16) {
    // SAFETY: pidfd_open with a pid and no flags; the fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a new fd from the kernel, owned here.
        let fd: std::os::fd::OwnedFd = unsafe {
            std::os::fd::FromRawFd::from_raw_fd(i32::try_from(fd).expect("a pid or fd fits"))
        };
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    }
}

fn status_of(ctx: &Ctx, name: &str) -> String {
    ps_status(
        &text(&ctx.bh(&["ps", "-a", "--format", "json"]).stdout),
        name,
    )
    .unwrap_or_default()
}

pub fn pid_of(ctx: &Ctx, name: &str, which: &str) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(&ctx.bh(&["inspect", name]).stdout).ok()?;
    v["pids"][which]
        .as_i64()
        .map(|p| i32::try_from(p).expect("a pid or fd fits"))
}

/// `stop` reaches a workload that closed its output and runs on (its
/// signals do not ride on its output stream).
fn check_stop_with_closed_output(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(
        &["-d", "--name", "quiet"],
        &["sh", "-c", "exec >/dev/null 2>&1; exec sleep 1000"],
    ));
    let stop = ctx.bh(&["stop", "-t", "2", "quiet"]);
    let status = status_of(ctx, "quiet");
    let rm = ctx.bh(&["rm", "quiet"]);
    // 143: SIGTERM did it (microVM: the workload is not PID 1); 137: the
    // SIGKILL after -t (a container's PID 1 ignores SIGTERM without a handler).
    let ok = o.status.success()
        && stop.status.success()
        && (status == "exited (143)" || status == "exited (137)")
        && rm.status.success();
    check(
        "stop-with-closed-output",
        ok,
        format!(
            "run: {}; stop: {}; status {status:?}",
            show(&o),
            show(&stop)
        ),
    );
}

/// The supervisor killed with SIGKILL: `ps` says so, `rm -f` kills the
/// orphaned VMM or OCI runtime and cleans up.
fn check_orphan(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(&["-d", "--name", "orphan"], &["sleep", "1000"]));
    let (Some(sup), Some(runtime)) = (
        pid_of(ctx, "orphan", "supervisor"),
        pid_of(ctx, "orphan", "runtime"),
    ) else {
        return check(
            "orphan-reported-and-cleaned",
            false,
            format!("no pids: {}", show(&o)),
        );
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    );
    pidfd_wait(sup, 10_000);
    let status = status_of(ctx, "orphan");
    let plain_rm = ctx.bh(&["rm", "orphan"]);
    let rm = ctx.bh(&["rm", "-f", "orphan"]);
    let runtime_alive = std::path::Path::new(&format!("/proc/{runtime}")).exists()
        && !std::fs::read_to_string(format!("/proc/{runtime}/stat"))
            .unwrap_or_default()
            .contains(") Z");
    check(
        "orphan-reported-and-cleaned",
        status.starts_with("failed: its supervisor died")
            && !plain_rm.status.success()
            && rm.status.success()
            && !runtime_alive,
        format!(
            "status {status:?}; rm: {}; rm -f: {}; runtime {runtime} alive: {runtime_alive}",
            show(&plain_rm),
            show(&rm)
        ),
    );
}

/// The VMM ended from outside: the workload is reported failed, with the
/// guest console's last lines. First: every VMM thread runs filtered, and
/// the VMM is jailed.
fn check_vmm_killed(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(
        &["-d", "--name", "vmmkill", "--cpus", "2", "--memory", "300m"],
        &["sleep", "1000"],
    ));
    let (Some(sup), Some(vmm)) = (
        pid_of(ctx, "vmmkill", "supervisor"),
        pid_of(ctx, "vmmkill", "runtime"),
    ) else {
        return check(
            "jailer-killed-vm-ends-reported",
            false,
            format!("no pids: {}", show(&o)),
        );
    };
    let filters = vmm_thread_filters(vmm);
    let filtered = filters.iter().any(|t| t.0 == "bulkhead-vmm")
        && filters.iter().any(|t| t.0.starts_with("vcpu"))
        && filters.iter().all(|t| t.1 == "2" && t.2 == "1");
    check(
        "vmm-seccomp",
        filtered,
        format!("(thread, Seccomp, NoNewPrivs): {filters:?}"),
    );
    let problems = vmm_jail_problems(ctx, "vmmkill", LOCAL_OWNER, vmm, 2, 300, true);
    check("vmm-jailed", problems.is_empty(), problems.join("; "));
    // The jailer itself SIGKILLed (it cannot clean up): the VMM dies with
    // it (parent-death signal), the supervisor reports and removes the jail.
    let jailer = parent_of(vmm);
    let id = serde_json::from_slice::<serde_json::Value>(&ctx.bh(&["inspect", "vmmkill"]).stdout)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .unwrap_or_default();
    if let Some(j) = jailer {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(j),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pidfd_wait(sup, 30_000);
    let status = status_of(ctx, "vmmkill");
    let jail_left: Vec<String> = [
        format!("/run/bulkhead/jail/{id}"),
        format!("/sys/fs/cgroup/bulkhead/{id}"),
        format!("/sys/fs/cgroup/memory/bulkhead/{id}"),
        format!("/sys/fs/cgroup/pids/bulkhead/{id}"),
    ]
    .into_iter()
    .filter(|p| id.is_empty() || Path::new(p).exists())
    .collect();
    let vmm_gone = !Path::new(&format!("/proc/{vmm}")).exists()
        || std::fs::read_to_string(format!("/proc/{vmm}/stat"))
            .unwrap_or_default()
            .contains(") Z");
    let rm = ctx.bh(&["rm", "vmmkill"]);
    check(
        "jailer-killed-vm-ends-reported",
        jailer.is_some() && vmm_gone && status.starts_with("failed:") && status.contains("guest console") && jail_left.is_empty() && rm.status.success(),
        format!("jailer {jailer:?}; VMM gone: {vmm_gone}; status {status:?}; left: {jail_left:?}; rm: {}", show(&rm)),
    );
}

/// The parent pid of `pid` (field 4 of its stat line).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// run -d, 8 CLI invocations at once, logs, exec, stop (the trap's exit
/// code shows the stop signal arrived), rm.
fn check_detached_lifecycle(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(
        &["-d", "--name", "daemon"],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo started; while true; do sleep 0.1; done",
        ],
    ));
    let id = text(&o.stdout).trim().to_string();
    check(
        "detach-prints-id",
        o.status.code() == Some(0) && id.len() == 64,
        show(&o),
    );

    let o = ctx.bh(&["exec", "daemon", "sh", "-c", "echo in-exec; exit 4"]);
    check(
        "exec",
        o.status.code() == Some(4) && text(&o.stdout) == "in-exec\n",
        show(&o),
    );

    // An image that sets no PATH: the workload and an exec both get the
    // default one (docker's), and find commands by their bare names.
    let started = ctx.out(ctx.run_image_cmd(
        NOPATH_IMAGE,
        &["-d", "--name", "nopath"],
        &["sleep", "1000"],
    ));
    let o = ctx.bh(&["exec", "nopath", "sh", "-c", "echo $PATH"]);
    let bare = ctx.bh(&["exec", "nopath", "echo", "found-by-path"]);
    let default = format!("{}\n", bulkhead_agent_proto::DEFAULT_PATH);
    check(
        "exec-default-path",
        started.status.success()
            && text(&o.stdout) == default
            && text(&bare.stdout) == "found-by-path\n",
        format!("{} / {} / {}", show(&started), show(&o), show(&bare)),
    );
    let _ = ctx.bh(&["rm", "-f", "nopath"]);

    // 8 at once against the running workload: state store and socket shared.
    let mut kids = Vec::new();
    for i in 0..8 {
        let args: Vec<String> = match i % 4 {
            0 => vec!["ps".into(), "--format".into(), "json".into()],
            1 => vec!["inspect".into(), "daemon".into()],
            2 => vec!["logs".into(), "daemon".into()],
            _ => vec![
                "exec".into(),
                "daemon".into(),
                "echo".into(),
                format!("concurrent-{i}"),
            ],
        };
        let mut c = ctx.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        kids.push((
            args,
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn(),
        ));
    }
    let mut bad = Vec::new();
    for (args, k) in kids {
        match k.and_then(|k| k.wait_with_output()) {
            Ok(o)
                if o.status.success()
                    && (args[0] != "exec" || text(&o.stdout) == format!("{}\n", args[3]))
                    && (args[0] != "ps" || text(&o.stdout).contains("daemon")) => {}
            Ok(o) => bad.push(format!("{args:?}: {}", show(&o))),
            Err(e) => bad.push(format!("{args:?}: {e}")),
        }
    }
    check("8-clis-at-once", bad.is_empty(), bad.join("; "));

    let o = ctx.bh(&["logs", "daemon"]);
    check("logs", text(&o.stdout).starts_with("started\n"), show(&o));
    let o = ctx.bh(&["stop", "-t", "20", "daemon"]);
    let ps = ctx.bh(&["ps", "-a", "--format", "json"]);
    let stopped = ps_status(&text(&ps.stdout), "daemon");
    check(
        "stop",
        o.status.code() == Some(0) && stopped.as_deref() == Some("exited (3)"),
        format!("{} / status {stopped:?}", show(&o)),
    );
    let o = ctx.bh(&["logs", "--tail", "1", "daemon"]);
    check("logs-tail", text(&o.stdout) == "got-term\n", show(&o));
    let o = ctx.bh(&["rm", "daemon"]);
    let gone = !text(&ctx.bh(&["ps", "-a"]).stdout).contains("daemon");
    check("rm", o.status.code() == Some(0) && gone, show(&o));
}

/// The "status" of workload `name` in `ps --format json` output.
fn ps_status(json: &str, name: &str) -> Option<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    v.iter()
        .find(|w| w["name"] == name)
        .and_then(|w| w["status"].as_str().map(str::to_string))
}

/// What a workload could leave behind: rows, dirs, sockets, mounts,
/// supervisors, OCI runtime state, temp files.
pub fn leftovers(ctx: &Ctx) -> Vec<String> {
    let mut left = Vec::new();
    let ps = ctx.bh(&["ps", "-a", "--format", "json"]);
    if text(&ps.stdout).trim() != "[]" {
        left.push(format!("state rows: {}", text(&ps.stdout)));
    }
    for dir in [ctx.data.join("workloads"), ctx.data.join("tmp")] {
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        if n > 0 {
            left.push(format!("{n} entries in {}", dir.display()));
        }
    }
    let n = std::fs::read_dir("/run/bulkhead")
        .into_iter()
        .flatten()
        .flatten()
        // The jails' base, the containers' base, the VMMs' shared empty
        // network namespace and the network daemons' dirs stay, by design.
        .filter(|e| {
            !["jail", "netns", "ct", "names", "ids", "dns", "overlay"]
                .contains(&e.file_name().to_string_lossy().as_ref())
        })
        .count();
    if n > 0 {
        left.push(format!("{n} runtime dirs in /run/bulkhead"));
    }
    for base in ["/run/bulkhead/jail", "/run/bulkhead/ct"] {
        let dirs: Vec<String> = std::fs::read_dir(base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !dirs.is_empty() {
            left.push(format!("dirs in {base}: {dirs:?}"));
        }
    }
    for parent in [
        "/sys/fs/cgroup/bulkhead",
        "/sys/fs/cgroup/memory/bulkhead",
        "/sys/fs/cgroup/cpu/bulkhead",
        "/sys/fs/cgroup/pids/bulkhead",
    ] {
        let groups: Vec<String> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        if !groups.is_empty() {
            left.push(format!("cgroups in {parent}: {groups:?}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let data = ctx.data.display().to_string();
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.contains(&data) || l.contains("/run/bulkhead/jail") || l.contains("/run/bulkhead/ct")
        })
        .collect();
    if !ours.is_empty() {
        left.push(format!("mounts: {ours:?}"));
    }
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = text(&cmdline).replace('\0', " ");
        if cmd.contains("__supervise") && cmd.contains(&data)
            || cmd.contains("bulkhead-vmm")
            || cmd.contains("bulkhead-jailer")
            || cmd.starts_with("sleep 1000")
        {
            left.push(format!(
                "process {}: {cmd}",
                p.file_name().to_string_lossy()
            ));
        }
    }
    left.extend(crate::net_cases::net_leftovers(ctx));
    for rt in ["crun", "runc"] {
        if let Ok(o) = Command::new(rt).arg("list").output() {
            let rows = text(&o.stdout)
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .count();
            if rows > 0 {
                left.push(format!("{rt} list: {}", text(&o.stdout)));
            }
        }
    }
    left
}
