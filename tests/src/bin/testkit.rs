//! `bulkhead-testkit`: small host-side tools the end-to-end tests run inside
//! the test host (which has busybox and little else).
//!
//!   vsock-connect UDS PORT MESSAGE  Firecracker-style: CONNECT PORT over the
//!                                   VMM's Unix socket, send MESSAGE, half-close,
//!                                   print the reply
//!   vsock-listen PATH REPLY REPORT  bind the Unix socket PATH (a VMM's
//!                                   <uds>_<port>) and return once it is bound;
//!                                   in the background accept one connection,
//!                                   read it to EOF, answer REPLY, then write
//!                                   what arrived to REPORT (a FIFO a script
//!                                   can block on)
//!   tap-create NAME                 create a persistent TAP (busybox has no
//!                                   `ip tuntap`) so its address can be set
//!                                   before a VMM opens it
//!   agent-e2e KERNEL AGENT_INITRD DISK BASELINE_INITRD SCRATCH
//!                                   boot VMs with the agent and drive it with
//!                                   the host client (bulkhead_tests::agent_vm);
//!                                   prints CHECK and TIMING lines
//!   run-cases DATA CYCLES           the `bulkhead run` table (run_cases) with
//!                                   the microvm runtime against the store in
//!                                   DATA; prints CHECK lines, fails if any did
//!   net-cases DATA CYCLES           the networking table (net_cases) with the
//!                                   microvm runtime; prints CHECK lines
//!   cluster-cases DATA              a microvm service through bulkhead server
//!                                   and bulkhead node (cluster_cases)
//!   agent-run KERNEL AGENT_INITRD DISK CMD...
//!                                   boot one VM and run CMD as its workload;
//!                                   its output passes through, its exit code
//!                                   is ours

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["vsock-connect", uds, port, msg] => vsock_connect(uds, port, msg),
        ["vsock-listen", path, reply, report] => vsock_listen(path, reply, report),
        ["tap-create", name] => tap_create(name),
        ["agent-e2e", kernel, initrd, disk, baseline, scratch] => agent_e2e(kernel, initrd, disk, baseline, scratch),
        ["run-cases", data, cycles] => run_cases(data, cycles),
        ["net-cases", data, cycles] => net_cases(data, cycles),
        ["volume-cases", data] => microvm_table(data, "1", |ctx, _| bulkhead_tests::volume_cases::run_table(ctx)),
        ["copy-cases", data] => microvm_table(data, "1", |ctx, _| bulkhead_tests::copy_cases::run_table(ctx)),
        ["cluster-cases", data, ..] => microvm_table(data, "1", |ctx, _| bulkhead_tests::cluster_cases::run_table(ctx)),
        ["cluster-across", data, container_store] => microvm_table(data, "1", |ctx, _| {
            bulkhead_tests::cluster_across::run_table(ctx, std::path::Path::new(container_store))
        }),
        ["agent-run", kernel, initrd, disk, cmd @ ..] if !cmd.is_empty() => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("bulkhead-testkit: tokio: {e}");
                    return ExitCode::from(125);
                }
            };
            let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            let code = rt.block_on(bulkhead_tests::agent_vm::run_one(kernel, initrd, disk, &cmd));
            return ExitCode::from(u8::try_from(code).unwrap_or(125));
        }
        _ => Err("usage: bulkhead-testkit vsock-connect UDS PORT MESSAGE | vsock-listen PATH REPLY REPORT | tap-create NAME | agent-e2e KERNEL AGENT_INITRD DISK BASELINE_INITRD SCRATCH | run-cases DATA CYCLES | volume-cases DATA | copy-cases DATA | net-cases DATA CYCLES | cluster-cases DATA | cluster-across DATA CONTAINER_STORE | agent-run KERNEL AGENT_INITRD DISK CMD...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead-testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_cases(data: &str, cycles: &str) -> Result<(), String> {
    microvm_table(data, cycles, bulkhead_tests::run_cases::run_table)
}

fn net_cases(data: &str, cycles: &str) -> Result<(), String> {
    microvm_table(data, cycles, |ctx, n| {
        bulkhead_tests::net_cases::run_table(ctx, "vm", n)
    })
}

/// A table of `bulkhead run` cases with the microvm runtime against DATA.
fn microvm_table(
    data: &str,
    cycles: &str,
    table: impl Fn(&bulkhead_tests::run_cases::Ctx, usize) -> Vec<bulkhead_tests::run_cases::Check>,
) -> Result<(), String> {
    let bulkhead = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("bulkhead");
    let ctx = bulkhead_tests::run_cases::Ctx {
        bulkhead,
        data: data.into(),
        runtime: "microvm".into(),
        oci_runtime: None,
        netns: None,
    };
    let checks = table(
        &ctx,
        cycles.parse().map_err(|_| format!("cycles {cycles:?}"))?,
    );
    match checks.iter().filter(|c| !c.ok).count() {
        0 => Ok(()),
        n => Err(format!("{n} of {} checks failed", checks.len())),
    }
}

fn vsock_connect(uds: &str, port: &str, msg: &str) -> Result<(), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).map_err(|e| e.to_string())? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(format!("handshake answer {line:?}"));
    }
    println!("vsock-connect: {line}");
    s.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    println!("vsock-connect: reply {reply:?}");
    Ok(())
}

fn vsock_listen(path: &str, reply: &str, report: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    // Bound: the caller may go on. The serving half runs in a child, so
    // "the command returned" means "the socket is there" without polling.
    // SAFETY: this program is single-threaded, so fork duplicates no locks
    // held by other threads.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => return Ok(()),
        nix::unistd::ForkResult::Child => {}
    }
    let served = (|| -> Result<String, String> {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got).map_err(|e| e.to_string())?;
        s.write_all(reply.as_bytes()).map_err(|e| e.to_string())?;
        Ok(format!("vsock-listen: got {got:?}\n"))
    })()
    .unwrap_or_else(|e| format!("vsock-listen: {e}\n"));
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open(report)
        .and_then(|mut f| f.write_all(served.as_bytes()));
    std::process::exit(0);
}

fn tap_create(name: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?}: 1 to 15 bytes"));
    }
    let tun = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq; `req` is one and outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(format!(
            "TUNSETPERSIST: {}",
            std::io::Error::last_os_error()
        ));
    }
    println!("tap-create: {name}");
    Ok(())
}

fn agent_e2e(
    kernel: &str,
    initrd: &str,
    disk: &str,
    baseline: &str,
    scratch: &str,
) -> Result<(), String> {
    let paths = bulkhead_tests::agent_vm::paths(kernel, initrd, disk, baseline, scratch)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    if rt.block_on(bulkhead_tests::agent_vm::run(&paths)) {
        Ok(())
    } else {
        Err("a case could not run (see CHECK lines)".into())
    }
}
