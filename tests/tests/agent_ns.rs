//! The agent on this host, without a VM: the static binary runs as PID 1
//! of fresh pid/mount/uts/net/ipc namespaces (`unshare`), dials a Unix
//! socket instead of vsock (`--unix`, the only difference from a VM), and
//! serves the real host client against a busybox root directory.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use bulkhead_agent_proto::client::{AgentClient, ClientError, Output};
use bulkhead_agent_proto::{
    ErrorKind, ExitStatus, Fd, NetworkSpec, ProcessSpec, RootSource, RootSpec, StartRequest,
};
use bulkhead_tests::{busybox_root, guest_probe};
use tokio::net::UnixListener;

struct NsAgent {
    client: AgentClient,
    child: Child,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// A work dir outside /tmp and /run, which the agent mounts tmpfs over.
fn scratch_dir() -> tempfile::TempDir {
    let base = guest_probe::static_agent_path()
        .parent()
        .unwrap()
        .join("agent-ns-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

impl NsAgent {
    async fn boot() -> NsAgent {
        let agent = guest_probe::expect_static_agent();
        let dir = scratch_dir();
        let root = dir.path().join("root");
        busybox_root::build(&root).unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--uts",
                "--net",
                "--ipc",
                "--fork",
                "--kill-child",
            ])
            .arg(&agent)
            .arg("--unix")
            .arg(&sock)
            .spawn()
            .expect("unshare (util-linux)");
        let client = tokio::select! {
            c = AgentClient::accept(&listener) => c.unwrap(),
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                let _ = child.kill();
                panic!("the agent did not dial in within 30 s: {:?}", child.wait());
            }
        };
        NsAgent {
            client,
            child,
            _dir: dir,
            root,
        }
    }

    fn start_request(&self, spec: ProcessSpec) -> StartRequest {
        StartRequest {
            process: spec,
            root: RootSpec {
                source: RootSource::Directory {
                    path: self.root.display().to_string(),
                },
                scratch: None,
                volumes: Vec::new(),
                tmpfs: Vec::new(),
                read_only: false,
            },
            ..Default::default()
        }
    }

    async fn run(self, spec: ProcessSpec) -> (bulkhead_agent_proto::client::Collected, NsAgent) {
        let req = self.start_request(spec);
        let out = self
            .client
            .start(req)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        (out, self)
    }

    /// After the main process ends the agent powers off: here, PID 1 of the
    /// namespace ends and `unshare` returns.
    fn powered_off(mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // reboot(2) in a child pid namespace ends its init with SIGINT.
                assert!(
                    status.code().is_none() || status.code() == Some(130) || status.success(),
                    "{status:?}"
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not power off"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a process exit, not synchronising on time
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_prints_and_exits_0_then_the_agent_powers_off() {
    let a = NsAgent::boot().await;
    assert_eq!(
        a.client.hello().protocol,
        bulkhead_agent_proto::PROTOCOL_VERSION
    );
    let (out, a) = a.run(process(&["echo", "hello"])).await;
    assert_eq!(
        (text(&out.stdout), text(&out.stderr), out.status),
        ("hello\n".into(), String::new(), ExitStatus::Code(0))
    );
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_are_reported_exactly() {
    let (out, a) = NsAgent::boot()
        .await
        .run(process(&["sh", "-c", "echo to-stderr >&2; exit 7"]))
        .await;
    assert_eq!(
        (text(&out.stderr), out.status),
        ("to-stderr\n".into(), ExitStatus::Code(7))
    );
    a.powered_off();
    // kill -9 of itself: the main process is PID 1 of its namespace, which
    // only SIGKILL from outside ends; so a child shell does it.
    let (out, a) = NsAgent::boot()
        .await
        .run(process(&["sh", "-c", "sh -c 'kill -9 $$'; echo $?"]))
        .await;
    assert_eq!(
        (text(&out.stdout), out.status),
        ("137\n".into(), ExitStatus::Code(0))
    );
    a.powered_off();
    let a = NsAgent::boot().await;
    let mut p = a
        .client
        .start(a.start_request(process(&["sleep", "1000"])))
        .await
        .unwrap();
    p.signal(9).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), ExitStatus::Signal(9));
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_streams_through_under_flow_control() {
    let a = NsAgent::boot().await;
    let spec = ProcessSpec {
        stdin: true,
        ..process(&["sh", "-c", "cat; echo done >&2"])
    };
    let p = a.client.start(a.start_request(spec)).await.unwrap();
    // 3 MiB: many windows in each direction, written while output is read.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let stdin = p.stdin();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            stdin.write(&data).await.unwrap();
            stdin.close().await.unwrap();
        })
    };
    let out = p.collect().await.unwrap();
    writer.await.unwrap();
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
    assert_eq!(
        (text(&out.stderr), out.status),
        ("done\n".into(), ExitStatus::Code(0))
    );
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_beside_the_main_process_and_sigterm_reaches_it() {
    let a = NsAgent::boot().await;
    let main = process(&[
        "sh",
        "-c",
        "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait",
    ]);
    let mut p = a.client.start(a.start_request(main)).await.unwrap();
    assert_eq!(
        p.next_output().await,
        Some(Output::Data(Fd::Stdout, b"ready\n".to_vec()))
    );
    // Two processes at once: exec while main runs, in the same namespaces.
    let side = a
        .client
        .exec(process(&[
            "sh",
            "-c",
            "echo side; cat /proc/1/cmdline | tr '\\0' ' '",
        ]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        text(&side.stdout),
        "side\nsh -c trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait "
    );
    assert_eq!(side.status, ExitStatus::Code(0));
    // A clean start: no blocked signals, nothing inherited but stdio.
    let status = a
        .client
        .exec(process(&["cat", "/proc/self/status"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(
        text(&status.stdout).contains("SigBlk:\t0000000000000000\n"),
        "{}",
        text(&status.stdout)
    );
    let fds = a
        .client
        .exec(process(&["ls", "/proc/self/fd"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        text(&fds.stdout),
        "0\n1\n2\n3\n",
        "the workload inherited descriptors"
    );
    let e = a
        .client
        .exec(process(&["no-such-program"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(err) if err.kind == ErrorKind::NotFound),
        "{e}"
    );
    let e = a.client.exec(process(&["/notexec"])).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(err) if err.kind == ErrorKind::NotExecutable),
        "{e}"
    );
    p.signal(15).await.unwrap();
    let rest = p.collect().await.unwrap();
    assert_eq!(
        (text(&rest.stdout), rest.status),
        ("got TERM\n".into(), ExitStatus::Code(3))
    );
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_mode_gives_a_terminal_that_resizes() {
    let a = NsAgent::boot().await;
    let spec = ProcessSpec {
        tty: true,
        stdin: true,
        tty_size: Some((24, 80)),
        ..process(&["sh", "-c", "tty; stty size; read x; stty size"])
    };
    let mut p = a.client.start(a.start_request(spec)).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("24 80") {
        match p.next_output().await.unwrap() {
            Output::Data(fd, b) => {
                assert_eq!(fd, Fd::Stdout, "a terminal has one output stream");
                seen.push_str(&text(&b));
            }
            Output::Eof(fd) => assert_eq!(fd, Fd::Stderr),
        }
    }
    assert!(seen.starts_with("/dev/pts/"), "{seen:?}");
    p.resize(40, 100).await.unwrap();
    p.write_stdin(b"go\n").await.unwrap();
    let out = p.collect().await.unwrap();
    assert!(
        text(&out.stdout).contains("40 100"),
        "{:?}",
        text(&out.stdout)
    );
    assert_eq!(out.status, ExitStatus::Code(0));
    a.powered_off();
}

/// The children of a process on this host (its first thread's list).
fn children(pid: u32) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    s.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .unwrap_or('?')
}

/// Waits until no `sleep` is left running (up to 10 s), then prints how
/// many zombies the container has.
const ZOMBIE_COUNT: &str = "read x; i=0; while ps -o stat=,comm= | grep -v '^Z' | grep -q ' sleep$' && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done; ps -o stat= | grep -c Z; exit 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_processes_and_orphans_leave_no_zombies() {
    let a = NsAgent::boot().await;
    let mut main = a
        .client
        .start(a.start_request(ProcessSpec {
            stdin: true,
            ..process(&["sh", "-c", ZOMBIE_COUNT])
        }))
        .await
        .unwrap();
    // Each exec'd shell orphans two grandchildren and exits at once.
    for _ in 0..5 {
        let out = a
            .client
            .exec(process(&["sh", "-c", "sleep 0.2 & sleep 0.1 & exit 0"]))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Code(0));
    }
    // The agent (PID 1 of the namespace) is unshare's child; its only
    // remaining child is the main process, and nothing under it is a zombie.
    let agent = children(a.child.id())[0];
    let kids = children(agent);
    assert_eq!(kids.len(), 1, "the agent has unreaped children: {kids:?}");
    assert!(kids.iter().all(|&k| state(k) != 'Z'));
    // The main process waits (by looking, bounded) for the orphans to be
    // gone, then counts zombies from inside.
    main.write_stdin(b"\n").await.unwrap();
    let mut out = Vec::new();
    while let Some(o) = main.next_output().await {
        if let Output::Data(Fd::Stdout, b) = o {
            out.extend(b);
        }
    }
    assert_eq!(text(&out), "0\n", "zombies in the container");
    assert_eq!(main.wait().await.unwrap(), ExitStatus::Code(0));
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_switch_by_name_and_by_number() {
    for (user, want) in [
        ("alice", "1000 1000 10 29 1000\n/home/alice\n"),
        ("bob:wheel", "1001 10 10 29\n/home/bob\n"),
        ("1234:5678", "1234 5678 5678\n/\n"),
        ("0", "0 0 0\n/root\n"),
    ] {
        let spec = ProcessSpec { user: Some(user.into()), ..process(&["sh", "-c", "echo $(id -u) $(id -g) $(id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' ')| sed 's/ *$//'; echo $HOME"]) };
        let (out, a) = NsAgent::boot().await.run(spec).await;
        assert_eq!(
            (text(&out.stdout), out.status),
            (want.to_string(), ExitStatus::Code(0)),
            "user {user}; stderr {}",
            text(&out.stderr)
        );
        a.powered_off();
    }
    let a = NsAgent::boot().await;
    let e = a
        .client
        .start(a.start_request(ProcessSpec {
            user: Some("mallory".into()),
            ..process(&["id"])
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(err) if err.kind == ErrorKind::Failed && err.message.contains("mallory")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_hosts_dns_and_network_come_from_the_request() {
    let a = NsAgent::boot().await;
    let mut req = a.start_request(process(&["sh", "-c", "hostname; cat /etc/hosts /etc/resolv.conf; ip -4 -o addr show lo | tr -s ' ' | cut -d' ' -f4; ip route | head -1; cat /sys/class/net/lo/mtu; grep -c ' /dev/shm tmpfs .*size=65536k' /proc/mounts; ls /proc | grep -c '^[0-9]'; readlink /proc/1/exe"]));
    req.hostname = Some("web-1".into());
    req.dns.nameservers = vec!["10.200.0.53".into()];
    req.network = Some(NetworkSpec {
        interface: "lo".into(),
        address: "10.200.0.2/24".into(),
        gateway: Some("10.200.0.1".into()),
        mtu: Some(1400),
    });
    let out = a.client.start(req).await.unwrap().collect().await.unwrap();
    let s = text(&out.stdout);
    assert_eq!(
        out.status,
        ExitStatus::Code(0),
        "{s}\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "web-1");
    assert!(
        s.contains("10.200.0.2\tweb-1\n") && s.contains("nameserver 10.200.0.53\n"),
        "{s}"
    );
    assert!(
        lines.contains(&"10.200.0.2/24")
            && lines.contains(&"default via 10.200.0.1 dev lo ")
            && lines.contains(&"1400"),
        "{s}"
    );
    assert_eq!(lines[lines.len() - 3], "1", "/dev/shm is a tmpfs: {s}");
    // Its own pid namespace: it sees itself (and a pipe's helpers), and
    // /proc/1/exe is busybox, not the agent.
    let n: usize = lines[lines.len() - 2].parse().unwrap();
    assert!(n <= 4, "{s}");
    assert_eq!(lines[lines.len() - 1], "/bin/busybox");
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_speaking_garbage_is_cut_off_and_the_agent_stops() {
    let agent = guest_probe::static_agent_path();
    let dir = scratch_dir();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = Command::new("unshare")
        .args([
            "--pid",
            "--mount",
            "--uts",
            "--net",
            "--fork",
            "--kill-child",
        ])
        .arg(&agent)
        .arg("--unix")
        .arg(&sock)
        .spawn()
        .unwrap();
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the agent did not dial in")
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let text = text(&got);
    assert!(
        text.contains(r#""type":"hello""#)
            && text.contains(r#""type":"fatal""#)
            && text.contains("protocol version 71"),
        "{text}"
    );
    // And it stops: PID 1 of the namespace ends.
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the agent kept running")
    .unwrap()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_and_extra_groups_apply() {
    use bulkhead_agent_proto::{Rlimit, RlimitResource};
    let spec = ProcessSpec {
        user: Some("bob".into()),
        additional_gids: vec![77, 29],
        rlimits: vec![
            Rlimit {
                resource: RlimitResource::RlimitNofile,
                soft: 123,
                hard: 456,
            },
            Rlimit {
                resource: RlimitResource::RlimitCore,
                soft: 0,
                hard: 0,
            },
        ],
        ..process(&[
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn; ulimit -c; id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' '",
        ])
    };
    let (out, a) = NsAgent::boot().await.run(spec).await;
    assert_eq!(
        (text(&out.stdout), out.status),
        ("123\n456\n0\n29 77 1001 ".to_string(), ExitStatus::Code(0)),
        "{}",
        text(&out.stderr)
    );
    a.powered_off();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_agent_stops_the_workload_in_order_and_reports_its_exit() {
    let a = NsAgent::boot().await;
    let main = process(&[
        "sh",
        "-c",
        "trap 'echo bye; exit 5' TERM; echo up; sleep 1000 & wait",
    ]);
    let mut p = a.client.start(a.start_request(main)).await.unwrap();
    assert_eq!(
        p.next_output().await,
        Some(Output::Data(Fd::Stdout, b"up\n".to_vec()))
    );
    // An exec'd process can be signalled too.
    let mut side = a.client.exec(process(&["sleep", "1000"])).await.unwrap();
    side.signal(9).await.unwrap();
    assert_eq!(side.wait().await.unwrap(), ExitStatus::Signal(9));
    // Now SIGTERM to the agent itself (PID 1 of the namespace; unshare's child).
    let agent = children(a.child.id())[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let rest = p.collect().await.unwrap();
    assert_eq!(
        (text(&rest.stdout), rest.status),
        ("bye\n".into(), ExitStatus::Code(5))
    );
    a.powered_off();
}
