//! Root disks built by a user who is not root: `bulkhead image disk` runs
//! itself again in a user namespace with the user's subordinate ids, so the
//! disk still carries the image's owners (1000:1000, a setuid root binary);
//! an owner outside the ranges is a clear error; `gc` cleans up trees owned
//! by those ids from inside the namespace.
//!
//! Runs as root (it switches to the `bulkhead-test` user that
//! `tests/setup-test-user` creates, as `make test` and CI do).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const USER: &str = "bulkhead-test";

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Rootless {
    work: tempfile::TempDir,
    uid: u32,
}

impl Rootless {
    fn new() -> Self {
        assert!(
            nix_is_root(),
            "this test switches to the {USER} user: run it as root"
        );
        let id = Command::new("id").args(["-u", USER]).output().unwrap();
        assert!(
            id.status.success(),
            "no user {USER}: run tests/setup-test-user as root (make test does)"
        );
        let uid = String::from_utf8(id.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Outside root's 0700 home: the user must reach the binary and the store.
        let work = tempfile::Builder::new()
            .prefix("bulkhead-rootless-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), work.path().join("bulkhead")).unwrap();
        std::fs::create_dir(work.path().join("store")).unwrap();
        std::os::unix::fs::chown(work.path().join("store"), Some(uid), None).unwrap();
        Rootless { work, uid }
    }

    fn path(&self, s: &str) -> PathBuf {
        self.work.path().join(s)
    }

    /// `bulkhead ARGS` as the test user, with the store in our work dir.
    fn bulkhead(&self, user: &str, args: &[&str]) -> Output {
        Command::new("runuser")
            .args([
                "-u",
                user,
                "--",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/nonexistent",
            ])
            .arg(format!("BULKHEAD_DATA={}", self.path("store").display()))
            .arg(self.path("bulkhead"))
            .args(args)
            .output()
            .unwrap()
    }

    fn temp_entries(&self) -> usize {
        std::fs::read_dir(self.path("store/tmp")).unwrap().count()
    }
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// OCI layouts made by umoci. `layout`: busybox, /home/alice (0700) and
/// its notes owned by 1000:1000, a setuid /bin/su. `far`: a file owned by
/// 70000, beyond the test user's 65536 subordinate ids.
fn layouts(dir: &Path) {
    bulkhead_images::debian::ensure_packages(&["umoci"], &mut |m| eprintln!("{m}")).unwrap();
    let bundle = |name: &str| {
        let l = dir.join(name);
        let image = format!("{}:t", l.display());
        ok(Command::new("umoci").args(["init", "--layout"]).arg(&l));
        ok(Command::new("umoci").args(["new", "--image", &image]));
        ok(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(dir.join(format!("{name}.bundle"))));
        (image, dir.join(format!("{name}.bundle")))
    };
    let (image, b) = bundle("layout");
    let root = b.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("home/alice")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("home/alice/notes"), "alice's").unwrap();
    std::fs::set_permissions(
        root.join("home/alice/notes"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("home/alice"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    for p in ["home/alice/notes", "home/alice"] {
        std::os::unix::fs::chown(root.join(p), Some(1000), Some(1000)).unwrap();
    }
    std::fs::write(root.join("bin/su"), "setuid").unwrap();
    std::fs::set_permissions(root.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b));
    let (image, b) = bundle("far");
    std::fs::write(b.join("rootfs/far"), "x").unwrap();
    std::os::unix::fs::chown(b.join("rootfs/far"), Some(70000), Some(70000)).unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b));
    ok(Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.join("layout"))
        .arg(dir.join("far")));
}

fn debugfs_stat(disk: &str, path: &str) -> String {
    String::from_utf8(
        ok(Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(disk))
        .stdout,
    )
    .unwrap()
}

#[test]
fn a_user_without_root_builds_disks_with_the_images_owners_and_gc_cleans_inside_its_namespace() {
    let r = Rootless::new();
    layouts(r.work.path());
    for (dir, name) in [("layout", "busybox:t"), ("far", "far:t")] {
        let out = r.bulkhead(
            USER,
            &[
                "image",
                "import",
                r.path(dir).to_str().unwrap(),
                "--name",
                name,
            ],
        );
        assert!(
            out.status.success(),
            "import as {USER}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The disk: built by the user, the image's owners and modes inside.
    let out = r.bulkhead(USER, &["image", "disk", "busybox:t"]);
    assert!(
        out.status.success(),
        "image disk as {USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        std::fs::metadata(&disk).unwrap().uid(),
        r.uid,
        "the disk belongs to the user"
    );
    let notes = debugfs_stat(&disk, "/home/alice/notes");
    assert!(
        notes.contains("User:  1000")
            && notes.contains("Group:  1000")
            && notes.contains("Mode:  0600"),
        "{notes}"
    );
    let alice = debugfs_stat(&disk, "/home/alice");
    assert!(
        alice.contains("User:  1000") && alice.contains("Mode:  0700"),
        "{alice}"
    );
    let su = debugfs_stat(&disk, "/bin/su");
    assert!(
        su.contains("User:     0") && su.contains("Mode:  04755"),
        "{su}"
    );
    assert_eq!(r.temp_entries(), 0, "the unpacked tree is gone");

    // An owner beyond the subordinate ranges: a clear error, nothing left.
    let out = r.bulkhead(USER, &["image", "disk", "far:t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("owned by 70000:70000, outside the ids this user may hand out"),
        "{err}"
    );
    assert_eq!(r.temp_entries(), 0, "{err}");

    // A tree a crashed build left, owned by subordinate ids (1000 inside)
    // in a 0700 dir: only the namespace can delete it, and gc does.
    let stale = r.path("store/tmp/rootdisk-crashed");
    std::fs::create_dir_all(stale.join("home")).unwrap();
    std::fs::write(stale.join("home/file"), "x").unwrap();
    let sub = 300000 + 999; // inner id 1000 under the map 1 -> 300000
    for p in [stale.join("home/file"), stale.join("home"), stale.clone()] {
        std::os::unix::fs::chown(&p, Some(sub), Some(sub)).unwrap();
    }
    std::fs::set_permissions(stale.join("home"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = r.bulkhead(USER, &["image", "rm", "busybox:t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = r.bulkhead(USER, &["image", "gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("1 disks, 0 trees and 1 stale temp entries"),
        "{err}"
    );
    assert!(!stale.exists() && !Path::new(&disk).exists());

    // A user with no subordinate ids is told what to do.
    let out = r.bulkhead("nobody", &["image", "gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no subordinate user ids in /etc/subuid")
            && err.contains("usermod --add-subuids"),
        "{err}"
    );
}
