//! bulkhead's nftables rules, rendered whole from the networks and the
//! leases in the state store. `script` replaces both tables in one `nft -f`
//! transaction: the kernel never sees half of a change, and a sweep after a
//! crash is the same call as any other update.
//!
//! - `table inet bulkhead` (IPv4 and IPv6 in one place): input from a bridge
//!   only for replies (workloads cannot reach host services); forwarding
//!   within a network, out to the world, and in only through published ports;
//!   nothing between networks; no IPv6 from workloads; DNAT for published
//!   ports in prerouting (other hosts) and output (the host itself, 127.0.0.1
//!   included, masqueraded out of the bridge); masquerade for egress.
//! - `table bridge bulkhead`: per workload port, frames must carry the
//!   workload's own MAC, ARP and IPv4 its own address; nothing else passes.
//!   It sees traffic between workloads on one bridge, which never reaches
//!   the inet table.

use super::{Attachment, Network, Proto};

fn quoted_set(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

fn dnat_rules(leases: &[Attachment]) -> Vec<String> {
    let mut v = Vec::new();
    for a in leases {
        for p in &a.ports {
            let dst = match p.host_ip {
                Some(ip) => format!("ip daddr {ip}"),
                None => "meta nfproto ipv4 fib daddr type local".to_string(),
            };
            let proto = match p.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            v.push(format!("{dst} {proto} dport {} dnat ip to {}:{} comment \"{}\"", p.host_port, a.ip, p.port, a.host_if));
        }
    }
    v
}

/// The rules of the inet table that concern one network (for `network inspect`).
pub fn network_rules(net: &Network, leases: &[Attachment]) -> Vec<String> {
    let b = &net.bridge;
    let mine: Vec<Attachment> = leases.iter().filter(|a| a.network == net.name).cloned().collect();
    let mut v = vec![
        format!("input: iifname \"{b}\" ct state established,related accept"),
        format!("input: iifname \"{b}\" drop"),
        format!("forward: iifname \"{b}\" oifname \"{b}\" accept"),
        format!("forward: iifname \"{b}\" oifname @bridges drop   (other networks)"),
        format!("forward: iifname \"{b}\" accept   (egress)"),
        format!("forward: oifname \"{b}\" drop   (unless established or published)"),
        format!("postrouting: ip saddr {} oifname != @bridges masquerade", net.subnet),
        format!("postrouting: oifname \"{b}\" ip saddr 127.0.0.0/8 masquerade"),
    ];
    v.extend(dnat_rules(&mine).into_iter().map(|r| format!("prerouting+output: {r}")));
    v.extend(mine.iter().flat_map(port_rules).map(|r| format!("bridge prerouting: {r}")));
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

/// The whole `nft -f` script: both tables replaced, or deleted when there
/// are no networks.
pub fn script(networks: &[Network], leases: &[Attachment]) -> String {
    let mut s = String::from("table inet bulkhead {}\ndelete table inet bulkhead\ntable bridge bulkhead {}\ndelete table bridge bulkhead\n");
    if networks.is_empty() {
        return s;
    }
    let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    let line = |s: &mut String, r: &str| {
        s.push_str("\t\t");
        s.push_str(r);
        s.push('\n');
    };
    s.push_str("table inet bulkhead {\n");
    s.push_str(&format!("\tset bridges {{\n\t\ttype ifname\n\t\telements = {{ {} }}\n\t}}\n", quoted_set(&bridges)));

    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n");
    line(&mut s, "iifname @bridges ct state established,related accept");
    line(&mut s, "iifname @bridges drop");
    s.push_str("\t}\n");

    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    line(&mut s, "iifname @bridges meta nfproto ipv6 drop");
    line(&mut s, "oifname @bridges meta nfproto ipv6 drop");
    line(&mut s, "iifname @bridges ct state established,related accept");
    line(&mut s, "oifname @bridges ct state established,related accept");
    line(&mut s, "oifname @bridges ct status dnat accept");
    for b in &bridges {
        line(&mut s, &format!("iifname \"{b}\" oifname \"{b}\" accept"));
    }
    line(&mut s, "iifname @bridges oifname @bridges drop");
    line(&mut s, "iifname @bridges accept");
    line(&mut s, "oifname @bridges drop");
    s.push_str("\t}\n");

    let dnat = dnat_rules(leases);
    // -100: dstnat's number (the name is for prerouting only).
    for chain in ["prerouting", "output"] {
        s.push_str(&format!("\tchain {chain} {{\n\t\ttype nat hook {chain} priority -100; policy accept;\n"));
        for r in &dnat {
            line(&mut s, r);
        }
        s.push_str("\t}\n");
    }

    s.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    line(&mut s, "oifname @bridges ip saddr 127.0.0.0/8 masquerade");
    for n in networks {
        line(&mut s, &format!("oifname \"{}\" ct status dnat ip saddr {} masquerade", n.bridge, n.subnet));
        line(&mut s, &format!("ip saddr {} oifname != @bridges masquerade", n.subnet));
    }
    s.push_str("\t}\n}\n");

    s.push_str("table bridge bulkhead {\n\tchain ports {\n\t\ttype filter hook prerouting priority -200; policy accept;\n");
    for a in leases {
        for r in port_rules(a) {
            line(&mut s, &r);
        }
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Publish, Subnet};

    fn net(name: &str, bridge: &str, subnet: &str) -> Network {
        Network { name: name.into(), bridge: bridge.into(), subnet: Subnet::parse(subnet).unwrap_or_else(|e| panic!("{e}")), created_ms: 0, cursor: 0 }
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
        }
    }

    #[test]
    fn no_networks_deletes_both_tables_and_nothing_else() {
        let s = script(&[], &[]);
        assert_eq!(s.lines().filter(|l| l.starts_with("delete table")).count(), 2);
        assert!(!s.contains("chain"));
    }

    #[test]
    fn the_script_replaces_tables_and_holds_every_rule_of_a_lease() {
        let nets = [net("bulkhead", "bulkhead0", "10.88.0.0/16"), net("other", "bh-other", "10.89.0.0/24")];
        let s = script(&nets, &[lease("10.88.0.2", "127.0.0.1:8080:80")]);
        let delete = s.find("delete table inet bulkhead").unwrap_or(usize::MAX);
        let create = s.find("table inet bulkhead {\n").unwrap_or(0);
        assert!(delete < create, "the old table goes first, in the same transaction");
        assert!(s.contains("elements = { \"bulkhead0\", \"bh-other\" }"));
        assert_eq!(s.matches("ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 10.88.0.2:80").count(), 2, "prerouting and output");
        assert!(s.contains("iifname \"bhtabc\" ether saddr != 02:b4:0a:58:00:02 drop"));
        assert!(s.contains("iifname \"bhtabc\" ether type ip ip saddr != 10.88.0.2 drop"));
        assert!(s.contains("ip saddr 10.89.0.0/24 oifname != @bridges masquerade"));
        assert!(s.contains("iifname @bridges oifname @bridges drop"));
        // The braces balance (a broken script would be refused whole by nft).
        assert_eq!(s.matches('{').count(), s.matches('}').count());
        let r = network_rules(&nets[1], &[lease("10.88.0.2", "8080:80")]);
        assert!(r.iter().any(|l| l.contains("10.89.0.0/24")) && !r.iter().any(|l| l.contains("dnat")), "another network's publications are not this one's");
    }
}
