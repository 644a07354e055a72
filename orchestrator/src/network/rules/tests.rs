use super::*;
use crate::network::{Publish, Subnet};

fn net(name: &str, bridge: &str, subnet: &str) -> Network {
    Network {
        name: name.into(),
        bridge: bridge.into(),
        subnet: Subnet::parse(subnet).unwrap_or_else(|e| panic!("{e}")),
        created_ms: 0,
        cursor: 0,
        tenant: None,
        tunnel: None,
        vips: Default::default(),
    }
}

fn lease(ip: &str, port: &str) -> Attachment {
    Attachment {
        network: "bulkhead".into(),
        bridge: "bulkhead0".into(),
        ip: ip.parse().unwrap_or_else(|e| panic!("{e}")),
        prefix: 16,
        gateway: "10.88.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
        mac: "02:b4:0a:58:00:02".into(),
        host_if: "bhtabc".into(),
        ports: vec![Publish::parse(port).unwrap_or_else(|e| panic!("{e}"))],
        nameservers: vec![],
        allow_egress: vec![],
        deny_egress: vec![],
        no_internet: false,
        names: vec![],
    }
}

fn cidr(s: &str) -> Subnet {
    Subnet::parse_cidr(s).unwrap_or_else(|e| panic!("{e}"))
}

/// The line numbers of the forward chain's rules that contain `what`.
fn forward_line(s: &str, what: &str) -> usize {
    let chain = s
        .split("chain forward {")
        .nth(1)
        .and_then(|c| c.split("\n\t}").next())
        .unwrap_or_default();
    chain
        .lines()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the forward chain:\n{chain}"))
}

#[test]
fn a_tunnel_joins_its_own_network_and_peer_slices_only() {
    let mut acme = net("t-acme", "bh-t-acme", "10.200.0.0/26");
    acme.tunnel = Some(Tunnel {
        iface: "wh-t-acme".into(),
        peers: vec![cidr("10.200.0.64/26"), cidr("10.200.0.128/26")],
    });
    let evil = net("t-evil", "bh-t-evil", "10.200.4.0/26");
    let s = script(
        "bulkhead",
        &[acme, evil],
        &[],
        &HostPolicy::default(),
        &Refused::new(),
    );
    let out = forward_line(
        &s,
        "iifname \"bh-t-acme\" oifname \"wh-t-acme\" ip daddr { 10.200.0.64/26, 10.200.0.128/26 } accept",
    );
    let back = forward_line(&s, "iifname \"wh-t-acme\" oifname \"bh-t-acme\" ip saddr { 10.200.0.64/26, 10.200.0.128/26 } ip daddr 10.200.0.0/26 accept");
    let drops = (
        forward_line(&s, "iifname @tunnels drop"),
        forward_line(&s, "oifname @tunnels drop"),
    );
    // After the way between networks is shut, before anything else
    // (the internet's accept) could let a tunnel's packet through.
    assert!(forward_line(&s, "iifname @bridges oifname @bridges goto refuse") < out);
    assert!(
        out < drops.0
            && back < drops.0
            && drops.1 < forward_line(&s, "iifname @bridges meta nfproto ipv4 accept")
    );
    assert!(forward_line(&s, "maxseg size set rt mtu") < forward_line(&s, "ct state established"));
    assert!(!s.contains("oifname \"wh-t-acme\" ip daddr 10.200.4.0"));
    assert!(s.contains("elements = { \"wh-t-acme\" }"));
    assert!(s.contains("ip saddr 10.200.4.0/26 oifname != @bridges oifname != @tunnels masquerade"));
    let input = s.split("chain input {").nth(1).unwrap_or_default();
    assert!(input.contains("iifname @tunnels drop"));
    // Service addresses: from acme's bridge only, over their instances.
    let mut with_vips = net("t-acme", "bh-t-acme", "10.200.0.0/26");
    with_vips.vips = [
        (
            "10.200.3.193".parse().unwrap_or_else(|e| panic!("{e}")),
            vec![
                "10.200.0.5".parse().unwrap_or_else(|e| panic!("{e}")),
                "10.200.0.70".parse().unwrap_or_else(|e| panic!("{e}")),
            ],
        ),
        (
            "10.200.3.194".parse().unwrap_or_else(|e| panic!("{e}")),
            vec![],
        ),
    ]
    .into();
    let s = script(
        "bulkhead",
        &[with_vips],
        &[],
        &HostPolicy::default(),
        &Refused::new(),
    );
    let pre = s.split("chain prerouting {").nth(1).unwrap_or_default();
    assert!(pre.contains("iifname \"bh-t-acme\" ip daddr 10.200.3.193 dnat ip to numgen random mod 2 map { 0 : 10.200.0.5, 1 : 10.200.0.70 }"), "{s}");
    assert!(
        !pre.contains("10.200.3.194"),
        "none behind it: not translated"
    );
    // ... but refused at once, before any egress rule counts it.
    let fwd = s.split("chain forward {").nth(1).unwrap_or_default();
    let refused = fwd
        .find("iifname \"bh-t-acme\" ip daddr { 10.200.3.194 } reject")
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        fwd.find("goto refuse").is_some_and(|g| g > refused),
        "{fwd}"
    );
    let out = s.split("chain output {").nth(1).unwrap_or_default();
    assert!(!out
        .split("chain postrouting")
        .next()
        .unwrap_or_default()
        .contains("numgen"));
    // No peers yet: nothing forwarded into it.
    let mut lone = net("t-acme", "bh-t-acme", "10.200.0.0/26");
    lone.tunnel = Some(Tunnel {
        iface: "wh-t-acme".into(),
        peers: vec![],
    });
    let s = script(
        "bulkhead",
        &[lone],
        &[],
        &HostPolicy::default(),
        &Refused::new(),
    );
    assert!(!s.contains("oifname \"wh-t-acme\""), "{s}");
}

#[test]
fn no_networks_deletes_both_tables_and_nothing_else() {
    let s = script(
        "bulkhead",
        &[],
        &[],
        &HostPolicy::default(),
        &Refused::new(),
    );
    assert_eq!(
        s.lines().filter(|l| l.starts_with("delete table")).count(),
        2
    );
    assert!(!s.contains("chain"));
}

#[test]
fn the_script_replaces_tables_and_holds_every_rule_of_a_lease() {
    let nets = [
        net("bulkhead", "bulkhead0", "10.88.0.0/16"),
        net("other", "bh-other", "10.89.0.0/24"),
    ];
    let s = script(
        "bulkhead",
        &nets,
        &[lease("10.88.0.2", "127.0.0.1:8080:80")],
        &HostPolicy::default(),
        &Refused::new(),
    );
    let delete = s.find("delete table inet bulkhead").unwrap_or(usize::MAX);
    let create = s.find("table inet bulkhead {\n").unwrap_or(0);
    assert!(
        delete < create,
        "the old table goes first, in the same transaction"
    );
    assert!(s.contains("elements = { \"bulkhead0\", \"bh-other\" }"));
    assert_eq!(
        s.matches("ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 10.88.0.2:80")
            .count(),
        2,
        "prerouting and output"
    );
    // A tenant's port (public only) skips the host's loopback; one
    // from `run -p` without an address takes every local address.
    let mut tenant = lease("10.88.0.3", "9090:90");
    tenant.ports[0].public_only = true;
    let t = script(
        "bulkhead",
        &nets,
        &[lease("10.88.0.2", "8080:80"), tenant],
        &HostPolicy::default(),
        &Refused::new(),
    );
    assert_eq!(
        t.matches("fib daddr type local tcp dport 8080 dnat")
            .count(),
        2
    );
    assert_eq!(
        t.matches("fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 9090 dnat")
            .count(),
        2
    );
    // The port's own MAC and address, as elements the port rules look up.
    assert!(s.contains("set port_macs {\n\t\ttype ifname . ether_addr\n\t\telements = { \"bhtabc\" . 02:b4:0a:58:00:02 }"), "{s}");
    assert!(s.contains("set port_ips {\n\t\ttype ifname . ipv4_addr\n\t\telements = { \"bhtabc\" . 10.88.0.2 }"), "{s}");
    assert!(s.contains("iifname @ports iifname . ether saddr != @port_macs drop"));
    assert!(s.contains("iifname @ports ether type ip iifname . ip saddr != @port_ips drop"));
    assert!(s.contains("ip saddr 10.89.0.0/24 oifname != @bridges oifname != @tunnels masquerade"));
    assert!(s.contains("iifname @bridges oifname @bridges goto refuse"));
    // A network's resolver: its own gateway, from its own bridge, before
    // the input chain's drop; the default network has none.
    let resolver = s
        .find(
            "iifname \"bh-other\" ip daddr 10.89.0.1 meta l4proto { tcp, udp } th dport 53 accept",
        )
        .unwrap_or(usize::MAX);
    assert!(resolver < s.find("iifname @bridges goto refuse").unwrap_or(0));
    assert_eq!(
        s.matches("ip daddr 10.89.0.1 meta l4proto { tcp, udp } th dport 53 accept")
            .count(),
        1,
        "{s}"
    );
    assert!(
        !s.contains("egress_dns {\n\t\ttype ifname . ipv4_addr . ipv4_addr\n\t\telements"),
        "no nameservers asked: {s}"
    );
    // The braces balance (a broken script would be refused whole by nft).
    assert_eq!(s.matches('{').count(), s.matches('}').count());
    let r = network_rules(
        &nets[1],
        &[lease("10.88.0.2", "8080:80")],
        &HostPolicy::default(),
    );
    assert!(
        r.iter().any(|l| l.contains("10.89.0.0/24")) && !r.iter().any(|l| l.contains("dnat")),
        "another network's publications are not this one's"
    );
}

/// Egress: the protected addresses go before anything a workload
/// allowed, its allows before the denied ranges, the internet last;
/// nothing of ours falls through to the policy, which drops.
#[test]
fn egress_is_denied_by_default_and_protected_addresses_win_over_allows() {
    let nets = [net("bulkhead", "bulkhead0", "10.88.0.0/16")];
    let mut a = lease("10.88.0.2", "8080:80");
    a.allow_egress = vec![cidr("172.31.9.0/24")];
    a.nameservers = vec!["10.0.0.2".into(), "not-an-address".into()];
    let policy = HostPolicy {
        protected: vec![cidr("172.31.9.1/32"), cidr("203.0.113.5/32")],
        forwarded_before_us: Some(false),
        ..HostPolicy::default()
    };
    let s = script("bulkhead", &nets, &[a.clone()], &policy, &Refused::new());
    assert!(
        s.contains("type filter hook forward priority filter; policy drop;"),
        "{s}"
    );
    assert!(s.contains("elements = { 172.31.9.1/32, 203.0.113.5/32 }"));
    let bridge_table = s
        .split("table bridge bulkhead {\n")
        .nth(1)
        .unwrap_or_default();
    assert!(
        bridge_table.contains("elements = { \"bhtabc\" }")
            && bridge_table.contains("iifname @ports meta mark set meta mark or 0x400000"),
        "the mark the host's routing asks for, on frames from workloads' ports"
    );
    for r in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ] {
        assert!(s.contains(r), "{r} is not denied");
    }
    let protected = forward_line(&s, "ip daddr @protected goto refuse");
    assert!(
        s.contains("elements = { \"bulkhead0\" . 10.88.0.2 . 172.31.9.0/24 }"),
        "{s}"
    );
    assert!(
        s.contains("elements = { \"bulkhead0\" . 10.88.0.2 . 10.0.0.2 }"),
        "only the address among its nameservers: {s}"
    );
    let allow = forward_line(&s, "iifname . ip saddr . ip daddr @egress_allowed accept");
    let dns = forward_line(
        &s,
        "iifname . ip saddr . ip daddr @egress_dns meta l4proto { tcp, udp } th dport 53 accept",
    );
    let denied = forward_line(&s, "ip daddr @denied goto refuse");
    let internet = forward_line(&s, "iifname @bridges meta nfproto ipv4 accept");
    let between = forward_line(&s, "iifname @bridges oifname @bridges goto refuse");
    assert!(
        between < protected
            && protected < allow
            && protected < dns
            && allow < denied
            && dns < denied
            && denied < internet,
        "{s}"
    );
    assert!(
        forward_line(&s, "oifname @bridges ct status dnat accept") < between,
        "published ports come in"
    );
    assert!(
        !s.lines().any(|l| l.trim() == "accept"),
        "the host did not forward before us: nothing else is let through"
    );
    let router = HostPolicy {
        forwarded_before_us: Some(true),
        ..policy.clone()
    };
    let s = script("bulkhead", &nets, &[a.clone()], &router, &Refused::new());
    assert!(
        forward_line(&s, "oifname @bridges drop")
            < s.split("chain forward {")
                .nth(1)
                .map(|c| c.lines().position(|l| l.trim() == "accept").unwrap_or(0))
                .unwrap_or(0),
        "a router's own forwarding passes, after ours"
    );
    let r = network_rules(&nets[0], &[a], &policy);
    assert!(
        r.iter()
            .any(|l| l.contains("172.31.9.1/32") && l.contains("control plane")),
        "{r:?}"
    );
    assert!(
        r.iter()
            .any(|l| l.contains("ip daddr { 172.31.9.0/24 } accept")),
        "{r:?}"
    );
}

/// A workload's own denials win over its allowances and the internet;
/// without the internet, only its exceptions pass; everything the
/// walls refuse is counted for the workload that sent it, and a new
/// script carries the counts over.
#[test]
fn denials_and_no_internet_are_refused_and_counted_per_workload() {
    let nets = [net("bulkhead", "bulkhead0", "10.88.0.0/16")];
    let mut a = lease("10.88.0.2", "8080:80");
    a.allow_egress = vec![cidr("172.31.0.0/16")];
    a.deny_egress = vec![cidr("172.31.9.0/24"), cidr("203.0.113.0/24")];
    let mut b = lease("10.88.0.3", "8081:80");
    b.host_if = "bhtdef".into();
    b.no_internet = true;
    b.allow_egress = vec![cidr("192.168.7.0/24")];
    let counts = Refused::from([("refused_bhtabc".to_string(), (7, 420))]);
    let s = script(
        "bulkhead",
        &nets,
        &[a.clone(), b.clone()],
        &HostPolicy::default(),
        &counts,
    );
    assert!(s.contains("elements = { \"bulkhead0\" . 10.88.0.2 . 172.31.9.0/24, \"bulkhead0\" . 10.88.0.2 . 203.0.113.0/24 }"), "{s}");
    assert!(s.contains("elements = { \"bulkhead0\" . 10.88.0.2 . 172.31.0.0/16, \"bulkhead0\" . 10.88.0.3 . 192.168.7.0/24 }"), "{s}");
    assert!(s.contains("set no_internet {\n\t\ttype ifname . ipv4_addr\n\t\telements = { \"bulkhead0\" . 10.88.0.3 }"), "only b is cut off: {s}");
    let deny = forward_line(
        &s,
        "iifname . ip saddr . ip daddr @egress_denied goto refuse",
    );
    let allow = forward_line(&s, "iifname . ip saddr . ip daddr @egress_allowed accept");
    let denied = forward_line(&s, "ip daddr @denied goto refuse");
    let cut = forward_line(&s, "iifname . ip saddr @no_internet goto refuse");
    let internet = forward_line(&s, "iifname @bridges meta nfproto ipv4 accept");
    assert!(
        deny < allow && allow < denied && denied < cut && cut < internet,
        "{s}"
    );
    // One counter per workload, the old count kept, and the map that
    // finds it from the packet's bridge and (checked) source address.
    assert!(
        s.contains("counter refused_bhtabc {\n\t\tpackets 7 bytes 420\n"),
        "{s}"
    );
    assert!(
        s.contains("counter refused_bhtdef {\n\t\tpackets 0 bytes 0\n"),
        "{s}"
    );
    assert!(s.contains(
        "\"bulkhead0\" . 10.88.0.2 : \"refused_bhtabc\", \"bulkhead0\" . 10.88.0.3 : \"refused_bhtdef\""
    ));
    let refuse = s.split("chain refuse {\n").nth(1).unwrap_or_default();
    assert!(refuse.starts_with("\t\tcounter name iifname . ip saddr map @refusers\n\t\tdrop\n"));
    // Nothing of ours drops uncounted: every drop of a workload's
    // packet goes through the refuse chain.
    for l in s.lines().map(str::trim) {
        assert!(
            !(l.starts_with("iifname @bridges") && l.ends_with(" drop"))
                || l.contains("nfproto ipv6")
                || l == "iifname @bridges drop",
            "{l}"
        );
    }
    let r = network_rules(&nets[0], &[a, b], &HostPolicy::default());
    assert!(r.iter().any(|l| l.contains("own denials")), "{r:?}");
    assert!(r.iter().any(|l| l.contains("no internet")), "{r:?}");
}

/// Ingress: a published port goes to its backends at random, only for
/// connections from outside (never a workload's, never one another node
/// passed on, which its own publication takes); those passed on are
/// forwarded both ways and leave masqueraded. A node without networks
/// still gets the table for it.
#[test]
fn ingress_balances_outside_connections_and_passes_them_on_once() {
    let sock = |s: &str| {
        s.parse::<std::net::SocketAddrV4>()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let policy = HostPolicy {
        ingress: vec![crate::state::net::IngressPort {
            proto: crate::network::Proto::Tcp,
            port: 18080,
            backends: vec![sock("10.201.0.5:8080"), sock("10.78.0.3:18080")],
        }],
        nodes: vec![
            "10.78.0.2".parse().unwrap_or_else(|e| panic!("{e}")),
            "10.78.0.3".parse().unwrap_or_else(|e| panic!("{e}")),
        ],
        ..HostPolicy::default()
    };
    let s = script("bulkhead", &[], &[], &policy, &Refused::new());
    assert!(s.contains("table inet bulkhead {\n"), "{s}");
    assert!(
        s.contains("\tset nodes {\n\t\ttype ipv4_addr\n\t\telements = { 10.78.0.2, 10.78.0.3 }\n"),
        "{s}"
    );
    assert!(
        !s.contains("elements = {  }"),
        "no empty element lists: {s}"
    );
    let pre = s.split("chain prerouting {").nth(1).unwrap_or_default();
    assert!(pre.contains(
        "iifname != @bridges meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 ip saddr != @nodes tcp dport 18080 ct mark set ct mark or 0x800000 dnat ip to numgen random mod 2 map { 0 : 10.201.0.5 . 8080, 1 : 10.78.0.3 . 18080 }"
    ), "{s}");
    let out = s.split("chain output {").nth(1).unwrap_or_default();
    assert!(
        !out.split("\n\t}")
            .next()
            .unwrap_or_default()
            .contains("numgen"),
        "not the host's own connections"
    );
    assert!(forward_line(&s, "ct mark & 0x800000 == 0x800000 accept") > 0);
    assert!(s.contains("ct mark & 0x800000 == 0x800000 oifname != @bridges masquerade"));
    assert_eq!(s.matches('{').count(), s.matches('}').count());
    // Nothing published, no networks: nothing of ours.
    let none = script(
        "bulkhead",
        &[],
        &[],
        &HostPolicy::default(),
        &Refused::new(),
    );
    assert!(!none.contains("table inet bulkhead {\n"));
}

/// A workload without published ports comes and goes as elements only:
/// the change holds exactly the elements the whole script gives it, and
/// its counter (added first, deleted after the map's element).
#[test]
fn a_workload_comes_and_goes_as_its_elements_only() {
    let nets = [net("bulkhead", "bulkhead0", "10.88.0.0/16")];
    let mut a = lease("10.88.0.2", "8080:80");
    a.ports.clear();
    a.nameservers = vec!["10.0.0.2".into(), "10.0.0.2".into()];
    a.allow_egress = vec![cidr("172.31.0.0/16"), cidr("172.31.9.0/24")];
    a.deny_egress = vec![cidr("203.0.113.0/24")];
    a.no_internet = true;
    let add = lease_change("bulkhead", &a, true).unwrap_or_default();
    let del = lease_change("bulkhead", &a, false).unwrap_or_default();
    assert!(
        add.starts_with("add counter inet bulkhead refused_bhtabc\n"),
        "{add}"
    );
    assert!(
        del.ends_with("delete counter inet bulkhead refused_bhtabc\n"),
        "{del}"
    );
    let whole = script(
        "bulkhead",
        &nets,
        &[a.clone()],
        &HostPolicy::default(),
        &Refused::new(),
    );
    let elements: Vec<&str> = add
        .lines()
        .filter(|l| l.starts_with("add element"))
        .collect();
    assert_eq!(elements.len(), 8, "{add}");
    for l in &elements {
        // `add element FAMILY TABLE SET { E }`: E is in the whole script's SET.
        let words: Vec<&str> = l.splitn(6, ' ').collect();
        let (family, set, element) = (
            words[2],
            words[4],
            words[5].trim_matches(|c| c == '{' || c == '}' || c == ' '),
        );
        let table = whole
            .split(&format!("table {family} bulkhead {{\n"))
            .nth(1)
            .unwrap_or_default();
        let decl = table
            .split(&format!(" {set} {{\n"))
            .nth(1)
            .and_then(|t| t.split("\n\t}").next())
            .unwrap_or_default();
        assert!(decl.contains(element), "{set}: {element} not in {decl}");
    }
    // Nested ranges: an interval set takes the outer one only.
    assert!(
        add.contains("172.31.0.0/16") && !add.contains("172.31.9.0/24"),
        "{add}"
    );
    assert_eq!(
        del.lines()
            .filter(|l| l.starts_with("delete element"))
            .count(),
        elements.len()
    );
    // Published ports are rules: the whole script, not a change.
    assert!(lease_change("bulkhead", &lease("10.88.0.2", "8080:80"), true).is_none());
}
