//! What the run table checks of a container's walls (`--runtime container`
//! shares the node's kernel): the seccomp allowlist refuses the ways out,
//! a fork bomb stops at `pids.max`, filling the writable layer fills its
//! own tmpfs, and the host's memory is not readable; after each, the node
//! still runs workloads.

use super::*;

pub(super) fn check_container_walls(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    // The filter is on (mode 2: a seccomp filter) in the container's process.
    let o = ctx.out(ctx.run_cmd(
        &["--rm"],
        &["sh", "-c", "grep '^Seccomp:' /proc/self/status"],
    ));
    check(
        "seccomp-filter-on",
        o.status.code() == Some(0) && text(&o.stdout).split_whitespace().nth(1) == Some("2"),
        show(&o),
    );
    // Each runs as the container's root. A user namespace needs no
    // capability, so only the filter stops the first; the others would
    // also need capabilities the container lacks.
    let walls: [(&str, &str); 4] = [
        ("seccomp-unshare-refused", "unshare -U -r true"),
        ("seccomp-mount-refused", "mount -t tmpfs none /mnt"),
        ("kcore-unreadable", "head -c 1 /proc/kcore > /dev/null"),
        ("seccomp-setns-refused", "nsenter -t 1 -m true"),
    ];
    for (name, script) in walls {
        let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", script]));
        check(name, o.status.code().is_some_and(|c| c != 0), show(&o));
    }
    // A fork bomb: 1100 sleepers asked under pids.max 1024; the shell
    // cannot fork them all (it gives up), and never says it made them.
    let bomb = "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; i=0; while [ $i -lt 1100 ]; do sleep 30 & i=$((i+1)); done; echo made-all";
    let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", bomb]));
    let said = text(&o.stdout);
    check(
        "fork-bomb-capped",
        said.lines().next() == Some("1024")
            && !said.contains("made-all")
            && o.status.code() != Some(0)
            && text(&o.stderr).contains("can't fork"),
        show(&o),
    );
    // Filling the writable layer: ENOSPC at its tmpfs's size, not the disk's.
    let fill = "dd if=/dev/zero of=/fill bs=1M count=1200 2>&1; df -m / | tail -1";
    let o = ctx.out(ctx.run_cmd(&["--rm", "--memory", "2g"], &["sh", "-c", fill]));
    let said = text(&o.stdout);
    check(
        "writable-layer-capped",
        said.contains("No space left on device"),
        show(&o),
    );
    // And the node still runs workloads.
    let o = ctx.out(ctx.run_cmd(&["--rm"], &["echo", "still-fine"]));
    check(
        "node-healthy-after-the-walls",
        o.status.code() == Some(0) && text(&o.stdout).trim() == "still-fine",
        show(&o),
    );
}
