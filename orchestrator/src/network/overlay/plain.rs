//! `--overlay plain`: a tenant's nodes joined by VXLAN in the clear, for
//! underlays trusted as much as the nodes (the kernel's VXLAN: these hosts
//! have it, and no GRE). One VXLAN device per (tenant, node), the tenant's
//! own VNI on the standard port; no flooding and no learning: each peer is
//! a static forwarding entry (its device's MAC -> its address), its
//! slice's gateway a permanent neighbour at that MAC, and its slice routed
//! through that gateway. Every MAC and VNI follows from the tenant's name
//! and the node's address, so both ends agree without asking.
//!
//! What it does not give: secrecy, authentication, and anti-spoofing per
//! node (a frame's outer source is gone once it is unwrapped): the rules
//! still take from the tunnel only packets from the tenant's other slices
//! to its own, never another tenant's.

use std::net::Ipv4Addr;

use super::{Join, LocalEnd, Peer};
use crate::network::{host, NetError};

/// VXLAN's IANA port.
pub const PORT: u16 = 4789;
/// 1500 less VXLAN's 50 bytes over IPv4.
pub const MTU: u32 = 1450;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The tenant's VNI: 24 bits of a hash of its name, never 0.
pub fn vni(tenant: &str) -> u32 {
    let d = digest(&[b"bulkhead vni", tenant.as_bytes()]);
    (u32::from_be_bytes([0, d[0], d[1], d[2]])).max(1)
}

/// The MAC of `tenant`'s VXLAN device on the node at `node`: locally
/// administered, unicast.
pub fn mac(tenant: &str, node: Ipv4Addr) -> String {
    let d = digest(&[b"bulkhead vxlan mac", tenant.as_bytes(), &node.octets()]);
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

/// The tenant's VXLAN device, made unless there (a WireGuard one from
/// before goes first), up.
pub fn ensure(tunnel: &str, join: &Join) -> Result<LocalEnd, NetError> {
    let want_vni = vni(join.tenant);
    if host::link_exists(tunnel) && vxlan_id(tunnel) != Some(want_vni) {
        super::remove(tunnel)?;
    }
    if !host::link_exists(tunnel) {
        host::ip_batch(
            &[format!(
                "link add {tunnel} type vxlan id {want_vni} local {} dstport {PORT} nolearning",
                join.local
            )],
            None,
        )?;
    }
    host::ip_batch(
        &[format!(
            "link set {tunnel} address {} mtu {MTU} up",
            mac(join.tenant, join.local)
        )],
        None,
    )?;
    Ok(LocalEnd {
        iface: tunnel.to_string(),
        public_key: String::new(),
        port: PORT,
    })
}

/// The VNI of the VXLAN device `dev` (`None`: not one).
fn vxlan_id(dev: &str) -> Option<u32> {
    let out = std::process::Command::new(host::tool("ip", "iproute2").ok()?)
        .args(["-j", "-d", "link", "show", "dev", dev])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let info = &v[0]["linkinfo"];
    (info["info_kind"] == "vxlan")
        .then(|| info["info_data"]["id"].as_u64())
        .flatten()
        .and_then(|id| u32::try_from(id).ok())
}

/// Each peer: its forwarding entry, its gateway's neighbour entry, its
/// slice routed through that gateway; entries of peers gone are removed.
pub fn set_peers(tunnel: &str, join: &Join, peers: &[Peer]) -> Result<(), NetError> {
    let macs: Vec<String> = peers
        .iter()
        .map(|p| mac(join.tenant, *p.endpoint.ip()))
        .collect();
    let bridge = host::tool("bridge", "iproute2")?;
    for (p, m) in peers.iter().zip(&macs) {
        let dst = p.endpoint.ip().to_string();
        host::run(
            &bridge,
            &[
                "fdb",
                "replace",
                m,
                "dev",
                tunnel,
                "dst",
                &dst,
                "self",
                "permanent",
            ],
            b"",
            None,
        )?;
    }
    // Entries of peers that are gone.
    let out = std::process::Command::new(&bridge)
        .args(["-j", "fdb", "show", "dev", tunnel])
        .output()
        .map_err(|e| NetError::host("bridge fdb show", e))?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for old in rows
        .iter()
        .filter(|r| r["dst"].is_string())
        .filter_map(|r| r["mac"].as_str())
        .filter(|m| !macs.iter().any(|k| k == m))
    {
        let _ = host::run(
            &bridge,
            &["fdb", "del", old, "dev", tunnel, "self"],
            b"",
            None,
        );
    }
    let mut lines: Vec<String> = vec![format!("neigh flush dev {tunnel} nud permanent")];
    lines.extend(peers.iter().zip(&macs).map(|(p, m)| {
        format!(
            "neigh replace {} lladdr {m} dev {tunnel} nud permanent",
            p.slice.gateway()
        )
    }));
    host::ip_batch(&lines, None)?;
    let slices: Vec<_> = peers.iter().map(|p| p.slice).collect();
    super::set_routes_via(tunnel, &slices, |s| {
        format!("route replace {s} via {} dev {tunnel} onlink", s.gateway())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_agree_and_tenants_differ() {
        let a = Ipv4Addr::new(10, 78, 0, 11);
        assert_eq!(vni("acme"), vni("acme"));
        assert_ne!(vni("acme"), vni("evil"));
        assert!(vni("acme") > 0 && vni("acme") < 1 << 24);
        let m = mac("acme", a);
        assert_eq!(m, mac("acme", a));
        assert_ne!(m, mac("evil", a));
        assert_ne!(m, mac("acme", Ipv4Addr::new(10, 78, 0, 12)));
        assert!(m.starts_with("02:") && m.len() == 17);
    }
}
