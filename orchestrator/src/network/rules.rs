//! bulkhead's nftables rules, rendered whole from the networks, the
//! leases and the host's egress policy in the state store. `script`
//! replaces both tables in one `nft -f` transaction: the kernel never sees
//! half of a change, and a sweep after a crash is the same call as any other
//! update. What one workload adds (its port, MAC and address, its refused
//! counter, its egress exceptions and denials) is set and map elements, not
//! rules, so `lease_change` adds or deletes just those elements (one small
//! transaction) when a workload without published ports comes or goes; the
//! rules stay as they are.
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

/// The ranges without those another one of the list covers (an interval
/// set refuses overlapping elements).
fn outermost(nets: &[Subnet]) -> Vec<Subnet> {
    let mut out: Vec<Subnet> = Vec::new();
    let mut sorted = nets.to_vec();
    sorted.sort_by_key(|n| n.prefix);
    for n in sorted {
        if !out.iter().any(|o| o.contains(n.base)) {
            out.push(n);
        }
    }
    out
}

/// The sets and maps that hold what each workload adds: (family, name,
/// declaration).
const LEASE_SETS: &[(&str, &str, &str)] = &[
    ("inet", "refusers", "type ifname . ipv4_addr : counter"),
    // Its nameservers (port 53 only), what it allowed, what it denied
    // itself, and whether it has the internet: keyed by its bridge and
    // its address (which the bridge table keeps its own).
    ("inet", "egress_dns", "type ifname . ipv4_addr . ipv4_addr"),
    (
        "inet",
        "egress_allowed",
        "type ifname . ipv4_addr . ipv4_addr\n\t\tflags interval",
    ),
    (
        "inet",
        "egress_denied",
        "type ifname . ipv4_addr . ipv4_addr\n\t\tflags interval",
    ),
    ("inet", "no_internet", "type ifname . ipv4_addr"),
    // Its port, and the one MAC and address frames from it may carry.
    ("bridge", "ports", "type ifname"),
    ("bridge", "port_macs", "type ifname . ether_addr"),
    ("bridge", "port_ips", "type ifname . ipv4_addr"),
];

/// One workload's elements of [`LEASE_SETS`]: (set, element).
fn lease_elements(a: &Attachment) -> Vec<(&'static str, String)> {
    let (b, ip, port) = (&a.bridge, a.ip, &a.host_if);
    let mut v = vec![(
        "refusers",
        format!("\"{b}\" . {ip} : \"{}\"", egress::refused_counter(port)),
    )];
    v.extend(
        a.nameservers
            .iter()
            .filter_map(|n| n.parse::<std::net::Ipv4Addr>().ok())
            .map(|n| ("egress_dns", format!("\"{b}\" . {ip} . {n}"))),
    );
    v.extend(
        outermost(&a.allow_egress)
            .iter()
            .map(|n| ("egress_allowed", format!("\"{b}\" . {ip} . {n}"))),
    );
    v.extend(
        outermost(&a.deny_egress)
            .iter()
            .map(|n| ("egress_denied", format!("\"{b}\" . {ip} . {n}"))),
    );
    if a.no_internet {
        v.push(("no_internet", format!("\"{b}\" . {ip}")));
    }
    v.push(("ports", format!("\"{port}\"")));
    v.push(("port_macs", format!("\"{port}\" . {}", a.mac)));
    v.push(("port_ips", format!("\"{port}\" . {ip}")));
    // Each once (a nameserver listed twice): nft deletes an element once.
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|e| seen.insert(e.clone()));
    v
}

/// `\tset NAME {\n\t\tDECL\n\t\telements = { ... }\n\t}\n` for each of
/// `family`'s lease sets, with `elements` (every lease's, as
/// [`lease_elements`] gives them) of that set.
fn lease_set(s: &mut String, family: &str, elements: &[(&'static str, String)]) {
    for (_, name, decl) in LEASE_SETS.iter().filter(|(f, ..)| *f == family) {
        let kind = if decl.contains(" : ") { "map" } else { "set" };
        s.push_str(&format!("\t{kind} {name} {{\n\t\t{decl}\n"));
        let elements: Vec<&str> = elements
            .iter()
            .filter(|(set, _)| set == name)
            .map(|(_, e)| e.as_str())
            .collect();
        if !elements.is_empty() {
            s.push_str(&format!("\t\telements = {{ {} }}\n", elements.join(", ")));
        }
        s.push_str("\t}\n");
    }
}

/// What one workload adds to tables a whole `script` made, as one `nft -f`
/// transaction: its elements and its refused counter, added (`added`) or
/// deleted. None where that is not all it adds (published ports are DNAT
/// rules): the caller renders the whole script then.
pub fn lease_change(table: &str, a: &Attachment, added: bool) -> Option<String> {
    if !a.ports.is_empty() {
        return None;
    }
    let counter = egress::refused_counter(&a.host_if);
    let verb = if added { "add" } else { "delete" };
    let mut s = String::new();
    if added {
        s.push_str(&format!("add counter inet {table} {counter}\n"));
    }
    for (set, element) in lease_elements(a) {
        let family = LEASE_SETS
            .iter()
            .find(|(_, name, _)| *name == set)
            .map_or("inet", |(f, ..)| *f);
        s.push_str(&format!(
            "{verb} element {family} {table} {set} {{ {element} }}\n"
        ));
    }
    if !added {
        // After the map's element that pointed at it, in the same transaction.
        s.push_str(&format!("delete counter inet {table} {counter}\n"));
    }
    Some(s)
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

/// What one workload closed for itself (`--deny-egress`): refused
/// before any exception opens it. (The rule as `network inspect` says it;
/// the table holds it as `egress_denied` elements.)
fn deny_rules(a: &Attachment) -> Vec<String> {
    if a.deny_egress.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "iifname \"{}\" ip saddr {} ip daddr {{ {} }} goto refuse",
        a.bridge,
        a.ip,
        addr_set(&a.deny_egress)
    )]
}

/// A workload without the internet (`--no-internet`, a tenant's policy):
/// after its exceptions, everything else is refused (as said; held as a
/// `no_internet` element).
fn no_internet_rule(a: &Attachment) -> Option<String> {
    a.no_internet
        .then(|| format!("iifname \"{}\" ip saddr {} goto refuse", a.bridge, a.ip))
}

/// The egress exceptions of one workload: its nameservers (port 53 only)
/// and what it allowed, from its own address on its own bridge (the
/// bridge table keeps that address its own). As said; held as
/// `egress_dns` and `egress_allowed` elements.
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
/// (kube-proxy's nft mode); one with none behind it is refused. Another
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

/// A tenant's service addresses with nobody behind them: refused at once
/// (as kube-proxy's are), not silence until the client gives up, and not
/// counted as egress refused.
fn empty_vip_rule(n: &Network) -> Option<String> {
    let empty: Vec<String> = n
        .vips
        .iter()
        .filter(|(_, backends)| backends.is_empty())
        .map(|(vip, _)| vip.to_string())
        .collect();
    (!empty.is_empty()).then(|| {
        format!(
            "iifname \"{}\" ip daddr {{ {} }} reject",
            n.bridge,
            empty.join(", ")
        )
    })
}

/// Set on the connection of every ingress DNAT: its packets (both ways)
/// are forwarded between other nodes and clients, and leave masqueraded.
pub const INGRESS_CT_MARK: u32 = 0x0080_0000;

/// The cluster's published ports on this node (`cluster::ingress`): a
/// connection from outside (not a workload, not another node) to a local
/// address goes to one of the port's backends at random.
fn ingress_rules(policy: &HostPolicy) -> Vec<String> {
    policy
        .ingress
        .iter()
        .filter(|p| !p.backends.is_empty())
        .map(|p| {
            let map = p
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "iifname != @bridges meta nfproto ipv4 fib daddr type local ip daddr != 127.0.0.0/8 ip saddr != @nodes {} dport {} ct mark set ct mark or {INGRESS_CT_MARK:#x} dnat ip to numgen random mod {} map {{ {map} }}",
                p.proto,
                p.port,
                p.backends.len()
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
        format!("input: iifname \"{b}\" goto refuse   (the host's services)"),
        format!("forward: iifname \"{b}\" oifname \"{b}\" accept"),
        format!("forward: iifname \"{b}\" oifname @bridges goto refuse   (other networks)"),
    ]);
    if let Some(t) = &net.tunnel {
        v.extend(
            tunnel_rules(net, t)
                .into_iter()
                .map(|r| format!("forward: {r}   (its tunnel)")),
        );
        v.push("forward: iifname @tunnels drop; iifname @bridges oifname @tunnels goto refuse   (anything else)".into());
    }
    if !policy.protected.is_empty() {
        v.push(format!(
            "forward: iifname \"{b}\" ip daddr {{ {} }} goto refuse   (control plane and store)",
            addr_set(&policy.protected)
        ));
    }
    v.extend(
        mine.iter()
            .flat_map(deny_rules)
            .map(|r| format!("forward: {r}   (its own denials)")),
    );
    v.extend(
        mine.iter()
            .flat_map(egress_rules)
            .map(|r| format!("forward: {r}")),
    );
    v.push(format!(
        "forward: iifname \"{b}\" ip daddr {{ {} }} goto refuse   (denied ranges)",
        egress::DENIED.join(", ")
    ));
    v.extend(
        mine.iter()
            .filter_map(no_internet_rule)
            .map(|r| format!("forward: {r}   (no internet)")),
    );
    v.extend([
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
        empty_vip_rule(net).map(|r| format!("forward: {r}   (service addresses with no instance)")),
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
    v.push(
        "refuse: counter name iifname . ip saddr map @refusers; drop   (counted per workload)"
            .into(),
    );
    v
}

/// Frames from a workload's port carry its own MAC, and ARP and IPv4 its
/// own address; nothing but IPv4 and ARP passes (`port_macs`, `port_ips`).
const PORT_RULES: &[&str] = &[
    "iifname @ports iifname . ether saddr != @port_macs drop",
    "iifname @ports ether type arp iifname . arp saddr ether != @port_macs drop",
    "iifname @ports ether type arp iifname . arp saddr ip != @port_ips drop",
    "iifname @ports ether type ip iifname . ip saddr != @port_ips drop",
    "iifname @ports ether type != { ip, arp } drop",
];

/// What [`PORT_RULES`] mean for one workload, as `network inspect` says it.
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

/// Packets and bytes each workload's refused counter (by name) held: a
/// new script carries them over, so a rules change does not zero them.
pub type Refused = std::collections::BTreeMap<String, (u64, u64)>;

/// The whole `nft -f` script: both tables (`inet TABLE`, `bridge TABLE`)
/// replaced, or deleted when there are no networks. `refused`: the
/// counters' values so far.
pub fn script(
    table: &str,
    networks: &[Network],
    leases: &[Attachment],
    policy: &HostPolicy,
    refused: &Refused,
) -> String {
    let mut s = format!("table inet {table} {{}}\ndelete table inet {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n");
    if networks.is_empty() && policy.ingress.is_empty() {
        return s;
    }
    let bridges: Vec<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    let elements: Vec<(&'static str, String)> = leases.iter().flat_map(lease_elements).collect();
    let line = |s: &mut String, r: &str| {
        s.push_str("\t\t");
        s.push_str(r);
        s.push('\n');
    };
    s.push_str(&format!("table inet {table} {{\n"));
    s.push_str("\tset bridges {\n\t\ttype ifname\n");
    if !bridges.is_empty() {
        s.push_str(&format!("\t\telements = {{ {} }}\n", quoted_set(&bridges)));
    }
    s.push_str("\t}\n");
    s.push_str("\tset nodes {\n\t\ttype ipv4_addr\n");
    if !policy.nodes.is_empty() {
        let nodes: Vec<String> = policy.nodes.iter().map(ToString::to_string).collect();
        s.push_str(&format!("\t\telements = {{ {} }}\n", nodes.join(", ")));
    }
    s.push_str("\t}\n");
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
    // What a workload sent that the walls refused, counted per workload.
    for a in leases {
        let name = egress::refused_counter(&a.host_if);
        let (packets, bytes) = refused.get(&name).copied().unwrap_or_default();
        s.push_str(&format!(
            "\tcounter {name} {{\n\t\tpackets {packets} bytes {bytes}\n\t}}\n"
        ));
    }
    lease_set(&mut s, "inet", &elements);
    s.push_str("\tchain refuse {\n");
    line(&mut s, "counter name iifname . ip saddr map @refusers");
    line(&mut s, "drop");
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
    line(&mut s, "iifname @bridges goto refuse");
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
    // Ingress passed on to another node, and its replies.
    line(
        &mut s,
        &format!("ct mark & {INGRESS_CT_MARK:#x} == {INGRESS_CT_MARK:#x} accept"),
    );
    for r in networks.iter().filter_map(empty_vip_rule) {
        line(&mut s, &r);
    }
    for b in &bridges {
        line(&mut s, &format!("iifname \"{b}\" oifname \"{b}\" accept"));
    }
    line(&mut s, "iifname @bridges oifname @bridges goto refuse");
    for (n, t) in &tunnels {
        for r in tunnel_rules(n, t) {
            line(&mut s, &r);
        }
    }
    line(&mut s, "iifname @tunnels drop");
    line(&mut s, "iifname @bridges oifname @tunnels goto refuse");
    line(&mut s, "oifname @tunnels drop");
    line(&mut s, "iifname @bridges ip daddr @protected goto refuse");
    // Each workload's own denials, then its exceptions, then the denied
    // ranges, then (without the internet) nothing more: see `LEASE_SETS`.
    line(
        &mut s,
        "iifname . ip saddr . ip daddr @egress_denied goto refuse",
    );
    line(
        &mut s,
        "iifname . ip saddr . ip daddr @egress_dns meta l4proto { tcp, udp } th dport 53 accept",
    );
    line(
        &mut s,
        "iifname . ip saddr . ip daddr @egress_allowed accept",
    );
    line(&mut s, "iifname @bridges ip daddr @denied goto refuse");
    line(&mut s, "iifname . ip saddr @no_internet goto refuse");
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
            for r in ingress_rules(policy) {
                line(&mut s, &r);
            }
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
    // Passed on to another node: its replies must come back through here.
    line(
        &mut s,
        &format!(
            "ct mark & {INGRESS_CT_MARK:#x} == {INGRESS_CT_MARK:#x} oifname != @bridges masquerade"
        ),
    );
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
    s.push_str(&format!("table bridge {table} {{\n"));
    lease_set(&mut s, "bridge", &elements);
    s.push_str("\tchain ports {\n\t\ttype filter hook prerouting priority -200; policy accept;\n");
    for r in PORT_RULES {
        line(&mut s, r);
    }
    line(
        &mut s,
        &format!("iifname @ports meta mark set meta mark or {BRIDGE_MARK:#x}"),
    );
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests;
