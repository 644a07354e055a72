//! bulkhead-agent: PID 1 inside a bulkhead microVM.
//!
//! Today it carries the guest-kernel probe (`bulkhead-agent probe`), which
//! checks that the guest kernel gives a container what it expects. The agent
//! proper (serving the host over vsock) is built on top of this binary.

use std::process::ExitCode;

mod probe;
mod vsock_probe;

const USAGE: &str = "\
usage: bulkhead-agent probe [--expect-cpus N]
       bulkhead-agent probe-setuid UID
       bulkhead-agent probe-vsock-echo PORT
       bulkhead-agent probe-vsock-call PORT MESSAGE

  probe         check the guest kernel: threads, epoll/eventfd/timerfd/signalfd,
                setuid, a pty, a shebang script, overlay over tmpfs, filesystems.
                Prints one line per check and `probe: all ok` or `probe: N failed`.
  probe-setuid  (used by probe) drop to UID and check that it cannot come back.
  probe-vsock-echo  accept one vsock connection on PORT, echo it back
  probe-vsock-call  connect to the host (CID 2) on PORT, send MESSAGE, print the reply

exit codes: 0 all checks passed, 1 a check failed, 2 bad usage";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
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
        Some("probe-vsock-call") => match (args.get(1).and_then(|s| s.parse::<u32>().ok()), args.get(2)) {
            (Some(port), Some(msg)) => vsock_probe::call(port, msg),
            _ => usage_error("probe-vsock-call needs PORT and MESSAGE"),
        },
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage_error("the agent protocol is not implemented yet; only `probe` is available"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("bulkhead-agent: {msg}\n{USAGE}");
    ExitCode::from(2)
}
