//! Bad server flags and an unreachable server: clear errors, soon.

use super::*;

#[test]
pub(super) fn bad_server_flags_and_no_server_are_clear_errors() {
    // An etcd nobody runs (a port bound, then closed): a clear error, soon.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(bulkhead())
        .args([
            "server",
            "--insecure-store",
            "--store",
            &format!("etcd://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["server", "--store", "etcd://nohostport"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("HOST:PORT"),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["server", "--heartbeat-grace", "10s", "--lease", "5s"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("at least the grace"),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["server", "--lease", "5 parsecs"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unit"),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["server", "--store", "nope"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("file:PATH"),
        "{}",
        show(&o)
    );
    // etcd's flags with a file store: refused, not ignored.
    let o = Command::new(bulkhead())
        .args([
            "server",
            "--store",
            "file:/nonexistent/c.redb",
            "--insecure-store",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a file store"),
        "{}",
        show(&o)
    );
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(bulkhead())
        .args(["service", "ls"])
        .env("BULKHEAD_SERVER", format!("http://127.0.0.1:{port}"))
        .env("BULKHEAD_TOKEN", "bh_x")
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("cannot reach the server"),
        "{}",
        show(&o)
    );
    let o = Command::new(bulkhead())
        .args(["service", "ls"])
        .env_remove("BULKHEAD_TOKEN")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no token"),
        "{}",
        show(&o)
    );
}
