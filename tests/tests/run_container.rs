//! `bulkhead run --runtime container`, natively (this host's hybrid
//! cgroups included): the shared table of cases (`run_cases`) with crun and
//! with runc, 20 run/rm cycles each, then a count of what is left; then the
//! image's unpacked tree goes with `image rm` + `gc`. And the networking
//! table (`net_cases`) with each. All of it inside network namespaces the
//! tests create: never the machine's own.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::Command;

use bulkhead_tests::net_cases;
use bulkhead_tests::netns::NetNs;
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

fn ctx(dir: &tempfile::TempDir, oci: &str, netns: Option<&NetNs>) -> Ctx {
    bulkhead_images::debian::ensure_packages(&["crun", "runc", "nftables", "iproute2"], &mut |m| eprintln!("{m}")).unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    Ctx { bulkhead: bulkhead(), data, runtime: "container".into(), oci_runtime: Some(oci.into()), netns: netns.map(NetNs::path) }
}

fn table(oci: &str) {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    // bulkhead's bridge and rules go into a namespace of the test's own.
    let ns = NetNs::create(&format!("bhtest-run-{oci}")).unwrap();
    let ctx = ctx(&dir, oci, Some(&ns));
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

/// Workload networking (`net_cases`) with each OCI runtime, 20 cycles.
fn network_table(oci: &str) {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(&dir, oci, None); // the table makes its own namespaces
    let checks = net_cases::run_table(&ctx, oci, 20);
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{oci}: failed: {failed:#?}");
    assert!(checks.len() >= 20, "{checks:#?}");
}

#[test]
fn workload_networking_with_crun() {
    network_table("crun");
}

#[test]
fn workload_networking_with_runc() {
    network_table("runc");
}

#[test]
fn the_run_table_passes_with_crun() {
    table("crun");
}

#[test]
fn the_run_table_passes_with_runc() {
    table("runc");
}
