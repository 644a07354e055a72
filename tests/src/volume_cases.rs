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

    // Each boot is seconds in the nested test host: the cases share them.
    // VM 1: three volumes made on first use (block: a microVM), one filled
    // from the image's content where it is mounted, each at its own path.
    let first = sh(
        &["-v", "vmdata:/data", "-v", "etcvol:/etc", "-v", "second:/b"],
        "echo kept > /data/f && grep -c root /etc/passwd && echo two > /b/g",
    );
    let ls = ctx.bh(&["volume", "inspect", "vmdata"]);
    check(
        "made-on-first-use-and-filled",
        first.status.success()
            && text(&first.stderr).contains("filled from the image's /etc")
            && !text(&first.stderr).contains("filled from the image's /data")
            && text(&ls.stdout).contains("\"kind\": \"block\""),
        format!("{}; {}", show(&first), show(&ls)),
    );
    // VM 2: --read-only, a tmpfs of 8m, vmdata read-only at another path,
    // second read-write: kept across VMs, each volume at its path (the
    // disks' order is the record's), `:ro` a read-only disk (the VMM
    // refuses writes) mounted read-only, the root refusing writes, the
    // tmpfs taking them up to its size.
    let script =
        "cat /ro/f /rw/g; touch /x; echo a > /scratch/a && echo b > /rw/b && echo c > /tmp/c \
                  && ! dd if=/dev/zero of=/scratch/big bs=1M count=16 2>/dev/null \
                  && ! echo x > /ro/x && echo done";
    let o = sh(
        &[
            "--read-only",
            "--tmpfs",
            "/scratch:size=8m",
            "-v",
            "vmdata:/ro:ro",
            "-v",
            "second:/rw",
        ],
        script,
    );
    let err = text(&o.stderr);
    check(
        "kept-at-their-paths-ro-and-read-only-root",
        o.status.success()
            && text(&o.stdout) == "kept\ntwo\ndone\n"
            && err.matches("Read-only file system").count() >= 2,
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
    // A guest that writes garbage over its volume's superblock and group
    // descriptors harms only that volume: the host never parses it; the
    // next VM is refused it with the guest's own mount error (and the
    // VMs after it start as before); it can still be removed.
    let smash = sh(
        &["-v", "smashed:/data"],
        "dd if=/dev/urandom of=/dev/vdb bs=1024 seek=1 count=4096 conv=fsync 2>/dev/null",
    );
    let next = sh(&["-v", "smashed:/data"], "true");
    let rm = ctx.bh(&["volume", "rm", "smashed"]);
    check(
        "corrupt-superblock-harms-only-its-volume",
        smash.status.success()
            // Refused with the guest's mount error (or, if the guest's ext4
            // still made sense of it, mounted): never a hang or a lost VMM.
            && (next.status.code() == Some(0)
                || (next.status.code() == Some(125)
                    && text(&next.stderr).contains("mount volume /dev/vdb")))
            && rm.status.success(),
        format!("{}; {}; {}", show(&smash), show(&next), show(&rm)),
    );
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
