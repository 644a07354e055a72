//! The API test's harness: a server on loopback, plain HTTP and the CLI
//! against it.

use super::*;

pub(super) use bulkhead_tests::bulkhead;

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) addr: String,
    pub(super) admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bulkhead server --listen 127.0.0.1:0 ARGS...`; its address from its
/// first words (`scheme://ADDR`). Killed on drop, whatever happens.
pub(super) fn spawn_server(args: &[&std::ffi::OsStr], scheme: &str) -> Server {
    let mut child = Command::new(bulkhead())
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut s = Server {
        child,
        addr: String::new(),
        admin: String::new(),
    };
    let prefix = format!("bulkhead server: listening on {scheme}://");
    for _ in 0..10 {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(a) = line.trim().strip_prefix(prefix.as_str()) {
            s.addr = a.to_string();
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    assert!(!s.addr.is_empty(), "the server said it listens on {scheme}");
    s
}

/// Starts a server over `store` (file:PATH); returns once it leads and
/// its admin token is written.
pub(super) fn start(store: &str, token_file: &Path) -> Server {
    start_with(&["--store".into(), store.into()], token_file)
}

/// The same with the store given by flags (an etcd's `server_args`).
pub(super) fn start_with(store_args: &[String], token_file: &Path) -> Server {
    // Plain HTTP on loopback (--insecure): `tls.rs` covers TLS.
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--insecure".as_ref(),
        "--leader-lease".as_ref(),
        "2s".as_ref(),
        "--admin-token-file".as_ref(),
        token_file.as_os_str(),
    ];
    args.extend(store_args.iter().map(std::ffi::OsStr::new));
    let mut s = spawn_server(&args, "http");
    // Leading (a restarted server waits out its predecessor's leader lease) with a token.
    let start = std::time::Instant::now();
    loop {
        s.admin = std::fs::read_to_string(token_file)
            .unwrap_or_default()
            .trim()
            .to_string();
        if !s.admin.is_empty() && http(&s.addr, "GET", "/v1/nodes", Some(&s.admin), None).0 == 200 {
            return s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the server at {} did not lead within 30 s",
            s.addr
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request: (status, body as JSON or a string).
pub(super) fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (
        status,
        serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.into())),
    )
}

pub(super) fn cli(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(bulkhead())
        .args(args)
        .env("BULKHEAD_SERVER", format!("http://{}", s.addr))
        .env("BULKHEAD_TOKEN", token)
        .output()
        .unwrap()
}

pub(super) fn show(o: &Output) -> String {
    format!(
        "{:?} stdout={:?} stderr={:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(super) fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", show(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Instances per node of `tenant`'s token, in node order.
pub(super) fn spread(s: &Server, token: &str) -> Vec<usize> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for i in json(&cli(s, token, &["instance", "ls", "--format", "json"]))
        .as_array()
        .unwrap()
    {
        *per.entry(i["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    per.into_values().collect()
}

pub(super) fn register(s: &Server, name: &str, zone: &str) {
    let node = format!(
        r#"{{"name":"{name}","labels":{{"zone":"{zone}"}},"allocatable":{{"millicpus":8000,"memory_mib":8192}},"runtimes":["microvm","container"],"cordoned":false}}"#
    );
    let (status, v) = http(&s.addr, "POST", "/v1/nodes", Some(&s.admin), Some(&node));
    assert_eq!(status, 200, "{v}");
}
