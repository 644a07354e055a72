//! `tests/testhost/run`: run a command where /dev/kvm boots real Linux.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bulkhead_tests::testhost::{Mode, Stream, TestHost, WorkspaceBinaries};
use clap::Parser;

const AFTER_HELP: &str = "\
On a host whose CPU has vmx/svm (and no kvm_pvm) CMD runs directly. Otherwise it
runs inside the nested test host: QEMU in software emulation with an emulated AMD
CPU, Debian's cloud kernel, kvm-amd loaded, the workspace's binaries (refused if
stale) in /usr/local/bin, the guest kernel at /usr/share/bulkhead/vmlinux
($BULKHEAD_KERNEL in both modes). CMD's stdout and stderr come back on their own
channels; the kernel console is kept apart (--console shows it). QEMU's
emulated SVM has flaws: when the nested test host itself freezes (its heartbeat
stops) or panics, it is booted again, up to --attempts times; a failing CMD is
never retried. Wants QEMU 10+ (on Debian 12 it is installed from
bookworm-backports when older, as root; failing that, it warns and goes on).

stdin: read to EOF and given to CMD, unless it is a terminal or -n is given.

Exit codes:
  CMD's exit status (0-255; 128+N when CMD was killed by signal N)
  124  the timeout expired
  125  the test host itself failed (the message says why)
  2    bad usage

Caches live under ~/.cache/bulkhead/testhost (BULKHEAD_CACHE moves them).";

#[derive(Debug, Parser)]
#[command(name = "tests/testhost/run", about = "Run a command on a host where /dev/kvm boots Linux guests", after_help = AFTER_HELP)]
struct Args {
    /// Put host file or directory SRC at DST inside (repeatable).
    #[arg(long, value_name = "SRC:DST")]
    stage: Vec<String>,
    /// Copy GUEST_PATH out to HOST_PATH after CMD ran (repeatable).
    #[arg(long, value_name = "GUEST_PATH:HOST_PATH")]
    collect: Vec<String>,
    /// Set an environment variable for CMD (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Give CMD an empty stdin instead of this one.
    #[arg(short = 'n', long)]
    no_stdin: bool,
    /// Kill everything after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    /// Memory of the nested test host, MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u32,
    /// vCPUs of the nested test host (each busy one costs a host core of
    /// emulation; more than the nested guests' vCPUs keeps QEMU's interrupt
    /// flaw from freezing it).
    #[arg(long, default_value_t = bulkhead_tests::testhost::DEFAULT_CPUS)]
    cpus: u32,
    /// Boots of the nested test host when it freezes or panics.
    #[arg(long, default_value_t = bulkhead_tests::testhost::DEFAULT_ATTEMPTS, value_name = "N")]
    attempts: u32,
    /// auto: nested unless the CPU has hardware virtualization.
    #[arg(long, default_value = "auto", value_parser = ["auto", "direct", "nested"])]
    mode: String,
    /// Do not carry the workspace's binaries.
    #[arg(long)]
    no_binaries: bool,
    /// Print the nested test host's kernel console to stderr afterwards.
    #[arg(long)]
    console: bool,
    /// Print which path this host takes (direct or nested) and exit.
    #[arg(long)]
    which: bool,
    /// Prepare the nested test host (QEMU, the cloud kernel, the base
    /// initramfs; installs and downloads as needed) and exit.
    #[arg(long, conflicts_with = "which")]
    prepare: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required_unless_present_any = ["which", "prepare"])]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testhost: {e}");
            ExitCode::from(
                e.downcast_ref::<bulkhead_tests::testhost::TestHostError>()
                    .map_or(125, |e| e.exit_code()),
            )
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut th = TestHost::new()?;
    th = match args.mode.as_str() {
        "direct" => th.with_mode(Mode::Direct),
        "nested" => th.with_mode(Mode::Nested),
        _ => th,
    };
    if args.which {
        println!("{}", th.mode());
        return Ok(ExitCode::SUCCESS);
    }
    if args.prepare {
        bulkhead_tests::testhost::prepare_nested()?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &args.stage {
        let (src, dst) = split_pair(s, "--stage", "SRC:DST")?;
        th = th.stage(PathBuf::from(src), dst);
    }
    for c in &args.collect {
        let (guest, host) = split_pair(c, "--collect", "GUEST_PATH:HOST_PATH")?;
        th = th.collect(guest, PathBuf::from(host));
    }
    for e in &args.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("-e {e:?}: expected K=V"))?;
        th = th.env(k, v);
    }
    if args.no_binaries {
        th = th.binaries(WorkspaceBinaries::none());
    }
    let stdin = std::io::stdin();
    if !args.no_stdin && !stdin.is_terminal() {
        let mut buf = Vec::new();
        stdin.lock().read_to_end(&mut buf)?;
        th = th.stdin(buf);
    }
    th = th
        .timeout(Duration::from_secs(args.timeout))
        .memory_mib(args.memory)
        .cpus(args.cpus)
        .attempts(args.attempts);

    let argv: Vec<&str> = args.cmd.iter().map(String::as_str).collect();
    let out = th.run_streaming(&argv, &mut |stream, bytes| {
        // Output is forwarded as it arrives; a closed pipe on our side must
        // not stop the run.
        let _ = match stream {
            Stream::Stdout => std::io::stdout()
                .write_all(bytes)
                .and_then(|_| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().write_all(bytes),
        };
    })?;
    if args.console {
        eprintln!("--- test host console ---\n{}", out.console);
    }
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(125)))
}

fn split_pair<'a>(s: &'a str, flag: &str, shape: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a, b)),
        _ => anyhow::bail!("{flag} {s:?}: expected {shape}"),
    }
}
