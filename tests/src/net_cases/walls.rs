//! The network table's walls: egress to private ranges, the metadata address
//! and the internet; address and MAC spoofing.

use super::*;

/// What the egress checks watch: every listener a workload must not reach
/// (and the internet, which it must).
pub(super) struct Walls<'a> {
    pub(super) outside: &'a Listener,
    pub(super) internet: &'a Listener,
    pub(super) metadata: &'a Listener,
    pub(super) host_service: &'a Listener,
    pub(super) host_loopback: &'a UdpCounter,
}

impl Walls<'_> {
    /// Connections each listener has seen so far: the LAN host, metadata,
    /// the host's services, the host's loopback.
    pub(super) fn denied_seen(&self) -> [usize; 4] {
        [
            self.outside.peers().len(),
            self.metadata.peers().len(),
            self.host_service.peers().len(),
            self.host_loopback.count().try_into().expect("a count fits"),
        ]
    }
}

/// Egress walls: a workload reaches the internet and nothing private
/// (the LAN, the cloud metadata address, the host's services and its
/// loopback) unless `--allow-egress` opens a range. With bulkhead's
/// firewall tables flushed (a firewall reload) the walls fail closed:
/// nothing at all gets out until `system prune` (or the node daemon)
/// puts them back. The control: with the routing rule removed too, the
/// loopback attack lands, so the checks can fail.
pub(super) fn check_egress(ctx: &Ctx, w: &Walls, check: &mut impl FnMut(&str, bool, String)) {
    let probe = format!(
        "{}; echo; {}; echo; {}; echo; {}; echo tried",
        nc_get(INTERNET_ADDR, 9000),
        nc_get(OUTSIDE_ADDR, 9000),
        nc_get(METADATA_ADDR, 80),
        nc_get(HOST_ADDR, 9001)
    );
    let allowed = ctx.out(ctx.run_cmd(
        &["--rm", "--allow-egress", &format!("{OUTSIDE_ADDR}/32")],
        &[
            "sh",
            "-c",
            &format!(
                "{}; echo; {}; echo tried",
                nc_get(OUTSIDE_ADDR, 9000),
                nc_get(METADATA_ADDR, 80)
            ),
        ],
    ));
    let out = text(&allowed.stdout);
    check(
        "egress-allowed-by-flag",
        out.contains(&format!("from-outside peer={HOST_ADDR}"))
            && out.contains("tried")
            && !out.contains("from-metadata"),
        show(&allowed),
    );
    let before = w.denied_seen();
    let lan_seen = before[0];

    let prober = start_detached(ctx, &["--name", "prober"], "echo ready && exec sleep 3600");
    let looper = start_detached(ctx, &["--name", "looper"], "echo ready && exec sleep 3600")
        .and_then(|()| route_loopback_out(ctx, "looper"));
    if let Err(e) = prober.clone().and(looper.clone()) {
        check(
            "egress-denied-by-default",
            false,
            format!("prober {prober:?} looper {looper:?}: {e}"),
        );
        return;
    }
    let exec = |name: &str, script: &str| ctx.bh(&["exec", name, "sh", "-c", script]);
    let loop_attack = || {
        exec(
            "looper",
            "timeout 3 tftp -g -r probe -l /tmp/probe 127.0.0.1 9003; echo tried",
        )
    };

    let reached = w.internet.peers().len();
    let o = exec("prober", &probe);
    let l = loop_attack();
    let seen = w.denied_seen();
    let reached_now = w.internet.peers().len();
    check(
        "egress-denied-by-default",
        text(&o.stdout).contains("from-internet")
            && reached_now > reached
            && text(&o.stdout).contains("tried")
            && text(&l.stdout).contains("tried")
            && seen == [lan_seen, before[1], before[2], before[3]],
        format!(
            "{} / {}; seen (lan, metadata, host, host loopback) {before:?} -> {seen:?}",
            show(&o),
            show(&l)
        ),
    );

    // A firewall reload flushes every table: nothing gets out, nothing gets in.
    let flushed = ctx.tool("nft", &["flush", "ruleset"]);
    let o = exec("prober", &probe);
    let l = loop_attack();
    let seen_flushed = w.denied_seen();
    check(
        "walls-fail-closed-when-flushed",
        flushed.status.success()
            && w.internet.peers().len() == reached_now
            && !text(&o.stdout).contains("from-")
            && text(&o.stdout).contains("tried")
            && text(&l.stdout).contains("tried")
            && seen_flushed == seen,
        format!(
            "{} / {} / {}; seen {seen:?} -> {seen_flushed:?}",
            show(&flushed),
            show(&o),
            show(&l)
        ),
    );

    // The control: without the routing rule either, the host's loopback is open to the workload.
    let bridge = bridge_of(ctx, "bulkhead");
    let unruled = ctx.tool(
        "ip",
        &[
            "rule",
            "del",
            "pref",
            "0",
            "iif",
            &bridge,
            "fwmark",
            "0/0x400000",
            "prohibit",
        ],
    );
    let l = loop_attack();
    let landed = w.host_loopback.count().try_into().expect("a count fits");
    check(
        "control-loopback-open-without-the-walls",
        unruled.status.success() && landed > seen_flushed[3],
        format!(
            "{} / {}; host loopback {} -> {landed}",
            show(&unruled),
            show(&l),
            seen_flushed[3]
        ),
    );

    let pruned = ctx.bh(&["system", "prune"]);
    let o = exec("prober", &probe);
    let l = loop_attack();
    let seen_back = w.denied_seen();
    check(
        "walls-restored-by-prune",
        pruned.status.success()
            && text(&pruned.stdout).contains("restored")
            && text(&o.stdout).contains("from-internet")
            && seen_back == [seen[0], seen[1], seen[2], landed],
        format!(
            "{} / {} / {}; seen {seen_flushed:?} -> {seen_back:?}",
            show(&pruned),
            show(&o),
            show(&l)
        ),
    );
    let _ = ctx.bh(&["rm", "-f", "prober", "looper"]);
}

/// A workload sending from an address or MAC not its own gets nothing out.
/// In a microVM the guest's root does it; a container has no CAP_NET_ADMIN,
/// so the test changes its namespace from outside (as an escaped workload would).
pub(super) fn check_spoofing(
    ctx: &Ctx,
    internet: &Listener,
    check: &mut impl FnMut(&str, bool, String),
) {
    let get = nc_get(INTERNET_ADDR, 9000);
    if ctx.runtime == "microvm" {
        let ip_forge = format!("{get}; echo STEP; ip address flush dev eth0 && ip address add 10.88.0.250/16 dev eth0 && ip route add default via 10.88.0.1 && echo FORGED && {get}; echo DONE");
        let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", &ip_forge]));
        let out = text(&o.stdout);
        let (before, after) = out.split_once("STEP").unwrap_or(("", ""));
        check(
            "forged-ip-dropped",
            before.contains("from-internet")
                && after.contains("FORGED")
                && after.contains("DONE")
                && !after.contains("from-internet"),
            show(&o),
        );
        // ifconfig's ioctl, not `ip link`: busybox's ip wants AF_PACKET, which our guest kernel lacks.
        let mac_forge =
            format!("{get}; echo STEP; ifconfig eth0 down && ifconfig eth0 hw ether 02:00:00:00:00:99 && ifconfig eth0 up && ip route add default via 10.88.0.1 && echo FORGED && {get}; echo DONE");
        let o = ctx.out(ctx.run_cmd(&["--rm"], &["sh", "-c", &mac_forge]));
        let out = text(&o.stdout);
        let (before, after) = out.split_once("STEP").unwrap_or(("", ""));
        check(
            "forged-mac-dropped",
            before.contains("from-internet")
                && after.contains("FORGED")
                && after.contains("DONE")
                && !after.contains("from-internet"),
            show(&o),
        );
        return;
    }
    let started = start_detached(ctx, &["--name", "forger"], "echo ready && exec sleep 3600");
    let ip = inspect_ip(ctx, "forger").unwrap_or_default();
    let ns = inspect(ctx, "forger")["pids"]["supervisor"]
        .as_i64()
        .and_then(|p| netns_fd_of(i32::try_from(p).expect("a pid or fd fits")));
    let Some(ns) = ns.filter(|_| started.is_ok()) else {
        check(
            "forged-ip-dropped",
            false,
            format!("no namespace for the container: {started:?}"),
        );
        return;
    };
    let connect = |ns: &Path| -> bool {
        let ns = ns.to_path_buf();
        std::thread::spawn(move || {
            netns::enter(&ns).is_ok()
                && std::net::TcpStream::connect_timeout(
                    &format!("{INTERNET_ADDR}:9000")
                        .parse()
                        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                    Duration::from_secs(3),
                )
                .is_ok()
        })
        .join()
        .unwrap_or(false)
    };
    let control = connect(&ns);
    let forged = ip_in(
        &ns,
        &[
            "address flush dev eth0",
            "address add 10.88.0.250/16 dev eth0",
            "route add default via 10.88.0.1",
        ],
    );
    let through = connect(&ns);
    check(
        "forged-ip-dropped",
        control && forged.is_ok() && !through,
        format!("control={control} forge={forged:?} forged-got-through={through}"),
    );
    let forged = ip_in(
        &ns,
        &[
            "address flush dev eth0",
            "link set eth0 down",
            "link set eth0 address 02:00:00:00:00:99",
            "link set eth0 up",
            &format!("address add {ip}/16 dev eth0"),
            "route add default via 10.88.0.1",
        ],
    );
    let through = connect(&ns);
    check(
        "forged-mac-dropped",
        forged.is_ok() && !through,
        format!(
            "forge={forged:?} forged-got-through={through} the internet saw {:?}",
            internet.peers()
        ),
    );
    let _ = ctx.bh(&["rm", "-f", "forger"]);
}

/// A workload's own egress: `--deny-egress` closes part of the internet
/// for it alone (another workload still reaches that address),
/// `--no-internet` leaves it only what it allowed. What the walls refuse
/// is counted for the workload that sent it (one that sent nothing
/// refused shows 0), and the counts survive the rules being rendered again
/// (another workload starting).
pub(super) fn check_own_egress(ctx: &Ctx, w: &Walls, check: &mut impl FnMut(&str, bool, String)) {
    let idle = "echo ready && exec sleep 3600";
    let started = [
        start_detached(
            ctx,
            &[
                "--name",
                "denier",
                "--deny-egress",
                &format!("{INTERNET_ADDR}/32"),
            ],
            idle,
        ),
        start_detached(
            ctx,
            &[
                "--name",
                "offline",
                "--no-internet",
                "--allow-egress",
                &format!("{OUTSIDE_ADDR}/32"),
            ],
            idle,
        ),
        start_detached(ctx, &["--name", "quiet"], idle),
    ];
    if started.iter().any(Result::is_err) {
        check("own-egress", false, format!("{started:?}"));
        let _ = ctx.bh(&["rm", "-f", "denier", "offline", "quiet"]);
        return;
    }
    let exec = |name: &str, script: &str| ctx.bh(&["exec", name, "sh", "-c", script]);
    let (internet, outside) = (w.internet.peers().len(), w.outside.peers().len());
    let d = exec(
        "denier",
        &format!("{}; echo tried", nc_get(INTERNET_ADDR, 9000)),
    );
    let o = exec(
        "offline",
        &format!(
            "{}; echo; {}; echo tried",
            nc_get(INTERNET_ADDR, 9000),
            nc_get(OUTSIDE_ADDR, 9000)
        ),
    );
    let q = exec("quiet", &nc_get(INTERNET_ADDR, 9000));
    let seen = (w.internet.peers().len(), w.outside.peers().len());
    check(
        "own-egress-deny-and-no-internet",
        text(&d.stdout).contains("tried")
            && !text(&d.stdout).contains("from-internet")
            && text(&o.stdout).contains("tried")
            && !text(&o.stdout).contains("from-internet")
            && text(&o.stdout).contains("from-outside")
            && text(&q.stdout).contains("from-internet")
            && seen == (internet + 1, outside + 1),
        format!(
            "{} / {} / {}; internet, outside listeners {:?} -> {seen:?}",
            show(&d),
            show(&o),
            show(&q),
            (internet, outside)
        ),
    );
    let refused =
        |name: &str| inspect(ctx, name)["network"]["egress"]["refused"]["packets"].as_u64();
    let counts = [refused("denier"), refused("offline"), refused("quiet")];
    let later = start_detached(ctx, &["--name", "later"], idle);
    let kept = [refused("denier"), refused("offline"), refused("quiet")];
    check(
        "own-egress-refused-counted-per-workload",
        matches!(counts, [Some(d), Some(o), Some(0)] if d > 0 && o > 0)
            && later.is_ok()
            && kept.iter().zip(&counts).all(|(k, c)| k >= c)
            && kept[2] == Some(0),
        format!(
            "denier, offline, quiet refused {counts:?}, after a rules change {kept:?} ({later:?})"
        ),
    );
    let _ = ctx.bh(&["rm", "-f", "denier", "offline", "quiet", "later"]);
}
