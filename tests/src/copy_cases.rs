//! `bulkhead cp` in both runtimes: containers natively (tests/tests/copy.rs),
//! microVMs in the test host (`bulkhead-testkit copy-cases DATA`, nested
//! where /dev/kvm cannot boot Linux). What they show of the walls: the
//! workload's end of a copy stays inside the workload (a symlink that leads
//! out of its root is refused both ways, an absolute one resolves inside
//! it, nothing lands on the host outside the asked-for place), and what a
//! workload hands the host never becomes a setuid program there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::run_cases::{record, show, text, Check, Ctx};

/// The workload every case copies to and from.
const NAME: &str = "cpw";

/// A tree with what a copy must keep: owners, modes (a setuid file
/// included), symlinks (relative and absolute), an empty directory, and a
/// file big enough to take many stream frames.
pub fn make_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{lchown, symlink};
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    std::fs::create_dir_all(dir.join("sub/empty"))?;
    std::fs::write(dir.join("notes.txt"), "alpha\n")?;
    let big: Vec<u8> = (0u32..300_000)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    std::fs::write(dir.join("sub/big.bin"), big)?;
    std::fs::write(dir.join("sub/tool"), "#!/bin/sh\necho tool\n")?;
    symlink("../notes.txt", dir.join("sub/rel"))?;
    symlink("/etc/passwd", dir.join("abs"))?;
    lchown(dir.join("notes.txt"), Some(1234), Some(2345))?;
    lchown(dir.join("sub"), Some(1000), Some(1000))?;
    lchown(dir.join("sub/rel"), Some(7), Some(8))?;
    mode(&dir.join("notes.txt"), 0o640)?;
    mode(&dir.join("sub"), 0o751)?;
    mode(&dir.join("sub/tool"), 0o4755)?;
    Ok(())
}

/// Every entry under `dir`: path, type, mode, owner, and content or
/// link target (sorted).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let full = dir.join(&rel);
        let Ok(m) = std::fs::symlink_metadata(&full) else {
            out.push(format!("{} unreadable", rel.display()));
            continue;
        };
        let what = if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&full)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            todo.extend(names.into_iter().map(|n| rel.join(n)));
            "dir".to_string()
        } else if m.file_type().is_symlink() {
            format!("-> {:?}", std::fs::read_link(&full).unwrap_or_default())
        } else {
            let body = std::fs::read(&full).unwrap_or_default();
            format!("file {} bytes sum {}", body.len(), checksum(&body))
        };
        let mode = if m.file_type().is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.push(format!(
            "{} {what} {mode:o} {}:{}",
            rel.display(),
            m.uid(),
            m.gid()
        ));
    }
    out.sort();
    out
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs every case; never panics. Leaves no workload behind.
pub fn run_table(ctx: &Ctx) -> Vec<Check> {
    let mut checks = Vec::new();
    let prefix = format!("{}/cp/", ctx.runtime);
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, &prefix, name, ok, detail);
    let Ok(work) = tempfile::tempdir() else {
        check("setup", false, "no temp dir".into());
        return checks;
    };
    let (tree, out) = (work.path().join("tree"), work.path().join("out"));
    if let Err(e) = make_tree(&tree).and_then(|()| std::fs::create_dir(&out)) {
        check("setup", false, e.to_string());
        return checks;
    }
    let cp = |args: &[&str]| {
        let mut all = vec!["cp"];
        all.extend_from_slice(args);
        ctx.bh(&all)
    };
    let exec = |script: &str| ctx.bh(&["exec", NAME, "sh", "-c", script]);
    let started = ctx.out(ctx.run_cmd(
        &["-d", "--name", NAME, "--network", "none"],
        &["sleep", "100000"],
    ));
    if !started.status.success() {
        check("setup", false, show(&started));
        return checks;
    }
    let tree_s = tree.display().to_string();
    let out_s = |p: &str| out.join(p).display().to_string();

    // In with -a (to a new name), back out with -a: the same tree, but the
    // setuid bit is gone on the host. Inside, owners and the setuid bit
    // are as on the host.
    let put = cp(&["-a", &tree_s, &format!("{NAME}:/root/tree")]);
    let inside = exec(
        "cd /root/tree && stat -c '%n %a %u:%g' notes.txt sub sub/tool sub/rel \
         && readlink abs && sha256sum sub/big.bin",
    );
    let back = cp(&["-a", &format!("{NAME}:/root/tree"), &out_s("back")]);
    let want: Vec<String> = listing(&tree)
        .into_iter()
        .map(|l| l.replace(" 4755 ", " 755 "))
        .collect();
    let host_sum = std::fs::read(tree.join("sub/big.bin"))
        .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)))
        .unwrap_or_default();
    let inside_text = text(&inside.stdout);
    check(
        "round-trip-keeps-owners-modes-symlinks-content",
        put.status.success()
            && back.status.success()
            && listing(&out.join("back")) == want
            && inside_text.contains("notes.txt 640 1234:2345")
            && inside_text.contains("sub 751 1000:1000")
            && inside_text.contains("sub/tool 4755 0:0")
            && inside_text.contains("sub/rel 777 7:8")
            && inside_text.contains("/etc/passwd")
            && !host_sum.is_empty()
            && inside_text.contains(&host_sum),
        format!(
            "{}; {}; {}; host {:?} vs back {:?}",
            show(&put),
            show(&inside),
            show(&back),
            want,
            listing(&out.join("back"))
        ),
    );

    // Without -a: inside, the workload's root owns what came in; on the
    // host, the caller owns what came out. A file lands in a directory;
    // `/.` copies a directory's contents.
    let plain_in = cp(&[
        &tree.join("notes.txt").display().to_string(),
        &format!("{NAME}:/root/"),
    ]);
    let owner = exec("stat -c '%u:%g %a' /root/notes.txt");
    std::fs::create_dir(out.join("flat")).ok();
    let plain_out = cp(&[&format!("{NAME}:/root/tree/sub/."), &out_s("flat")]);
    let plain_file = cp(&[&format!("{NAME}:/root/tree/notes.txt"), &out_s("plain.txt")]);
    let flat = std::fs::metadata(out.join("plain.txt"));
    check(
        "without-a-owners-are-the-receivers",
        plain_in.status.success()
            && text(&owner.stdout).trim() == "0:0 640"
            && plain_out.status.success()
            && plain_file.status.success()
            && flat
                .as_ref()
                .is_ok_and(|m| m.uid() == nix::unistd::getuid().as_raw())
            && out.join("flat/empty").is_dir()
            && out.join("flat/big.bin").is_file()
            && !out.join("flat/sub").exists(),
        format!(
            "{}; {}; {}; {}; {flat:?}",
            show(&plain_in),
            show(&owner),
            show(&plain_out),
            show(&plain_file)
        ),
    );

    // A symlink that leads out of the root is refused both ways (nothing
    // lands on the host's /tmp); an absolute one resolves inside the root.
    let marker = format!("bulkhead-cp-escape-{}", std::process::id());
    let links =
        exec("ln -s ../../../../../tmp /root/up && ln -s /etc/hostname /root/hn && echo ok");
    let esc_out = cp(&[&format!("{NAME}:/root/up/{marker}"), &out_s("esc")]);
    let esc_in = cp(&[
        &tree.join("notes.txt").display().to_string(),
        &format!("{NAME}:/root/up/{marker}"),
    ]);
    let follow = cp(&["-L", &format!("{NAME}:/root/hn"), &out_s("hn")]);
    let hostname = exec("cat /etc/hostname");
    let refused = |o: &std::process::Output| {
        !o.status.success() && text(&o.stderr).contains("leads out of the workload's root")
    };
    check(
        "symlink-out-of-the-root-refused",
        text(&links.stdout).trim() == "ok"
            && refused(&esc_out)
            && refused(&esc_in)
            && !Path::new("/tmp").join(&marker).exists()
            && !out.join("esc").exists()
            && follow.status.success()
            && std::fs::read_to_string(out.join("hn")).ok() == Some(text(&hostname.stdout)),
        format!(
            "{}; {}; {}; {}; {}",
            show(&links),
            show(&esc_out),
            show(&esc_in),
            show(&follow),
            show(&hostname)
        ),
    );

    // What a workload makes setuid stays setuid inside but not on the host;
    // a `.wh.` name is a name (no whiteout), and the stream goes to stdout.
    let made = exec("cp /bin/busybox /root/suid && chmod 4755 /root/suid && touch /root/tree/.wh.notes.txt && echo ok");
    let suid = cp(&[&format!("{NAME}:/root/suid"), &out_s("suid")]);
    let wh = cp(&[&format!("{NAME}:/root/tree"), &out_s("back")]);
    let stream = cp(&[&format!("{NAME}:/root/tree/notes.txt"), "-"]);
    let names: Vec<String> = tar::Archive::new(&stream.stdout[..])
        .entries()
        .map(|es| {
            es.flatten()
                .map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let suid_mode = std::fs::metadata(out.join("suid")).map(|m| m.mode() & 0o7777);
    check(
        "no-setuid-on-the-host-and-no-whiteouts",
        text(&made.stdout).trim() == "ok"
            && suid.status.success()
            && suid_mode.as_ref().is_ok_and(|m| *m == 0o755)
            && wh.status.success()
            && out.join("back/tree/notes.txt").is_file()
            && out.join("back/tree/.wh.notes.txt").is_file()
            && stream.status.success()
            && names == ["notes.txt"],
        format!(
            "{}; {}; {suid_mode:?}; {}; {}; {names:?}",
            show(&made),
            show(&suid),
            show(&wh),
            show(&stream)
        ),
    );

    // Clear errors, nothing made: a missing source, a directory onto a
    // file, no workload side, two workload sides, no such workload.
    let errs = [
        (
            cp(&[&format!("{NAME}:/root/nope"), &out_s("x")]),
            "no such file",
        ),
        (
            cp(&[&format!("{NAME}:/root/tree"), &out_s("flat/big.bin")]),
            "onto a file",
        ),
        (cp(&[&tree_s, &out_s("y")]), "NAME:PATH"),
        (
            cp(&[&format!("{NAME}:/a"), &format!("{NAME}:/b")]),
            "between two workloads",
        ),
        (
            cp(&["no-such-workload:/a", &out_s("z")]),
            "no-such-workload",
        ),
        (
            cp(&[&out_s("missing-src"), &format!("{NAME}:/root/")]),
            "missing-src",
        ),
    ];
    check(
        "bad-input-clear-errors",
        errs.iter()
            .all(|(o, says)| !o.status.success() && text(&o.stderr).contains(says))
            && !out.join("x").exists()
            && !out.join("y").exists(),
        errs.iter()
            .map(|(o, _)| show(o))
            .collect::<Vec<_>>()
            .join("; "),
    );

    // Once it has stopped: a container's writable layer stays until rm
    // (copy out and in); a microVM's ended with it, and `cp` says so.
    // `stop` returns once it has ended (sleep, PID 1, ignores SIGTERM: SIGKILL after 1 s).
    let stop = ctx.bh(&["stop", "-t", "1", NAME]);
    let after_out = cp(&[&format!("{NAME}:/root/tree/notes.txt"), &out_s("after")]);
    let after_in = cp(&[
        &tree.join("notes.txt").display().to_string(),
        &format!("{NAME}:/root/again"),
    ]);
    let after_back = cp(&[&format!("{NAME}:/root/again"), &out_s("again")]);
    let stopped_ok = if ctx.runtime == "container" {
        after_out.status.success()
            && std::fs::read_to_string(out.join("after")).ok().as_deref() == Some("alpha\n")
            && after_in.status.success()
            && after_back.status.success()
            && std::fs::read_to_string(out.join("again")).ok().as_deref() == Some("alpha\n")
    } else {
        !after_out.status.success()
            && text(&after_out.stderr).contains("stopped microVM")
            && !after_in.status.success()
    };
    check(
        "after-it-stopped",
        stop.status.success() && stopped_ok,
        format!(
            "{}; {}; {}; {}",
            show(&stop),
            show(&after_out),
            show(&after_in),
            show(&after_back)
        ),
    );
    let rm = ctx.bh(&["rm", "-f", NAME]);
    check("removed", rm.status.success(), show(&rm));
    checks
}
