use super::*;

const GOOD: &str = "
name: web
image: busybox:latest
command: [httpd, -f, -p, '80']
env: {GREETING: hello}
replicas: 3
cpus: 1.5
memory: 128m
restart: on-failure
placement:
  labels: {zone: a}
  anti_affinity: true
  strategy: binpack
ports: ['8080:80']
";

#[test]
fn a_full_spec_in_yaml_and_json() {
    let s = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.spec.replicas, 3);
    assert_eq!(s.spec.restart, RestartPolicy::OnFailure);
    assert_eq!(s.spec.placement.strategy, Strategy::Binpack);
    assert_eq!(s.memory_mib, Some(128));
    assert_eq!(
        s.request,
        Resources {
            millicpus: 2000,
            memory_mib: 128 + 64
        },
        "2 whole vCPUs, guest + VMM overhead"
    );
    let json = serde_json::to_string(&s.spec).unwrap_or_default();
    assert_eq!(parse(&json).map(|j| j.spec), Ok(s.spec));
    let lan = parse("name: a\nimage: x\negress: {allow: [10.20.0.0/16, 192.168.1.7]}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lan.spec.egress.allow, ["10.20.0.0/16", "192.168.1.7"]);
    assert_eq!(lan.spec.egress.breaks_no_internet(), None);
    let open = parse(
        "name: a\nimage: x\negress: {allow: [10.20.0.0/16, 8.8.8.8], deny: [203.0.113.0/24]}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        open.spec.egress.breaks_no_internet().as_deref(),
        Some("allow 8.8.8.8 (the internet)")
    );
    // A tenant without the internet: its private allowances and
    // denials stay, the internet goes.
    assert_eq!(
        open.spec.egress.under(false),
        Egress {
            allow: vec!["10.20.0.0/16".into()],
            deny: vec!["203.0.113.0/24".into()],
            internet: Some(false)
        }
    );
    assert_eq!(open.spec.egress.under(true), open.spec.egress);
    let minimal =
        parse("name: a\nimage: x\nruntime: container\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (minimal.spec.replicas, minimal.spec.restart, minimal.request),
        (1, RestartPolicy::Always, DEFAULT_CONTAINER)
    );
}

#[test]
fn bad_specs_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("name: a\nimage: x\nreplica: 3\n", "unknown field `replica`"),
        (
            "name: a\nimage: x\nplacement: {label: {a: b}}\n",
            "unknown field `label`",
        ),
        ("name: 'bad name'\nimage: x\n", "name:"),
        ("name: a\nimage: ''\n", "image:"),
        ("name: a\nimage: x\nreplicas: 1001\n", "replicas:"),
        ("name: a\nimage: x\nreplicas: -1\n", "does not parse"),
        ("name: a\nimage: x\ncpus: 0\n", "cpus:"),
        ("name: a\nimage: x\ncpus: .nan\n", "cpus:"),
        ("name: a\nimage: x\ncpus: 65\n", "cpus:"),
        ("name: a\nimage: x\nmemory: lots\n", "memory:"),
        ("name: a\nimage: x\nmemory: 1m\n", "memory:"),
        ("name: a\nimage: x\nmemory: 999999g\n", "memory:"),
        ("name: a\nimage: x\nenv: {'A=B': c}\n", "env:"),
        ("name: a\nimage: x\nenv: {BULKHEAD_FENCE: '1'}\n", "env:"),
        ("name: a\nimage: x\nports: ['80']\n", "ports:"),
        (
            "name: a\nimage: x\nhealth: {grpc: 80}\n",
            "unknown field `grpc`",
        ),
        (
            "name: a\nimage: x\nhealth: {tcp: 80, http: {port: 80}}\n",
            "health: one of",
        ),
        (
            "name: a\nimage: x\nhealth: {tcp: 0}\n",
            "health: health check port",
        ),
        (
            "name: a\nimage: x\nhealth: {tcp: 80, interval: 10ms}\n",
            "interval",
        ),
        (
            "name: a\nimage: x\nhealth: {tcp: 80, interval: soon}\n",
            "health.interval:",
        ),
        (
            "name: a\nimage: x\nhealth: {http: {port: 80, path: 'x y'}}\n",
            "path",
        ),
        ("name: a\nimage: x\nhealth: {exec: []}\n", "command"),
        (
            "name: a\nimage: x\nhealth: {disable: true, tcp: 80}\n",
            "disable",
        ),
        (
            "name: a\nimage: x\nhealth: {tcp: 80, retries: 0}\n",
            "retries",
        ),
        ("name: a\nimage: x\nports: ['80:80']\n", "below 1024"),
        (
            "name: a\nimage: x\nports: ['127.0.0.1:8080:80']\n",
            "not loopback",
        ),
        (
            "name: a\nimage: x\nports: ['169.254.1.1:8080:80']\n",
            "not loopback",
        ),
        (
            "name: a\nimage: x\nports: ['8080:80', '8080:81']\n",
            "same host port",
        ),
        (
            "name: a\nimage: x\nreplicas: 2\nports: ['8080:80']\n",
            "anti_affinity",
        ),
        (
            "name: a\nimage: x\nplacement: {labels: {'a b': c}}\n",
            "placement.labels",
        ),
        (
            "name: a\nimage: x\negress: {allow: [169.254.169.254/32]}\n",
            "egress.allow",
        ),
        (
            "name: a\nimage: x\negress: {deny: [203.0.113.1/24]}\n",
            "egress.deny",
        ),
        ("name: a\nimage: x\negress: {deny: [nope]}\n", "egress.deny"),
        ("name: a\nimage: x\negress: {internet: maybe}\n", "internet"),
        (
            "name: a\nimage: x\negress: {allow: [0.0.0.0/0]}\n",
            "egress.allow",
        ),
        (
            "name: a\nimage: x\negress: {allow: [127.0.0.1]}\n",
            "egress.allow",
        ),
        (
            "name: a\nimage: x\negress: {allow: [10.0.0.1/8]}\n",
            "egress.allow",
        ),
        (
            "name: a\nimage: x\negress: {allow: [lan]}\n",
            "egress.allow",
        ),
        (
            "name: a\nimage: x\negress: {block: [10.0.0.0/8]}\n",
            "unknown field `block`",
        ),
        ("name: a\nimage: x\nruntime: vm\n", "does not parse"),
        ("restart: sometimes\n", "does not parse"),
        ("{\"name\": \"a\"", "does not parse"),
        ("", "does not parse"),
        ("- a\n- b\n", "does not parse"),
    ];
    for (text, want) in cases {
        match parse(text) {
            Ok(s) => panic!("{text:?} was accepted: {s:?}"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "{text:?}: wanted {want:?} in {e}"
            ),
        }
    }
}

/// Tenants write these files: alias amplification, deep nesting,
/// oversize files, dangling aliases, binary junk and second documents
/// end in an error.
#[test]
fn hostile_yaml_is_refused() {
    let mut bomb = String::from("name: a\nimage: x\nenv: {A: &l0 xxxxxxxxxx}\ncommand: [");
    bomb += &vec!["*l0"; 8000].join(", ");
    bomb += "]\n";
    assert!(bomb.len() < MAX_FILE_BYTES);
    // 60 KiB of brackets: under the size cap, refused by the depth cap (parsing it took ~50 s).
    let deep = format!(
        "name: {}x{}\nimage: x\n",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let huge = format!("name: a\nimage: x\ncommand: [{}]\n", "x,".repeat(40_000));
    for text in [
        bomb,
        deep,
        huge,
        "name: *nowhere\nimage: x\n".to_string(),
        "\u{0}\u{1}".into(),
        "name: a\nimage: x\n---\nname: b\n".into(),
    ] {
        assert!(parse(&text).is_err(), "{}", &text[..text.len().min(80)]);
    }
    assert!(parse("name: a\nimage: x\ncommand: [sh, -c, 'ls *.txt', \"a & b\"]\nenv: {A: 'x & *y'} # a *comment\n").is_ok(), "& and * inside quoted values and comments are fine");
    for token in [
        "name: &a web\nimage: x\n",
        "name: a\nimage: x\ncommand:\n  - *x\n",
        "name: a\nimage: x\nenv: {A: *v}\n",
    ] {
        assert!(
            parse(token)
                .unwrap_err()
                .to_string()
                .contains("anchors and aliases"),
            "{token:?}"
        );
    }
}

#[test]
fn requests_per_runtime() {
    assert_eq!(
        instance_request(RuntimeKind::Microvm, None, None),
        Resources {
            millicpus: 1000,
            memory_mib: 256 + 64
        }
    );
    assert_eq!(
        instance_request(RuntimeKind::Microvm, Some(0.5), Some(512)),
        Resources {
            millicpus: 1000,
            memory_mib: 576
        }
    );
    assert_eq!(
        instance_request(RuntimeKind::Container, Some(0.25), Some(32)),
        Resources {
            millicpus: 250,
            memory_mib: 32
        }
    );
    let r = Resources {
        millicpus: 3,
        memory_mib: 5,
    };
    assert_eq!(
        r.times(2).plus(r),
        Resources {
            millicpus: 9,
            memory_mib: 15
        }
    );
    assert!(r.within(r) && !r.times(2).within(r));
    assert_eq!(
        Resources {
            millicpus: u64::MAX,
            memory_mib: 1
        }
        .plus(r)
        .millicpus,
        u64::MAX,
        "saturates"
    );
}
