//! Networking over a workload's life: set up by its supervisor before the
//! workload starts, torn down when it ends (and by `rm`), and a sweep that
//! removes whatever workloads that are gone left behind. Every change ends
//! by rendering the rules from the store again, under `network.lock`.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;

use super::{host, overlay, rules, Attachment, NetError, Network, Subnet};
use crate::state::net::{self, Lease};
use crate::state::record::{now_ms, RuntimeKind, WorkloadConfig};
use crate::state::State;

/// Serializes network changes between CLIs and supervisors: the rules
/// applied last are always rendered from the latest store. Taken again in
/// the thread that holds it (a step that sweeps, then inserts), it is the
/// same lock. Taken before the store's ([`State::hold`]), as everywhere.
pub fn lock(state: &State) -> Result<NetLock, NetError> {
    let path = state.paths().data().join("network.lock");
    if NET_LOCKED.with(|l| l.borrow().as_ref() == Some(&path)) {
        return Ok(NetLock {
            held: None,
            _here: std::marker::PhantomData,
        });
    }
    let io = |e: std::io::Error| NetError::host(format!("lock {}", path.display()), e);
    bulkhead_images::private::data_root(state.paths().data()).map_err(io)?;
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        File::options().create(true).truncate(false).write(true),
        0o600,
    )
    .open(&path)
    .map_err(io)?;
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(e.into()))?;
    NET_LOCKED.with(|l| *l.borrow_mut() = Some(path));
    Ok(NetLock {
        held: Some(held),
        _here: std::marker::PhantomData,
    })
}

thread_local! {
    /// The network lock this thread holds (its path), if any.
    static NET_LOCKED: std::cell::RefCell<Option<std::path::PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// The network lock, let go when the outermost one drops.
#[derive(Debug)]
#[must_use = "the lock is let go when this drops"]
pub struct NetLock {
    held: Option<nix::fcntl::Flock<File>>,
    /// Dropped in the thread that took it (re-entry is per thread).
    _here: std::marker::PhantomData<*const ()>,
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            NET_LOCKED.with(|l| *l.borrow_mut() = None);
            drop(held);
        }
    }
}

/// Renders both tables from the store and swaps them in (lock held);
/// then forwarding goes on if there are networks (after the rules, so
/// nothing is forwarded before our forward chain is there). Whether the
/// host forwarded before bulkhead is found once, before that, and kept.
pub fn apply(state: &State) -> Result<(), NetError> {
    let nets = net::networks(state)?;
    let leases: Vec<Attachment> = net::leases(state)?
        .into_iter()
        .map(|l| l.attachment)
        .collect();
    let mut policy = net::host_policy(state)?;
    // A node without networks still passes ingress connections on.
    let forwards = !nets.is_empty() || !policy.ingress.is_empty();
    if forwards && policy.forwarded_before_us.is_none() {
        let on = host::forwarding_on()?;
        net::update_host_policy(state, |p| p.forwarded_before_us = Some(on))?;
        policy.forwarded_before_us = Some(on);
    }
    let names = super::HostNames::of(state.paths());
    host::claim_names(&names, state.paths().data())?;
    // Counts since the last read are lost with the old table: a few
    // packets at most, in the time between this read and the swap.
    let refused = host::refused_counts(&names.table());
    host::apply_rules(&rules::script(
        &names.table(),
        &nets,
        &leases,
        &policy,
        &refused,
    ))?;
    if forwards {
        host::enable_forwarding()?;
    }
    super::dns::sync(&nets, &leases)
}

/// After one workload's lease came (`added`, its interface made) or went
/// (released, its interface gone): only its set elements change when
/// that is all it changes and our tables are there (`rules::lease_change`),
/// else the whole script is rendered as for any change. The resolver's
/// records follow either way. Lock held.
fn apply_lease(state: &State, a: &Attachment, added: bool) -> Result<(), NetError> {
    let names = super::HostNames::of(state.paths());
    let Some(change) = rules::lease_change(&names.table(), a, added) else {
        return apply(state);
    };
    // The tag is this data dir's (as a whole apply checks) before its table is touched.
    host::claim_names(&names, state.paths().data())?;
    // Refused (our tables missing or from an older bulkhead, an element
    // not there): the whole script puts everything right.
    if host::apply_rules(&change).is_err() {
        return apply(state);
    }
    let nets = net::networks(state)?;
    let leases: Vec<Attachment> = net::leases(state)?
        .into_iter()
        .map(|l| l.attachment)
        .collect();
    super::dns::sync(&nets, &leases)
}

/// What the walls refused of each workload so far, by counter name
/// (`egress::refused_counter`): packets and bytes.
pub fn refused(state: &State) -> rules::Refused {
    host::refused_counts(&super::HostNames::of(state.paths()).table())
}

/// One attachment's egress policy and what was refused of it, as
/// `inspect` and `network inspect` show them.
pub fn egress_json(a: &Attachment, refused: &rules::Refused) -> serde_json::Value {
    let (packets, bytes) = refused
        .get(&super::egress::refused_counter(&a.host_if))
        .copied()
        .unwrap_or_default();
    let cidrs = |l: &[super::Subnet]| l.iter().map(ToString::to_string).collect::<Vec<_>>();
    serde_json::json!({
        "allow": cidrs(&a.allow_egress),
        "deny": cidrs(&a.deny_egress),
        "internet": !a.no_internet,
        "refused": {"packets": packets, "bytes": bytes},
    })
}

/// The cluster's published ports as this node balances them, and every
/// node's address (the node daemon sets them at each sync); the rules are
/// rendered again when they changed. Whether they did.
pub fn set_ingress(
    state: &State,
    mut ports: Vec<net::IngressPort>,
    mut nodes: Vec<std::net::Ipv4Addr>,
) -> Result<bool, NetError> {
    ports.sort_by_key(|p| (p.proto, p.port));
    nodes.sort();
    nodes.dedup();
    let p = net::host_policy(state)?;
    if p.ingress == ports && p.nodes == nodes {
        return Ok(false);
    }
    let _l = lock(state)?;
    let changed = net::update_host_policy(state, |p| {
        p.ingress = ports;
        p.nodes = nodes;
    })?;
    if changed {
        apply(state)?;
    }
    Ok(changed)
}

/// A workload's egress: what it allows, what it denies, whether it is
/// without the internet.
pub type EgressWant = (Vec<Subnet>, Vec<Subnet>, bool);

/// Sets running workloads' egress, by id (a tenant policy changed under
/// them): their leases change and the rules are rendered again if any
/// did. Which changed.
pub fn set_egress(
    state: &State,
    wants: &std::collections::BTreeMap<String, EgressWant>,
) -> Result<Vec<String>, NetError> {
    let differs = |a: &Attachment, (allow, deny, no_internet): &EgressWant| {
        a.allow_egress != *allow || a.deny_egress != *deny || a.no_internet != *no_internet
    };
    // Read once, without the lock: a node asks at every sync, and nearly
    // always nothing changed.
    let mut changed: Vec<String> = net::leases(state)?
        .iter()
        .filter(|l| wants.get(&l.id).is_some_and(|w| differs(&l.attachment, w)))
        .map(|l| l.id.clone())
        .collect();
    changed.dedup();
    if changed.is_empty() {
        return Ok(changed);
    }
    let _l = lock(state)?;
    for id in &changed {
        if let Some((allow, deny, no_internet)) = wants.get(id) {
            net::update_leases(state, id, |a| {
                a.allow_egress = allow.clone();
                a.deny_egress = deny.clone();
                a.no_internet = *no_internet;
            })?;
        }
    }
    apply(state)?;
    Ok(changed)
}

/// The addresses of the control plane and its store, which no workload
/// reaches whatever it allows (the node daemon sets them); the rules are
/// rendered again when they changed. Whether they did.
pub fn set_protected(state: &State, mut protected: Vec<Subnet>) -> Result<bool, NetError> {
    protected.sort_by_key(|s| (u32::from(s.base), s.prefix));
    protected.dedup();
    let _l = lock(state)?;
    let changed = net::update_host_policy(state, |p| p.protected = protected)?;
    if changed {
        apply(state)?;
    }
    Ok(changed)
}

/// Puts back what the host lost of our walls while networks exist: our
/// tables (a firewall reload flushes them: workloads are cut off until
/// then, never opened) and the fail-closed routing rules. What it did.
pub fn check_walls(state: &State) -> Result<Vec<String>, NetError> {
    let _l = lock(state)?;
    let nets = net::networks(state)?;
    if nets.is_empty() {
        return Ok(Vec::new());
    }
    let mut fixed = Vec::new();
    let bridges: Vec<&str> = nets.iter().map(|n| n.bridge.as_str()).collect();
    fixed.extend(
        host::ensure_fail_closed(&bridges)?
            .into_iter()
            .map(|r| format!("routing: {r}")),
    );
    let table = super::HostNames::of(state.paths()).table();
    if !host::tables_present(&table) {
        apply(state)?;
        fixed.push(format!(
            "the nftables tables inet/bridge {table}, which were gone"
        ));
    }
    Ok(fixed)
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
    Ok(host::host_addresses()?
        .into_iter()
        .filter(|(ifname, _, _)| !ours.iter().any(|n| &n.bridge == ifname))
        .map(|(i, a, l)| (i, a, crate::state::subnet::of_address(a, l)))
        .collect())
}

/// A subnet for a new network when none is asked for: the first /`prefix`
/// (16 to 29) from 10.89.0.0 up to 10.254.255.255 that neither another
/// network nor the host's own addresses use.
pub fn pick_subnet(state: &State, prefix: u8) -> Result<Subnet, NetError> {
    let ours = net::networks(state)?;
    let mut taken: Vec<Subnet> = ours.iter().map(|n| n.subnet).collect();
    taken.extend(host_subnets(&ours)?.into_iter().map(|(_, _, s)| s));
    let prefix = prefix.clamp(16, 29);
    let step = 1u32 << (32 - u32::from(prefix));
    let (first, end) = (
        u32::from(std::net::Ipv4Addr::new(10, 89, 0, 0)),
        u32::from(std::net::Ipv4Addr::new(10, 255, 0, 0)),
    );
    let candidates = (first..end).step_by(step as usize).map(|b| Subnet {
        base: std::net::Ipv4Addr::from(b),
        prefix,
    });
    crate::state::subnet::first_free(candidates, &taken).ok_or_else(|| NetError::Conflict(format!("no free /{prefix} left in 10.89.0.0-10.254.255.255 for a new network: give one with --subnet")))
}

/// Adds a network to the store and brings up its bridge.
pub fn create(
    state: &State,
    name: &str,
    subnet: Subnet,
    bridge: Option<String>,
) -> Result<Network, NetError> {
    let _l = lock(state)?;
    create_locked(state, name, subnet, bridge, None)
}

fn create_locked(
    state: &State,
    name: &str,
    subnet: Subnet,
    bridge: Option<String>,
    tenant: Option<&str>,
) -> Result<Network, NetError> {
    if !super::valid_name(name) {
        return Err(NetError::Input(format!("network name {name:?}: letters, digits, '_', '.', '-', at most 32, starting with a letter or digit (and not \"none\")")));
    }
    let bridge = bridge.unwrap_or_else(|| super::HostNames::of(state.paths()).bridge_for(name));
    if !super::valid_ifname(&bridge) {
        return Err(NetError::Input(format!(
            "bridge name {bridge:?}: 1 to 15 letters, digits, '-', '_', '.'"
        )));
    }
    let existing = net::networks(state)?;
    if host::link_exists(&bridge) && !existing.iter().any(|n| n.bridge == bridge) {
        return Err(NetError::Conflict(format!("an interface named {bridge} exists on this host already and is not bulkhead's: pick another with --bridge")));
    }
    check_host_overlap(&subnet, &existing)?;
    let net = Network {
        name: name.to_string(),
        bridge,
        subnet,
        created_ms: now_ms(),
        cursor: 0,
        tenant: tenant.map(str::to_string),
        tunnel: None,
        vips: net::Vips::new(),
    };
    net::create_network(state, &net)?;
    let up = host::ensure_bridge(&net).and_then(|()| apply(state));
    if let Err(e) = up {
        // Nothing half-made: the record and the bridge go again.
        let _ = net::remove_network(state, name);
        let _ = host::delete_bridge(&net.bridge);
        let _ = apply(state);
        return Err(e);
    }
    Ok(net)
}

/// Removes a network nothing uses, with its bridge.
pub fn remove(state: &State, name: &str) -> Result<Network, NetError> {
    let _l = lock(state)?;
    let net = net::remove_network(state, name)?;
    super::dns::stop(&net.bridge)?;
    if net.tenant.is_some() {
        overlay::remove(&overlay::tunnel_for(&net.bridge))?;
    }
    host::delete_bridge(&net.bridge)?;
    apply(state)?;
    Ok(net)
}

/// The network of a cluster tenant's instances on this node, made on
/// first use (its own bridge): tenants never share one. Its subnet is
/// `slice`, the node's slice of the tenant's range as the server gave it
/// (a network made on another subnet is made again once it is empty), or
/// without one a free /24.
pub fn ensure_tenant_network(
    state: &State,
    tenant: &str,
    slice: Option<Subnet>,
) -> Result<String, NetError> {
    let name = super::tenant_network(tenant);
    let _l = lock(state)?;
    match net::network(state, &name).map_err(NetError::from) {
        Ok(n) if n.tenant.as_deref() != Some(tenant) => return Err(NetError::Conflict(format!("network {name:?} exists and is not tenant {tenant:?}'s: remove it (`bulkhead network rm {name}`)"))),
        Ok(n) if slice.is_none_or(|s| s == n.subnet) => return Ok(name),
        Ok(n) => {
            let used = net::leases(state)?.iter().any(|l| l.attachment.network == name);
            if used {
                // Its instances keep their addresses; the next start after
                // they are gone takes the slice.
                return Ok(name);
            }
            net::remove_network(state, &name)?;
            super::dns::stop(&n.bridge)?;
            overlay::remove(&overlay::tunnel_for(&n.bridge))?;
            host::delete_bridge(&n.bridge)?;
        }
        Err(NetError::NoSuchNetwork(_)) => {}
        Err(e) => return Err(e),
    }
    let subnet = match slice {
        Some(s) => s,
        None => pick_subnet(state, 24)?,
    };
    create_locked(state, &name, subnet, None, Some(tenant))?;
    Ok(name)
}

/// A cluster tenant's network here, if it exists and has workloads (its
/// resolver runs); the caller holds the network lock.
fn tenant_network_in_use(state: &State, tenant: &str) -> Result<Option<Network>, NetError> {
    let name = super::tenant_network(tenant);
    let Ok(net) = net::network(state, &name) else {
        return Ok(None);
    };
    let used = net::leases(state)?
        .iter()
        .any(|l| l.attachment.network == name);
    Ok((net.tenant.as_deref() == Some(tenant) && used).then_some(net))
}

/// Gives the resolver of a cluster tenant's network here its service names
/// (the node daemon, at each sync). Under the network lock, and only while
/// the network has workloads (its resolver runs): a write racing the
/// network's removal or its resolver's stop would leave the file behind.
pub fn set_tenant_names(
    state: &State,
    tenant: &str,
    names: &super::dns::ClusterNames,
) -> Result<(), NetError> {
    let _l = lock(state)?;
    let Some(net) = tenant_network_in_use(state, tenant)? else {
        return Ok(());
    };
    super::dns::set_cluster_names(&net.bridge, names)
}

/// Sets the service addresses of a cluster tenant's network here and the
/// instances behind each (the node daemon, at each sync); the rules are
/// rendered again when they changed. Only while the network has workloads.
pub fn set_tenant_vips(state: &State, tenant: &str, vips: &net::Vips) -> Result<(), NetError> {
    let _l = lock(state)?;
    let Some(net) = tenant_network_in_use(state, tenant)? else {
        return Ok(());
    };
    if net::update_network(state, &net.name, |n| n.vips = vips.clone())? {
        apply(state)?;
    }
    Ok(())
}

/// Removes a tenant's network once no workload is on it; whether it did.
pub fn release_tenant_network(state: &State, tenant: &str) -> Result<bool, NetError> {
    let name = super::tenant_network(tenant);
    let _l = lock(state)?;
    let Ok(net) = net::network(state, &name) else {
        return Ok(false);
    };
    if net.tenant.as_deref() != Some(tenant)
        || net::leases(state)?
            .iter()
            .any(|l| l.attachment.network == name)
    {
        return Ok(false);
    }
    net::remove_network(state, &name)?;
    // The rules first: whatever of the rest fails, no rule (a service
    // address, a tunnel's) outlives the network's record.
    let applied = apply(state);
    super::dns::stop(&net.bridge)?;
    overlay::remove(&overlay::tunnel_for(&net.bridge))?;
    host::delete_bridge(&net.bridge)?;
    applied?;
    Ok(true)
}

/// Joins a cluster tenant's network here to the tenant's other nodes (the
/// node daemon, when the server's peers change): its tunnel made unless
/// there, its peers exactly `peers` (one whose slice overlaps ours is
/// left out: a stale record), their slices routed into it, the rules
/// rendered again when they changed. Only while the network has
/// workloads; this end's key and port for the server (`None`: no such
/// network here).
pub fn set_tenant_overlay(
    state: &State,
    join: &overlay::Join,
    peers: &[overlay::Peer],
) -> Result<Option<overlay::LocalEnd>, NetError> {
    let _l = lock(state)?;
    let Some(net) = tenant_network_in_use(state, join.tenant)? else {
        return Ok(None);
    };
    let iface = overlay::tunnel_for(&net.bridge);
    let end = overlay::ensure(state.paths().data(), &iface, join)?;
    let peers: Vec<overlay::Peer> = peers
        .iter()
        .filter(|p| !p.slice.overlaps(&net.subnet))
        .cloned()
        .collect();
    overlay::set_peers(&iface, join, &peers)?;
    let tunnel = net::Tunnel {
        iface,
        peers: peers.iter().map(|p| p.slice).collect(),
    };
    if net::update_network(state, &net.name, |n| n.tunnel = Some(tunnel))? {
        apply(state)?;
    }
    Ok(Some(end))
}

/// The default network, created on first use.
pub fn ensure_default(state: &State) -> Result<(), NetError> {
    match net::network(state, super::DEFAULT_NETWORK).map_err(NetError::from) {
        Ok(_) => Ok(()),
        Err(NetError::NoSuchNetwork(_)) => {
            // Another data dir on this host takes a free /16 of its own
            // where the default one is in use on the host (by the first).
            let names = super::HostNames::of(state.paths());
            let mut subnet = Subnet::parse(super::DEFAULT_SUBNET)?;
            if !names.is_default() && check_host_overlap(&subnet, &net::networks(state)?).is_err() {
                subnet = pick_subnet(state, 16)?;
            }
            let bridge = names.default_bridge();
            match create(state, super::DEFAULT_NETWORK, subnet, Some(bridge.clone())) {
                Err(NetError::Conflict(m)) if m.contains("overlaps") => Err(NetError::Conflict(format!(
                    "the default network: {m} (or replace it: `bulkhead network create --subnet 10.99.0.0/16 --bridge {bridge} {}`)",
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
    /// A container's user namespace, which owns `netns`.
    pub userns: Option<OwnedFd>,
    pub held_ports: Vec<OwnedFd>,
}

/// Sets up the workload's network before it starts: the bridge, its TAP or
/// veth + namespace, the port sockets, the rules. Undone on failure.
pub fn attach(state: &State, cfg: &WorkloadConfig) -> Result<Attached, NetError> {
    let mut out = Attached::default();
    if cfg.runtime == RuntimeKind::Container {
        let ns = match cfg.userns {
            Some(u) => {
                let (user, net) =
                    super::userns::new_user_and_net(u.base, crate::state::record::UserIds::SIZE)?;
                out.userns = Some(user);
                net
            }
            None => host::new_netns()?,
        };
        if cfg.network.is_none() {
            host::lo_up(&ns)?; // else veth_into does it
        }
        out.netns = Some(ns);
    }
    let Some(a) = &cfg.network else {
        return Ok(out);
    };
    let _l = lock(state)?;
    let _db = state.hold()?;
    let result = (|| {
        let net = net::network(state, &a.network)?;
        for p in &a.ports {
            out.held_ports.push(host::bind_port(p)?);
        }
        // The bridge is made or put right with the workload's interface.
        match (&cfg.runtime, &out.netns) {
            (RuntimeKind::Microvm, _) => out.tap = Some(host::open_tap(&net, &a.host_if)?),
            (RuntimeKind::Container, Some(ns)) => host::veth_into(&net, a, ns)?,
            (RuntimeKind::Container, None) => host::ensure_bridge(&net)?,
        }
        // The lease as the store holds it (the source of every rendering).
        match net::leases(state)?.into_iter().find(|l| l.id == cfg.id) {
            Some(l) => apply_lease(state, &l.attachment, true),
            None => apply(state),
        }
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
    let _db = state.hold()?;
    for name in [super::tap_name(id), super::veth_name(id)] {
        host::delete_link(&name)?;
    }
    let lease = net::leases(state)?.into_iter().find(|l| l.id == id);
    if net::release(state, id)? {
        match lease {
            Some(l) => apply_lease(state, &l.attachment, false)?,
            None => apply(state)?,
        }
    }
    Ok(())
}

/// Removes what workloads that are gone left behind: leases, TAPs and
/// veths; recreates missing bridges (after a reboot); then renders the
/// rules again if any of that happened. Returns what it did, for people.
pub fn sweep(state: &State) -> Result<Vec<String>, NetError> {
    let _l = lock(state)?;
    let _db = state.hold()?;
    // Both locks are held from here on: no record or lease is written and
    // no interface made (those need them) while this reads, so what it
    // reads is one moment's view whatever the order.
    let leases: Vec<Lease> = net::leases(state)?;
    let nets = net::networks(state)?;
    let records = state.list()?;
    let live: BTreeSet<&str> = records
        .iter()
        .filter(|r| r.status().is_live())
        .map(|r| r.config.id.as_str())
        .collect();
    let is_live = |short: &str| live.iter().any(|id| id.starts_with(short));
    // Only ports of our own bridges: another data dir's workloads on this
    // host are not in our store, and their interfaces are theirs. Which
    // bridge a link is on costs a look at every link (`ip`): only when
    // there is a link by our names that no live workload of ours explains.
    let prefixes = ["bht", "bhv"];
    let unexplained = host::links_named(&prefixes)
        .iter()
        .any(|n| !is_live(&n[3..]));
    let bridges: Vec<&str> = nets.iter().map(|n| n.bridge.as_str()).collect();
    let links = if unexplained {
        host::ports_of(&bridges, &prefixes)?
    } else {
        Vec::new()
    };
    let mut removed = Vec::new();
    for l in leases.iter().filter(|l| !live.contains(l.id.as_str())) {
        net::release(state, &l.id)?;
        removed.push(format!(
            "lease {} on {} (workload {})",
            l.attachment.ip,
            l.attachment.network,
            crate::state::paths::short(&l.id)
        ));
    }
    for name in links {
        let id = &name[3..];
        if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !is_live(id) {
            host::delete_link(&name)?;
            removed.push(format!("interface {name}"));
        }
    }
    for n in &nets {
        if !host::link_exists(&n.bridge) {
            host::ensure_bridge(n)?;
            removed.push(format!(
                "(recreated bridge {} of network {})",
                n.bridge, n.name
            ));
        }
    }
    if !removed.is_empty() {
        apply(state)?;
    }
    Ok(removed)
}
