//! The API over TLS.

use super::*;

/// The API over TLS with a pair from `bulkhead tls self-signed`: clients
/// that trust it (--cacert) get through; others, and plain HTTP, do not.
#[test]
pub(super) fn the_api_over_tls_with_a_self_signed_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let o = Command::new(bulkhead())
        .args(["tls", "self-signed", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let (cert, key) = (pki.join("server.crt"), pki.join("server.key"));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions())
            & 0o777,
        0o600
    );
    let again = Command::new(bulkhead())
        .args(["tls", "self-signed", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("not overwritten"),
        "{}",
        show(&again)
    );
    let half = Command::new(bulkhead())
        .args(["server", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(
        half.status.code(),
        Some(2),
        "--tls-cert without --tls-key is bad usage: {}",
        show(&half)
    );

    let token_file = dir.path().join("admin-token");
    let store = format!("file:{}", dir.path().join("c.redb").display());
    let args = [
        "--store".as_ref(),
        store.as_ref(),
        "--admin-token-file".as_ref(),
        token_file.as_os_str(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ];
    let mut s = spawn_server(&args, "https");
    let url = format!("https://{}", s.addr);
    let start = std::time::Instant::now();
    while s.admin.is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no admin token"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        s.admin = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    let call = |extra: &[&str]| {
        Command::new(bulkhead())
            .args(["tenant", "create"])
            .args(extra)
            .args(["--server", &url])
            .env("BULKHEAD_TOKEN", &s.admin)
            .output()
            .unwrap()
    };
    let o = call(&["acme", "--cacert", cert.to_str().unwrap()]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("bh_"),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["tenant", "create", "beta", "--server", &url])
        .env("BULKHEAD_TOKEN", &s.admin)
        .env("BULKHEAD_CACERT", &cert)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "BULKHEAD_CACERT works as --cacert: {}",
        show(&o)
    );
    let o = call(&["other"]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr)
                .to_lowercase()
                .contains("certificate"),
        "an untrusted certificate: {}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args([
            "tenant",
            "create",
            "plain",
            "--server",
            &format!("http://{}", s.addr),
        ])
        .env("BULKHEAD_TOKEN", &s.admin)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "plain HTTP to the TLS port: {}",
        show(&o)
    );
    let (status, _) = http_status_only(&s.addr);
    assert_ne!(status, 200, "no plain HTTP answer");
}

/// A plain HTTP request's status line, if any answer comes.
pub(super) fn http_status_only(addr: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(12)))
        .unwrap();
    let _ = c.write_all(b"GET /openapi.json HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        text,
    )
}

/// TLS as it comes: the first server of a new store makes the cluster CA,
/// serves with a certificate from it, writes the CA for clients beside the
/// admin token and the cluster key (0600) that seals the CA's key in the
/// store. Join tokens carry the CA's hash. A restarted server keeps the
/// same CA; one without the cluster key refuses, saying what it needs.
#[test]
pub(super) fn the_default_tls_comes_from_a_cluster_ca_that_join_tokens_name() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    let store = format!("file:{}", dir.path().join("c.redb").display());
    let args = [
        "--store".as_ref(),
        store.as_ref(),
        "--admin-token-file".as_ref(),
        token_file.as_os_str(),
    ];
    let (ca, key) = (
        dir.path().join("cluster-ca.crt"),
        dir.path().join("cluster.key"),
    );
    let mut s = spawn_server(&args, "https");
    let url = format!("https://{}", s.addr);
    let start = std::time::Instant::now();
    while s.admin.is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no admin token"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        s.admin = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&key), 0o600, "the cluster key is private");
    let create = |s: &Server| {
        Command::new(bulkhead())
            .args([
                "node",
                "token",
                "create",
                "--server",
                &format!("https://{}", s.addr),
            ])
            .env("BULKHEAD_TOKEN", &s.admin)
            .env("BULKHEAD_CACERT", &ca)
            .output()
            .unwrap()
    };
    let o = create(&s);
    assert!(
        o.status.success(),
        "the CA file verifies the server: {}",
        show(&o)
    );
    let join = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let ca_hash =
        bulkhead::cluster::ca::hash_of_pem(&std::fs::read_to_string(&ca).unwrap()).unwrap();
    assert_eq!(
        join.split_once('.').map(|x| x.1),
        Some(ca_hash.as_str()),
        "{join}"
    );
    // Without the CA, the system's roots do not know it.
    let o = Command::new(bulkhead())
        .args(["token", "ls", "--server", &url])
        .env("BULKHEAD_TOKEN", &s.admin)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    let (status, _) = http_status_only(&s.addr);
    assert_ne!(status, 200, "no plain HTTP answer");

    // Restarted on the same store and key: the same CA.
    drop(s);
    let mut s = spawn_server(&args, "https");
    s.admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let o = create(&s);
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .ends_with(&ca_hash));
    drop(s);
    // Another server of this store without the cluster key: refused, clearly.
    let o = Command::new(bulkhead())
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--cluster-key-file")
        .arg(dir.path().join("elsewhere.key"))
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("copy that server's cluster key"),
        "{}",
        show(&o)
    );
}
