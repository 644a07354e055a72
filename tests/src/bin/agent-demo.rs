//! `bulkhead-agent-demo`: boot a workload the whole way — bulkhead-vmm, our
//! guest kernel, the agent as PID 1, a busybox ext4 root disk — where
//! /dev/kvm boots Linux (the nested test host on machines without hardware
//! virtualization), and show its output. Part of `make demo` until
//! `bulkhead run` exists.

use std::process::ExitCode;
use std::time::Duration;

use bulkhead_tests::testhost::TestHost;
use bulkhead_tests::{busybox_root, guest_probe};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-agent-demo",
    about = "Run a command in a bulkhead microVM (busybox root) through the agent, in the test host",
    after_help = "Exit codes: the workload's (128+N for signal N), 125 when the VM or the test host failed, 127/126 when the command was not found / not executable"
)]
struct Args {
    /// Seconds before the run is abandoned.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The command to run in the VM [default: a greeting and what the guest sees].
    #[arg(trailing_var_arg = true)]
    cmd: Vec<String>,
}

const DEFAULT: &str = "echo \"hello from a bulkhead microVM: $(uname -sr), $(nproc) vCPU, pid $$ in its namespace\"; echo \"root: $(grep ' / ' /proc/mounts | cut -d' ' -f1,3)\"";

fn main() -> ExitCode {
    let args = Args::parse();
    let agent = guest_probe::static_agent_path();
    if !agent.is_file() {
        eprintln!(
            "bulkhead-agent-demo: no static agent at {}; run `make static`",
            agent.display()
        );
        return ExitCode::from(125);
    }
    let setup =
        || -> Result<(std::path::PathBuf, tempfile::TempDir, std::path::PathBuf), String> {
            let initrd =
                bulkhead_images::agent_initramfs::cached(&agent).map_err(|e| e.to_string())?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let disk = dir.path().join("root.img");
            busybox_root::ext4(dir.path(), &disk).map_err(|e| format!("busybox root disk: {e}"))?;
            Ok((initrd, dir, disk))
        };
    let (initrd, _dir, disk) = match setup() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-agent-demo: {e}");
            return ExitCode::from(125);
        }
    };
    let cmd = if args.cmd.is_empty() {
        vec!["sh".to_string(), "-c".into(), DEFAULT.into()]
    } else {
        args.cmd
    };
    let mut full = vec![
        "bulkhead-testkit".to_string(),
        "agent-run".into(),
        "$BULKHEAD_KERNEL".into(),
        "/t/agent.cpio".into(),
        "/t/root.img".into(),
    ];
    full.extend(cmd);
    // Through sh so $BULKHEAD_KERNEL expands inside the test host; each
    // argument single-quoted.
    let script = full
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 2 {
                format!("\"{a}\"")
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let host = match TestHost::new() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("bulkhead-agent-demo: {e}");
            return ExitCode::from(125);
        }
    };
    eprintln!(
        "booting a microVM with the agent in the test host ({})...",
        bulkhead_tests::testhost::Mode::detect()
            .map(|m| m.to_string())
            .unwrap_or_default()
    );
    match host
        .stage(&initrd, "/t/agent.cpio")
        .stage(&disk, "/t/root.img")
        .timeout(Duration::from_secs(args.timeout))
        .run(&["sh", "-c", &script])
    {
        Ok(out) => {
            print!("{}", out.stdout_str());
            eprint!("{}", out.stderr_str());
            ExitCode::from(u8::try_from(out.status).unwrap_or(125))
        }
        Err(e) => {
            eprintln!("bulkhead-agent-demo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
