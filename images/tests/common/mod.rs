//! Shared by the image tests: an image made by umoci and skopeo from a
//! busybox root, and a tree hash for comparing unpacked roots.

#![allow(clippy::unwrap_used, dead_code)] // tests fail loudly by design; not every test uses everything

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

pub fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (CI installs umoci, skopeo, erofs-utils)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
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
        TOOLS.call_once(|| bulkhead_images::debian::ensure_packages(&["umoci", "skopeo", "erofs-utils"], &mut |m| eprintln!("{m}")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        sh(Command::new("umoci").args(["init", "--layout"]).arg(p("layout")));
        sh(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:t", p("layout").display())));
        sh(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:t", p("layout").display())).arg(p("bundle")));
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
        std::fs::set_permissions(rootfs.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let image = format!("{}:t", p("layout").display());
        sh(Command::new("umoci").args(["repack", "--image", &image]).arg(p("bundle")));
        sh(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh", "--config.env", "GREETING=hi", "--config.workingdir", "/home/alice"]));
        sh(Command::new("skopeo").args(["--insecure-policy", "copy", &format!("oci:{image}"), &format!("docker-archive:{}:busybox:t", p("docker.tar").display())]));
        sh(Command::new("skopeo").args(["--insecure-policy", "copy", &format!("oci:{image}"), &format!("oci-archive:{}:t", p("oci.tar").display())]));
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
            let content = if md.is_file() { hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap())) } else if md.is_symlink() { std::fs::read_link(e.path()).unwrap().display().to_string() } else { String::new() };
            all.push(format!("{rel} {:o} {}:{} {content}", md.mode(), md.uid(), md.gid()));
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
        static TOOLS: std::sync::Once = std::sync::Once::new();
        TOOLS.call_once(|| bulkhead_images::debian::ensure_packages(&["docker-registry"], &mut |m| eprintln!("{m}")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.path().join("data").display());
        if let Some((user, pass)) = auth {
            // bcrypt through the system's libcrypt (what htpasswd -B would write).
            let out = Command::new("python3").args(["-c", &format!("import crypt; print(crypt.crypt('{pass}', crypt.mksalt(crypt.METHOD_BLOWFISH)))")]).output().unwrap();
            let hash = String::from_utf8(out.stdout).unwrap();
            assert!(hash.starts_with("$2"), "no bcrypt from python3's crypt: {hash:?}");
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{}", hash.trim())).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n", dir.path().join("htpasswd").display()));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        // Its log (404s for blobs skopeo probes are normal) goes to a file.
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry").arg("serve").arg(dir.path().join("config.yml")).stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap();
        let r = Registry { addr, child, _dir: dir };
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
            assert!(std::time::Instant::now() < deadline, "docker-registry did not come up on {}: {}", r.addr, std::fs::read_to_string(r._dir.path().join("registry.log")).unwrap_or_default());
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
        sh(cmd.arg(format!("oci:{}:t", layout.display())).arg(format!("docker://{}/{repo}", self.addr)));
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
    bulkhead_images::rootdisk::unpack_tree(store, &d, into, bulkhead_images::unpack::Limits::default(), &mut |_, _| {}).unwrap();
    tree_hash(into)
}
