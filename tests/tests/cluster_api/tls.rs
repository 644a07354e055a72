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
