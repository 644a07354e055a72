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
    check_user_namespaces(ctx, &mut *check);
    // And the node still runs workloads.
    let o = ctx.out(ctx.run_cmd(&["--rm"], &["echo", "still-fine"]));
    check(
        "node-healthy-after-the-walls",
        o.status.code() == Some(0) && text(&o.stdout).trim() == "still-fine",
        show(&o),
    );
}

/// Each container's root is a uid of its own block on the host: its
/// process runs as `base` there (no id of the node's own, no root), its
/// uid map says `0 base 65536`, and two containers never share a block.
fn check_user_namespaces(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let names = ["userns-a", "userns-b"];
    let mut said = Vec::new();
    let mut maps = Vec::new();
    for n in names {
        let o = ctx.out(ctx.run_cmd(&["-d", "--name", n], &["sleep", "997"]));
        said.push(show(&o));
        let o = ctx.bh(&["exec", n, "cat", "/proc/self/uid_map"]);
        said.push(show(&o));
        let f: Vec<u64> = text(&o.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        maps.push(f);
    }
    // The sleepers' real uids as the host sees them.
    let mut host_uids: Vec<u64> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| std::fs::read(p.path().join("cmdline")).unwrap_or_default() == b"sleep\0997\0")
        .filter_map(|p| {
            let status = std::fs::read_to_string(p.path().join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    host_uids.sort_unstable();
    let mut bases: Vec<u64> = maps.iter().filter_map(|m| m.get(1).copied()).collect();
    bases.sort_unstable();
    let ok = maps.len() == 2
        && maps
            .iter()
            .all(|m| m.len() == 3 && m[0] == 0 && m[1] > 0 && m[2] == 65536)
        && bases[0] + 65536 <= bases[1]
        && host_uids == bases;
    for n in names {
        ctx.bh(&["rm", "-f", n]);
    }
    check(
        "userns-own-ids",
        ok,
        format!("maps {maps:?}, host uids {host_uids:?}: {said:?}"),
    );
}
