//! bulkhead-agent: PID 1 inside a bulkhead microVM.
//!
//! With no arguments it is the agent: it mounts what PID 1 mounts, dials
//! the host over vsock, and serves the host's requests (start the
//! container, exec, signals, stdio) until the container ends, then powers
//! the VM off. `--unix PATH` dials a Unix socket instead (the
//! namespace-based tests); everything else is the same code path.
//! The `probe*` subcommands check a guest kernel and its vsock.

use std::process::ExitCode;

mod pid1;
mod probe;
mod process;
mod rootfs;
mod server;
mod transport;
mod vsock_probe;

pub use bulkhead_agent::passwd;

use bulkhead_agent_proto::{BootStage, FromAgent, Hello, AGENT_VSOCK_PORT, PROTOCOL_VERSION};

const USAGE: &str = "\
usage: bulkhead-agent [--unix PATH]
       bulkhead-agent probe [--expect-cpus N]
       bulkhead-agent probe-setuid UID
       bulkhead-agent probe-vsock-echo PORT
       bulkhead-agent probe-vsock-call PORT MESSAGE

  (no command)  be PID 1: mount /proc, /sys, /dev, /dev/pts, /run, /tmp and
                cgroup2, dial the host (vsock CID 2, port 1024 or
                bulkhead.port=N from the kernel command line) and serve it.
                Refuses to run unless it is PID 1 (of a VM or a pid namespace).
  --unix PATH   dial the Unix socket PATH instead of vsock (tests: run it as
                PID 1 of fresh pid/mount/uts/net namespaces)
  probe         check the guest kernel: threads, epoll/eventfd/timerfd/signalfd,
                setuid, a pty, a shebang script, overlay over tmpfs, filesystems.
                Prints one line per check and `probe: all ok` or `probe: N failed`.
  probe-setuid  (used by probe) drop to UID and check that it cannot come back.
  probe-vsock-echo  accept one vsock connection on PORT, echo it back
  probe-vsock-call  connect to the host (CID 2) on PORT, send MESSAGE, print the reply

exit codes (probes): 0 all checks passed, 1 a check failed, 2 bad usage";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => agent(None),
        Some("--unix") => match args.get(1) {
            Some(path) if args.len() == 2 => agent(Some(path.into())),
            _ => usage_error("--unix needs one PATH"),
        },
        Some("probe") => match probe::parse_expect_cpus(&args[1..]) {
            Ok(expect_cpus) => probe::run_all(expect_cpus),
            Err(msg) => usage_error(&msg),
        },
        Some("probe-setuid") => match args.get(1).and_then(|s| s.parse::<u32>().ok()) {
            Some(uid) => probe::setuid_child(uid),
            None => usage_error("probe-setuid needs a numeric UID"),
        },
        Some("probe-vsock-echo") => match args.get(1).and_then(|s| s.parse::<u32>().ok()) {
            Some(port) => vsock_probe::echo(port),
            None => usage_error("probe-vsock-echo needs a numeric PORT"),
        },
        Some("probe-vsock-call") => {
            match (args.get(1).and_then(|s| s.parse::<u32>().ok()), args.get(2)) {
                (Some(port), Some(msg)) => vsock_probe::call(port, msg),
                _ => usage_error("probe-vsock-call needs PORT and MESSAGE"),
            }
        }
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => usage_error(&format!("unknown command {other:?}")),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("bulkhead-agent: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// The agent proper. Returns only on failure before serving; after that
/// the machine powers off.
fn agent(unix: Option<std::path::PathBuf>) -> ExitCode {
    if std::process::id() != 1 {
        // Power-off and kill(-1) are PID 1's business; anywhere else they
        // would hit the host.
        return usage_error(
            "the agent runs only as PID 1 (of a VM, or of a pid namespace with --unix)",
        );
    }
    let in_vm = unix.is_none();
    let marks = pid1::BootMarks::new(in_vm);
    marks.mark(BootStage::AgentStarted);
    let fail = |what: String| -> ExitCode {
        eprintln!("bulkhead-agent: {what}");
        // As PID 1, returning panics the kernel: the VMM reports a failed
        // guest, and the host gets no exit report, which is the contract.
        pid1::power_off()
    };
    if let Err(e) = pid1::mount_proc() {
        return fail(bulkhead_agent_proto::report(&e));
    }
    let signals = match pid1::signal_fd() {
        Ok(s) => s,
        Err(e) => return fail(bulkhead_agent_proto::report(&e)),
    };
    let own_pid_ns = match std::fs::File::open("/proc/self/ns/pid") {
        Ok(f) => f,
        Err(e) => return fail(format!("open /proc/self/ns/pid: {e}")),
    };
    let transport = match unix {
        Some(path) => transport::Transport::Unix { path },
        None => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            if let Some(fstype) = pid1::boot_probe_from_cmdline(&cmdline) {
                return boot_probe(fstype, &marks);
            }
            transport::Transport::Vsock {
                port: pid1::port_from_cmdline(&cmdline).unwrap_or(AGENT_VSOCK_PORT),
            }
        }
    };
    let conn = match transport.dial() {
        Ok(c) => c,
        Err(e) => return fail(bulkhead_agent_proto::report(&e)),
    };
    // Dialed first, mounted after: readiness is what the host waits on.
    if let Err(e) = pid1::mount_rest() {
        return fail(bulkhead_agent_proto::report(&e));
    }
    let boot_to_connected_us = if in_vm { pid1::since_boot_us() } else { None };
    marks.mark(BootStage::AgentReady);
    let hello = FromAgent::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_to_connected_us,
    });
    server::Agent::new(conn, signals, own_pid_ns, &marks).run(hello)
}

/// `bulkhead.boot_probe=FSTYPE`: the guest's own boot work without a host.
/// Everything a start does inside the guest up to the container's root
/// (PID 1's mounts, the image's disk at /dev/vda under the overlay, the
/// switch into it) but the vsock dial, then the time since the kernel
/// started (CLOCK_BOOTTIME, and the TSC, which counts from the VM's reset)
/// on the console and power-off. Under QEMU's `-icount` both are virtual:
/// they count the guest's instructions (and timer waits), not the host's
/// load.
fn boot_probe(fstype: &str, marks: &pid1::BootMarks) -> ExitCode {
    let root = bulkhead_agent_proto::RootSpec {
        source: bulkhead_agent_proto::RootSource::Block {
            device: "/dev/vda".into(),
            fstype: fstype.into(),
        },
        scratch: None,
        volumes: Vec::new(),
        tmpfs: Vec::new(),
        read_only: false,
    };
    let result = pid1::mount_rest()
        .map_err(|e| bulkhead_agent_proto::report(&e))
        .and_then(|()| rootfs::enter(&root).map_err(|e| bulkhead_agent_proto::report(&e)));
    match (result, pid1::since_boot_us()) {
        (Ok(()), Some(us)) => {
            marks.mark(BootStage::AgentReady);
            eprintln!(
                "bulkhead-agent: boot probe ready {us} us tsc {}",
                pid1::tsc()
            )
        }
        (Ok(()), None) => eprintln!("bulkhead-agent: boot probe failed: no CLOCK_BOOTTIME"),
        (Err(e), _) => eprintln!("bulkhead-agent: boot probe failed: {e}"),
    }
    pid1::power_off()
}
