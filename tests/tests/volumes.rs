//! Named volumes with the container runtime, natively (crun): data that
//! outlives its workloads. What keeps tenants apart here: a volume is
//! mounted by one writer at a time (a second workload is refused while the
//! first lives), `:ro` is refused by the host's own bind (not only the
//! runtime's flag), the volume's size caps what a workload can put on the
//! node's disk, the host's mount is nosuid and nodev, files keep the ids
//! they have inside (a second container with another id block sees the
//! same owners, and on the host they are no user of the node), a block
//! volume (what guests write) is never mounted by the host, and a volume
//! in use cannot be removed. `--read-only` and `--tmpfs` are here too.
//! Every workload runs with `--network none`:
//! nothing leaves the host.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::unix::fs::MetadataExt;

use bulkhead_tests::run_cases::{self, show, text, Ctx};

fn ctx(dir: &tempfile::TempDir) -> Ctx {
    bulkhead_images::debian::ensure_packages(&["crun", "e2fsprogs"], &mut |m| eprintln!("{m}"))
        .unwrap();
    let data = dir.path().join("data");
    run_cases::prepare_store(&bulkhead_tests::bulkhead(), &data, false).unwrap();
    Ctx {
        bulkhead: bulkhead_tests::bulkhead(),
        data,
        runtime: "container".into(),
        oci_runtime: Some("crun".into()),
        netns: None,
    }
}

/// `bulkhead run --rm --network none [FLAGS] bb:test sh -c SCRIPT`.
fn sh(c: &Ctx, flags: &[&str], script: &str) -> std::process::Output {
    let mut all = vec!["--rm", "--network", "none"];
    all.extend_from_slice(flags);
    c.out(c.run_cmd(&all, &["sh", "-c", script]))
}

#[test]
fn a_named_volume_keeps_data_between_containers_behind_its_walls() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(&dir);
    let result = std::panic::catch_unwind(|| checks(&c));
    // Whatever happened, the volumes' host mounts go before the tempdir.
    let o = c.bh(&["volume", "prune", "-f"]);
    let o2 = c.bh(&["volume", "ls", "--format", "json"]);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(text(&o2.stdout).trim(), "[]", "{}", show(&o2));
}

fn checks(c: &Ctx) {
    // First use makes it (a dir volume: a container), filled from the
    // image's /etc; a write lands in it.
    let o = sh(
        c,
        &["-v", "data:/etc"],
        "cat /etc/passwd >/dev/null && echo kept > /etc/mine && id -u",
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("filled from the image's /etc"),
        "{}",
        show(&o)
    );
    // The next container (another id block) finds it, owners as inside.
    let o = sh(
        c,
        &["-v", "data:/etc"],
        "cat /etc/mine; stat -c %u:%g /etc/mine /etc/passwd",
    );
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(text(&o.stdout), "kept\n0:0\n0:0\n", "{}", show(&o));
    // On the host: the files keep the ids they have inside (no user of
    // the node owns them but root, in a 0700 data dir), the mount is
    // nosuid,nodev.
    let mnt = c.data.join("volumes/data/mnt");
    assert_eq!(std::fs::metadata(mnt.join("mine")).unwrap().uid(), 0);
    let data_mode = std::fs::metadata(&c.data).unwrap().mode() & 0o777;
    assert_eq!(
        data_mode, 0o700,
        "the data dir is closed to the node's users"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.contains(&mnt.display().to_string()))
        .unwrap_or_else(|| panic!("no host mount of the dir volume in {mountinfo}"));
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    // A volume already used is not filled again: the workloads' content stays.
    let o = sh(c, &["-v", "data:/etc"], "rm /etc/mine");
    assert!(o.status.success(), "{}", show(&o));
    let o = sh(c, &["-v", "data:/etc"], "test ! -e /etc/mine");
    assert!(
        o.status.success(),
        "the removed file came back: {}",
        show(&o)
    );
    // `:ro` (and --mount readonly): the host's bind refuses the write.
    let o = sh(
        c,
        &["--mount", "type=volume,source=data,target=/v,readonly"],
        "echo x > /v/x",
    );
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        show(&o)
    );
    // One writer at a time: while a workload lives with it, another is
    // refused (read-write or read-only), then it is free again.
    let o = c.out(c.run_cmd(
        &[
            "-d",
            "--network",
            "none",
            "--name",
            "writer",
            "-v",
            "data:/v",
        ],
        &["sleep", "600"],
    ));
    assert!(o.status.success(), "{}", show(&o));
    for flags in [["-v", "data:/v"], ["-v", "data:/v:ro"]] {
        let o = sh(c, &flags, "true");
        assert_eq!(o.status.code(), Some(125), "{}", show(&o));
        assert!(
            text(&o.stderr).contains("one writer at a time"),
            "{}",
            show(&o)
        );
    }
    // In use (live, then ended but not removed): `volume rm` refuses.
    let o = c.bh(&["volume", "rm", "data"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("in use by writer"),
        "{}",
        show(&o)
    );
    let o = c.bh(&["stop", "-t", "0", "writer"]);
    assert!(o.status.success(), "{}", show(&o));
    let o = c.bh(&["volume", "rm", "data"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("in use by writer"),
        "{}",
        show(&o)
    );
    let o = sh(c, &["-v", "data:/v:ro"], "test -e /v/passwd");
    assert!(o.status.success(), "ended: free again: {}", show(&o));
    let o = c.bh(&["rm", "writer"]);
    assert!(o.status.success(), "{}", show(&o));
    // --read-only: writes go to tmpfs and volumes only; --tmpfs is of its
    // size (memory), noexec unless asked.
    let script =
        "touch /x; echo a > /scratch/a && echo b > /v/b && grep ' /scratch ' /proc/mounts \
                  && ! dd if=/dev/zero of=/scratch/big bs=1M count=16 2>/dev/null";
    let o = sh(
        c,
        &[
            "--read-only",
            "--tmpfs",
            "/scratch:size=8m",
            "-v",
            "data:/v",
        ],
        script,
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        show(&o)
    );
    assert!(
        text(&o.stdout).contains("noexec") && text(&o.stdout).contains("size=8192k"),
        "{}",
        show(&o)
    );
    let o = sh(c, &["--tmpfs", "/t:size=0"], "true");
    assert!(
        !o.status.success() && text(&o.stderr).contains("size=0"),
        "{}",
        show(&o)
    );
    // Its size caps what a workload writes: the node's disk is not its.
    let o = c.bh(&[
        "volume", "create", "--type", "dir", "--size", "32m", "small",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let o = sh(
        c,
        &["-v", "small:/s"],
        "dd if=/dev/zero of=/s/big bs=1M count=64",
    );
    assert!(!o.status.success(), "{}", show(&o));
    assert!(text(&o.stderr).contains("No space left"), "{}", show(&o));
    let disk = c.data.join("volumes/small/disk.ext4");
    let taken = std::fs::metadata(&disk).unwrap().blocks() * 512;
    assert!(
        taken <= 32 << 20,
        "the volume's image takes {taken} bytes of the node's disk"
    );
    // A block volume is for guests only: never mounted by the host.
    let o = c.bh(&["volume", "create", "blk"]);
    assert!(o.status.success(), "{}", show(&o));
    let o = sh(c, &["-v", "blk:/b"], "true");
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("is a block volume"),
        "{}",
        show(&o)
    );
    assert!(!c.data.join("volumes/blk/mnt").exists());
    // Bad input is refused before anything is made.
    for (flags, why) in [
        (vec!["-v", "x:/a"], "volume name"),
        (vec!["-v", "data:relative"], "absolute"),
        (vec!["-v", "data:/proc/x"], "/proc"),
        (vec!["-v", "/etc:/host"], "not supported yet"),
        (vec!["-v", "new1:/a", "-v", "new2:/a"], "two volumes at /a"),
    ] {
        let o = sh(c, &flags, "true");
        assert!(
            !o.status.success() && text(&o.stderr).contains(why),
            "{flags:?}: {}",
            show(&o)
        );
    }
    // A clash and a size the data dir cannot hold: refused, nothing made.
    let o = c.bh(&["volume", "create", "--type", "dir", "small"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("exists already"),
        "{}",
        show(&o)
    );
    let o = c.bh(&["volume", "create", "--size", "16t", "huge"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("does not fit"),
        "{}",
        show(&o)
    );
    assert!(!c.data.join("volumes/huge").exists());
    let ls = c.bh(&["volume", "ls", "--format", "json"]);
    let vols: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let names: Vec<_> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["blk", "data", "small"], "{}", show(&ls));
    let o = c.bh(&["volume", "rm", "data", "small", "blk"]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(!c.data.join("volumes/data").exists());
    // 20 create/use/rm cycles: no mount, loop device or file left.
    for i in 0..20 {
        let name = format!("cycle{i}");
        let o = sh(
            c,
            &["-v", &format!("{name}:/c")],
            "echo x > /c/f && cat /c/f",
        );
        assert!(
            o.status.success() && text(&o.stdout) == "x\n",
            "{i}: {}",
            show(&o)
        );
        let o = c.bh(&["volume", "rm", &name]);
        assert!(o.status.success(), "{i}: {}", show(&o));
    }
    let data = c.data.display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&data), "mounts left: {mountinfo}");
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    assert!(
        !text(&loops.stdout).contains(&data),
        "loop devices left: {}",
        text(&loops.stdout)
    );
    assert_eq!(
        std::fs::read_dir(c.data.join("volumes")).unwrap().count(),
        0
    );
    // The containers' binds went with them.
    let left = run_cases::leftovers(c);
    assert!(left.is_empty(), "{left:?}");
}
