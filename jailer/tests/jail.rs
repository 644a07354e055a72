//! bulkhead-jailer around the real bulkhead-vmm with tiny guests on this
//! machine's /dev/kvm (any KVM, kvm_pvm included): what the jailed VMM can
//! see and do, the refusals, 20 start/stop cycles that leave nothing, and
//! what the jail costs at start.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bulkhead_vmm::tiny_guest::Program;

const UID: u32 = 64_123;

fn jailer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-jailer"))
}

/// The shipped (static) VMM; it needs no libraries inside the jail.
fn vmm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|d| d.parent()).unwrap();
    let v = release.join("../x86_64-unknown-linux-gnu/release/bulkhead-vmm");
    assert!(v.is_file(), "no {} (make static)", v.display());
    std::fs::canonicalize(v).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    kernel: PathBuf,
}

fn fixture(program: Program) -> Fixture {
    assert!(Path::new("/dev/kvm").exists(), "these tests need /dev/kvm");
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-jailer-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let base = root.join("jails");
    std::fs::create_dir(&base).unwrap();
    let kernel = root.join("guest").join("tiny.elf");
    std::fs::create_dir(kernel.parent().unwrap()).unwrap();
    std::fs::write(&kernel, program.elf()).unwrap();
    Fixture {
        _dir: dir,
        base,
        kernel,
    }
}

fn memory_limit() -> String {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "memory.max=268435456".into()
    } else {
        "memory.limit_in_bytes=268435456".into()
    }
}

fn jailed(f: &Fixture, id: &str, vmm_args: &[&str]) -> Command {
    jailed_with(f, id, vmm_args, true)
}

fn jailed_with(f: &Fixture, id: &str, vmm_args: &[&str], cgroups: bool) -> Command {
    let mut c = jailer();
    c.args([
        "--id",
        id,
        "--uid",
        &UID.to_string(),
        "--gid",
        &UID.to_string(),
        "--chroot-base",
    ])
    .arg(&f.base);
    c.arg("--bind").arg(&f.kernel).args([
        "--resource-limit",
        "NOFILE=64",
        "--resource-limit",
        "FSIZE=0",
    ]);
    if cgroups {
        c.args(["--cgroup", &memory_limit(), "--cgroup", "pids.max=32"]);
    }
    c.arg("--")
        .arg(vmm())
        .arg("--kernel")
        .arg(&f.kernel)
        .args(vmm_args);
    c
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .to_string()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Every path under `dir` (relative), without following symlinks or entering /proc.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap().flatten() {
            let r = rel.join(e.file_name());
            out.push(r.display().to_string());
            if e.file_type().unwrap().is_dir() && r != Path::new("proc") {
                todo.push(r);
            }
        }
    }
    out.sort();
    out
}

/// The jail's cgroups, and any process still running this test's guest
/// (a jailed VMM or a jailer that outlived it: their command lines name it).
fn leftovers(id: &str, kernel: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ctl in ["memory", "pids", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join("bulkhead")
            .join(id);
        if p.exists() {
            out.push(p.display().to_string());
        }
    }
    let needle = kernel.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            out.push(format!(
                "process {}: {}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    out
}

#[test]
fn the_jailed_vmm_runs_unprivileged_in_its_own_namespaces_and_root() {
    let f = fixture(Program::new().print("jailed\n").spin());
    let mut child = jailed(&f, "look", &["--vcpus", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "jailed\n", "the guest runs");
    // jailer -> the VMM (PID 1 of its pid namespace)
    let vmm_pid = children(child.id());
    assert_eq!(vmm_pid.len(), 1, "{vmm_pid:?}");
    let p = vmm_pid[0];
    let facts = [
        ("Seccomp:", "2"),
        ("NoNewPrivs:", "1"),
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
    ];
    for (k, want) in facts {
        assert_eq!(status_field(p, k), want, "{k}");
    }
    assert!(
        status_field(p, "Uid:")
            .split_whitespace()
            .all(|u| u == UID.to_string()),
        "{}",
        status_field(p, "Uid:")
    );
    assert!(status_field(p, "Gid:")
        .split_whitespace()
        .all(|g| g == UID.to_string()));
    assert_eq!(status_field(p, "Groups:"), "");
    for kind in ["mnt", "pid", "ipc", "uts"] {
        assert_ne!(
            ns(&p.to_string(), kind),
            ns("self", kind),
            "{kind} namespace"
        );
    }
    assert_eq!(
        ns(&p.to_string(), "net"),
        ns("self", "net"),
        "no --netns: the host's"
    );
    assert_eq!(
        status_field(p, "NSpid:").split_whitespace().last(),
        Some("1"),
        "PID 1 of its namespace"
    );
    // Its root: the devices, /proc, the VMM and the kernel (and their parent dirs), nothing else.
    let root = PathBuf::from(format!("/proc/{p}/root"));
    let mut want: Vec<String> = vec![
        "dev".into(),
        "dev/kvm".into(),
        "dev/net".into(),
        "dev/net/tun".into(),
        "proc".into(),
    ];
    for file in [vmm(), f.kernel.clone()] {
        let mut acc = PathBuf::new();
        for c in file.strip_prefix("/").unwrap().components() {
            acc.push(c);
            want.push(acc.display().to_string());
        }
    }
    want.sort();
    want.dedup();
    assert_eq!(tree(&root), want);
    let env = std::fs::read(format!("/proc/{p}/environ")).unwrap();
    assert!(
        env.is_empty(),
        "an empty environment: {}",
        String::from_utf8_lossy(&env)
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{p}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        fds.iter().all(|fd| fd.parse::<i32>().unwrap() < 32),
        "{fds:?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("64")),
        "{limits}"
    );
    // SIGTERM to the jailer reaches the VMM; its code comes back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "{:?}",
        child.stderr.take().map(|mut e| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            s
        })
    );
    assert!(!f.base.join("look").exists(), "the jail dir is removed");
    assert_eq!(leftovers("look", &f.kernel), Vec::<String>::new());
}

#[test]
fn bad_jails_are_refused_and_nothing_is_made() {
    let f = fixture(Program::new().power_off());
    let link = f.base.parent().unwrap().join("link");
    std::os::unix::fs::symlink(&f.base, &link).unwrap();
    std::fs::create_dir(f.base.join("taken")).unwrap();
    let linked = f.base.parent().unwrap().join("disk");
    std::fs::write(&linked, b"").unwrap();
    std::fs::hard_link(&linked, f.base.parent().unwrap().join("disk-elsewhere")).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--chroot-base".into(), link.display().to_string()],
            "is a symlink",
        ),
        (vec!["--id".into(), "a/b".into()], "--id \"a/b\""),
        (vec!["--id".into(), "..".into()], "--id \"..\""),
        (vec!["--id".into(), "taken".into()], "exists already"),
        (vec!["--uid".into(), "0".into()], "must not run as root"),
        (
            vec!["--cgroup".into(), "devices.allow=a".into()],
            "--cgroup",
        ),
        (
            vec!["--bind".into(), "/no/such/file".into()],
            "/no/such/file",
        ),
        (
            vec!["--bind".into(), format!("{},rw", linked.display())],
            "other hard links",
        ),
    ];
    for (over, want) in cases {
        let mut base: Vec<(String, String)> = vec![
            ("--id".into(), "ok".into()),
            ("--uid".into(), UID.to_string()),
            ("--gid".into(), UID.to_string()),
            ("--chroot-base".into(), f.base.display().to_string()),
        ];
        match base.iter_mut().find(|(k, _)| *k == over[0]) {
            Some(kv) => kv.1 = over[1].clone(),
            None => base.push((over[0].clone(), over[1].clone())),
        }
        let args: Vec<String> = base.into_iter().flat_map(|(k, v)| [k, v]).collect();
        let out = jailer()
            .args(&args)
            .arg("--")
            .arg(vmm())
            .arg("--kernel")
            .arg(&f.kernel)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{over:?}: {err}");
        assert!(err.contains(want), "{over:?}: wanted {want:?} in {err}");
        let mut made: Vec<String> = std::fs::read_dir(&f.base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        made.sort();
        assert_eq!(made, ["taken"], "{over:?} made something");
        assert!(
            std::fs::read_dir(f.base.join("taken"))
                .unwrap()
                .next()
                .is_none(),
            "{over:?} touched the existing jail dir"
        );
    }
    assert_eq!(leftovers("ok", &f.kernel), Vec::<String>::new());
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The shipped jailer (static, `make static`: no dynamic loading at each
/// start) when it is as new as the one cargo built for this test, else that one.
fn shipped_jailer() -> (PathBuf, &'static str) {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_bulkhead-jailer"));
    let shipped = vmm().with_file_name("bulkhead-jailer");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(&shipped), mtime(&built)) {
        (Some(s), Some(b)) if s >= b => (shipped, "static"),
        _ => (built, "dynamic: no fresh static build"),
    }
}

/// Runs `c` to the end: ms to the guest's first line (the start), ms to
/// exit (the jail removed), the line, success, stderr.
fn timed(mut c: Command) -> (f64, f64, String, bool, String) {
    let start = std::time::Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let first = start.elapsed().as_secs_f64() * 1000.0;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let ok = child.wait().unwrap().success();
    (
        first,
        start.elapsed().as_secs_f64() * 1000.0,
        line + &rest,
        ok,
        err,
    )
}

#[test]
fn twenty_jailed_cycles_leave_nothing_and_the_jail_cost_is_reported() {
    let f = fixture(Program::new().print("cycle\n").power_off());
    let (jailer_path, kind) = shipped_jailer();
    let with_jailer = |mut c: Command| {
        let args: Vec<std::ffi::OsString> = c.get_args().map(Into::into).collect();
        c = Command::new(&jailer_path);
        c.args(args);
        c
    };
    // (start, exit) per kind
    let (mut jailed_ms, mut plain_ms, mut no_cgroup_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let id = format!("cycle-{i}");
        let (first, end, out, ok, err) = timed(with_jailer(jailed(&f, &id, &[])));
        assert!(ok, "cycle {i}: {err}");
        assert_eq!(out, "cycle\n");
        jailed_ms.push((first, end));
        assert!(!f.base.join(&id).exists());
        assert_eq!(leftovers(&id, &f.kernel), Vec::<String>::new(), "cycle {i}");
        let mut plain = Command::new(vmm());
        plain.arg("--kernel").arg(&f.kernel);
        let (first, end, _, ok, err) = timed(plain);
        assert!(ok, "{err}");
        plain_ms.push((first, end));
        let (first, end, _, ok, err) = timed(with_jailer(jailed_with(&f, &id, &[], false)));
        assert!(ok, "cycle {i} without cgroups: {err}");
        no_cgroup_ms.push((first, end));
    }
    assert_eq!(std::fs::read_dir(&f.base).unwrap().count(), 0);
    let med = |v: &[(f64, f64)]| {
        (
            median_ms(v.iter().map(|x| x.0).collect()),
            median_ms(v.iter().map(|x| x.1).collect()),
        )
    };
    let ((js, je), (ps, pe), (ns, ne)) = (med(&jailed_ms), med(&plain_ms), med(&no_cgroup_ms));
    // Figures for the closing note and the README, not a timed assertion.
    eprintln!(
        "jail cost ({kind} jailer; medians of 20, tiny guest), to the first serial line / to exit: plain {ps:.2} / {pe:.2} ms; jailed {js:.2} / {je:.2} ms (+{:.2} / +{:.2}); jailed without cgroups {ns:.2} / {ne:.2} ms (+{:.2} / +{:.2})",
        js - ps,
        je - pe,
        ns - ps,
        ne - pe
    );
}

#[test]
fn a_killed_jailer_takes_its_vmm_along_and_cleanup_removes_the_rest() {
    let f = fixture(Program::new().print("up\n").spin());
    let mut child = jailed(&f, "killed", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    let vmm_pid = children(child.id())[0];
    let pidfd = |pid: u32| {
        // SAFETY: pidfd_open with a pid and no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, i32::try_from(pid).unwrap(), 0) };
        assert!(fd >= 0, "pidfd_open {pid}");
        // SAFETY: the fd was just opened and is ours.
        unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                i32::try_from(fd).unwrap(),
            )
        }
    };
    let vmm_fd = pidfd(vmm_pid);
    child.kill().unwrap();
    child.wait().unwrap();
    // The VMM's pidfd turns readable when it has exited (no reaper needed).
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&vmm_fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(ready, 1, "the VMM outlived its jailer by 10 s");
    // What the jailer had no chance to remove.
    assert!(f.base.join("killed").exists());
    let removed = bulkhead_jailer::cleanup::remove(&f.base, "killed").unwrap();
    assert!(
        removed.iter().any(|r| r.starts_with("jail dir")),
        "{removed:?}"
    );
    assert!(!f.base.join("killed").exists());
    assert_eq!(leftovers("killed", &f.kernel), Vec::<String>::new());
}

#[test]
fn a_nodev_noexec_base_works_and_dynamic_vmms_or_unusable_binds_are_refused() {
    let f = fixture(Program::new().print("on tmpfs\n").power_off());
    // Like /run on most hosts: tmpfs, nosuid, nodev, noexec.
    let tmpfs = f.base.join("run");
    std::fs::create_dir(&tmpfs).unwrap();
    let flags = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        flags,
        Some("size=16m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(tmpfs.clone());
    let mut c = jailer();
    c.args([
        "--id",
        "t1",
        "--uid",
        &UID.to_string(),
        "--gid",
        &UID.to_string(),
        "--chroot-base",
    ])
    .arg(&tmpfs)
    .arg("--bind")
    .arg(&f.kernel);
    let out = c
        .arg("--")
        .arg(vmm())
        .arg("--kernel")
        .arg(&f.kernel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "on tmpfs\n");
    assert_eq!(std::fs::read_dir(&tmpfs).unwrap().count(), 0);

    let secret = f.kernel.with_file_name("secret");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cases: Vec<(PathBuf, Vec<String>, &str)> = vec![
        (
            std::fs::canonicalize("/bin/true").unwrap(),
            vec![],
            "dynamically linked",
        ),
        (
            vmm(),
            vec!["--bind".into(), secret.display().to_string()],
            "may not read it (mode 600",
        ),
        (
            vmm(),
            vec!["--bind".into(), format!("{},rw", f.kernel.display())],
            "may not read and write it",
        ),
    ];
    for (vmm_path, extra, want) in cases {
        let mut c = jailer();
        c.args([
            "--id",
            "t2",
            "--uid",
            &UID.to_string(),
            "--gid",
            &UID.to_string(),
            "--chroot-base",
        ])
        .arg(&tmpfs)
        .args(&extra);
        let out = c
            .arg("--")
            .arg(&vmm_path)
            .arg("--kernel")
            .arg(&f.kernel)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{want}: {err}");
        assert!(err.contains(want), "wanted {want:?} in {err}");
        assert_eq!(
            std::fs::read_dir(&tmpfs).unwrap().count(),
            0,
            "{want}: made something"
        );
    }
}

/// Fencing below the supervisor: a jailed VMM whose lease deadline passes
/// is SIGKILLed by its jailer, with no supervisor around; renewed, it runs.
#[test]
fn the_jailer_kills_its_vmm_once_the_lease_deadline_passes() {
    let f = fixture(Program::new().print("up\n").spin());
    let deadline = f.base.parent().unwrap().join("deadline");
    let now = bulkhead_jailer::deadline::monotonic_ms();
    std::fs::write(&deadline, format!("{}\n", now + 60_000)).unwrap();
    let c = jailed(&f, "fenced", &[]);
    // The VMM's arguments come after `--`: the deadline flags go first.
    let args: Vec<std::ffi::OsString> = c.get_args().map(Into::into).collect();
    let split = args.iter().position(|a| a == "--").unwrap();
    let mut c2 = jailer();
    c2.args(&args[..split])
        .arg("--deadline-file")
        .arg(&deadline)
        .args(["--deadline-kill-after-ms", "200"])
        .args(&args[split..]);
    drop(c);
    let mut child = c2
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    // Renewed (a minute ahead): still running a second later.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "killed while renewed");
    // The deadline passes (the node daemon stopped renewing).
    std::fs::write(&deadline, "0\n").unwrap();
    let since = std::time::Instant::now();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("lease deadline"), "{err}");
    assert!(
        since.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(leftovers("fenced", &f.kernel), Vec::<String>::new());
}
