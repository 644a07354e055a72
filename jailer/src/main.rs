//! `bulkhead-jailer`: runs one VMM in a box that can do almost nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_jailer::jail::{self, Spec};
use bulkhead_jailer::validate;
use clap::Parser;

const AFTER_HELP: &str = "\
Steps: validate everything (no path may contain a symlink; a file bound
,rw may have no other hard link); create <chroot-base>/<id>/root (a jail
dir that exists already is refused, never reused) and cgroups
bulkhead/<id>; then new pid, ipc and uts namespaces (and --netns), and for
the VMM's process its cgroups and a new mount namespace, where a small
tmpfs over the jail root gets /dev/kvm and /dev/net/tun owned by UID:GID,
the VMM and each --bind at its own path (read-only unless ,rw) and a fresh
/proc, and turns read-only; pivot_root into it, rlimits, every fd closed
but 0-2 and --keep-fd, an empty environment, NO_NEW_PRIVS, no capabilities
(bounding set too), and exec as UID:GID. SIGTERM and SIGINT are passed to
the VMM; with --deadline-file, the VMM is SIGKILLed once the lease
deadline plus --deadline-kill-after-ms has passed (checked every 250 ms);
the jail dir and cgroups are removed when it ends.

Exit codes: the VMM's (128+N when killed by signal N); 125 when jailing
failed (the message says which step); 2 bad usage.";

#[derive(Debug, Parser)]
#[command(name = "bulkhead-jailer", version, about = "Run one VMM jailed: chroot, namespaces, cgroups, rlimits, no privileges", after_help = AFTER_HELP)]
struct Args {
    /// The jail's name: its directory and cgroup (1-64 of A-Z a-z 0-9 _ -).
    #[arg(long)]
    id: String,
    /// The VMM runs as this uid (not 0).
    #[arg(long)]
    uid: u32,
    /// The VMM runs as this gid (not 0).
    #[arg(long)]
    gid: u32,
    /// Where jail dirs are made (must exist; no symlinks on the way).
    #[arg(long, default_value = "/srv/bulkhead-jailer", value_name = "DIR")]
    chroot_base: PathBuf,
    /// A host file or directory the VM needs (kernel, initrd, disk, vsock
    /// socket dir), bound in at the same path; read-only unless ",rw".
    /// UID:GID must be able to use it by its mode bits (checked first).
    #[arg(long = "bind", value_name = "PATH[,rw]")]
    binds: Vec<String>,
    /// A cgroup limit, e.g. memory.max=300M, pids.max=64, cpu.max="50000 100000"
    /// (v1 hosts: memory.limit_in_bytes, cpu.cfs_quota_us, pids.max).
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    cgroups: Vec<String>,
    /// A network namespace to join (e.g. /run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// NOFILE=N or FSIZE=N.
    #[arg(long = "resource-limit", value_name = "NAME=VALUE")]
    rlimits: Vec<String>,
    /// A lease deadline file (CLOCK_MONOTONIC ms, see bulkhead's fencing):
    /// the jailer SIGKILLs the VMM once it is this far past, whatever its
    /// supervisor does (missing or damaged: passed).
    #[arg(long, value_name = "FILE", requires = "deadline_kill_after_ms")]
    deadline_file: Option<PathBuf>,
    /// How long after the deadline the VMM is killed (its supervisor's
    /// stop signal comes first).
    #[arg(long, value_name = "MS", requires = "deadline_file")]
    deadline_kill_after_ms: Option<u64>,
    /// An inherited fd the VMM keeps (e.g. a TAP passed as fd 3).
    #[arg(long = "keep-fd", value_name = "N")]
    keep_fds: Vec<i32>,
    /// The VMM (absolute path, a static executable) and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn spec(a: Args) -> Result<Spec, validate::ValidateError> {
    validate::id(&a.id)?;
    if a.uid == 0 || a.gid == 0 {
        return Err(validate::ValidateError::Root);
    }
    let base = validate::real_path("--chroot-base", &a.chroot_base)?;
    if !base.is_dir() {
        return Err(validate::ValidateError::NotDir {
            what: "--chroot-base",
            path: base.display().to_string(),
        });
    }
    let vmm = validate::real_path("the VMM", &PathBuf::from(&a.command[0]))?;
    validate::static_elf(&vmm)?;
    validate::accessible(&vmm, a.uid, a.gid, false)?;
    let mut binds = Vec::new();
    for b in &a.binds {
        let (path, rw) = match b.strip_suffix(",rw") {
            Some(p) => (p, true),
            None => (b.strip_suffix(",ro").unwrap_or(b), false),
        };
        let real = validate::real_path("--bind", &PathBuf::from(path))?;
        if rw {
            validate::not_hard_linked(&real)?;
        }
        validate::accessible(&real, a.uid, a.gid, rw)?;
        binds.push((real, rw));
    }
    let netns = a
        .netns
        .as_deref()
        .map(|p| validate::real_path("--netns", p))
        .transpose()?;
    let cgroups = a
        .cgroups
        .iter()
        .map(|c| validate::cgroup(c))
        .collect::<Result<_, _>>()?;
    let rlimits = a
        .rlimits
        .iter()
        .map(|r| validate::rlimit(r))
        .collect::<Result<_, _>>()?;
    let mut command = a.command;
    command[0] = vmm.display().to_string();
    Ok(Spec {
        id: a.id,
        uid: a.uid,
        gid: a.gid,
        chroot_base: base,
        binds,
        cgroups,
        netns,
        rlimits,
        keep_fds: a.keep_fds,
        deadline: a.deadline_file.zip(a.deadline_kill_after_ms),
        command,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = match spec(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bulkhead-jailer: {}", bulkhead_jailer::report(&e));
            return ExitCode::from(125);
        }
    };
    match jail::run(&spec) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(125)),
        Err(e) => {
            eprintln!("bulkhead-jailer: {}", bulkhead_jailer::report(&e));
            ExitCode::from(125)
        }
    }
}
