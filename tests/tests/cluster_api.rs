//! `bulkhead server` with its one-host store, natively: the CLI and plain
//! HTTP against a real server on loopback. Tenants, tokens, quotas, the
//! scheduler's spread through deploy and scale, dry runs, bad input that
//! changes nothing, the OpenAPI document against the routes, a restart
//! that keeps everything. (Nodes register over HTTP here: the node daemon
//! that does it for real is not built yet.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "cluster_api/harness.rs"]
mod harness;
use harness::*;

#[path = "cluster_api/flags.rs"]
mod flags;
#[path = "cluster_api/quota.rs"]
mod quota;
#[path = "cluster_api/stacks.rs"]
mod stacks;
#[path = "cluster_api/store_tls.rs"]
mod store_tls;
#[path = "cluster_api/tls.rs"]
mod tls;
#[path = "cluster_api/tokens.rs"]
mod tokens;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

#[test]
fn tenants_deploy_scale_and_isolation_through_the_api_on_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("cluster.redb").display());
    scenario(&dir, &["--store".into(), store]);
}

/// The same on a one-member etcd (Debian's etcd-server, started here),
/// reached over TLS with a client certificate, as it comes.
#[test]
fn tenants_deploy_scale_and_isolation_through_the_api_on_etcd() {
    bulkhead_images::debian::ensure_packages(&["etcd-server"], &mut |m| eprintln!("{m}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let etcd = bulkhead_tests::etcd::Etcd::start(dir.path(), "127.0.0.1", 1, None).unwrap();
    scenario(&dir, &etcd.server_args());
}

fn scenario(dir: &tempfile::TempDir, store: &[String]) {
    let token_file = dir.path().join("admin-token");
    let s = start_with(store, &token_file);
    for (n, z) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        register(&s, n, z);
    }
    let acme = String::from_utf8(
        cli(
            &s,
            &s.admin,
            &[
                "tenant",
                "create",
                "acme",
                "--instances",
                "20",
                "--runtimes",
                "microvm,container",
            ],
        )
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let small = String::from_utf8(
        cli(
            &s,
            &s.admin,
            &["tenant", "create", "small", "--instances", "2"],
        )
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(acme.starts_with("bh_") && small.starts_with("bh_") && acme != small);
    let web = dir.path().join("web.yaml");
    std::fs::write(
        &web,
        "name: web\nimage: busybox\nruntime: container\nreplicas: 6\n",
    )
    .unwrap();
    let w = web.to_str().unwrap();

    // A dry run shows the placement and writes nothing.
    let dry = json(&cli(
        &s,
        &acme,
        &["deploy", "-f", w, "--dry-run", "--format", "json"],
    ));
    assert_eq!(dry["placed"].as_array().unwrap().len(), 6);
    assert_eq!(dry["revision"], 0);
    assert_eq!(
        json(&cli(&s, &acme, &["service", "ls", "--format", "json"])),
        serde_json::json!([])
    );
    let done = json(&cli(&s, &acme, &["deploy", "-f", w, "--format", "json"]));
    assert_eq!(done["placed"], dry["placed"]);
    assert_eq!(spread(&s, &acme), [2, 2, 2]);
    json(&cli(
        &s,
        &acme,
        &["service", "scale", "web", "9", "--format", "json"],
    ));
    assert_eq!(spread(&s, &acme), [3, 3, 3]);
    let down = json(&cli(
        &s,
        &acme,
        &["service", "scale", "web", "3", "--format", "json"],
    ));
    assert_eq!(down["removed"].as_array().unwrap().len(), 6);
    assert_eq!(spread(&s, &acme), [1, 1, 1]);
    stacks::stacks(dir, &s, &acme, &small);

    // Another tenant sees nothing of it and can change nothing.
    let o = cli(&s, &small, &["service", "inspect", "web"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no service \"web\""),
        "{}",
        show(&o)
    );
    assert!(!cli(&s, &small, &["service", "rm", "web"]).status.success());
    assert!(!cli(&s, &small, &["service", "scale", "web", "0"])
        .status
        .success());
    assert_eq!(
        json(&cli(&s, &small, &["instance", "ls", "--format", "json"])),
        serde_json::json!([])
    );
    assert_eq!(
        http(&s.addr, "GET", "/v1/nodes", Some(&small), None).0,
        403,
        "nodes are the admin's"
    );
    assert_eq!(
        http(&s.addr, "GET", "/v1/services", Some(&s.admin), None).0,
        403,
        "services are tenants'"
    );
    assert_eq!(http(&s.addr, "GET", "/v1/services", None, None).0, 401);
    assert_eq!(
        http(&s.addr, "GET", "/v1/services", Some("bh_nope"), None).0,
        401
    );
    assert_eq!(spread(&s, &acme), [1, 1, 1]);

    // Quotas, bad specs, impossible placements, duplicates: refused, nothing written.
    // What the nodes hold (not their heartbeat ages, which move on their own).
    let revision = |s: &Server| {
        json(&cli(s, &s.admin, &["node", "ls", "--format", "json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].to_string(),
                    n["allocated"].to_string(),
                    n["instances"].to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = (
        revision(&s),
        json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
    );
    std::fs::write(
        dir.path().join("three.yaml"),
        "name: three\nimage: busybox\nreplicas: 3\n",
    )
    .unwrap();
    let o = cli(
        &s,
        &small,
        &[
            "deploy",
            "-f",
            dir.path().join("three.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("quota of instances"),
        "{}",
        show(&o)
    );
    // small may use microVMs only (the default): a container is refused,
    // and nothing is placed.
    let o = cli(&s, &small, &["deploy", "-f", w]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("not allowed for tenant small"),
        "{}",
        show(&o)
    );
    assert_eq!(
        json(&cli(&s, &small, &["instance", "ls", "--format", "json"])),
        serde_json::json!([])
    );
    let cases = [
        (
            "name: x\nimage: busybox\nreplica: 2\n",
            "unknown field `replica`",
        ),
        (
            "name: x\nimage: busybox\nreplicas: 4\nplacement: {anti_affinity: true}\n",
            "only 3 fit",
        ),
        (
            "name: x\nimage: busybox\nplacement: {labels: {zone: c}}\n",
            "without the placement labels",
        ),
        ("name: x\nimage: busybox\nmemory: 9g\n", "short of memory"),
        ("name: web\nimage: busybox\n", "exists"),
    ];
    for (text, want) in cases {
        let f = dir.path().join("case.yaml");
        std::fs::write(&f, text).unwrap();
        let o = cli(&s, &acme, &["deploy", "-f", f.to_str().unwrap()]);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains(want),
            "{text:?}: {}",
            show(&o)
        );
        // The server refuses it the same way when the CLI's own check is skipped.
        if !want.contains("unknown field") {
            continue;
        }
        let (status, v) = http(&s.addr, "POST", "/v1/services", Some(&acme), Some(text));
        assert_eq!(status, 400, "{v}");
    }
    assert_eq!(
        (
            revision(&s),
            json(&cli(&s, &acme, &["instance", "ls", "--format", "json"]))
        ),
        before,
        "nothing changed"
    );

    // Cordon: new replicas avoid the node.
    assert!(cli(&s, &s.admin, &["node", "cordon", "n3"])
        .status
        .success());
    json(&cli(
        &s,
        &acme,
        &["service", "scale", "web", "5", "--format", "json"],
    ));
    assert_eq!(
        spread(&s, &acme),
        [2, 2, 1],
        "the two new ones on n1 and n2"
    );
    assert!(cli(&s, &s.admin, &["node", "uncordon", "n3"])
        .status
        .success());

    // Drain: n3 is cordoned and its instance goes; the reconciler places a
    // replacement on n1 or n2 (these nodes count as alive for the grace, 10 s).
    let o = cli(&s, &s.admin, &["node", "drain", "n3"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("1 instance(s) to move"),
        "{}",
        show(&o)
    );
    let drained = std::time::Instant::now();
    while spread(&s, &acme) != [3, 2] {
        assert!(
            drained.elapsed() < std::time::Duration::from_secs(8),
            "not replaced: {:?}",
            spread(&s, &acme)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let nodes = json(&cli(&s, &s.admin, &["node", "ls", "--format", "json"]));
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"]["name"] == "n3"
                && n["node"]["cordoned"] == true
                && n["instances"] == 0),
        "{nodes}"
    );
    assert!(cli(&s, &s.admin, &["node", "uncordon", "n3"])
        .status
        .success());

    // Every documented route answers with JSON (never the router's bare 404).
    let (status, doc) = http(&s.addr, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    let routes: usize = paths.values().map(|m| m.as_object().unwrap().len()).sum();
    assert_eq!((paths.len(), routes), (20, 24), "{:?}", paths.keys());
    // Schemas from the API's own types: every reference resolves, every
    // answer but this document's and the logs' (text) has one.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "{name} is referred to, not defined"
        );
    }
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            let ok = &op["responses"]["200"];
            assert!(
                path == "/openapi.json" || ok["content"].is_object(),
                "{method} {path}: no schema for its answer"
            );
        }
    }
    for name in [
        "Instance",
        "ServiceSpec",
        "Node",
        "Change",
        "Joined",
        "Synced",
        "ErrorBody",
    ] {
        assert!(
            schemas[name]["properties"].is_object(),
            "{name}: {}",
            schemas[name]
        );
    }
    // ... and says what the server really sends: each field of a listed
    // instance and node is in its schema.
    let listed = [
        (
            "Instance",
            json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
        ),
        (
            "NodeRow",
            json(&cli(&s, &s.admin, &["node", "ls", "--format", "json"])),
        ),
        (
            "Tenant",
            json(&cli(&s, &s.admin, &["tenant", "ls", "--format", "json"])),
        ),
    ];
    for (name, rows) in listed {
        let rows = rows.as_array().unwrap().clone();
        assert!(!rows.is_empty(), "{name}: nothing listed");
        for row in rows {
            for key in row.as_object().unwrap().keys() {
                assert!(
                    schemas[name]["properties"].get(key).is_some(),
                    "{name} has no {key}: {}",
                    schemas[name]
                );
            }
        }
    }
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let concrete = path.replace("{name}", "web").replace("{index}", "x");
            let (status, v) = http(
                &s.addr,
                &method.to_uppercase(),
                &concrete,
                Some("bh_nope"),
                Some("{}"),
            );
            assert!(
                v.is_object() || v.is_array(),
                "{method} {path}: {status} {v}"
            );
        }
    }
    for (path, body) in [
        ("/v1/services/web/scale", "not json"),
        ("/v1/services/web/scale?dry_run=maybe", r#"{"replicas": 1}"#),
        ("/v1/services/web/scale", r#"{"replicas": -1}"#),
    ] {
        let (status, v) = http(&s.addr, "POST", path, Some(&acme), Some(body));
        assert!(
            status == 400 && v["error"].is_string(),
            "{path} {body}: {status} {v}"
        );
    }
    // Joining takes a join token; syncing, that node's own token.
    let (_, j) = http(&s.addr, "POST", "/v1/nodes/tokens", Some(&s.admin), None);
    let join = j["token"].as_str().unwrap().to_string();
    let node = r#"{"name": "n9", "labels": {}, "allocatable": {"millicpus": 1000, "memory_mib": 1024}, "runtimes": ["container"], "cordoned": false}"#;
    for token in [&acme, &s.admin] {
        assert_eq!(
            http(&s.addr, "POST", "/v1/nodes/join", Some(token), Some(node)).0,
            403,
            "only a join token joins"
        );
    }
    assert_eq!(
        http(&s.addr, "POST", "/v1/nodes/tokens", Some(&acme), None).0,
        403
    );
    // A node API only over TLS with its certificate: the secret is never sent in the clear.
    let (cert, _) = bulkhead::cluster::tls::self_signed(&["10.0.0.9".into()]).unwrap();
    let with_api = |api: &str, cert: &str| {
        let mut v: serde_json::Value = serde_json::from_str(node).unwrap();
        (v["api"], v["api_secret"], v["api_cert"]) = (api.into(), "bh_s".into(), cert.into());
        v.to_string()
    };
    for (api, cert, why) in [
        ("http://10.0.0.9:7071", cert.as_str(), "plain http"),
        ("https://10.0.0.9:7071", "junk", "no certificate"),
        ("https://10.0.0.9:7071", "", "no certificate"),
    ] {
        let (status, e) = http(
            &s.addr,
            "POST",
            "/v1/nodes/join",
            Some(&join),
            Some(&with_api(api, cert)),
        );
        assert_eq!(status, 400, "{why}: {e}");
        let listed = json(&cli(&s, &s.admin, &["node", "ls", "--format", "json"]));
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["node"]["name"] != "n9"),
            "{why}: nothing registered"
        );
    }
    let (status, n9) = http(&s.addr, "POST", "/v1/nodes/join", Some(&join), Some(node));
    assert_eq!(status, 200, "{n9}");
    let n9_token = n9["token"].as_str().unwrap();
    let (status, synced) = http(
        &s.addr,
        "POST",
        "/v1/nodes/n9/sync",
        Some(n9_token),
        Some(r#"{"reports": [], "images": ["x:1", "sha256:ab"]}"#),
    );
    assert!(
        status == 200 && synced["assignments"] == serde_json::json!([]),
        "{synced}"
    );
    let listed = json(&cli(&s, &s.admin, &["node", "ls", "--format", "json"]));
    let n9_listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"]["name"] == "n9")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        n9_listed["node"]["images"],
        serde_json::json!(["sha256:ab", "x:1"]),
        "the images it said it holds: {n9_listed}"
    );
    for (token, path) in [
        (n9_token, "/v1/nodes/n1/sync"),
        (join.as_str(), "/v1/nodes/n9/sync"),
        (acme.as_str(), "/v1/nodes/n9/sync"),
        (n9_token, "/v1/nodes/n9/drain"),
    ] {
        assert_eq!(
            http(
                &s.addr,
                "POST",
                path,
                Some(token),
                Some(r#"{"reports": []}"#)
            )
            .0,
            403,
            "{path}"
        );
    }
    let forged = r#"{"reports": [{"tenant": "acme", "service": "web", "index": 0, "fence": 1, "state": "exited", "code": 1}]}"#;
    let before = json(&cli(&s, &acme, &["instance", "ls", "--format", "json"]));
    assert_eq!(
        http(
            &s.addr,
            "POST",
            "/v1/nodes/n9/sync",
            Some(n9_token),
            Some(forged)
        )
        .0,
        200
    );
    assert_eq!(
        json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
        before,
        "a node's reports about another node's instances change nothing"
    );
    assert!(cli(&s, &s.admin, &["node", "cordon", "n9"])
        .status
        .success());

    // Node names are bound (issue 20): a second join under n9, without its
    // token or with another, is refused and changes nothing; n9 itself
    // (its token in node_token) joins again; an admin's `node rm` frees the name.
    assert_eq!(
        n9["control_plane"],
        serde_json::json!(["127.0.0.1/32"]),
        "the server's address, for the node's walls: {n9}"
    );
    let nodes_now = || {
        let mut v = json(&cli(&s, &s.admin, &["node", "ls", "--format", "json"]));
        v.as_array_mut()
            .unwrap()
            .iter_mut()
            .for_each(|n| n["heartbeat_age_ms"] = serde_json::Value::Null); // the clock moves on
        v
    };
    let nodes_before = nodes_now();
    let taker = |presented: Option<&str>| {
        let mut v: serde_json::Value =
            serde_json::from_str(&with_api("https://10.6.6.6:7071", &cert)).unwrap();
        if let Some(t) = presented {
            v["node_token"] = t.into();
        }
        v.to_string()
    };
    for presented in [
        None,
        Some("bh_guess"),
        Some(join.as_str()),
        Some(acme.as_str()),
    ] {
        let (status, e) = http(
            &s.addr,
            "POST",
            "/v1/nodes/join",
            Some(&join),
            Some(&taker(presented)),
        );
        assert!(
            status == 409
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("node rm n9")),
            "{presented:?}: {status} {e}"
        );
    }
    assert_eq!(
        nodes_now(),
        nodes_before,
        "refused joins change nothing (the API, the secret, the cordon)"
    );
    assert_eq!(
        http(
            &s.addr,
            "POST",
            "/v1/nodes/n9/sync",
            Some(n9_token),
            Some(r#"{"reports": []}"#)
        )
        .0,
        200,
        "n9's token still works"
    );
    let (status, again) = http(
        &s.addr,
        "POST",
        "/v1/nodes/join",
        Some(&join),
        Some(&taker(Some(n9_token))),
    );
    assert_eq!(status, 200, "{again}");
    let n9_token = again["token"].as_str().unwrap().to_string();
    assert_eq!(
        http(
            &s.addr,
            "POST",
            "/v1/nodes/n9/sync",
            Some(&n9_token),
            Some(r#"{"reports": []}"#)
        )
        .0,
        200
    );
    assert!(
        !cli(&s, &acme, &["node", "rm", "n9"]).status.success(),
        "only the admin removes nodes"
    );
    let rm = cli(&s, &s.admin, &["node", "rm", "n9"]);
    assert!(
        rm.status.success() && String::from_utf8_lossy(&rm.stdout).contains("n9: removed"),
        "{}",
        show(&rm)
    );
    assert_eq!(
        http(
            &s.addr,
            "POST",
            "/v1/nodes/n9/sync",
            Some(&n9_token),
            Some(r#"{"reports": []}"#)
        )
        .0,
        401,
        "a removed node's token is gone"
    );
    let (status, fresh) = http(&s.addr, "POST", "/v1/nodes/join", Some(&join), Some(node));
    assert_eq!(status, 200, "the name is free again: {fresh}");
    // A node with instances that may still run is not removed.
    let busy = cli(&s, &s.admin, &["node", "rm", "n1"]);
    assert!(
        !busy.status.success() && String::from_utf8_lossy(&busy.stderr).contains("drain"),
        "{}",
        show(&busy)
    );
    assert!(cli(&s, &s.admin, &["node", "cordon", "n9"])
        .status
        .success());

    let (status, v) = http(&s.addr, "GET", "/v2/nothing", Some(&acme), None);
    assert!(
        status == 404 && v["error"].as_str().unwrap().contains("openapi"),
        "{v}"
    );

    // A restart keeps everything, and the admin token.
    let before = (
        json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
        s.admin.clone(),
    );
    drop(s);
    let s = start_with(store, &token_file);
    assert_eq!(
        (
            json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
            s.admin.clone()
        ),
        before
    );
    assert!(cli(&s, &acme, &["service", "rm", "web"]).status.success());
    assert_eq!(
        json(&cli(&s, &acme, &["instance", "ls", "--format", "json"])),
        serde_json::json!([])
    );
}

/// A leader that lost the election without noticing yet (its lease still
/// alive, the leader key already someone else's) writes nothing: etcd
/// refuses its transaction on the key's value, and it stops writing.
#[test]
fn a_deposed_leaders_writes_are_refused_by_etcd() {
    use bulkhead::cluster::store::{Compare, Op, Store, StoreError};
    bulkhead_images::debian::ensure_packages(&["etcd-server"], &mut |m| eprintln!("{m}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // In the clear: this is about the election (store_tls.rs covers TLS).
    let etcd = bulkhead_tests::etcd::Etcd::start_plain(dir.path(), "127.0.0.1", 1, None).unwrap();
    let a = bulkhead::cluster::etcd::EtcdStore::open(
        &etcd.url(),
        &bulkhead::cluster::etcd::EtcdAccess::default(),
        "http://a",
        2,
    )
    .unwrap();
    let start = std::time::Instant::now();
    while !a.is_leader() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "a never led"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let put = |k: &str| Op::Put(k.into(), b"x".to_vec());
    assert!(
        a.txn(&[Compare::Absent("/k1".into())], &[put("/k1")])
            .is_ok(),
        "the leader writes"
    );
    assert!(
        matches!(
            a.txn(&[Compare::Absent("/k1".into())], &[put("/k1")]),
            Err(StoreError::Conflict(_))
        ),
        "a failed compare is a conflict"
    );
    // Another server won meanwhile (as after a's lease ran out).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([format!("http://{}", etcd.clients[0])], None)
            .await
            .unwrap();
        c.put(
            "/bulkhead/leader",
            r#"{"id": "b", "api": "http://b"}"#,
            None,
        )
        .await
        .unwrap();
    });
    assert!(a.is_leader(), "a has not noticed");
    let r = a.txn(&[], &[put("/k2")]);
    assert!(
        matches!(&r, Err(StoreError::NotLeader(Some(l))) if l == "http://b"),
        "{r:?}"
    );
    assert_eq!(a.get("/k2").unwrap(), None, "nothing written");
    assert!(!a.is_leader(), "and it stopped writing");
    assert!(matches!(
        a.txn(&[], &[put("/k3")]),
        Err(StoreError::NotLeader(_))
    ));
    assert_eq!(
        a.list("/")
            .unwrap()
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["/k1", "/leader"]
    );
}
