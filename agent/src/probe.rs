//! Guest-kernel probe: does this kernel give a container what it expects?
//!
//! Each check exercises the real syscalls (no /proc/config reading) and
//! reports `probe: NAME ok` or `probe: NAME FAIL: why`.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

type CheckResult = Result<String, String>;

/// Parses `[--expect-cpus N]`.
pub fn parse_expect_cpus(args: &[String]) -> Result<Option<usize>, String> {
    match args {
        [] => Ok(None),
        [flag, n] if flag == "--expect-cpus" => n
            .parse()
            .map(Some)
            .map_err(|_| format!("--expect-cpus needs a number, got {n:?}")),
        other => Err(format!("unexpected arguments {other:?}")),
    }
}

pub fn run_all(expect_cpus: Option<usize>) -> ExitCode {
    let checks: [(&str, &dyn Fn() -> CheckResult); 8] = [
        ("cpus", &|| check_cpus(expect_cpus)),
        ("threads", &check_threads),
        ("epoll", &check_epoll),
        ("setuid", &check_setuid),
        ("pty", &check_pty),
        ("shebang", &check_shebang),
        ("overlay-tmpfs", &check_overlay_on_tmpfs),
        ("filesystems", &check_filesystems),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(detail) => println!("probe: {name} ok{}", suffix(&detail)),
            Err(why) => {
                failed += 1;
                println!("probe: {name} FAIL: {why}");
            }
        }
    }
    if failed == 0 {
        println!("probe: all ok");
        ExitCode::SUCCESS
    } else {
        println!("probe: {failed} failed");
        ExitCode::FAILURE
    }
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn check_cpus(expect: Option<usize>) -> CheckResult {
    let online = std::thread::available_parallelism()
        .map_err(|e| e.to_string())?
        .get();
    match expect {
        Some(n) if n != online => Err(format!("{online} CPUs online, expected {n}")),
        _ => Ok(format!("{online} online")),
    }
}

fn check_threads() -> CheckResult {
    let handles: Vec<_> = (0u64..4)
        .map(|i| std::thread::spawn(move || (0..=100_000u64).map(|x| x * i).sum::<u64>()))
        .collect();
    let sums: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().map_err(|_| "a thread panicked".to_string()))
        .collect::<Result<_, _>>()?;
    let base = 100_000u64 * 100_001 / 2;
    if sums == [0, base, 2 * base, 3 * base] {
        Ok("4 threads joined".into())
    } else {
        Err(format!("wrong results {sums:?}"))
    }
}

/// epoll over an eventfd, a timerfd and a signalfd: all three must report ready.
fn check_epoll() -> CheckResult {
    let e = |what: &str, err: nix::Error| format!("{what}: {err}");
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|x| e("epoll_create", x))?;

    let event =
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).map_err(|x| e("eventfd", x))?;
    epoll
        .add(event.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .map_err(|x| e("epoll_ctl", x))?;
    event.write(1).map_err(|x| e("eventfd write", x))?;

    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)
        .map_err(|x| e("timerfd", x))?;
    timer
        .set(
            Expiration::OneShot(TimeSpec::from_duration(Duration::from_millis(1))),
            TimerSetTimeFlags::empty(),
        )
        .map_err(|x| e("timerfd_settime", x))?;
    epoll
        .add(timer.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 2))
        .map_err(|x| e("epoll_ctl", x))?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGUSR1);
    mask.thread_block().map_err(|x| e("sigprocmask", x))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|x| e("signalfd", x))?;
    epoll
        .add(sigfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 3))
        .map_err(|x| e("epoll_ctl", x))?;
    nix::sys::signal::raise(Signal::SIGUSR1).map_err(|x| e("raise", x))?;

    let mut seen = [false; 3];
    for _ in 0..10 {
        let mut events = [EpollEvent::empty(); 3];
        let n = epoll
            .wait(&mut events, EpollTimeout::from(2000u16))
            .map_err(|x| e("epoll_wait", x))?;
        if n == 0 {
            break;
        }
        for ev in &events[..n] {
            let idx = usize::try_from(ev.data()).unwrap_or(0).wrapping_sub(1);
            if let Some(flag) = seen.get_mut(idx) {
                *flag = true;
            }
        }
        if seen.iter().all(|s| *s) {
            break;
        }
        // Drain what fired so level-triggered epoll moves on to the rest.
        if seen[0] {
            let _ = event.read();
        }
        if seen[1] {
            let _ = timer.wait();
        }
        if seen[2] {
            let _ = sigfd.read_signal();
        }
    }
    if seen.iter().all(|s| *s) {
        Ok("eventfd, timerfd, signalfd ready".into())
    } else {
        Err(format!(
            "not all fds became ready (eventfd, timerfd, signalfd) = {seen:?}"
        ))
    }
}

/// Runs `probe-setuid` in a child: setgid/setuid to nobody must work, and going
/// back to root must then fail.
fn check_setuid() -> CheckResult {
    let out = Command::new("/proc/self/exe")
        .args(["probe-setuid", "65534"])
        .output()
        .map_err(|e| format!("spawn: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && text == "uid=65534 euid=65534 gid=65534 regain=EPERM" {
        Ok(text)
    } else {
        Err(format!(
            "child said {text:?} {}, status {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

pub fn setuid_child(uid: u32) -> ExitCode {
    use nix::unistd::{getegid, geteuid, getuid, setgid, setgroups, setuid, Gid, Uid};
    let step = || -> Result<String, String> {
        setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        setgid(Gid::from_raw(uid)).map_err(|e| format!("setgid: {e}"))?;
        setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
        let regain = match setuid(Uid::from_raw(0)) {
            Ok(()) => "succeeded".to_string(),
            Err(e) => format!("{e:?}"),
        };
        Ok(format!(
            "uid={} euid={} gid={} regain={regain}",
            getuid(),
            geteuid(),
            getegid()
        ))
    };
    match step() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens a pty pair, writes on the slave side and reads it back on the master.
fn check_pty() -> CheckResult {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(|e| format!("posix_openpt: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let mut slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .map_err(|e| format!("open {name}: {e}"))?;
    slave
        .write_all(b"ping\n")
        .map_err(|e| format!("write slave: {e}"))?;
    let mut master_file = fs::File::from(std::os::fd::OwnedFd::from(master));
    // The line may come in pieces (the tty layer passes it on from a
    // work queue): read until its end, or 16 bytes.
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        match master_file
            .read(&mut buf[n..])
            .map_err(|e| format!("read master: {e}"))?
        {
            0 => break,
            got => n += got,
        }
    }
    // The line discipline turns "\n" into "\r\n" (ONLCR): proof a real tty sits between.
    if &buf[..n] == b"ping\r\n" {
        Ok(name)
    } else {
        Err(format!(
            "read {:?} from master",
            String::from_utf8_lossy(&buf[..n])
        ))
    }
}

fn check_shebang() -> CheckResult {
    let dir = scratch_dir("shebang")?;
    let script = dir.join("hello.sh");
    fs::write(&script, "#!/bin/sh\necho shebang-ok \"$1\"\n").map_err(|e| e.to_string())?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let out = Command::new(&script)
        .arg("arg1")
        .output()
        .map_err(|e| format!("exec {}: {e}", script.display()))?;
    let _ = fs::remove_dir_all(&dir);
    match String::from_utf8_lossy(&out.stdout).as_ref() {
        "shebang-ok arg1\n" => Ok(String::new()),
        other => Err(format!("script printed {other:?}, status {}", out.status)),
    }
}

/// `rm -rf d; mkdir d` in an overlay whose upper layer is tmpfs: the new `d`
/// must be empty, which needs an opaque-dir xattr (trusted.*) on tmpfs.
fn check_overlay_on_tmpfs() -> CheckResult {
    let base = scratch_dir("overlay")?;
    mount(
        Some("tmpfs"),
        &base,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount tmpfs: {e}"))?;
    let result = overlay_steps(&base);
    let _ = umount2(&base.join("merged"), MntFlags::MNT_DETACH);
    let _ = umount2(&base, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir_all(&base);
    result
}

fn overlay_steps(base: &Path) -> CheckResult {
    let io = |e: std::io::Error| e.to_string();
    for d in ["lower/d", "upper", "work", "merged"] {
        fs::create_dir_all(base.join(d)).map_err(io)?;
    }
    fs::write(base.join("lower/d/from-lower"), "x").map_err(io)?;
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        base.display()
    );
    let merged = base.join("merged");
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mount overlay: {e}"))?;
    let out = Command::new("/bin/sh")
        .args(["-c", "rm -rf d; mkdir d"])
        .current_dir(&merged)
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rm -rf d; mkdir d: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let left: Vec<_> = fs::read_dir(merged.join("d"))
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    if left.is_empty() {
        Ok(String::new())
    } else {
        Err(format!(
            "new d still shows lower entries {left:?} (no opaque xattr on tmpfs?)"
        ))
    }
}

fn check_filesystems() -> CheckResult {
    let text =
        fs::read_to_string("/proc/filesystems").map_err(|e| format!("/proc/filesystems: {e}"))?;
    let have: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let missing: Vec<&str> = [
        "ext4", "erofs", "overlay", "tmpfs", "devtmpfs", "proc", "sysfs", "cgroup2", "devpts",
    ]
    .into_iter()
    .filter(|fs| !have.contains(fs))
    .collect();
    if missing.is_empty() {
        Ok(String::new())
    } else {
        Err(format!("missing {missing:?}"))
    }
}

fn scratch_dir(name: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("bulkhead-probe-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_cpus_parses_and_rejects_junk() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_expect_cpus(&s(&[])), Ok(None));
        assert_eq!(parse_expect_cpus(&s(&["--expect-cpus", "2"])), Ok(Some(2)));
        assert!(parse_expect_cpus(&s(&["--expect-cpus", "two"])).is_err());
        assert!(parse_expect_cpus(&s(&["--expect-cpus"])).is_err());
        assert!(parse_expect_cpus(&s(&["--bogus", "1"])).is_err());
    }

    #[test]
    fn unprivileged_checks_pass_on_the_build_host() {
        assert!(check_threads().is_ok());
        assert!(check_epoll().is_ok(), "{:?}", check_epoll());
        assert!(check_pty().is_ok(), "{:?}", check_pty());
    }
}
