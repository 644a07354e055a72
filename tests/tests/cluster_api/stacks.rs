//! Stacks through the API: several services in one file, all or none.

use super::*;

/// A stack (`services:` in one file): deployed together and listed with
/// its stack; one that cannot go in whole goes in not at all (its first
/// service, deployed, is removed again when the second is refused);
/// removed together; another tenant can neither see nor remove it.
pub(super) fn stacks(dir: &tempfile::TempDir, s: &Server, acme: &str, small: &str) {
    let of = |token: &str| -> Vec<(String, String)> {
        json(&cli(s, token, &["service", "ls", "--format", "json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["service"]["spec"]["name"].as_str().unwrap().to_string(),
                    r["service"]["spec"]["stack"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let shop = dir.path().join("shop.yaml");
    std::fs::write(&shop, "name: shop\nservices:\n  front:\n    image: busybox\n    runtime: container\n    replicas: 2\n  store:\n    image: busybox\n    runtime: container\n    health: {tcp: 5432}\n").unwrap();
    let v = json(&cli(
        s,
        acme,
        &["deploy", "-f", shop.to_str().unwrap(), "--format", "json"],
    ));
    assert!(
        v["stack"] == "shop"
            && v["services"]["front"]["placed"].as_array().map(Vec::len) == Some(2)
            && v["services"]["store"]["placed"].as_array().map(Vec::len) == Some(1),
        "{v}"
    );
    let listed = of(acme);
    for name in ["front", "store"] {
        assert!(
            listed.contains(&(name.to_string(), "shop".to_string())),
            "{listed:?}"
        );
    }
    // Each service alone fits acme's quota of 20 instances; together not.
    let used = json(&cli(s, acme, &["instance", "ls", "--format", "json"]))
        .as_array()
        .unwrap()
        .len();
    assert!(used < 20, "{used}");
    let big = dir.path().join("big.yaml");
    std::fs::write(
        &big,
        format!("name: big\nservices:\n  a:\n    image: busybox\n    runtime: container\n    replicas: {}\n  b:\n    image: busybox\n    runtime: container\n", 20 - used),
    )
    .unwrap();
    let o = cli(s, acme, &["deploy", "-f", big.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("stack big: service b (removed again: a)"),
        "{}",
        show(&o)
    );
    assert_eq!(of(acme), listed, "nothing of big is left");
    // Another tenant's view: no such stack, nothing removed.
    let o = cli(s, small, &["service", "rm", "--stack", "shop"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no stack \"shop\""),
        "{}",
        show(&o)
    );
    let o = cli(s, acme, &["service", "rm", "--stack", "shop"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout) == "front\nstore\n",
        "{}",
        show(&o)
    );
    assert!(!of(acme).iter().any(|(_, st)| st == "shop"));
}
