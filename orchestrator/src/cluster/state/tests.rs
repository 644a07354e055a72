use super::*;

use crate::cluster::store::FileStore;

fn cluster(nodes: usize) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let c =
        Cluster::new(FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")));
    for i in 0..nodes {
        let n = Node {
            name: format!("n{i}"),
            labels: [(
                "zone".to_string(),
                if i == 0 { "a" } else { "b" }.to_string(),
            )]
            .into(),
            capacity: None,
            allocatable: Resources {
                millicpus: 8000,
                memory_mib: 8192,
            },
            runtimes: vec![RuntimeKind::Microvm, RuntimeKind::Container],
            cordoned: false,
            api: None,
            images: None,
        };
        c.register_node(n).unwrap_or_else(|e| panic!("{e}"));
        c.heartbeat(&format!("n{i}"), 100)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (dir, c)
}

fn svc(text: &str) -> Service {
    spec::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn per_node(c: &Cluster, tenant: &str) -> Vec<usize> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for i in c.instances(Some(tenant)).unwrap_or_default() {
        *m.entry(i.node).or_default() += 1;
    }
    m.into_values().collect()
}

#[test]
fn six_spread_two_two_two_then_nine_then_three() {
    let (_d, c) = cluster(3);
    let s = svc("name: web\nimage: bb\nruntime: container\nreplicas: 6\n");
    let dry = c
        .deploy("acme", &Quota::default(), &s, 0, true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((dry.placed.len(), dry.revision), (6, 0));
    assert!(
        c.instances(None).unwrap_or_default().is_empty(),
        "a dry run writes nothing"
    );
    let done = c
        .deploy("acme", &Quota::default(), &s, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.placed, dry.placed, "the dry run showed what happened");
    assert_eq!(per_node(&c, "acme"), [2, 2, 2]);
    c.scale("acme", &Quota::default(), "web", 9, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(per_node(&c, "acme"), [3, 3, 3]);
    let down = c
        .scale("acme", &Quota::default(), "web", 3, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(down.removed, [8, 7, 6, 5, 4, 3]);
    assert_eq!(c.instances(Some("acme")).unwrap_or_default().len(), 3);
    assert_eq!(
        c.service("acme", "web").map(|r| r.spec.replicas).ok(),
        Some(3)
    );
    assert!(matches!(
        c.deploy("acme", &Quota::default(), &s, 0, false),
        Err(StateError::Exists(_))
    ));
}

#[test]
fn images_nodes_lack_are_refused_and_go_only_where_they_are() {
    let (_d, c) = cluster(3);
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| n.to_string())
            .collect::<BTreeSet<String>>()
    };
    for (n, held) in [
        ("n0", set(&["bb:latest"])),
        ("n1", set(&["other:1"])),
        ("n2", set(&["bb:latest", "sha256:abc"])),
    ] {
        assert!(c
            .set_node_images(n, held.clone())
            .unwrap_or_else(|e| panic!("{e}")));
        let rev = c.store.revision().unwrap_or(0);
        assert!(
            !c.set_node_images(n, held).unwrap_or_else(|e| panic!("{e}")),
            "the same set again"
        );
        assert_eq!(c.store.revision().unwrap_or(0), rev, "and no write");
    }
    let before = c.store.revision().unwrap_or(0);
    let e = c
        .deploy(
            "acme",
            &Quota::default(),
            &svc("name: t\nimage: bb:typo\n"),
            0,
            false,
        )
        .unwrap_err();
    assert!(
        matches!(&e, StateError::UnknownImage { image, nodes: 3 } if image == "bb:typo"),
        "{e}"
    );
    assert!(e.to_string().contains("none of the 3 nodes"), "{e}");
    assert_eq!(c.store.revision().unwrap_or(0), before, "nothing written");
    // "bb" is bb:latest, as `bulkhead run` resolves it; a digest as itself.
    c.deploy(
        "acme",
        &Quota::default(),
        &svc("name: web\nimage: bb\nreplicas: 4\n"),
        0,
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(c
        .instances(Some("acme"))
        .unwrap_or_default()
        .iter()
        .all(|i| i.node != "n1"));
    let d = c
        .deploy(
            "acme",
            &Quota::default(),
            &svc("name: pinned\nimage: sha256:abc\nreplicas: 2\n"),
            0,
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.placed.iter().all(|p| p.node == "n2"), "{d:?}");
    // Only n1 has it, and n1 is cordoned: a placement refusal that says so.
    c.cordon("n1", true).unwrap_or_else(|e| panic!("{e}"));
    let e = c
        .deploy(
            "acme",
            &Quota::default(),
            &svc("name: o\nimage: other:1\n"),
            0,
            false,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("1 cordoned, 2 without the image"),
        "{e}"
    );
    // A node that never said what it holds may run anything.
    let mut n3 = c.nodes().unwrap_or_default()[0].0.clone();
    (n3.name, n3.images) = ("n3".into(), None);
    c.register_node(n3).unwrap_or_else(|e| panic!("{e}"));
    c.heartbeat("n3", 100).unwrap_or_else(|e| panic!("{e}"));
    let d = c
        .deploy(
            "acme",
            &Quota::default(),
            &svc("name: t\nimage: bb:typo\n"),
            0,
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d.placed,
        [Placed {
            index: 0,
            node: "n3".into()
        }]
    );
}

#[test]
fn impossible_placements_quotas_and_other_tenants_change_nothing() {
    let (_d, c) = cluster(3);
    let before = c.store.revision().unwrap_or(0);
    let big = svc("name: big\nimage: bb\nreplicas: 4\nplacement: {anti_affinity: true}\n");
    let e = c
        .deploy("acme", &Quota::default(), &big, 0, false)
        .unwrap_err();
    assert!(e.to_string().contains("only 3 fit"), "{e}");
    let zoned = svc("name: z\nimage: bb\nreplicas: 2\nplacement: {labels: {zone: c}}\n");
    assert!(c
        .deploy("acme", &Quota::default(), &zoned, 0, false)
        .unwrap_err()
        .to_string()
        .contains("without the placement labels"));
    let q = Quota {
        instances: Some(2),
        ..Default::default()
    };
    let three = svc("name: three\nimage: bb\nreplicas: 3\n");
    assert!(matches!(
        c.deploy("acme", &q, &three, 0, false),
        Err(StateError::OverQuota(_))
    ));
    let stale = c
        .deploy(
            "acme",
            &Quota::default(),
            &svc("name: old\nimage: bb\n"),
            200,
            false,
        )
        .unwrap_err();
    assert!(
        stale.to_string().contains("3 not ready"),
        "nodes silent since before 200 ms: {stale}"
    );
    assert_eq!(c.store.revision().unwrap_or(0), before, "nothing written");
    c.deploy("acme", &Quota::default(), &three, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        c.service("other", "three"),
        Err(StateError::NoService(_))
    ));
    assert!(matches!(
        c.scale("other", &Quota::default(), "three", 1, 0, false),
        Err(StateError::NoService(_))
    ));
    assert!(matches!(
        c.remove("other", "three"),
        Err(StateError::NoService(_))
    ));
    assert!(
        c.services("other").unwrap_or_default().is_empty()
            && c.instances(Some("other")).unwrap_or_default().is_empty()
    );
    c.cordon("n0", true).unwrap_or_else(|e| panic!("{e}"));
    let more = c
        .scale("acme", &Quota::default(), "three", 5, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        more.placed.iter().all(|p| p.node != "n0"),
        "cordoned: {more:?}"
    );
    c.remove("acme", "three").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.instances(None).unwrap_or_default().is_empty());
}

#[test]
fn two_deploys_that_read_the_same_capacity_cannot_both_commit() {
    let (_d, c) = cluster(1);
    let plan = |name: &str, replicas: u32| {
        let s = svc(&format!(
            "name: {name}\nimage: bb\nreplicas: {replicas}\nmemory: 1g\n"
        ));
        let record = ServiceRecord {
            tenant: "t".into(),
            spec: s.spec.clone(),
            request: s.request,
        };
        let (mut guards, mut ops) = (
            vec![Compare::Absent(service_key("t", name))],
            vec![Op::Put(service_key("t", name), encode(&record))],
        );
        c.place_more(
            &record,
            &Quota::default(),
            0,
            replicas,
            0,
            &mut guards,
            &mut ops,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (guards, ops)
    };
    // Each fits alone (5 x 1088 MiB of 8192); together they would not.
    let (a, b) = (plan("a", 5), plan("b", 5));
    let empty = || Change {
        placed: vec![],
        removed: vec![],
        revision: 0,
    };
    c.commit(empty(), &a.0, &a.1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        c.commit(empty(), &b.0, &b.1, false),
        Err(StateError::Store(StoreError::Conflict(_)))
    ));
    assert_eq!(c.instances(None).unwrap_or_default().len(), 5);
    assert!(c
        .services("t")
        .unwrap_or_default()
        .iter()
        .all(|s| s.spec.name == "a"));
    // A heartbeat in between fails nothing.
    let (g, o) = plan("c", 1);
    c.heartbeat("n0", 900).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.commit(empty(), &g, &o, false).is_ok());
    assert_eq!(c.instances(None).unwrap_or_default().len(), 6);
}

/// The quota a placement counts against is the tenant record's, and its
/// revision guards the write: an admin lowering the quota between the
/// placement and its commit fails the commit (before, it went through at
/// the old quota).
#[test]
fn a_quota_lowered_while_a_deploy_places_fails_that_deploy() {
    let (_d, c) = cluster(1);
    let big = Quota {
        instances: Some(10),
        ..Quota::default()
    };
    c.create_tenant("acme", big, &[RuntimeKind::Container])
        .unwrap_or_else(|e| panic!("{e}"));
    let s = svc("name: web\nimage: bb\nruntime: container\nreplicas: 3\n");
    let record = ServiceRecord {
        tenant: "acme".into(),
        spec: s.spec.clone(),
        request: s.request,
    };
    let (mut guards, mut ops) = (Vec::new(), Vec::new());
    // The caller's (stale, larger) quota does not count: the record's does.
    c.place_more(&record, &Quota::default(), 0, 3, 0, &mut guards, &mut ops)
        .unwrap_or_else(|e| panic!("{e}"));
    let small = Quota {
        instances: Some(2),
        ..Quota::default()
    };
    c.update_tenant("acme", small, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.store.txn(&guards, &ops).is_err(),
        "the tenant changed after the placement read it"
    );
    assert!(c.instances(Some("acme")).unwrap_or_default().is_empty());
    assert!(
        matches!(
            c.deploy("acme", &big, &s, 0, false),
            Err(StateError::OverQuota(_))
        ),
        "a deploy now counts against the new quota, whatever the caller read"
    );
}

/// Key distribution: a node is handed the overlay ends of the other nodes
/// that run the same tenant, with their slices, and nothing of tenants it
/// does not run; a node that stops running the tenant is no one's peer.
#[test]
fn a_node_gets_the_overlay_ends_of_its_own_tenants_other_nodes_only() {
    use crate::cluster::api::OverlayEnd;
    use base64::Engine;
    let (_d, c) = cluster(3);
    let pool = crate::cluster::netpool::Pool::default();
    let acme = svc(
        "name: web\nimage: bb\nruntime: container\nreplicas: 3\nplacement: {anti_affinity: true}\n",
    );
    c.deploy("acme", &Quota::default(), &acme, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let evil = svc("name: p\nimage: bb\nruntime: container\n");
    c.deploy("evil", &Quota::default(), &evil, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let evil_node = c.instances(Some("evil")).unwrap_or_default()[0]
        .node
        .clone();
    let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let end = |b: u8| OverlayEnd {
        public_key: key(b),
        port: 51820,
    };
    let addr = |i: u8| std::net::Ipv4Addr::new(10, 78, 0, 11 + i);
    for i in 0..3u8 {
        let n = format!("n{i}");
        c.tenant_slice(&pool, "acme", &n)
            .unwrap_or_else(|e| panic!("{e}"));
        c.set_overlay_end("acme", &n, addr(i), &end(i))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    c.tenant_slice(&pool, "evil", &evil_node)
        .unwrap_or_else(|e| panic!("{e}"));
    c.set_overlay_end("evil", &evil_node, addr(9), &end(99))
        .unwrap_or_else(|e| panic!("{e}"));

    let peers = c
        .overlay_peers("acme", "n0")
        .unwrap_or_else(|e| panic!("{e}"));
    let mine = c
        .tenant_slice(&pool, "acme", "n0")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    assert_eq!(
        peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert_eq!(
        (peers[0].public_key.clone(), peers[0].endpoint.clone()),
        (key(1), "10.78.0.12:51820".to_string())
    );
    assert!(peers
        .iter()
        .all(|p| p.slice != mine && p.public_key != key(99)));
    assert!(
        c.overlay_peers("evil", &evil_node)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "evil runs on one node: no peers, and none of acme's"
    );
    // Down to two: the node that no longer runs acme is no one's peer.
    c.scale("acme", &Quota::default(), "web", 2, 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<String> = c
        .instances(Some("acme"))
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.node)
        .collect();
    let asker = &left[0];
    let peers = c
        .overlay_peers("acme", asker)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        peers.iter().map(|p| &p.node).collect::<Vec<_>>(),
        [&left[1]],
        "{left:?}"
    );
}
