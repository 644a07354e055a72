//! Tokens over the API and the CLI: join tokens expire, every token is
//! listed by id and never shown, any but the admin's can be revoked, and
//! a secret is refused as an argument.

use super::*;

#[test]
pub(super) fn tokens_expire_are_listed_by_id_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let s = start(
        &format!("file:{}", dir.path().join("c.redb").display()),
        &token_file,
    );
    let o = cli(&s, &s.admin, &["tenant", "create", "acme"]);
    assert!(o.status.success(), "{}", show(&o));
    let acme = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // A join token that works for one second, and one for the default day.
    let (status, short) = http(
        &s.addr,
        "POST",
        "/v1/nodes/tokens?ttl_s=1",
        Some(&s.admin),
        None,
    );
    assert_eq!(status, 200, "{short}");
    let short = short["token"].as_str().unwrap().to_string();
    let o = cli(&s, &s.admin, &["node", "token", "create"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains("it works until"),
        "{}",
        show(&o)
    );
    let day = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let node = r#"{"name": "n1", "labels": {}, "allocatable": {"millicpus": 1000, "memory_mib": 1024}, "runtimes": ["container"], "cordoned": false}"#;
    // The short one stops working (polled: its second runs out on the
    // server's clock). An empty body: while the token works the answer is
    // 400 (no node), and nothing joins.
    let start = std::time::Instant::now();
    while http(&s.addr, "POST", "/v1/nodes/join", Some(&short), Some("{}")).0 != 401 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "a 1 s join token still works"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        http(
            &s.addr,
            "POST",
            "/v1/nodes/tokens?ttl_s=x",
            Some(&s.admin),
            None
        )
        .0,
        400
    );

    // The listing: ids and kinds, never a token; admin only.
    let ls = cli(&s, &s.admin, &["token", "ls", "--format", "json"]);
    let rows = json(&ls);
    let kinds: Vec<(String, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["expired"] == true,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("admin".to_string(), false),
            ("join".into(), true),
            ("join".into(), false),
            ("tenant".into(), false)
        ],
        "{}",
        show(&ls)
    );
    let listed = String::from_utf8_lossy(&ls.stdout);
    for secret in [&s.admin, &acme, &short, &day] {
        assert!(!listed.contains(&secret[3..]), "a token in the listing");
    }
    assert_eq!(http(&s.addr, "GET", "/v1/tokens", Some(&acme), None).0, 403);

    // Revoked by a prefix of its id: the day-long join token stops working.
    let id = rows[2]["id"].as_str().unwrap();
    let o = cli(&s, &s.admin, &["token", "rm", &id[..10]]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        http(&s.addr, "POST", "/v1/nodes/join", Some(&day), Some(node)).0,
        401
    );
    // The admin token is not revoked; bad ids change nothing.
    let before = json(&cli(&s, &s.admin, &["token", "ls", "--format", "json"]));
    let admin_id = rows[0]["id"].as_str().unwrap();
    for bad in [admin_id, "12", "zzzzzzzzzz"] {
        let o = cli(&s, &s.admin, &["token", "rm", bad]);
        assert!(!o.status.success(), "{bad}: {}", show(&o));
    }
    assert_eq!(
        json(&cli(&s, &s.admin, &["token", "ls", "--format", "json"])),
        before
    );

    // A secret as an argument is refused before anything is sent.
    let o = Command::new(bulkhead())
        .args([
            "token",
            "ls",
            "--server",
            &format!("http://{}", s.addr),
            "--token",
            &s.admin,
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("BULKHEAD_TOKEN"),
        "{}",
        show(&o)
    );
    // From a private file it works.
    let f = dir.path().join("tok");
    std::fs::write(&f, format!("{}\n", s.admin)).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = Command::new(bulkhead())
        .args([
            "token",
            "ls",
            "--server",
            &format!("http://{}", s.addr),
            "--token-file",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
}
