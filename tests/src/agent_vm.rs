//! The agent end to end in a real VM: runs inside the test host (via
//! `bulkhead-testkit agent-e2e`), boots `bulkhead-vmm` with our kernel, the
//! agent initramfs and a busybox ext4 root disk, drives the agent with the
//! host client, and prints one `CHECK <name> <ok|FAIL> <detail>` line per
//! check and `TIMING` lines the test reads back.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bulkhead_agent_proto::client::{AgentClient, Output};
use bulkhead_agent_proto::{
    ExitStatus, Fd, ProcessSpec, RootSource, RootSpec, StartRequest, AGENT_VSOCK_PORT,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// What the scenario needs, as paths inside the test host.
#[derive(Debug, Clone)]
pub struct Paths {
    pub kernel: PathBuf,
    pub agent_initrd: PathBuf,
    pub disk: PathBuf,
    pub baseline_initrd: PathBuf,
    /// An empty ext4 disk for the overlay's upper layer (exit7 case).
    pub scratch: PathBuf,
}

fn check(name: &str, ok: bool, detail: impl std::fmt::Display) -> bool {
    println!(
        "CHECK {name} {} {}",
        if ok { "ok" } else { "FAIL" },
        detail.to_string().replace('\n', "\\n")
    );
    ok
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Vm {
    child: Child,
    client: AgentClient,
    started: Instant,
    connected: Duration,
    serial: PathBuf,
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Vm {
    async fn boot(p: &Paths, name: &str, scratch: bool) -> Result<Vm, String> {
        let uds = PathBuf::from(format!("/tmp/{name}.vsock"));
        let listener_path = format!("{}_{AGENT_VSOCK_PORT}", uds.display());
        let _ = std::fs::remove_file(&listener_path);
        let listener =
            UnixListener::bind(&listener_path).map_err(|e| format!("bind {listener_path}: {e}"))?;
        let serial = PathBuf::from(format!("/tmp/{name}.serial"));
        let started = Instant::now();
        let mut child = Command::new("bulkhead-vmm")
            .arg("--kernel")
            .arg(&p.kernel)
            .arg("--initrd")
            .arg(&p.agent_initrd)
            .arg("--disk")
            .arg(format!("{},ro", p.disk.display()))
            .args(if scratch {
                vec!["--disk".into(), p.scratch.display().to_string()]
            } else {
                vec![]
            })
            .args([
                "--memory",
                "256",
                "--vsock-cid",
                "3",
                "--boot-timeline",
                "--cmdline",
                "console=ttyS0 quiet",
            ])
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--serial")
            .arg(&serial)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn bulkhead-vmm: {e}"))?;
        let client = tokio::select! {
            c = AgentClient::accept(&listener) => c.map_err(|e| format!("agent: {e}"))?,
            s = child.wait() => return Err(format!("the VMM exited before the agent dialed in: {s:?}; serial:\n{}", std::fs::read_to_string(&serial).unwrap_or_default())),
            _ = tokio::time::sleep(BOOT_TIMEOUT) => return Err(format!("no agent within {BOOT_TIMEOUT:?}; serial:\n{}", std::fs::read_to_string(&serial).unwrap_or_default())),
        };
        Ok(Vm {
            child,
            client,
            started,
            connected: started.elapsed(),
            serial,
        })
    }

    fn start_request(spec: ProcessSpec) -> StartRequest {
        StartRequest {
            process: spec,
            root: RootSpec {
                source: RootSource::Block {
                    device: "/dev/vda".into(),
                    fstype: "ext4".into(),
                },
                scratch: None,
                volumes: Vec::new(),
                tmpfs: Vec::new(),
                read_only: false,
            },
            hostname: Some("guest".into()),
            ..Default::default()
        }
    }

    /// Waits for the VMM to exit; returns its code and its boot timeline.
    async fn finish(mut self) -> (Option<i32>, String) {
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr).await;
        }
        let status = tokio::time::timeout(BOOT_TIMEOUT, self.child.wait()).await;
        let code = match status {
            Ok(Ok(s)) => s.code(),
            _ => None,
        };
        if code != Some(0) {
            println!(
                "SERIAL {}",
                std::fs::read_to_string(&self.serial)
                    .unwrap_or_default()
                    .replace('\n', "\\n")
            );
        }
        (code, stderr)
    }
}

/// A milestone of the VMM's --boot-timeline output
/// (`bulkhead-vmm: boot-timeline <name> <micros>us`).
fn timeline_us(stderr: &str, name: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l
            .strip_prefix("bulkhead-vmm: boot-timeline ")?
            .strip_prefix(name)?
            .strip_prefix(' ')?;
        rest.trim().strip_suffix("us")?.parse().ok()
    })
}

async fn echo_case(p: &Paths) -> Result<(), String> {
    let vm = Vm::boot(p, "echo", false).await?;
    check(
        "hello-from-agent",
        vm.client.hello().boot_to_connected_us.is_some(),
        format!("{:?}", vm.client.hello()),
    );
    let mut proc_ = vm
        .client
        .start(Vm::start_request(process(&["echo", "hello"])))
        .await
        .map_err(|e| e.to_string())?;
    let mut first_output = None;
    let mut stdout = Vec::new();
    while let Some(o) = proc_.next_output().await {
        if let Output::Data(Fd::Stdout, b) = o {
            first_output.get_or_insert(vm.started.elapsed());
            stdout.extend(b);
        }
    }
    let status = proc_.wait().await.map_err(|e| e.to_string())?;
    check(
        "echo-output",
        stdout == b"hello\n",
        format!("{:?}", text(&stdout)),
    );
    check(
        "echo-exit",
        status == ExitStatus::Code(0),
        format!("{status:?}"),
    );
    let connected = vm.connected;
    let (code, stderr) = vm.finish().await;
    check(
        "echo-vmm-exit-0",
        code == Some(0),
        format!("{code:?} {stderr}"),
    );
    let kernel = timeline_us(&stderr, "kernel-entry").unwrap_or(0);
    let agent = timeline_us(&stderr, "init-started").unwrap_or(0);
    let ready = timeline_us(&stderr, "agent-ready").unwrap_or(0);
    let workload = timeline_us(&stderr, "workload-started").unwrap_or(0);
    println!(
        "TIMING agent kernel_entry_us={kernel} init_started_us={agent} agent_ready_us={ready} host_connected_us={} workload_started_us={workload} first_output_us={}",
        connected.as_micros(),
        first_output.map_or(0, |d| d.as_micros())
    );
    Ok(())
}

async fn exit7_case(p: &Paths) -> Result<(), String> {
    // With a scratch disk as the overlay's upper layer: what the workload
    // writes must be on that disk after power-off (the agent syncs).
    let vm = Vm::boot(p, "exit7", true).await?;
    let mut req = Vm::start_request(process(&["sh", "-c", "echo persisted > /data.txt; exit 7"]));
    req.root.scratch = Some("/dev/vdb".into());
    let out = vm
        .client
        .start(req)
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    check(
        "exit-7",
        out.status == ExitStatus::Code(7),
        format!("{:?}", out.status),
    );
    let (code, stderr) = vm.finish().await;
    check(
        "exit7-vmm-exit-0",
        code == Some(0),
        format!("{code:?} {stderr}"),
    );
    Ok(())
}

/// What a workload can see of the agent: no /init, /proc/1 is itself, no
/// process whose exe is the agent, no initramfs mount.
const LOOK_FOR_AGENT: &str = r#"
echo "exe=$(readlink /proc/1/exe)"
test -e /init && echo "init-visible"
for e in /proc/[0-9]*/exe; do readlink "$e"; done | grep -q -e init -e agent && echo "agent-exe-visible"
awk '$5 ~ /^\/run\/bulkhead/ || / - rootfs / { print "initramfs-mount-visible: " $0 }' /proc/self/mountinfo
ls /proc/1/root/init 2>/dev/null && echo "init-via-proc-root"
echo "pids=$(ls -d /proc/[0-9]* | wc -l)"
echo "hostname=$(hostname)"
echo look-done
"#;

async fn exec_term_case(p: &Paths) -> Result<(), String> {
    let vm = Vm::boot(p, "exec", false).await?;
    let main = process(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait",
    ]);
    let mut proc_ = vm
        .client
        .start(Vm::start_request(main))
        .await
        .map_err(|e| e.to_string())?;
    let first = proc_.next_output().await;
    check(
        "main-ready",
        first == Some(Output::Data(Fd::Stdout, b"ready\n".to_vec())),
        format!("{first:?}"),
    );
    let side = vm
        .client
        .exec(process(&["sh", "-c", LOOK_FOR_AGENT]))
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let s = text(&side.stdout);
    check(
        "exec-while-running",
        side.status == ExitStatus::Code(0) && s.ends_with("look-done\n"),
        format!("{s} {}", text(&side.stderr)),
    );
    check(
        "proc-1-exe-is-the-workload",
        s.contains("exe=/bin/busybox\n"),
        &s,
    );
    check(
        "agent-unreachable",
        !s.contains("visible") && !s.contains("via-proc-root"),
        &s,
    );
    check("hostname-set", s.contains("hostname=guest\n"), &s);
    proc_.signal(15).await.map_err(|e| e.to_string())?;
    let rest = proc_.collect().await.map_err(|e| e.to_string())?;
    check(
        "sigterm",
        rest.status == ExitStatus::Code(3) && text(&rest.stdout) == "got TERM\n",
        format!("{:?} {:?}", rest.status, text(&rest.stdout)),
    );
    let (code, stderr) = vm.finish().await;
    check(
        "exec-vmm-exit-0",
        code == Some(0),
        format!("{code:?} {stderr}"),
    );
    Ok(())
}

/// The same kernel with a busybox `/init` that only prints: the floor the
/// agent's own cost is measured against.
async fn baseline_case(p: &Paths) -> Result<(), String> {
    let started = Instant::now();
    let mut child = Command::new("bulkhead-vmm")
        .arg("--kernel")
        .arg(&p.kernel)
        .arg("--initrd")
        .arg(&p.baseline_initrd)
        .args([
            "--memory",
            "256",
            "--boot-timeline",
            "--cmdline",
            "console=ttyS0 quiet",
            "--serial",
            "stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn bulkhead-vmm: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut first = None;
    while let Ok(Some(l)) = lines.next_line().await {
        if l.contains("BASELINE-INIT") {
            first.get_or_insert(started.elapsed());
        }
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr).await;
    }
    let code = child.wait().await.ok().and_then(|s| s.code());
    check(
        "baseline-printed",
        first.is_some() && code == Some(0),
        format!("{code:?} {stderr}"),
    );
    println!(
        "TIMING baseline kernel_entry_us={} first_output_us={}",
        timeline_us(&stderr, "kernel-entry").unwrap_or(0),
        first.map_or(0, |d| d.as_micros())
    );
    Ok(())
}

/// Runs every case in turn; false if any failed to run.
pub async fn run(p: &Paths) -> bool {
    let mut ok = true;
    for (name, r) in [
        ("baseline", baseline_case(p).await),
        ("echo", echo_case(p).await),
        ("exit7", exit7_case(p).await),
        ("exec", exec_term_case(p).await),
    ] {
        if let Err(e) = r {
            ok = check(&format!("{name}-ran"), false, e);
        }
    }
    ok
}

/// Checks the paths exist before booting anything.
pub fn paths(
    kernel: &str,
    agent_initrd: &str,
    disk: &str,
    baseline_initrd: &str,
    scratch: &str,
) -> Result<Paths, String> {
    let p = Paths {
        kernel: kernel.into(),
        agent_initrd: agent_initrd.into(),
        disk: disk.into(),
        baseline_initrd: baseline_initrd.into(),
        scratch: scratch.into(),
    };
    for f in [
        &p.kernel,
        &p.agent_initrd,
        &p.disk,
        &p.baseline_initrd,
        &p.scratch,
    ] {
        if !Path::new(f).is_file() {
            return Err(format!("{} does not exist", f.display()));
        }
    }
    Ok(p)
}

/// Boots one VM and runs `args` as its workload, passing its stdout and
/// stderr through; returns the workload's exit code in the shell's
/// convention (128+N for a signal, 125 when it could not run at all).
pub async fn run_one(kernel: &str, agent_initrd: &str, disk: &str, args: &[String]) -> i32 {
    use std::io::Write;
    let p = Paths {
        kernel: kernel.into(),
        agent_initrd: agent_initrd.into(),
        disk: disk.into(),
        baseline_initrd: PathBuf::new(),
        scratch: PathBuf::new(),
    };
    let vm = match Vm::boot(&p, "run", false).await {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("agent-run: {e}");
            return 125;
        }
    };
    let spec = ProcessSpec {
        args: args.to_vec(),
        ..Default::default()
    };
    let mut proc_ = match vm.client.start(Vm::start_request(spec)).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("agent-run: {e}");
            return match e {
                bulkhead_agent_proto::client::ClientError::Agent(a)
                    if a.kind == bulkhead_agent_proto::ErrorKind::NotFound =>
                {
                    127
                }
                bulkhead_agent_proto::client::ClientError::Agent(a)
                    if a.kind == bulkhead_agent_proto::ErrorKind::NotExecutable =>
                {
                    126
                }
                _ => 125,
            };
        }
    };
    while let Some(o) = proc_.next_output().await {
        match o {
            Output::Data(Fd::Stderr, b) => {
                let _ = std::io::stderr().write_all(&b);
            }
            Output::Data(_, b) => {
                let _ = std::io::stdout().write_all(&b);
                let _ = std::io::stdout().flush();
            }
            Output::Eof(_) => {}
        }
    }
    let status = match proc_.wait().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agent-run: {e}");
            return 125;
        }
    };
    let connected = vm.connected;
    let (code, stderr) = vm.finish().await;
    let k = timeline_us(&stderr, "kernel-entry").unwrap_or(0);
    let w = timeline_us(&stderr, "workload-started").unwrap_or(0);
    eprintln!(
        "agent-run: VMM exit {code:?}; kernel entry at {:.0} ms, agent connected at {:.0} ms, workload started at {:.0} ms (emulated time)",
        k as f64 / 1e3,
        connected.as_secs_f64() * 1e3,
        w as f64 / 1e3
    );
    status.shell_code()
}
