//! The quota holds under concurrency: it is checked in the same guarded
//! transaction as the placement, so deploys racing each other never place
//! more than a tenant may have.

use super::*;

#[test]
pub(super) fn twenty_racing_deploys_never_pass_a_quota_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let s = start(
        &format!("file:{}", dir.path().join("c.redb").display()),
        &token_file,
    );
    for (n, z) in [("n1", "a"), ("n2", "b")] {
        register(&s, n, z);
    }
    let o = cli(
        &s,
        &s.admin,
        &[
            "tenant",
            "create",
            "acme",
            "--instances",
            "3",
            "--runtimes",
            "container",
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    let acme = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // Twenty services of one replica each, sent at once.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|k| {
                let (barrier, addr, acme) = (barrier.clone(), s.addr.clone(), acme.clone());
                scope.spawn(move || {
                    let spec = format!(
                        r#"{{"name":"s{k}","image":"busybox","runtime":"container","replicas":1}}"#
                    );
                    barrier.wait();
                    http(&addr, "POST", "/v1/services", Some(&acme), Some(&spec)).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let placed = json(&cli(&s, &acme, &["instance", "ls", "--format", "json"]));
    let n = placed.as_array().map_or(0, Vec::len);
    let ok = answers.iter().filter(|c| **c == 200).count();
    assert!(
        n <= 3,
        "{n} instances under a quota of 3; answers {answers:?}"
    );
    assert_eq!(ok, n, "every 200 placed one, nothing else did: {answers:?}");
    assert!(
        answers.iter().all(|c| matches!(c, 200 | 409 | 422)),
        "a refusal is a conflict or over quota: {answers:?}"
    );
    // Sequentially, the rest of the quota is used and no more.
    for k in 20..30 {
        let spec =
            format!(r#"{{"name":"t{k}","image":"busybox","runtime":"container","replicas":1}}"#);
        http(&s.addr, "POST", "/v1/services", Some(&acme), Some(&spec));
    }
    let placed = json(&cli(&s, &acme, &["instance", "ls", "--format", "json"]));
    assert_eq!(placed.as_array().map_or(0, Vec::len), 3);
}

/// An admin changes a tenant after the fact: its quota (the limits given,
/// the rest kept) and its runtimes (never one its services use). Only the
/// admin may; the other tenant's record does not move; bad input changes
/// nothing.
#[test]
pub(super) fn an_admin_updates_a_tenants_quota_and_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let s = start(
        &format!("file:{}", dir.path().join("c.redb").display()),
        &token_file,
    );
    for (n, z) in [("n1", "a"), ("n2", "b")] {
        register(&s, n, z);
    }
    let create = |name: &str| {
        let o = cli(
            &s,
            &s.admin,
            &["tenant", "create", name, "--instances", "2"],
        );
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (acme, other) = (create("acme"), create("other"));
    let tenants = || json(&cli(&s, &s.admin, &["tenant", "ls", "--format", "json"]));
    let record = |name: &str| {
        tenants()
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    let other_before = record("other");
    assert_eq!(record("acme")["runtimes"], serde_json::json!(["microvm"]));
    assert_eq!(record("acme")["quota"]["instances"], 2);

    let deploy = |name: &str, runtime: &str, replicas: u32| {
        let spec = format!(
            r#"{{"name":"{name}","image":"busybox","runtime":"{runtime}","replicas":{replicas},"memory":"64m"}}"#
        );
        http(&s.addr, "POST", "/v1/services", Some(&acme), Some(&spec))
    };
    // The gate as made: containers refused, with the way to open it.
    let (status, v) = deploy("c", "container", 1);
    assert!(
        status == 403
            && v["error"]
                .as_str()
                .unwrap()
                .contains("tenant update --runtimes"),
        "{status} {v}"
    );
    // The quota as made: two instances.
    assert_eq!(deploy("web", "microvm", 2).0, 200);
    let scale = |n: u32| {
        http(
            &s.addr,
            "POST",
            "/v1/services/web/scale",
            Some(&acme),
            Some(&format!(r#"{{"replicas":{n}}}"#)),
        )
        .0
    };
    assert_eq!(scale(3), 422, "over the quota of 2");

    // A tenant may not change itself.
    let (status, _) = http(
        &s.addr,
        "PATCH",
        "/v1/tenants/acme",
        Some(&acme),
        Some(r#"{"quota":{"instances":100}}"#),
    );
    assert_eq!(status, 403);
    // Bad input: refused, nothing changed.
    for (args, why) in [
        (vec!["tenant", "update", "acme"], "nothing to change"),
        (
            vec!["tenant", "update", "acme", "--instances", "0"],
            "at least 1",
        ),
        (
            vec!["tenant", "update", "nobody", "--instances", "5"],
            "nobody",
        ),
        (
            vec!["tenant", "update", "acme", "--runtimes", "container"],
            "web",
        ),
    ] {
        let o = cli(&s, &s.admin, &args);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains(why),
            "{args:?}: {}",
            show(&o)
        );
    }
    let (status, _) = http(
        &s.addr,
        "PATCH",
        "/v1/tenants/acme",
        Some(&s.admin),
        Some(r#"{"quota":{"instances":9},"owner":"me"}"#),
    );
    assert_eq!(status, 400, "unknown fields are refused");
    assert_eq!(record("acme")["quota"]["instances"], 2);
    assert_eq!(record("acme")["runtimes"], serde_json::json!(["microvm"]));

    // More instances and containers allowed: the memory limit kept.
    let memory = record("acme")["quota"]["memory_mib"].clone();
    let o = cli(
        &s,
        &s.admin,
        &[
            "tenant",
            "update",
            "acme",
            "--instances",
            "4",
            "--runtimes",
            "microvm,container",
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(record("acme")["quota"]["instances"], 4);
    assert_eq!(record("acme")["quota"]["memory_mib"], memory);
    assert_eq!(scale(3), 200);
    assert_eq!(deploy("c", "container", 1).0, 200);
    assert_eq!(deploy("d", "container", 1).0, 422, "4 in all");
    // Lowered below use: what runs stands, growth is refused.
    let o = cli(
        &s,
        &s.admin,
        &["tenant", "update", "acme", "--instances", "1"],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        json(&cli(&s, &acme, &["instance", "ls", "--format", "json"]))
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(scale(4), 422);
    // The other tenant: untouched throughout, and still gated.
    assert_eq!(record("other"), other_before);
    let spec = r#"{"name":"c","image":"busybox","runtime":"container","replicas":1}"#;
    assert_eq!(
        http(&s.addr, "POST", "/v1/services", Some(&other), Some(spec)).0,
        403
    );
}
