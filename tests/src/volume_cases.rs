//! Named volumes in microVMs (block volumes): `bulkhead-testkit
//! volume-cases DATA` runs them in the test host (nested where /dev/kvm
//! cannot boot Linux), after the run table. What they show of the walls:
//! a block volume is a disk only its guest mounts (the host makes it,
//! never mounts it; a dir volume, which the host mounts, is refused to a
//! VM); `:ro` is a read-only disk, refused by the device and not only by
//! the guest's mount; one writer at a time; and a VM whose power is cut
//! mid-write (its VMM SIGKILLed) leaves a volume whose journal replays in
//! the next VM, after which `e2fsck -fn`, run inside a VM, finds it clean.

use std::path::Path;
use std::process::Command;

use crate::run_cases::{pid_of, pidfd_wait, record, show, text, Check, Ctx};

/// bb:test with a static e2fsck (`/sbin/e2fsck`) for the crash check.
pub const FSCK_IMAGE: &str = "bb:fsck";

/// Imports [`FSCK_IMAGE`] into `data` and builds its root disk (on the
/// machine that has mkfs; the test host has no e2fsck of its own).
pub fn prepare_fsck_image(bulkhead: &Path, data: &Path) -> Result<(), String> {
    let tree = tempfile::tempdir().map_err(|e| e.to_string())?;
    crate::busybox_root::build(tree.path()).map_err(|e| e.to_string())?;
    std::fs::copy("/sbin/e2fsck.static", tree.path().join("bin/e2fsck"))
        .map_err(|e| format!("copy /sbin/e2fsck.static (apt-get install e2fsck-static): {e}"))?;
    let tree_arg = tree.path().display().to_string();
    for args in [
        vec!["image", "import-dir", &tree_arg, "--name", FSCK_IMAGE],
        vec!["image", "disk", FSCK_IMAGE],
    ] {
        let o = Command::new(bulkhead)
            .env("BULKHEAD_DATA", data)
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("bulkhead {args:?}: {}", show(&o)));
        }
    }
    Ok(())
}

/// Runs every case; never panics.
pub fn run_table(ctx: &Ctx) -> Vec<Check> {
    let mut checks = Vec::new();
    let prefix = format!("{}/vol/", ctx.runtime);
    let mut check =
        |name: &str, ok: bool, detail: String| record(&mut checks, &prefix, name, ok, detail);
    let sh = |flags: &[&str], script: &str| {
        let mut all = vec!["--rm", "--network", "none"];
        all.extend_from_slice(flags);
        ctx.out(ctx.run_cmd(&all, &["sh", "-c", script]))
    };

    // Made on first use (a block volume: a microVM), kept across VMs.
    let first = sh(&["-v", "vmdata:/data"], "echo kept > /data/f");
    let again = sh(&["-v", "vmdata:/data"], "cat /data/f");
    let ls = ctx.bh(&["volume", "inspect", "vmdata"]);
    check(
        "made-on-first-use-and-kept",
        first.status.success()
            && text(&again.stdout) == "kept\n"
            && text(&ls.stdout).contains("\"kind\": \"block\""),
        format!("{}; {}; {}", show(&first), show(&again), show(&ls)),
    );
    // Filled from the image's content where it is mounted.
    let o = sh(&["-v", "etcvol:/etc"], "grep -c root /etc/passwd");
    check(
        "filled-from-the-image",
        o.status.success() && text(&o.stderr).contains("filled from the image's /etc"),
        show(&o),
    );
    // Two volumes, each at its own path (disk order matches the record's).
    let both = sh(
        &["-v", "vmdata:/a", "-v", "second:/b"],
        "cat /a/f && echo two > /b/g",
    );
    let back = sh(&["-v", "second:/x"], "cat /x/g");
    check(
        "two-volumes-each-at-its-path",
        text(&both.stdout) == "kept\n" && text(&back.stdout) == "two\n",
        format!("{}; {}", show(&both), show(&back)),
    );
    // `:ro`: a read-only disk (the VMM refuses writes), mounted read-only.
    let o = sh(
        &["-v", "vmdata:/data:ro"],
        "cat /data/f && echo x > /data/x",
    );
    check(
        "read-only-refused",
        !o.status.success()
            && text(&o.stdout) == "kept\n"
            && text(&o.stderr).contains("Read-only file system"),
        show(&o),
    );
    // One writer at a time; in use, it cannot be removed.
    let w = ctx.out(ctx.run_cmd(
        &[
            "-d",
            "--network",
            "none",
            "--name",
            "vwriter",
            "-v",
            "vmdata:/data",
        ],
        &["sleep", "600"],
    ));
    let second = sh(&["-v", "vmdata:/data:ro"], "true");
    let rm_vol = ctx.bh(&["volume", "rm", "vmdata"]);
    let rm = ctx.bh(&["rm", "-f", "vwriter"]);
    check(
        "one-writer-at-a-time",
        w.status.success()
            && second.status.code() == Some(125)
            && text(&second.stderr).contains("one writer at a time")
            && !rm_vol.status.success()
            && text(&rm_vol.stderr).contains("in use by vwriter")
            && rm.status.success(),
        format!(
            "{}; {}; {}; {}",
            show(&w),
            show(&second),
            show(&rm_vol),
            show(&rm)
        ),
    );
    // A dir volume is the host's to mount: never a VM's disk.
    let mk = ctx.bh(&[
        "volume", "create", "--type", "dir", "--size", "16m", "hostdir",
    ]);
    let o = sh(&["-v", "hostdir:/d"], "true");
    check(
        "dir-volume-refused",
        mk.status.success()
            && o.status.code() == Some(125)
            && text(&o.stderr).contains("is a dir volume"),
        format!("{}; {}", show(&mk), show(&o)),
    );
    check_power_cut(ctx, &mut check);
    let rm = ctx.bh(&["volume", "rm", "vmdata", "second", "etcvol", "hostdir"]);
    let ls = ctx.bh(&["volume", "ls", "--format", "json"]);
    check(
        "volumes-removed",
        rm.status.success() && text(&ls.stdout).trim() == "[]",
        format!("{}; {}", show(&rm), show(&ls)),
    );
    checks
}

/// A VM writing to its volume loses its power (the VMM SIGKILLed); the
/// next VM mounts it (the journal replays) and finds the last lines; a
/// third, with the disk read-only, runs `e2fsck -fn` on it: clean.
fn check_power_cut(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let writer = "i=0; while :; do echo line$i >> /data/log; i=$((i+1)); \
                  [ $((i % 50)) = 0 ] && sync; done";
    let run = ctx.out(ctx.run_image_cmd(
        FSCK_IMAGE,
        &[
            "-d",
            "--network",
            "none",
            "--name",
            "crasher",
            "-v",
            "crashvol:/data",
        ],
        &["sh", "-c", writer],
    ));
    // Written and synced for a while (polled, with a deadline).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut lines = 0u64;
    while lines < 500 && std::time::Instant::now() < deadline {
        let o = ctx.bh(&["exec", "crasher", "sh", "-c", "wc -l < /data/log"]);
        lines = text(&o.stdout).trim().parse().unwrap_or(0);
    }
    let (sup, vmm) = (
        pid_of(ctx, "crasher", "supervisor"),
        pid_of(ctx, "crasher", "runtime"),
    );
    if let Some(v) = vmm {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(v),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(s) = sup {
        pidfd_wait(s, 30_000);
    }
    let rm = ctx.bh(&["rm", "-f", "crasher"]);
    let replay = ctx.out(ctx.run_image_cmd(
        FSCK_IMAGE,
        &["--rm", "--network", "none", "-v", "crashvol:/data"],
        &["sh", "-c", "tail -n 1 /data/log"],
    ));
    let fsck = ctx.out(ctx.run_image_cmd(
        FSCK_IMAGE,
        &["--rm", "--network", "none", "-v", "crashvol:/data:ro"],
        &["e2fsck", "-fn", "/dev/vdb"],
    ));
    let rm_vol = ctx.bh(&["volume", "rm", "crashvol"]);
    check(
        "power-cut-mid-write-then-fsck-clean",
        run.status.success()
            && lines >= 500
            && vmm.is_some()
            && rm.status.success()
            && replay.status.success()
            && text(&replay.stdout).starts_with("line")
            && fsck.status.success()
            && rm_vol.status.success(),
        format!(
            "run: {}; {lines} lines before the cut; rm: {}; next VM: {}; e2fsck: {}; volume rm: {}",
            show(&run),
            show(&rm),
            show(&replay),
            show(&fsck),
            show(&rm_vol)
        ),
    );
}
