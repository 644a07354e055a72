//! Shared by the image tests: an image made by umoci and skopeo from a
//! busybox root, and a tree hash for comparing unpacked roots.

#![allow(clippy::unwrap_used, dead_code)] // tests fail loudly by design; not every test uses everything

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

pub fn sh(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (CI installs umoci, skopeo, erofs-utils)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// An OCI layout at `layout/` (tag `t`) holding a busybox root with a
    /// file owned by 1000:1000 and a setuid binary, plus `docker.tar` and
    /// `oci.tar` copies made by skopeo.
    pub fn new() -> Self {
        // Installed as on CI when missing (root; apt), so `make test` works on a fresh machine.
        static TOOLS: std::sync::Once = std::sync::Once::new();
        TOOLS.call_once(|| {
            bulkhead_images::debian::ensure_packages(
                &["umoci", "skopeo", "erofs-utils"],
                &mut |m| eprintln!("{m}"),
            )
            .unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        sh(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(p("layout")));
        sh(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:t", p("layout").display())));
        sh(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:t", p("layout").display()))
            .arg(p("bundle")));
        let rootfs = p("bundle/rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("home/alice")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in ["sh", "ls", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(rootfs.join("home/alice/notes"), "mine").unwrap();
        std::os::unix::fs::chown(rootfs.join("home/alice/notes"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(rootfs.join("home/alice"), Some(1000), Some(1000)).unwrap();
        std::fs::write(rootfs.join("bin/su"), "pretend").unwrap();
        std::fs::set_permissions(
            rootfs.join("bin/su"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let image = format!("{}:t", p("layout").display());
        sh(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(p("bundle")));
        sh(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "GREETING=hi",
            "--config.workingdir",
            "/home/alice",
        ]));
        sh(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            &format!("oci:{image}"),
            &format!("docker-archive:{}:busybox:t", p("docker.tar").display()),
        ]));
        sh(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            &format!("oci:{image}"),
            &format!("oci-archive:{}:t", p("oci.tar").display()),
        ]));
        Fixture { dir }
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
}

pub fn tree_hash(dir: &Path) -> String {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let content = if md.is_file() {
                hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap()))
            } else if md.is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            all.push(format!(
                "{rel} {:o} {}:{} {content}",
                md.mode(),
                md.uid(),
                md.gid()
            ));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    all.sort();
    all.join("\n")
}

/// Debian's docker-registry on 127.0.0.1 on a free port, with its storage
/// in a temp dir and (optionally) htpasswd auth; stopped on drop.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        Self::start_with(auth, None)
    }

    /// With token auth: clients get a bearer token from `tokens` first.
    pub fn start_token(tokens: &TokenServer) -> Self {
        Self::start_with(None, Some(tokens))
    }

    fn start_with(auth: Option<(&str, &str)>, tokens: Option<&TokenServer>) -> Self {
        static TOOLS: std::sync::Once = std::sync::Once::new();
        TOOLS.call_once(|| {
            bulkhead_images::debian::ensure_packages(&["docker-registry"], &mut |m| {
                eprintln!("{m}")
            })
            .unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.path().join("data").display());
        if let Some(t) = tokens {
            config.push_str(&format!("auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n", t.realm, t.cert.display()));
        }
        if let Some((user, pass)) = auth {
            // bcrypt through the system's libcrypt (what htpasswd -B would write).
            let out = Command::new("python3").args(["-c", &format!("import crypt; print(crypt.crypt('{pass}', crypt.mksalt(crypt.METHOD_BLOWFISH)))")]).output().unwrap();
            let hash = String::from_utf8(out.stdout).unwrap();
            assert!(
                hash.starts_with("$2"),
                "no bcrypt from python3's crypt: {hash:?}"
            );
            std::fs::write(
                dir.path().join("htpasswd"),
                format!("{user}:{}", hash.trim()),
            )
            .unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        // Its log (404s for blobs skopeo probes are normal) goes to a file.
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            addr,
            child,
            _dir: dir,
        };
        // Ready when /v2/ answers (200, or 401 with auth): polling its state, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&r.addr) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return r;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not come up on {}: {}",
                r.addr,
                std::fs::read_to_string(r._dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Pushes the fixture's OCI layout (tag `t`) as `repo:tag` with skopeo.
    pub fn push(&self, layout: &Path, repo: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        sh(cmd
            .arg(format!("oci:{}:t", layout.display()))
            .arg(format!("docker://{}/{repo}", self.addr)));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unpacks the image `reference` from `store` into `into`; its tree hash.
pub fn unpack(store: &bulkhead_images::store::Store, reference: &str, into: &Path) -> String {
    std::fs::create_dir_all(into).unwrap();
    let d = store.resolve(reference).unwrap();
    bulkhead_images::rootdisk::unpack_tree(
        store,
        &d,
        into,
        bulkhead_images::unpack::Limits::default(),
        &mut |_, _| {},
    )
    .unwrap();
    tree_hash(into)
}

pub const TOKEN_SERVICE: &str = "bulkhead-test-registry";
pub const TOKEN_ISSUER: &str = "bulkhead-test-issuer";

/// A bearer-token server of the Docker token protocol (what a registry's
/// `auth: token` points clients to; Debian packages none): checks basic
/// credentials on `GET /token?service=..&scope=repository:NAME:ACTIONS`
/// and answers an ES256 JWT whose `x5c` is a self-signed certificate the
/// registry trusts. Signing is openssl's. Serves until the process ends.
pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    pub fn start(user: &str, pass: &str) -> Self {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        sh(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=bulkhead-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve_token(conn, &want, &x5c, &key);
            }
        });
        TokenServer {
            realm,
            cert,
            _dir: dir,
        }
    }
}

fn serve_token(
    mut conn: std::net::TcpStream,
    want_auth: &str,
    x5c: &str,
    key: &Path,
) -> std::io::Result<()> {
    use base64::Engine as _;
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut authorized = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            authorized |= k.eq_ignore_ascii_case("authorization") && v.trim() == want_auth;
        }
    }
    if !authorized {
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let target = request.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut access = Vec::new();
    for kv in query.split('&') {
        if let Some(scope) = kv.strip_prefix("scope=") {
            let scope = scope
                .replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/");
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if let [kind, name, actions] = parts.as_slice() {
                access.push(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({"iss": TOKEN_ISSUER, "sub": "tester", "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", std::process::id()), "access": access});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())?;
    let der_sig = openssl.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", b64(&ecdsa_der_to_raw(&der_sig)));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
}

/// ECDSA signature DER (SEQUENCE { INTEGER r, INTEGER s }) -> JWS r||s, 32 bytes each.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 2; // SEQUENCE tag + short length (a P-256 signature is under 128 bytes)
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "INTEGER expected in {der:?}");
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}
