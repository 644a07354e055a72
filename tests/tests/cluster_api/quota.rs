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
