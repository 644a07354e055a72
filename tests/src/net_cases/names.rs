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

/// Both runtimes on one network (`mix`, one data dir): a microVM and a
/// container find each other by name and fetch each other's page; a
/// container started later is found from the microVM, and not once
/// removed. `vm` and `ct` share their data dir and differ in runtime.
pub fn check_mixed(vm: &Ctx, ct: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let created = vm.bh(&["network", "create", "mix"]);
    let started = start_detached(vm, &["--name", "mix-vm", "--network", "mix"], WEB)
        .and_then(|()| start_detached(ct, &["--name", "mix-ct", "--network", "mix"], WEB));
    let vm_ip = inspect_ip(vm, "mix-vm").unwrap_or_default();
    let ct_ip = inspect_ip(vm, "mix-ct").unwrap_or_default();
    let fetch = |from: &Ctx, at: &str, name: &str| {
        let o = from.bh(&[
            "exec",
            at,
            "sh",
            "-c",
            &format!("timeout 10 wget -q -O- http://{name}/"),
        ]);
        (text(&o.stdout).contains(PAGE), show(&o))
    };
    let (vm_found, d1) = lookup_in(ct, "mix-ct", "mix-vm");
    let (vm_page, d2) = fetch(ct, "mix-ct", "mix-vm");
    let (ct_found, d3) = lookup_in(vm, "mix-vm", "mix-ct");
    let (ct_page, d4) = fetch(vm, "mix-vm", "mix-ct");
    check(
        "microvm-and-container-reach-each-other-by-name",
        created.status.success()
            && started.is_ok()
            && !vm_ip.is_empty()
            && !ct_ip.is_empty()
            && vm_found.as_deref() == Some(vm_ip.as_str())
            && ct_found.as_deref() == Some(ct_ip.as_str())
            && vm_page
            && ct_page,
        format!("{started:?} vm {vm_ip} ct {ct_ip}: {d1} / {d2} / {d3} / {d4}"),
    );
    let late = start_detached(
        ct,
        &["--name", "mix-late", "--network", "mix"],
        "echo ready; exec sleep 3600",
    );
    let late_ip = inspect_ip(ct, "mix-late").unwrap_or_default();
    let (found, detail) = lookup_in(vm, "mix-vm", "mix-late");
    check(
        "later-container-found-from-the-microvm",
        late.is_ok() && !late_ip.is_empty() && found.as_deref() == Some(late_ip.as_str()),
        format!("late={late:?} ip={late_ip} {detail}"),
    );
    let rm = ct.bh(&["rm", "-f", "mix-late"]);
    let (found, detail) = lookup_in(vm, "mix-vm", "mix-late");
    check(
        "removed-container-not-found-from-the-microvm",
        rm.status.success() && found.is_none() && detail.contains("NXDOMAIN"),
        format!("{} / {detail}", show(&rm)),
    );
    let rm = vm.bh(&["rm", "-f", "mix-vm", "mix-ct"]);
    let net_rm = vm.bh(&["network", "rm", "mix"]);
    check(
        "mixed-network-removed",
        rm.status.success() && net_rm.status.success(),
        format!("{} / {}", show(&rm), show(&net_rm)),
    );
}
