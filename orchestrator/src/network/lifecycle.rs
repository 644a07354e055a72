//! Networking over a workload's life: set up by its supervisor before the
//! workload starts, torn down when it ends (and by `rm`), and a sweep that
//! removes whatever workloads that are gone left behind. Every change ends
//! by rendering the rules from the store again, under `network.lock`.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;

use super::store::{self, Lease};
use super::{host, rules, Attachment, NetError, Network, Subnet};
use crate::runtime::record::{now_ms, RuntimeKind, WorkloadConfig};
use crate::runtime::state::State;

/// Serializes network changes between CLIs and supervisors: the rules
/// applied last are always rendered from the latest store.
pub fn lock(state: &State) -> Result<nix::fcntl::Flock<File>, NetError> {
    let path = state.paths().data().join("network.lock");
    let io = |e: std::io::Error| NetError::host(format!("lock {}", path.display()), e);
    std::fs::create_dir_all(state.paths().data()).map_err(io)?;
    let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| io(e.into()))
}

/// Renders both tables from the store and swaps them in (lock held).
pub fn apply(state: &State) -> Result<(), NetError> {
    let nets = store::networks(state)?;
    let leases: Vec<Attachment> = store::leases(state)?.into_iter().map(|l| l.attachment).collect();
    host::apply_rules(&rules::script(&nets, &leases))
}

/// Checks a new subnet against the host's own addresses (other than
/// bulkhead's bridges): routing to an overlapping network would break.
pub fn check_host_overlap(subnet: &Subnet, ours: &[Network]) -> Result<(), NetError> {
    match host_subnets(ours)?.into_iter().find(|(_, _, theirs)| theirs.overlaps(subnet)) {
        Some((ifname, addr, theirs)) => Err(NetError::Conflict(format!("subnet {subnet} overlaps {addr}/{} on this host's {ifname}: pick another with --subnet", theirs.prefix))),
        None => Ok(()),
    }
}

/// The host's own IPv4 addresses and their subnets, bulkhead's bridges left out.
fn host_subnets(ours: &[Network]) -> Result<Vec<(String, std::net::Ipv4Addr, Subnet)>, NetError> {
    Ok(host::host_addresses()?.into_iter().filter(|(ifname, _, _)| !ours.iter().any(|n| &n.bridge == ifname)).map(|(i, a, l)| (i, a, super::subnet::of_address(a, l))).collect())
}

/// A subnet for a new network when none is asked for: the first 10.N.0.0/16
/// from 10.89 on that neither another network nor the host's own addresses use.
pub fn pick_subnet(state: &State) -> Result<Subnet, NetError> {
    let ours = store::networks(state)?;
    let mut taken: Vec<Subnet> = ours.iter().map(|n| n.subnet).collect();
    taken.extend(host_subnets(&ours)?.into_iter().map(|(_, _, s)| s));
    let candidates = (89..=254u8).map(|b| Subnet { base: std::net::Ipv4Addr::new(10, b, 0, 0), prefix: 16 });
    super::subnet::first_free(candidates, &taken).ok_or_else(|| NetError::Conflict("no free 10.N.0.0/16 left for a new network: give one with --subnet".into()))
}

/// Adds a network to the store and brings up its bridge.
pub fn create(state: &State, name: &str, subnet: Subnet, bridge: Option<String>) -> Result<Network, NetError> {
    if !super::valid_name(name) {
        return Err(NetError::Input(format!("network name {name:?}: letters, digits, '_', '.', '-', at most 32, starting with a letter or digit (and not \"none\")")));
    }
    let bridge = bridge.unwrap_or_else(|| super::bridge_for(name));
    if bridge.is_empty() || bridge.len() > 15 || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(NetError::Input(format!("bridge name {bridge:?}: 1 to 15 letters, digits, '-', '_', '.'")));
    }
    let _l = lock(state)?;
    let existing = store::networks(state)?;
    if host::link_exists(&bridge) && !existing.iter().any(|n| n.bridge == bridge) {
        return Err(NetError::Conflict(format!("an interface named {bridge} exists on this host already and is not bulkhead's: pick another with --bridge")));
    }
    check_host_overlap(&subnet, &existing)?;
    let net = Network { name: name.to_string(), bridge, subnet, created_ms: now_ms(), cursor: 0 };
    store::create_network(state, &net)?;
    let up = host::ensure_bridge(&net).and_then(|()| apply(state));
    if let Err(e) = up {
        // Nothing half-made: the record and the bridge go again.
        let _ = store::remove_network(state, name);
        let _ = host::delete_link(&net.bridge);
        let _ = apply(state);
        return Err(e);
    }
    Ok(net)
}

/// Removes a network nothing uses, with its bridge.
pub fn remove(state: &State, name: &str) -> Result<Network, NetError> {
    let _l = lock(state)?;
    let net = store::remove_network(state, name)?;
    host::delete_link(&net.bridge)?;
    apply(state)?;
    Ok(net)
}

/// The default network, created on first use.
pub fn ensure_default(state: &State) -> Result<(), NetError> {
    match store::network(state, super::DEFAULT_NETWORK) {
        Ok(_) => Ok(()),
        Err(NetError::NoSuchNetwork(_)) => {
            let subnet = Subnet::parse(super::DEFAULT_SUBNET)?;
            match create(state, super::DEFAULT_NETWORK, subnet, Some(super::DEFAULT_BRIDGE.into())) {
                Err(NetError::Conflict(m)) if m.contains("overlaps") => Err(NetError::Conflict(format!(
                    "the default network: {m} (or replace it: `bulkhead network create --subnet 10.99.0.0/16 --bridge {} {}`)",
                    super::DEFAULT_BRIDGE,
                    super::DEFAULT_NETWORK
                ))),
                Err(NetError::Conflict(m)) if m.contains("exists already") => Ok(()), // a parallel run made it
                other => other.map(|_| ()),
            }
        }
        Err(e) => Err(e),
    }
}

/// What a supervisor holds while its workload runs: dropping it closes the
/// TAP (which then disappears), the namespace and the port sockets.
#[derive(Debug, Default)]
pub struct Attached {
    pub tap: Option<OwnedFd>,
    pub netns: Option<OwnedFd>,
    pub held_ports: Vec<OwnedFd>,
}

/// Sets up the workload's network before it starts: the bridge, its TAP or
/// veth + namespace, the port sockets, the rules. Undone on failure.
pub fn attach(state: &State, cfg: &WorkloadConfig) -> Result<Attached, NetError> {
    let mut out = Attached::default();
    if cfg.runtime == RuntimeKind::Container {
        let ns = host::new_netns()?;
        if cfg.network.is_none() {
            host::lo_up(&ns)?; // else veth_into does it
        }
        out.netns = Some(ns);
    }
    let Some(a) = &cfg.network else {
        return Ok(out);
    };
    let _l = lock(state)?;
    let result = (|| {
        let net = store::network(state, &a.network)?;
        host::ensure_bridge(&net)?;
        for p in &a.ports {
            out.held_ports.push(host::bind_port(p)?);
        }
        match (&cfg.runtime, &out.netns) {
            (RuntimeKind::Microvm, _) => out.tap = Some(host::open_tap(&a.host_if, &a.bridge)?),
            (RuntimeKind::Container, Some(ns)) => host::veth_into(a, ns)?,
            (RuntimeKind::Container, None) => {}
        }
        apply(state)
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            drop(out);
            let _ = host::delete_link(&a.host_if);
            Err(e)
        }
    }
}

/// Tears down what `attach` made and releases the lease (idempotent).
pub fn detach(state: &State, id: &str) -> Result<(), NetError> {
    let _l = lock(state)?;
    for name in [super::tap_name(id), super::veth_name(id)] {
        host::delete_link(&name)?;
    }
    if store::release(state, id)? {
        apply(state)?;
    }
    Ok(())
}

/// Removes what workloads that are gone left behind: leases, TAPs and
/// veths; recreates missing bridges (after a reboot); then renders the
/// rules again if any of that happened. Returns what it did, for people.
pub fn sweep(state: &State) -> Result<Vec<String>, NetError> {
    let records = state.list()?;
    let live: BTreeSet<&str> = records.iter().filter(|r| r.status().is_live()).map(|r| r.config.id.as_str()).collect();
    let is_live = |short: &str| live.iter().any(|id| id.starts_with(short));
    let _l = lock(state)?;
    let mut removed = Vec::new();
    let leases: Vec<Lease> = store::leases(state)?;
    for l in leases.iter().filter(|l| !live.contains(l.id.as_str())) {
        store::release(state, &l.id)?;
        removed.push(format!("lease {} on {} (workload {})", l.attachment.ip, l.attachment.network, crate::runtime::paths::short(&l.id)));
    }
    for name in host::links_with_prefix(&["bht", "bhv"]) {
        let id = &name[3..];
        if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !is_live(id) {
            host::delete_link(&name)?;
            removed.push(format!("interface {name}"));
        }
    }
    for n in &store::networks(state)? {
        if !host::link_exists(&n.bridge) {
            host::ensure_bridge(n)?;
            removed.push(format!("(recreated bridge {} of network {})", n.bridge, n.name));
        }
    }
    if !removed.is_empty() {
        apply(state)?;
    }
    Ok(removed)
}
