//! Names on a user network: its resolver (`bulkhead __dns`, on the
//! gateway's port 53) answers the names of the network's workloads, those
//! started later too, not those removed, and nothing to another network.

use super::*;

/// The resolver's process for `bridge`, if one runs: (pid, uid).
fn resolver_of(bridge: &str) -> Option<(i32, u32)> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args.windows(3).any(|w| {
            w[0] == b"__dns".as_slice()
                && w[1] == b"--bridge".as_slice()
                && w[2] == bridge.as_bytes()
        });
        if !ours {
            return None;
        }
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((pid, uid))
    })
}

/// `nslookup NAME` as workload `name` sees it (exec in it): the address, if any.
fn lookup_in(ctx: &Ctx, name: &str, wanted: &str) -> (Option<String>, String) {
    let o = ctx.bh(&["exec", name, "nslookup", wanted]);
    (address_in(&text(&o.stdout), wanted), show(&o))
}

/// The address busybox's nslookup printed for `name`.
fn address_in(out: &str, name: &str) -> Option<String> {
    let mut lines = out
        .lines()
        .skip_while(|l| l.trim() != format!("Name:\t{name}"));
    lines.next()?;
    lines
        .next()?
        .strip_prefix("Address:")
        .map(|a| a.trim().to_string())
}

/// The names table: `nm-db` serves WEB on network `nm`; a second workload
/// resolves it and fetches its page by name; a workload started later
/// resolves from db, and stops resolving once removed; network `iso`
/// neither resolves `nm-db` nor reaches `nm`'s resolver; the resolver
/// runs as nobody and goes with the network.
pub(super) fn check_names(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let created = ctx.bh(&["network", "create", "nm"]);
    let bridge = super::bridge_of(ctx, "nm");
    let gateway = inspect_network(ctx, "nm")["gateway"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let db = start_detached(ctx, &["--name", "nm-db", "--network", "nm"], WEB);
    let db_ip = inspect_ip(ctx, "nm-db").unwrap_or_default();
    // (`timeout`, not wget's -T: busybox 1.35's static wget crashes with it.)
    let o = ctx.out(ctx.run_cmd(
        &["--rm", "--network", "nm"],
        &[
            "sh",
            "-c",
            "nslookup nm-db; timeout 10 wget -q -O- http://nm-db/",
        ],
    ));
    let out = text(&o.stdout);
    check(
        "names-resolve-on-the-network",
        created.status.success()
            && db.is_ok()
            && !db_ip.is_empty()
            && address_in(&out, "nm-db").as_deref() == Some(db_ip.as_str())
            && out.contains(PAGE),
        format!("db={db:?} ip={db_ip} {} / {}", show(&created), show(&o)),
    );
    let resolver = resolver_of(&bridge);
    check(
        "resolver-runs-as-nobody",
        resolver.is_some_and(|(_, uid)| uid == 65534),
        format!("bridge {bridge}: {resolver:?}"),
    );

    // Started later: found (from db, which asked before); removed: gone.
    let late = start_detached(
        ctx,
        &["--name", "nm-late", "--network", "nm"],
        "echo ready; exec sleep 3600",
    );
    let late_ip = inspect_ip(ctx, "nm-late").unwrap_or_default();
    let (found, detail) = lookup_in(ctx, "nm-db", "nm-late");
    check(
        "names-of-later-workloads-resolve",
        late.is_ok() && !late_ip.is_empty() && found.as_deref() == Some(late_ip.as_str()),
        format!("late={late:?} ip={late_ip} {detail}"),
    );
    let rm = ctx.bh(&["rm", "-f", "nm-late"]);
    let (found, detail) = lookup_in(ctx, "nm-db", "nm-late");
    check(
        "names-of-removed-workloads-do-not",
        rm.status.success() && found.is_none() && detail.contains("NXDOMAIN"),
        format!("{} / {detail}", show(&rm)),
    );

    // Another network: its own resolver knows nothing of nm; nm's resolver
    // is out of its reach (a bounded probe: 3 seconds).
    let o = ctx.out(ctx.run_cmd(
        &["--rm", "--network", "iso"],
        &[
            "sh",
            "-c",
            &format!("nslookup nm-db; timeout 3 nslookup nm-db {gateway}; echo tried"),
        ],
    ));
    let out = text(&o.stdout);
    check(
        "names-stay-on-their-network",
        !gateway.is_empty()
            && out.contains("tried")
            && out.contains("NXDOMAIN")
            && !out.contains(&db_ip),
        format!("nm gateway {gateway}, db {db_ip}: {}", show(&o)),
    );

    let rm = ctx.bh(&["rm", "-f", "nm-db"]);
    let net_rm = ctx.bh(&["network", "rm", "nm"]);
    let left: Vec<String> = std::fs::read_dir("/run/bulkhead/dns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{bridge}.")))
                .collect()
        })
        .unwrap_or_default();
    let resolver = resolver_of(&bridge);
    check(
        "resolver-goes-with-its-network",
        rm.status.success()
            && net_rm.status.success()
            && !bridge.is_empty()
            && left.is_empty()
            && resolver.is_none(),
        format!(
            "{} / {} files {left:?} resolver {resolver:?}",
            show(&rm),
            show(&net_rm)
        ),
    );
}
