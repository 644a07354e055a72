//! bulkhead's nftables rules, rendered whole from the networks, the
//! leases and the host's egress policy in the state store. `script`
//! replaces both tables in one `nft -f` transaction: the kernel never sees
//! half of a change, and a sweep after a crash is the same call as any other
//! update.
//!
//! - `table inet bulkhead` (IPv4 and IPv6 in one place):
//!   - input from a bridge only for replies and, where the network has a
//!     resolver, its own gateway's port 53 (workloads cannot reach host
//!     services, 127.0.0.1 included, nor another network's resolver);
//!   - forward, policy drop: replies, published ports (DNAT) and a
//!     network's own traffic; nothing between networks; then egress:
//!     never the protected addresses (control plane, store), the workload's
//!     own nameservers on port 53 and what it allowed, never the denied
//!     ranges (`egress::DENIED`), then the internet. No IPv6 from or to
//!     workloads. Forwarding that is not ours passes only where the host
//!     forwarded before bulkhead turned forwarding on;
//!   - a cluster tenant's network and its tunnel to the tenant's other
//!     nodes (`overlay`): forwarded to and from the peers' slices only,
//!     never to or from another network; TCP's MSS clamped to the
//!     tunnel's MTU; nothing from a tunnel reaches the host but replies;
//!   - DNAT for published ports in prerouting (other hosts) and output (the
//!     host itself, 127.0.0.1 included, masqueraded out of the bridge);
//!     masquerade for egress.
//! - `table bridge bulkhead`: per workload port, frames must carry the
//!   workload's own MAC, ARP and IPv4 its own address; nothing else passes.
//!   It sees traffic between workloads on one bridge, which never reaches
//!   the inet table. Then it marks every frame from a workload's port
//!   (`egress::BRIDGE_MARK`): the host routes no unmarked packet that
//!   arrives on our bridges (`host::ensure_fail_closed`), so with these
//!   tables flushed workloads reach nothing, not everything.

use super::egress::{self, HostPolicy, BRIDGE_MARK};
use super::{Attachment, Network, Proto, Subnet};
use crate::state::net::Tunnel;

fn quoted_set(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn addr_set(nets: &[Subnet]) -> String {
    nets.iter()
        .map(Subnet::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn dnat_rules(leases: &[Attachment]) -> Vec<String> {
    let mut v = Vec::new();
    for a in leases {
        for p in &a.ports {
            let dst = match (p.host_ip, p.public_only) {
                (Some(ip), _) => format!("ip daddr {ip}"),
                (None, false) => "meta nfproto ipv4 fib daddr type local".to_string(),
                (None, true) => {
                    "meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8".to_string()
                }
            };
            let proto = match p.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            v.push(format!(
                "{dst} {proto} dport {} dnat ip to {}:{} comment \"{}\"",
                p.host_port, a.ip, p.port, a.host_if
            ));
        }
    }
    v
}

/// The egress exceptions of one workload: its nameservers (port 53 only)
/// and what it allowed, from its own address on its own bridge (the
/// bridge table keeps that address its own).
fn egress_rules(a: &Attachment) -> Vec<String> {
    let mut v = Vec::new();
    let ns: Vec<String> = a
        .nameservers
        .iter()
        .filter_map(|n| n.parse::<std::net::Ipv4Addr>().ok())
        .map(|n| n.to_string())
        .collect();
    if !ns.is_empty() {
        v.push(format!("iifname \"{}\" ip saddr {} ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept", a.bridge, a.ip, ns.join(", ")));
    }
    if !a.allow_egress.is_empty() {
        v.push(format!(
            "iifname \"{}\" ip saddr {} ip daddr {{ {} }} accept",
            a.bridge,
            a.ip,
            addr_set(&a.allow_egress)
        ));
    }
    v
}

/// A network's way to its own resolver: its gateway's port 53, from its bridge.
fn resolver_rule(n: &Network) -> String {
    format!(
        "iifname \"{}\" ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 accept",
        n.bridge,
        n.gateway()
    )
}

/// A tenant's service addresses, from its own bridge only: each
/// connection to one goes to one of the instances behind it, at random
/// (kube-proxy's nft mode); one with none behind it goes nowhere. Another
/// network's packet to the address is not translated and is dropped as
/// private egress.
fn vip_rules(n: &Network) -> Vec<String> {
    n.vips
        .iter()
        .filter(|(_, backends)| !backends.is_empty())
        .map(|(vip, backends)| {
            let map = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {b}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "iifname \"{}\" ip daddr {vip} dnat ip to numgen random mod {} map {{ {map} }}",
                n.bridge,
                backends.len()
            )
        })
        .collect()
}

/// A tenant's network and its tunnel: to the other nodes' slices and back,
/// each way only between the two (never from a tunnel to another
/// network, never from a slice that is not a peer's).
fn tunnel_rules(n: &Network, t: &Tunnel) -> Vec<String> {
    if t.peers.is_empty() {
        return Vec::new();
    }
    let peers = addr_set(&t.peers);
    vec![
        format!(
            "iifname \"{}\" oifname \"{}\" ip daddr {{ {peers} }} accept",
            n.bridge, t.iface
        ),
        format!(
            "iifname \"{}\" oifname \"{}\" ip saddr {{ {peers} }} ip daddr {} accept",
            t.iface, n.bridge, n.subnet
        ),
    ]
}

/// The rules of the inet table that concern one network (for `network inspect`).
pub fn network_rules(net: &Network, leases: &[Attachment], policy: &HostPolicy) -> Vec<String> {
    let b = &net.bridge;
    let mine: Vec<Attachment> = leases
        .iter()
        .filter(|a| a.network == net.name)
        .cloned()
        .collect();
    let mut v = vec![format!(
        "input: iifname \"{b}\" ct state established,related accept"
    )];
    if super::dns::serves(net) {
        v.push(format!("input: {}   (its resolver)", resolver_rule(net)));
    }
    v.extend([
        format!("input: iifname \"{b}\" drop"),
        format!("forward: iifname \"{b}\" oifname \"{b}\" accept"),
        format!("forward: iifname \"{b}\" oifname @bridges drop   (other networks)"),
    ]);
    if let Some(t) = &net.tunnel {
        v.extend(
            tunnel_rules(net, t)
                .into_iter()
                .map(|r| format!("forward: {r}   (its tunnel)")),
        );
        v.push("forward: iifname @tunnels drop; oifname @tunnels drop   (anything else)".into());
    }
    if !policy.protected.is_empty() {
        v.push(format!(
            "forward: iifname \"{b}\" ip daddr {{ {} }} drop   (control plane and store)",
            addr_set(&policy.protected)
        ));
    }
    v.extend(
        mine.iter()
            .flat_map(egress_rules)
            .map(|r| format!("forward: {r}")),
    );
    v.extend([
        format!(
            "forward: iifname \"{b}\" ip daddr {{ {} }} drop   (denied ranges)",
            egress::DENIED.join(", ")
        ),
        format!("forward: iifname \"{b}\" accept   (the internet)"),
        format!("forward: oifname \"{b}\" drop   (unless established or published)"),
        format!(
            "postrouting: ip saddr {} oifname != @bridges oifname != @tunnels masquerade",
            net.subnet
        ),
        format!("postrouting: oifname \"{b}\" ip saddr 127.0.0.0/8 masquerade"),
    ]);
    v.extend(
        vip_rules(net)
            .into_iter()
            .map(|r| format!("prerouting: {r}   (a service address)")),
    );
    v.extend(
        dnat_rules(&mine)
            .into_iter()
            .map(|r| format!("prerouting+output: {r}")),
    );
    v.extend(
        mine.iter()
            .flat_map(port_rules)
            .map(|r| format!("bridge prerouting: {r}")),
    );
    v.extend(mine.iter().map(|a| format!("bridge prerouting: iifname \"{}\" meta mark set meta mark or {BRIDGE_MARK:#x}   (unmarked: not routed)", a.host_if)));
    v
}

fn port_rules(a: &Attachment) -> Vec<String> {
    let (p, mac, ip) = (&a.host_if, &a.mac, a.ip);
    vec![
        format!("iifname \"{p}\" ether saddr != {mac} drop"),
        format!("iifname \"{p}\" ether type arp arp saddr ether != {mac} drop"),
        format!("iifname \"{p}\" ether type arp arp saddr ip != {ip} drop"),
        format!("iifname \"{p}\" ether type ip ip saddr != {ip} drop"),
        format!("iifname \"{p}\" ether type != {{ ip, arp }} drop"),
    ]
}

/// The whole `nft -f` script: both tables (`inet TABLE`, `bridge TABLE`)
/// replaced, or deleted when there are no networks.
pub fn script(
    table: &str,
    networks: &[Network],
    leases: &[Attachment],
    policy: &HostPolicy,
) -> String {
    let mut s = format!("table inet {table} {{}}\ndelete table inet {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n");
    if networks.is_empty() {
        return s;
    }
    let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    let line = |s: &mut String, r: &str| {
        s.push_str("\t\t");
        s.push_str(r);
        s.push('\n');
    };
    s.push_str(&format!("table inet {table} {{\n"));
    s.push_str(&format!(
        "\tset bridges {{\n\t\ttype ifname\n\t\telements = {{ {} }}\n\t}}\n",
        quoted_set(&bridges)
    ));
    s.push_str(&format!(
        "\tset denied {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
        egress::DENIED.join(", ")
    ));
    s.push_str("\tset protected {\n\t\ttype ipv4_addr\n\t\tflags interval\n");
    if !policy.protected.is_empty() {
        s.push_str(&format!(
            "\t\telements = {{ {} }}\n",
            addr_set(&policy.protected)
        ));
    }
    s.push_str("\t}\n");
    let tunnels: Vec<(&Network, &Tunnel)> = networks
        .iter()
        .filter_map(|n| n.tunnel.as_ref().map(|t| (n, t)))
        .collect();
    let names: Vec<&str> = tunnels.iter().map(|(_, t)| t.iface.as_str()).collect();
    s.push_str("\tset tunnels {\n\t\ttype ifname\n");
    if !names.is_empty() {
        s.push_str(&format!("\t\telements = {{ {} }}\n", quoted_set(&names)));
    }
    s.push_str("\t}\n");

    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
    line(
        &mut s,
        "iifname @bridges ct state established,related accept",
    );
    // Other nodes' instances reach nothing of this host.
    line(
        &mut s,
        "iifname @tunnels ct state established,related accept",
    );
    line(&mut s, "iifname @tunnels drop");
    for n in networks.iter().filter(|n| super::dns::serves(n)) {
        line(&mut s, &resolver_rule(n));
    }
    line(&mut s, "iifname @bridges drop");
    s.push_str("\t}\n");

    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n");
    line(&mut s, "iifname @bridges meta nfproto ipv6 drop");
    line(&mut s, "oifname @bridges meta nfproto ipv6 drop");
    // No fragmentation surprises: TCP's MSS fits the tunnel.
    line(
        &mut s,
        "oifname @tunnels tcp flags syn tcp option maxseg size set rt mtu",
    );
    line(
        &mut s,
        "iifname @bridges ct state established,related accept",
    );
    line(
        &mut s,
        "oifname @bridges ct state established,related accept",
    );
    line(&mut s, "oifname @bridges ct status dnat accept");
    for b in &bridges {
        line(&mut s, &format!("iifname \"{b}\" oifname \"{b}\" accept"));
    }
    line(&mut s, "iifname @bridges oifname @bridges drop");
    for (n, t) in &tunnels {
        for r in tunnel_rules(n, t) {
            line(&mut s, &r);
        }
    }
    line(&mut s, "iifname @tunnels drop");
    line(&mut s, "oifname @tunnels drop");
    line(&mut s, "iifname @bridges ip daddr @protected drop");
    for a in leases {
        for r in egress_rules(a) {
            line(&mut s, &r);
        }
    }
    line(&mut s, "iifname @bridges ip daddr @denied drop");
    line(&mut s, "iifname @bridges meta nfproto ipv4 accept");
    line(&mut s, "iifname @bridges drop");
    line(&mut s, "oifname @bridges drop");
    if policy.forwarded_before_us == Some(true) {
        line(&mut s, "accept");
    }
    s.push_str("\t}\n");

    let dnat = dnat_rules(leases);
    // -100: dstnat's number (the name is for prerouting only).
    for chain in ["prerouting", "output"] {
        s.push_str(&format!(
            "\tchain {chain} {{\n\t\ttype nat hook {chain} priority -100; policy accept;\n"
        ));
        if chain == "prerouting" {
            for r in networks.iter().flat_map(vip_rules) {
                line(&mut s, &r);
            }
        }
        for r in &dnat {
            line(&mut s, r);
        }
        s.push_str("\t}\n");
    }

    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    line(&mut s, "oifname @bridges ip saddr 127.0.0.0/8 masquerade");
    for n in networks {
        line(
            &mut s,
            &format!(
                "oifname \"{}\" ct status dnat ip saddr {} masquerade",
                n.bridge, n.subnet
            ),
        );
        line(
            &mut s,
            &format!(
                "ip saddr {} oifname != @bridges oifname != @tunnels masquerade",
                n.subnet
            ),
        );
    }
    s.push_str("\t}\n}\n");

    // The mark is set here, on the frame as it enters a bridge from a
    // workload's port (after the anti-spoofing drops), not in an inet
    // prerouting chain: with br_netfilter the inet prerouting hook sees the
    // port, not the bridge (`meta ibrname` needs a module hosts may lack).
    let ports: Vec<&str> = leases.iter().map(|a| a.host_if.as_str()).collect();
    s.push_str(&format!(
        "table bridge {table} {{\n\tset ports {{\n\t\ttype ifname\n"
    ));
    if !ports.is_empty() {
        s.push_str(&format!("\t\telements = {{ {} }}\n", quoted_set(&ports)));
    }
    s.push_str("\t}\n");
    s.push_str("\tchain ports {\n\t\ttype filter hook prerouting priority -200; policy accept;\n");
    for a in leases {
        for r in port_rules(a) {
            line(&mut s, &r);
        }
    }
    line(
        &mut s,
        &format!("iifname @ports meta mark set meta mark or {BRIDGE_MARK:#x}"),
    );
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
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
        let s = script("bulkhead", &[acme, evil], &[], &HostPolicy::default());
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
        assert!(forward_line(&s, "iifname @bridges oifname @bridges drop") < out);
        assert!(
            out < drops.0
                && back < drops.0
                && drops.1 < forward_line(&s, "iifname @bridges meta nfproto ipv4 accept")
        );
        assert!(
            forward_line(&s, "maxseg size set rt mtu") < forward_line(&s, "ct state established")
        );
        assert!(!s.contains("oifname \"wh-t-acme\" ip daddr 10.200.4.0"));
        assert!(s.contains("elements = { \"wh-t-acme\" }"));
        assert!(
            s.contains("ip saddr 10.200.4.0/26 oifname != @bridges oifname != @tunnels masquerade")
        );
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
        let s = script("bulkhead", &[with_vips], &[], &HostPolicy::default());
        let pre = s.split("chain prerouting {").nth(1).unwrap_or_default();
        assert!(pre.contains("iifname \"bh-t-acme\" ip daddr 10.200.3.193 dnat ip to numgen random mod 2 map { 0 : 10.200.0.5, 1 : 10.200.0.70 }"), "{s}");
        assert!(
            !s.contains("10.200.3.194"),
            "none behind it: not translated"
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
        let s = script("bulkhead", &[lone], &[], &HostPolicy::default());
        assert!(!s.contains("oifname \"wh-t-acme\""), "{s}");
    }

    #[test]
    fn no_networks_deletes_both_tables_and_nothing_else() {
        let s = script("bulkhead", &[], &[], &HostPolicy::default());
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
        assert!(s.contains("iifname \"bhtabc\" ether saddr != 02:b4:0a:58:00:02 drop"));
        assert!(s.contains("iifname \"bhtabc\" ether type ip ip saddr != 10.88.0.2 drop"));
        assert!(
            s.contains("ip saddr 10.89.0.0/24 oifname != @bridges oifname != @tunnels masquerade")
        );
        assert!(s.contains("iifname @bridges oifname @bridges drop"));
        // A network's resolver: its own gateway, from its own bridge, before
        // the input chain's drop; the default network has none.
        let resolver = s
            .find("iifname \"bh-other\" ip daddr 10.89.0.1 meta l4proto { tcp, udp } th dport 53 accept")
            .unwrap_or(usize::MAX);
        assert!(resolver < s.find("iifname @bridges drop").unwrap_or(0));
        assert_eq!(s.matches("th dport 53 accept").count(), 1, "{s}");
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
        };
        let s = script("bulkhead", &nets, &[a.clone()], &policy);
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
        let protected = forward_line(&s, "ip daddr @protected drop");
        let allow = forward_line(&s, "ip saddr 10.88.0.2 ip daddr { 172.31.9.0/24 } accept");
        let dns = forward_line(
            &s,
            "ip daddr { 10.0.0.2 } meta l4proto { tcp, udp } th dport 53 accept",
        );
        let denied = forward_line(&s, "ip daddr @denied drop");
        let internet = forward_line(&s, "iifname @bridges meta nfproto ipv4 accept");
        let between = forward_line(&s, "iifname @bridges oifname @bridges drop");
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
        let s = script("bulkhead", &nets, &[a.clone()], &router);
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
}
