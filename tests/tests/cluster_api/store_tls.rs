//! The store's wall: etcd is reached over TLS, pinned to the CA given,
//! with a client certificate and, where etcd has authentication on, its
//! user and password (from a file or the environment, never argv). A
//! plaintext etcd needs `--insecure-store`. Whoever lacks the certificate
//! or the password gets nothing from the store: not a tenant's
//! environment, not the sealed CA, not a token's hash.

use super::*;

/// `bulkhead server` that must fail: its stderr.
fn refused(args: &[String], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(bulkhead());
    c.args(["server", "--insecure", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(!o.status.success(), "the server started: {}", show(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn without(args: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if flags.contains(&a.as_str()) {
            skip = true;
        } else {
            out.push(a.clone());
        }
    }
    out
}

#[test]
fn the_store_is_reached_over_tls_with_a_client_certificate_and_a_password() {
    bulkhead_images::debian::ensure_packages(&["etcd-server"], &mut |m| eprintln!("{m}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let etcd = bulkhead_tests::etcd::Etcd::start(dir.path(), "127.0.0.1", 1, None).unwrap();
    let tls = etcd.tls.clone().unwrap();
    let full = etcd.server_args();
    let hostport = etcd.clients[0].clone();

    // No CA: refused before anything is reached.
    let e = refused(&without(&full, &["--store-ca"]), &[]);
    assert!(e.contains("--store-ca"), "{e}");
    // The right CA but no client certificate: etcd refuses the handshake.
    let e = refused(&without(&full, &["--store-cert", "--store-key"]), &[]);
    assert!(e.contains(&hostport), "{e}");
    // Another CA: our side refuses etcd's certificate.
    let other = tempfile::tempdir().unwrap();
    let stranger = bulkhead_tests::etcd::Etcd::start(other.path(), "127.0.0.1", 1, None).unwrap();
    let mut pinned_elsewhere = without(&full, &["--store-ca"]);
    pinned_elsewhere.extend([
        "--store-ca".to_string(),
        stranger.tls.as_ref().unwrap().ca.display().to_string(),
    ]);
    drop(stranger);
    let e = refused(&pinned_elsewhere, &[]);
    assert!(e.contains(&hostport), "{e}");
    // The same etcd named in the clear: refused unless --insecure-store.
    let e = refused(&["--store".into(), format!("etcd://{hostport}")], &[]);
    assert!(e.contains("--insecure-store"), "{e}");

    // etcd's own authentication on: a root user with a password.
    let password = "correct horse battery staple";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let read = |p: &Path| std::fs::read(p).unwrap();
        let opts = etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                .identity(etcd_client::Identity::from_pem(
                    read(&tls.client_cert),
                    read(&tls.client_key),
                )),
        );
        let mut c = etcd_client::Client::connect([format!("https://{hostport}")], Some(opts))
            .await
            .unwrap();
        c.user_add("root", password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    // The certificate alone is not enough now.
    let e = refused(&full, &[]);
    assert!(e.contains(&hostport), "{e}");
    // A user without a password, then a wrong one: refused, clearly.
    let mut with_user = full.clone();
    with_user.extend(["--store-user".to_string(), "root".to_string()]);
    let e = refused(&with_user, &[]);
    assert!(e.contains("BULKHEAD_STORE_PASSWORD"), "{e}");
    let e = refused(&with_user, &[("BULKHEAD_STORE_PASSWORD", "hunter2")]);
    assert!(e.contains(&hostport), "{e}");

    // Certificate and password (from a private file): the server leads
    // and serves; its argv never holds the password.
    let pw_file = dir.path().join("etcd-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    with_user.extend([
        "--store-password-file".to_string(),
        pw_file.display().to_string(),
    ]);
    let token_file = dir.path().join("admin-token");
    let s = start_with(&with_user, &token_file);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.child.id())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(password),
        "the password is not in argv"
    );
    let o = cli(&s, &s.admin, &["tenant", "create", "acme"]);
    assert!(o.status.success(), "{}", show(&o));
    let acme = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = cli(&s, &acme, &["service", "ls"]);
    assert!(o.status.success(), "{}", show(&o));
}

/// A plaintext etcd works only when asked for, with a warning.
#[test]
fn a_plaintext_store_needs_insecure_store_and_is_warned_about() {
    bulkhead_images::debian::ensure_packages(&["etcd-server"], &mut |m| eprintln!("{m}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let etcd = bulkhead_tests::etcd::Etcd::start_plain(dir.path(), "127.0.0.1", 1, None).unwrap();
    let e = refused(&["--store".into(), etcd.url()], &[]);
    assert!(e.contains("--insecure-store"), "{e}");
    // Asked for: warned about (here against a port nothing listens on, so
    // the server exits and its words can be read).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = refused(
        &[
            "--insecure-store".into(),
            "--store".into(),
            format!("etcd://127.0.0.1:{port}"),
        ],
        &[],
    );
    assert!(e.contains("warning: --insecure-store"), "{e}");
    let token_file = dir.path().join("admin-token");
    let s = start_with(&etcd.server_args(), &token_file);
    let o = cli(&s, &s.admin, &["token", "ls"]);
    assert!(o.status.success(), "{}", show(&o));
}
