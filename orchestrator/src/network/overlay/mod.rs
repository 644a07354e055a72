//! A cluster tenant's network across nodes: on each node the tenant's
//! bridge takes the node's slice of the tenant's range, and a tunnel per
//! (tenant, node) reaches the tenant's other nodes, each peer allowed only
//! its own slice. Two kinds, the server's choice for the whole cluster
//! (`bulkhead server --overlay`):
//!
//! - `wireguard` (the default): encrypted and authenticated. Kernel
//!   WireGuard where the kernel has it, else `bulkhead __wg`, boringtun's
//!   userspace implementation on a TUN device (`userspace.rs`); both are
//!   configured the same way, by `wg` (the kernel over netlink, boringtun
//!   over its socket in /var/run/wireguard). A node makes its own key for
//!   each tenant it runs (the private key never leaves it) and reports the
//!   public one; the server hands a node the public keys, endpoints and
//!   slices of the other nodes of the tenants it runs, and nothing of other
//!   tenants. WireGuard's allowed IPs are the anti-spoofing: a packet from
//!   a peer whose source is outside that peer's slice is dropped.
//! - `plain`: GRE with a key per tenant, one tunnel per (tenant, peer), for
//!   trusted underlays; the rules drop what a peer's tunnel brings from
//!   outside its slice (`plain.rs`).
//!
//! The rules (`rules.rs`) forward only between a tenant's bridge and its
//! own tunnel, and clamp TCP's MSS to the tunnel's MTU.

pub mod plain;
pub mod userspace;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{host, NetError, Subnet};

/// The tunnel's MTU: 1500 less WireGuard's 80 bytes (IPv6 underlay, the
/// worst case), as wg-quick sets it; TCP's MSS is clamped to it.
pub const MTU: u32 = 1420;

/// How a tenant's nodes are joined (`bulkhead server --overlay`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Wireguard,
    Plain,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wireguard" => Ok(Mode::Wireguard),
            "plain" => Ok(Mode::Plain),
            _ => Err(format!(
                "--overlay {s:?}: wireguard (encrypted, the default) or plain (GRE, for trusted underlays only)"
            )),
        }
    }
}

/// Another node's end of a tenant's overlay, as the server hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its WireGuard public key (base64); empty in plain mode.
    pub public_key: String,
    pub endpoint: SocketAddrV4,
    pub slice: Subnet,
}

/// This node's end of a tenant's overlay: its tunnel, and what the
/// server hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEnd {
    pub iface: String,
    /// Empty in plain mode.
    pub public_key: String,
    pub port: u16,
}

/// What a node joins a tenant's nodes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join<'a> {
    pub mode: Mode,
    pub tenant: &'a str,
    /// This node's address on the network between nodes.
    pub local: std::net::Ipv4Addr,
}

/// The tenant's tunnel of `join`'s kind, made unless there; this end.
pub fn ensure(data: &Path, tunnel: &str, join: &Join) -> Result<LocalEnd, NetError> {
    match join.mode {
        Mode::Wireguard => ensure_wireguard(data, tunnel),
        Mode::Plain => plain::ensure(tunnel, join),
    }
}

/// Sets the tunnel's peers to exactly `peers`, their slices routed into it.
pub fn set_peers(tunnel: &str, join: &Join, peers: &[Peer]) -> Result<(), NetError> {
    match join.mode {
        Mode::Wireguard => set_wireguard_peers(tunnel, peers),
        Mode::Plain => plain::set_peers(tunnel, join, peers),
    }
}

/// The tenant's tunnel beside its bridge: `w` for the bridge's `b`.
pub fn tunnel_for(bridge: &str) -> String {
    format!("w{}", bridge.get(1..).unwrap_or(bridge))
}

/// A WireGuard public key: base64 of 32 bytes.
pub fn valid_public_key(k: &str) -> bool {
    use base64::Engine;
    k.len() == 44
        && base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|b| b.len() == 32)
}

/// A peer as `wg` knows it: public key, endpoint, allowed IPs.
type WgPeer = (String, String, String);

fn wg_peer(p: &Peer) -> WgPeer {
    (
        p.public_key.clone(),
        p.endpoint.to_string(),
        p.slice.to_string(),
    )
}

/// `wg set` arguments that take a tunnel from `have` to `want`: first the
/// peers to remove (gone, or changed), then the ones to add. Never an
/// update of a peer in place: boringtun does not support that (it
/// panics), so a changed peer is removed and added again.
pub fn peer_changes(have: &[WgPeer], want: &[WgPeer]) -> (Vec<String>, Vec<String>) {
    let mut remove = Vec::new();
    for (k, _, _) in have.iter().filter(|h| !want.contains(h)) {
        remove.extend(["peer".to_string(), k.clone(), "remove".into()]);
    }
    let mut add = Vec::new();
    for (k, endpoint, allowed) in want.iter().filter(|w| !have.contains(w)) {
        add.extend([
            "peer".to_string(),
            k.clone(),
            "allowed-ips".into(),
            allowed.clone(),
            "endpoint".into(),
            endpoint.clone(),
        ]);
    }
    (remove, add)
}

/// The tunnel's peers now, from `wg show IF dump` (a line per peer after
/// the interface's: key, preshared key, endpoint, allowed IPs, ...).
fn current_peers(tunnel: &str) -> Result<Vec<WgPeer>, NetError> {
    Ok(wg_says(&["show", tunnel, "dump"], b"")?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
            ))
        })
        .collect())
}

fn wg() -> Result<PathBuf, NetError> {
    host::tool("wg", "wireguard-tools")
}

/// `wg ARGS`' stdout, given `stdin`.
fn wg_says(args: &[&str], stdin: &[u8]) -> Result<String, NetError> {
    use std::io::Write;
    let what = format!("wg {}", args.join(" "));
    let mut child = Command::new(wg()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::host(&what, e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(|e| NetError::host(&what, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::host(&what, e))?;
    if !out.status.success() {
        return Err(NetError::host(
            what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The tunnel's private key, made once per tunnel on this node, 0600 in
/// the data dir.
fn private_key(data: &Path, tunnel: &str) -> Result<PathBuf, NetError> {
    let dir = data.join("overlay");
    let path = dir.join(format!("{tunnel}.key"));
    if path.is_file() {
        return Ok(path);
    }
    let what = "make the tunnel's key";
    bulkhead_images::private::dir(&dir).map_err(|e| NetError::host(what, e))?;
    let key = wg_says(&["genkey"], b"")?;
    bulkhead_images::private::write(&path, format!("{key}\n").as_bytes())
        .map_err(|e| NetError::host(what, e))?;
    Ok(path)
}

/// The tenant's WireGuard tunnel, made unless there (kernel WireGuard,
/// else the userspace one), with its key, up; its public key and port.
fn ensure_wireguard(data: &Path, tunnel: &str) -> Result<LocalEnd, NetError> {
    wg()?;
    if host::link_exists(tunnel) && wg_says(&["show", tunnel, "listen-port"], b"").is_err() {
        // A plain one from before the server changed its mind.
        remove(tunnel)?;
    }
    let key = private_key(data, tunnel)?;
    if !host::link_exists(tunnel) {
        if let Err(kernel) = host::ip_batch(&[format!("link add {tunnel} type wireguard")], None) {
            userspace::start(tunnel, &key).map_err(|e| {
                NetError::host(
                    format!("make the tunnel {tunnel}"),
                    format!("no kernel WireGuard ({kernel}), and the userspace one: {e}"),
                )
            })?;
        }
    }
    // Set every time (the same key changes nothing): boringtun never
    // shows its private key, so there is no asking whether it has it.
    let private = std::fs::read(&key).map_err(|e| NetError::host("read the tunnel's key", e))?;
    host::run(
        &wg()?,
        &["set", tunnel, "private-key", &key.to_string_lossy()],
        b"",
        None,
    )?;
    host::ip_batch(&[format!("link set {tunnel} mtu {MTU} up")], None)?;
    let port = wg_says(&["show", tunnel, "listen-port"], b"")?;
    let port: u16 = port
        .parse()
        .map_err(|_| NetError::host(format!("the port of {tunnel}"), port))?;
    Ok(LocalEnd {
        iface: tunnel.to_string(),
        public_key: wg_says(&["pubkey"], &private)?,
        port,
    })
}

/// Sets the tunnel's peers to exactly `peers` and routes their slices
/// into it (and no other).
fn set_wireguard_peers(tunnel: &str, peers: &[Peer]) -> Result<(), NetError> {
    let want: Vec<WgPeer> = peers.iter().map(wg_peer).collect();
    let (remove, add) = peer_changes(&current_peers(tunnel)?, &want);
    for args in [remove, add].iter().filter(|a| !a.is_empty()) {
        let mut all = vec!["set", tunnel];
        all.extend(args.iter().map(String::as_str));
        host::run(&wg()?, &all, b"", None)?;
    }
    set_routes(tunnel, &peers.iter().map(|p| p.slice).collect::<Vec<_>>())
}

/// Routes `slices` into `tunnel`, and nothing else.
fn set_routes(tunnel: &str, slices: &[Subnet]) -> Result<(), NetError> {
    set_routes_via(tunnel, slices, |s| {
        format!("route replace {s} dev {tunnel}")
    })
}

/// Routes `slices` into `tunnel` (each as `route` says), and nothing else.
fn set_routes_via(
    tunnel: &str,
    slices: &[Subnet],
    route: impl Fn(&Subnet) -> String,
) -> Result<(), NetError> {
    let have = routes_into(tunnel)?;
    let mut lines: Vec<String> = slices
        .iter()
        .filter(|s| !have.contains(s))
        .map(route)
        .collect();
    lines.extend(
        have.iter()
            .filter(|h| !slices.contains(h))
            .map(|h| format!("route del {h} dev {tunnel}")),
    );
    if lines.is_empty() {
        return Ok(());
    }
    host::ip_batch(&lines, None)
}

fn routes_into(dev: &str) -> Result<Vec<Subnet>, NetError> {
    let what = format!("the routes into {dev}");
    let out = Command::new(host::tool("ip", "iproute2")?)
        .args(["-j", "-4", "route", "show", "dev", dev])
        .output()
        .map_err(|e| NetError::host(&what, e))?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(rows
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .filter_map(|d| Subnet::parse(d).ok())
        .collect())
}

/// Removes a tenant's tunnel of either kind (and the userspace one's
/// process and files).
pub fn remove(tunnel: &str) -> Result<(), NetError> {
    userspace::stop(tunnel)?;
    if host::link_exists(tunnel) {
        host::delete_link(tunnel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_sit_beside_their_bridges_within_ifnamsiz() {
        assert_eq!(tunnel_for("bh-t-acme"), "wh-t-acme");
        assert_eq!(tunnel_for("b1a2b-t-acme"), "w1a2b-t-acme");
        let long = crate::network::bridge_for(&crate::network::tenant_network(&"x".repeat(40)));
        assert!(tunnel_for(&long).len() <= 15 && tunnel_for(&long) != long);
    }

    #[test]
    fn public_keys_are_32_bytes_of_base64() {
        assert!(valid_public_key(
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
        ));
        for bad in [
            "",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D=",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D\n=",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 0.0.0.0/0",
        ] {
            assert!(!valid_public_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn peers_are_removed_and_added_never_changed_in_place() {
        let p = |k: &str, e: &str, a: &str| (k.to_string(), e.to_string(), a.to_string());
        let (k1, k2, k3) = ("K1=", "K2=", "K3=");
        let have = vec![
            p(k1, "10.78.0.12:1000", "10.200.0.64/26"),
            p(k2, "10.78.0.13:1000", "10.200.0.128/26"),
        ];
        let want = vec![
            p(k1, "10.78.0.12:1000", "10.200.0.64/26"),
            p(k2, "10.78.0.13:2000", "10.200.0.128/26"),
            p(k3, "10.78.0.14:1000", "10.200.0.192/26"),
        ];
        let (remove, add) = peer_changes(&have, &want);
        assert_eq!(remove, ["peer", k2, "remove"]);
        assert_eq!(
            add,
            [
                "peer",
                k2,
                "allowed-ips",
                "10.200.0.128/26",
                "endpoint",
                "10.78.0.13:2000",
                "peer",
                k3,
                "allowed-ips",
                "10.200.0.192/26",
                "endpoint",
                "10.78.0.14:1000"
            ]
        );
        assert_eq!(peer_changes(&want, &want), (vec![], vec![]));
        let (remove, add) = peer_changes(&want, &[]);
        assert_eq!((remove.len(), add.len()), (9, 0));
    }
}
