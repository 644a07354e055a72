//! `bulkhead run --runtime container`, natively (this host's hybrid
//! cgroups included): the shared table of cases (`run_cases`) with crun and
//! with runc, 20 run/rm cycles each, then a count of what is left; then the
//! image's unpacked tree goes with `image rm` + `gc`.

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
