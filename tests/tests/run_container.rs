//! `bulkhead run --runtime container`, natively (this host's hybrid
//! cgroups included): the shared table of cases (`run_cases`) with crun and
//! with runc, 20 run/rm cycles each, then a count of what is left; and a
//! supervisor killed with SIGKILL, which `ps` must report and `rm -f` clean.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::Command;

use bulkhead_tests::run_cases::{self, Ctx};

/// The CLI under test, from the same target dir as this test.
fn bulkhead() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|d| d.parent()).unwrap();
    let b = release.join("bulkhead");
    assert!(b.is_file(), "no {} (cargo build --release --workspace)", b.display());
    b
}

/// One at a time: they share /run/bulkhead and the OCI runtimes' state.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn ctx(dir: &tempfile::TempDir, oci: &str) -> Ctx {
    bulkhead_images::debian::ensure_packages(&["crun", "runc"], &mut |m| eprintln!("{m}")).unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    Ctx { bulkhead: bulkhead(), data, runtime: "container".into(), oci_runtime: Some(oci.into()) }
}

fn table(oci: &str) {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(&dir, oci);
    let checks = run_cases::run_table(&ctx, 20);
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{oci}: failed: {failed:#?}");
    assert!(checks.len() >= 18, "{checks:#?}");
    // The image's unpacked tree goes with the image.
    let bh = |args: &[&str]| Command::new(&ctx.bulkhead).env("BULKHEAD_DATA", &ctx.data).args(args).output().unwrap();
    assert_eq!(std::fs::read_dir(ctx.data.join("trees")).unwrap().count(), 1);
    assert!(bh(&["image", "rm", run_cases::IMAGE]).status.success());
    let gc = bh(&["image", "gc"]);
    assert!(String::from_utf8_lossy(&gc.stderr).contains("1 trees"), "{gc:?}");
    assert_eq!(std::fs::read_dir(ctx.data.join("trees")).unwrap().count(), 0);
}

#[test]
fn the_run_table_passes_with_crun() {
    table("crun");
}

#[test]
fn the_run_table_passes_with_runc() {
    table("runc");
}

#[test]
fn a_killed_supervisor_shows_as_failed_and_rm_f_cleans_up_its_orphans() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(&dir, "runc");
    let bh = |args: &[&str]| Command::new(&ctx.bulkhead).env("BULKHEAD_DATA", &ctx.data).args(args).output().unwrap();
    let o = bh(&["run", "-d", "--runtime", "container", "--oci-runtime", "runc", "--name", "orphan", run_cases::IMAGE, "sleep", "1000"]);
    assert!(o.status.success(), "{o:?}");
    let inspect: serde_json::Value = serde_json::from_slice(&bh(&["inspect", "orphan"]).stdout).unwrap();
    let sup = inspect["pids"]["supervisor"].as_i64().unwrap() as i32;
    assert!(inspect["pids"]["runtime"].as_i64().is_some(), "{inspect}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Gone once its pidfd reports it (no sleeping).
    let fd = pidfd(sup);
    let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&fd), nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&bh(&["ps", "-a", "--format", "json"]).stdout).unwrap();
    let status = ps[0]["status"].as_str().unwrap_or_default().to_string();
    assert!(status.starts_with("failed: its supervisor died"), "{ps}");
    let o = bh(&["rm", "orphan"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("rm -f"), "{o:?}");
    let o = bh(&["rm", "-f", "orphan"]);
    assert!(o.status.success(), "{o:?}");
    let left = run_cases::leftovers(&ctx);
    assert!(left.is_empty(), "{left:#?}");
}

fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open with a pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        // Already gone and reaped: a pidfd of ourselves reads as "not ready", so poll returns on timeout only.
        panic!("pidfd_open({pid}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}
