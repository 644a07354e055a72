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
use bulkhead_tests::bulkhead;

/// One at a time: they share /run/bulkhead and the OCI runtimes' state.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn ctx(dir: &tempfile::TempDir, oci: &str, netns: Option<&NetNs>) -> Ctx {
    bulkhead_images::debian::ensure_packages(&["crun", "runc", "nftables", "iproute2"], &mut |m| {
        eprintln!("{m}")
    })
    .unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead(), &data, false).unwrap();
    Ctx {
        bulkhead: bulkhead(),
        data,
        runtime: "container".into(),
        oci_runtime: Some(oci.into()),
        netns: netns.map(NetNs::path),
    }
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
    // The container's walls ran (seccomp, pids.max, the writable layer's size).
    for want in [
        "seccomp-unshare-refused",
        "seccomp-mount-refused",
        "kcore-unreadable",
        "seccomp-setns-refused",
        "seccomp-filter-on",
        "fork-bomb-capped",
        "writable-layer-capped",
        "node-healthy-after-the-walls",
        "userns-own-ids",
        "health-failing-makes-unhealthy",
        "health-passing-makes-healthy",
        "health-bad-settings-refused",
    ] {
        assert!(
            checks.iter().any(|c| c.name.ends_with(want)),
            "{oci}: {want} did not run"
        );
    }
    // The image's unpacked tree goes with the image.
    let bh = |args: &[&str]| {
        Command::new(&ctx.bulkhead)
            .env("BULKHEAD_DATA", &ctx.data)
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        std::fs::read_dir(ctx.data.join("trees")).unwrap().count(),
        2,
        "bb:test's and bb:nopath's"
    );
    assert!(
        bh(&["image", "rm", run_cases::IMAGE]).status.success()
            && bh(&["image", "rm", run_cases::NOPATH_IMAGE])
                .status
                .success()
    );
    let gc = bh(&["image", "gc"]);
    assert!(
        String::from_utf8_lossy(&gc.stderr).contains("2 trees"),
        "{gc:?}"
    );
    assert_eq!(
        std::fs::read_dir(ctx.data.join("trees")).unwrap().count(),
        0
    );
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

/// What a lost workload's jailer left (a jail dir; a cgroup with a process
/// still in it) goes at the next `run`; the jail of a workload the store
/// still has stays until its `rm`. Natively: the sweep does not care what
/// the workload was, so a container keeps it fast.
#[test]
fn jails_of_workloads_the_store_lacks_are_swept_by_run() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::create("bhtest-jail-sweep").unwrap();
    let ctx = ctx(&dir, "crun", Some(&ns));
    let keep = ctx.out(ctx.run_cmd(
        &["-d", "--name", "keep", "--network", "none"],
        &["sleep", "1000"],
    ));
    assert!(keep.status.success(), "{}", run_cases::show(&keep));
    let keep_id = run_cases::text(&keep.stdout).trim().to_string();
    let base = PathBuf::from("/run/bulkhead/jail");
    let lost_id: String = keep_id.chars().rev().collect(); // 64 hex digits no workload has
    for id in [&keep_id, &lost_id] {
        std::fs::create_dir_all(base.join(id).join("root/dev")).unwrap();
    }
    // A jail of another store on this host, its jailer alive: it holds the dir's lock.
    let live_id: String = lost_id.replace(|c: char| c.is_ascii_digit(), "d");
    std::fs::create_dir_all(base.join(&live_id).join("root")).unwrap();
    let live = nix::fcntl::Flock::lock(
        std::fs::File::open(base.join(&live_id)).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let groups = bulkhead_jailer::cgroup::Cgroups::create(
        &lost_id,
        &[("pids".into(), "pids.max".into(), "8".into())],
    )
    .unwrap();
    let mut stray = Command::new("sleep").arg("1000").spawn().unwrap();
    groups.join(i32::try_from(stray.id()).unwrap()).unwrap();
    // A bulkhead cgroup with no jail dir: another store's container on this host.
    let other_id: String = lost_id.replace(|c: char| c.is_ascii_digit(), "e");
    let others = bulkhead_jailer::cgroup::Cgroups::create(
        &other_id,
        &[("pids".into(), "pids.max".into(), "8".into())],
    )
    .unwrap();
    let mut neighbour = Command::new("sleep").arg("1000").spawn().unwrap();
    others.join(i32::try_from(neighbour.id()).unwrap()).unwrap();

    let o = ctx.out(ctx.run_cmd(&["--rm", "--network", "none"], &["true"]));
    assert!(o.status.success(), "{}", run_cases::show(&o));
    assert!(
        !base.join(&lost_id).exists(),
        "the lost workload's jail dir is swept"
    );
    assert!(
        groups.dirs().iter().all(|d| !d.exists()),
        "its cgroups are swept: {:?}",
        groups.dirs()
    );
    let status = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "what ran in its cgroup is killed"
    );
    assert!(
        base.join(&keep_id).exists(),
        "a workload in the store keeps its jail"
    );
    assert!(
        base.join(&live_id).exists(),
        "a jail its jailer holds is left alone, whoever's it is"
    );
    drop(live);
    bulkhead_jailer::cleanup::remove(&base, &live_id).unwrap();
    assert!(
        neighbour.try_wait().unwrap().is_none(),
        "another store's container (a cgroup, no jail dir) is left alone"
    );
    let _ = neighbour.kill();
    let _ = neighbour.wait();
    bulkhead_jailer::cleanup::remove(&base, &other_id).unwrap();
    assert!(others.dirs().iter().all(|d| !d.exists()));

    let rm = ctx.bh(&["rm", "-f", "keep"]);
    assert!(rm.status.success(), "{}", run_cases::show(&rm));
    assert!(
        !base.join(&keep_id).exists(),
        "rm removes the workload's jail"
    );
}

/// Two data dirs in one network namespace (two `bulkhead`s on one host):
/// each has its own nftables tables, default bridge and subnet, and one's
/// sweep (every `run` starts with one) or teardown leaves the other's
/// workload, interface and rules alone. With shared names the second's
/// default network is refused (its subnet is on the first's bridge) and
/// the first's `run` would replace the second's tables and delete its veth.
#[test]
fn two_data_dirs_in_one_namespace_keep_their_names_and_rules_apart() {
    let _l = lock();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ns = NetNs::create("bhtest-two-dirs").unwrap();
    let (a, b) = (ctx(&da, "crun", Some(&ns)), ctx(&db, "crun", Some(&ns)));
    for (c, name) in [(&a, "a"), (&b, "b")] {
        let o = c.out(c.run_cmd(&["-d", "--name", name], &["sleep", "996"]));
        assert!(o.status.success(), "{name}: {}", run_cases::show(&o));
    }
    let net = |c: &Ctx| {
        let o = c.bh(&["network", "inspect", "bulkhead"]);
        assert!(o.status.success(), "{}", run_cases::show(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let v = v.as_array().and_then(|a| a.first()).cloned().unwrap_or(v);
        (
            v["bridge"].as_str().unwrap().to_string(),
            v["subnet"].as_str().unwrap().to_string(),
            v["workloads"].to_string(),
        )
    };
    let ((bridge_a, subnet_a, _), (bridge_b, subnet_b, on_b)) = (net(&a), net(&b));
    // Their user namespace blocks differ too (claimed host-wide): the
    // sleepers are two users on the host.
    let uids: std::collections::BTreeSet<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| std::fs::read(p.path().join("cmdline")).unwrap_or_default() == b"sleep\0996\0")
        .filter_map(|p| {
            let s = std::fs::read_to_string(p.path().join("status")).ok()?;
            Some(s.lines().find(|l| l.starts_with("Uid:"))?.to_string())
        })
        .collect();
    assert_eq!(uids.len(), 2, "{uids:?}");
    assert_ne!(bridge_a, bridge_b);
    assert_ne!(subnet_a, subnet_b);
    let tables = |c: &Ctx| -> Vec<String> {
        run_cases::text(&c.tool("nft", &["list", "tables"]).stdout)
            .lines()
            .filter(|l| l.starts_with("table inet bulkhead"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(tables(&a).len(), 2, "two inet tables: {:?}", tables(&a));
    let inspect: serde_json::Value =
        serde_json::from_slice(&b.bh(&["inspect", "b"]).stdout).unwrap();
    let veth_b = format!("bhv{}", &inspect["id"].as_str().unwrap()[..12]);
    let links = |c: &Ctx| run_cases::text(&c.tool("ip", &["-o", "link", "show"]).stdout);
    assert!(links(&b).contains(&veth_b), "{veth_b}: {}", links(&b));
    // a's run sweeps, rewrites its rules; a's network goes.
    let o = a.out(a.run_cmd(&["--rm"], &["true"]));
    assert!(o.status.success(), "{}", run_cases::show(&o));
    for args in [
        &["rm", "-f", "a"][..],
        &["network", "rm", "bulkhead"],
        &["system", "prune"],
    ] {
        let o = a.bh(args);
        assert!(o.status.success(), "{args:?}: {}", run_cases::show(&o));
    }
    assert!(
        links(&b).contains(&veth_b),
        "b's veth survives a's sweep and teardown"
    );
    assert!(links(&b).contains(&bridge_b), "and b's bridge");
    assert_eq!(
        tables(&b).len(),
        1,
        "b's table stays, a's went: {:?}",
        tables(&b)
    );
    assert_eq!(net(&b).2, on_b, "b's workload still on its network");
    let ps = b.bh(&["ps", "--format", "json"]);
    assert!(
        run_cases::text(&ps.stdout).contains("\"running\""),
        "{}",
        run_cases::show(&ps)
    );
    let o = b.bh(&["rm", "-f", "b"]);
    assert!(o.status.success(), "{}", run_cases::show(&o));
    let o = b.bh(&["network", "rm", "bulkhead"]);
    assert!(o.status.success(), "{}", run_cases::show(&o));
    assert!(tables(&b).is_empty(), "{:?}", tables(&b));
    // Their host-wide id claims went with them.
    let data = [&a.data, &b.data].map(|d| std::fs::canonicalize(d).unwrap());
    for e in std::fs::read_dir("/run/bulkhead/ids").unwrap().flatten() {
        let claim = std::fs::read(e.path()).unwrap_or_default();
        assert!(
            !data
                .iter()
                .any(|d| claim.starts_with(d.as_os_str().as_encoded_bytes())),
            "{}: {}",
            e.path().display(),
            String::from_utf8_lossy(&claim)
        );
    }
}
