//! Networks and address leases in the state store. A lease is written in
//! the same transaction as the workload's record, so an address is never
//! handed out twice, and survives restarts of everything.

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use std::net::Ipv4Addr;

use super::publish::Publish;
use super::record::Record;
use super::subnet::{allocate, mac_for, Subnet};
use super::{db, insert_in, State, StateError};

/// A network: a bridge and the subnet its workloads get addresses from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub subnet: Subnet,
    pub created_ms: u64,
    /// Where the next address search starts (see `subnet::allocate`).
    #[serde(default)]
    pub cursor: u32,
    /// The cluster tenant whose instances on this node it holds (made on
    /// first use, removed with the last): tenants never share a bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A cluster tenant's tunnel to its instances on other nodes (the node
    /// daemon sets it; `network::overlay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
    /// A cluster tenant's service addresses -> their instances' addresses
    /// (the node daemon sets them; connections balanced over those).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vips: Vips,
}

/// A service's address -> the addresses of the instances behind it.
pub type Vips = std::collections::BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>;

/// The overlay end of a tenant's network on this node: the interface and
/// the other nodes' slices of the tenant's range routed into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub iface: String,
    pub peers: Vec<Subnet>,
}

impl Network {
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// A workload's place on a network: written into its config when `run`
/// allocates it, and kept as a lease in the store until released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The host side: the TAP (microvm) or the veth end on the bridge.
    pub host_if: String,
    pub ports: Vec<Publish>,
    pub nameservers: Vec<String>,
    /// Beyond the internet: what `--allow-egress` opened (see `egress`).
    #[serde(default)]
    pub allow_egress: Vec<Subnet>,
    /// What `--deny-egress` closed, even where the internet or an allowance
    /// would open it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_egress: Vec<Subnet>,
    /// `--no-internet`: nothing beyond its network but what it allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_internet: bool,
    /// What the network's resolver answers with this address (the
    /// workload's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// Host interface names: a kind letter and the id's first 12 digits (15 bytes, IFNAMSIZ-1).
pub fn tap_name(id: &str) -> String {
    format!("bht{}", super::paths::short(id))
}

pub fn veth_name(id: &str) -> String {
    format!("bhv{}", super::paths::short(id))
}

/// One published port of a cluster service as this node balances it
/// (`cluster::ingress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngressPort {
    #[schema(value_type = String)]
    pub proto: super::publish::Proto,
    /// The host port, the same on every node.
    pub port: u16,
    /// Where its connections go from this node: `address:port` each.
    #[schema(value_type = Vec<String>)]
    pub backends: Vec<std::net::SocketAddrV4>,
}

/// This host's side of the policy, kept in the state store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPolicy {
    /// The control plane's and the store's addresses, as this host's node
    /// daemon knows them: no workload reaches them, whatever it allows.
    #[serde(default)]
    pub protected: Vec<Subnet>,
    /// Whether the host forwarded packets before bulkhead turned
    /// forwarding on (found once, then kept): only then is forwarding that
    /// is not bulkhead's let through (a router, another container engine).
    #[serde(default)]
    pub forwarded_before_us: Option<bool>,
    /// Cluster services' ports published on every node, and where each
    /// goes from here (`cluster::ingress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressPort>,
    /// Every node's address: connections another node passed on are taken
    /// to this node's own instance, never passed on again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Ipv4Addr>,
}

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// `<network>/<ip>` -> [`Lease`].
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// `policy` -> this host's [`HostPolicy`].
const HOST: TableDefinition<&str, &[u8]> = TableDefinition::new("host");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub attachment: Attachment,
}

/// What `run` asks for: a network and the ports to publish on the host.
#[derive(Debug, Clone)]
pub struct Want {
    pub network: String,
    pub ports: Vec<Publish>,
    pub nameservers: Vec<String>,
    /// `--allow-egress`: reachable beyond the internet.
    pub allow_egress: Vec<Subnet>,
    /// `--deny-egress`: never reachable.
    pub deny_egress: Vec<Subnet>,
    /// `--no-internet`.
    pub no_internet: bool,
}

pub(super) fn corrupt(e: serde_json::Error) -> StateError {
    StateError::Corrupt(e.to_string())
}

pub(super) fn rows<
    T: redb::ReadableTable<&'static str, &'static [u8]>,
    V: serde::de::DeserializeOwned,
>(
    t: &T,
) -> Result<Vec<V>, StateError> {
    let mut v = Vec::new();
    for row in t.iter().map_err(db)? {
        let (_, value) = row.map_err(db)?;
        v.push(serde_json::from_slice(value.value()).map_err(corrupt)?);
    }
    Ok(v)
}

pub(super) fn read_all<V: serde::de::DeserializeOwned>(
    state: &State,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<V>, StateError> {
    state.with_db(|d| {
        let tx = d.begin_read().map_err(db)?;
        match tx.open_table(def) {
            Ok(t) => Ok(rows(&t)?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(db(e)),
        }
    })
}

pub fn networks(state: &State) -> Result<Vec<Network>, StateError> {
    let mut v: Vec<Network> = read_all(state, NETWORKS)?;
    v.sort_by_key(|n| n.created_ms);
    Ok(v)
}

pub fn network(state: &State, name: &str) -> Result<Network, StateError> {
    networks(state)?
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| StateError::NoSuchNetwork(name.to_string()))
}

pub fn leases(state: &State) -> Result<Vec<Lease>, StateError> {
    read_all(state, LEASES)
}

/// This host's egress policy (the default until a node daemon says more).
pub fn host_policy(state: &State) -> Result<HostPolicy, StateError> {
    state.with_db(|d| {
        let tx = d.begin_read().map_err(db)?;
        let t = match tx.open_table(HOST) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HostPolicy::default()),
            Err(e) => return Err(db(e)),
        };
        Ok(match t.get("policy").map_err(db)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
            None => HostPolicy::default(),
        })
    })
}

/// Changes the host's egress policy in one transaction; whether it changed.
pub fn update_host_policy(
    state: &State,
    change: impl FnOnce(&mut HostPolicy),
) -> Result<bool, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let changed = {
            let mut t = tx.open_table(HOST).map_err(db)?;
            let old: HostPolicy = match t.get("policy").map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => HostPolicy::default(),
            };
            let mut new = old.clone();
            change(&mut new);
            if new != old {
                t.insert("policy", serde_json::to_vec(&new).map_err(db)?.as_slice())
                    .map_err(db)?;
            }
            new != old
        };
        tx.commit().map_err(db)?;
        Ok(changed)
    })
}

/// Adds a network: its name and bridge must be free and its subnet must
/// not overlap another network's.
pub fn create_network(state: &State, net: &Network) -> Result<(), StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(NETWORKS).map_err(db)?;
            let all: Vec<Network> = rows(&t)?;
            if all.iter().any(|n| n.name == net.name) {
                return Err(StateError::Conflict(format!(
                    "a network named {:?} exists already",
                    net.name
                )));
            }
            if let Some(n) = all.iter().find(|n| n.bridge == net.bridge) {
                return Err(StateError::Conflict(format!(
                    "the bridge {} belongs to network {:?} already",
                    net.bridge, n.name
                )));
            }
            if let Some(n) = all.iter().find(|n| n.subnet.overlaps(&net.subnet)) {
                return Err(StateError::Conflict(format!(
                    "subnet {} overlaps network {:?} ({}): pick another with --subnet",
                    net.subnet, n.name, n.subnet
                )));
            }
            let bytes = serde_json::to_vec(net).map_err(db)?;
            t.insert(net.name.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    })
}

/// Changes a network's record in one transaction; whether it changed.
pub fn update_network(
    state: &State,
    name: &str,
    change: impl FnOnce(&mut Network),
) -> Result<bool, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let changed = {
            let mut t = tx.open_table(NETWORKS).map_err(db)?;
            let mut net: Network = match t.get(name).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => return Err(StateError::NoSuchNetwork(name.to_string())),
            };
            let old = net.clone();
            change(&mut net);
            let changed = net != old;
            if changed {
                let bytes = serde_json::to_vec(&net).map_err(db)?;
                t.insert(name, bytes.as_slice()).map_err(db)?;
            }
            changed
        };
        tx.commit().map_err(db)?;
        Ok(changed)
    })
}

/// Drops a network that no workload holds an address on.
pub fn remove_network(state: &State, name: &str) -> Result<Network, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let net = {
            let mut t = tx.open_table(NETWORKS).map_err(db)?;
            let net: Network = match t.get(name).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => return Err(StateError::NoSuchNetwork(name.to_string())),
            };
            let users: Vec<Lease> = rows(&tx.open_table(LEASES).map_err(db)?)?;
            let users: Vec<&str> = users
                .iter()
                .filter(|l| l.attachment.network == name)
                .map(|l| super::paths::short(&l.id))
                .collect();
            if !users.is_empty() {
                return Err(StateError::Conflict(format!(
                    "network {name:?} is in use by {} (remove them first)",
                    users.join(", ")
                )));
            }
            t.remove(name).map_err(db)?;
            net
        };
        tx.commit().map_err(db)?;
        Ok(net)
    })
}

/// Inserts the workload's record and, for `want`, a lease on that network:
/// the next free address, and its ports unless another workload publishes
/// them already. One transaction: all of it or nothing.
pub fn insert_workload(
    state: &State,
    rec: &mut Record,
    want: Option<&Want>,
) -> Result<(), StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        if let Some(w) = want {
            let mut nets = tx.open_table(NETWORKS).map_err(db)?;
            let mut net: Network = match nets.get(w.network.as_str()).map_err(db)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
                None => return Err(StateError::NoSuchNetwork(w.network.clone())),
            };
            let mut leases_t = tx.open_table(LEASES).map_err(db)?;
            let all: Vec<Lease> = rows(&leases_t)?;
            check_ports(&all, &w.ports)?;
            let taken: BTreeSet<_> = all
                .iter()
                .filter(|l| l.attachment.network == net.name)
                .map(|l| l.attachment.ip)
                .collect();
            let (ip, cursor) = allocate(&net.subnet, &taken, net.cursor).ok_or_else(|| {
                StateError::Conflict(format!(
                    "network {:?} ({}) has no free address left",
                    net.name, net.subnet
                ))
            })?;
            net.cursor = cursor;
            let id = &rec.config.id;
            let kind = rec.config.runtime;
            let attachment = Attachment {
                network: net.name.clone(),
                bridge: net.bridge.clone(),
                ip,
                prefix: net.subnet.prefix,
                gateway: net.gateway(),
                mac: mac_for(ip),
                host_if: match kind {
                    crate::state::record::RuntimeKind::Microvm => tap_name(id),
                    crate::state::record::RuntimeKind::Container => veth_name(id),
                },
                ports: w.ports.clone(),
                nameservers: w.nameservers.clone(),
                allow_egress: w.allow_egress.clone(),
                deny_egress: w.deny_egress.clone(),
                no_internet: w.no_internet,
                names: vec![rec.config.name.clone()],
            };
            let lease = serde_json::to_vec(&Lease {
                id: id.clone(),
                attachment: attachment.clone(),
            })
            .map_err(db)?;
            leases_t
                .insert(format!("{}/{ip}", net.name).as_str(), lease.as_slice())
                .map_err(db)?;
            nets.insert(
                net.name.as_str(),
                serde_json::to_vec(&net).map_err(db)?.as_slice(),
            )
            .map_err(db)?;
            rec.config.network = Some(attachment);
        }
        let needs_ids = rec.config.userns.is_some_and(|u| u.base == 0)
            || rec
                .config
                .vm
                .as_ref()
                .and_then(|v| v.jail.as_ref())
                .is_some_and(|j| j.uid == 0);
        let host = if needs_ids {
            let dir = crate::state::hostids::default_dir();
            Some(
                crate::state::hostids::HostIds::lock(&dir, state.paths().data()).map_err(
                    |error| StateError::Io {
                        path: dir.display().to_string(),
                        error,
                    },
                )?,
            )
        } else {
            None
        };
        crate::state::assign_ids(&tx, rec, host.as_ref())?;
        insert_in(&tx, rec)?;
        tx.commit().map_err(db)?;
        Ok(())
    })
}

/// Refuses ports another workload publishes already.
pub fn check_ports(leases: &[Lease], ports: &[Publish]) -> Result<(), StateError> {
    for p in ports {
        if let Some(l) = leases
            .iter()
            .find(|l| l.attachment.ports.iter().any(|q| q.clashes(p)))
        {
            return Err(StateError::Conflict(format!(
                "port {}/{} is already published by workload {}",
                p.host_port,
                p.proto,
                super::paths::short(&l.id)
            )));
        }
    }
    Ok(())
}

/// Changes the leases of workload `id` in one transaction; whether any changed.
pub fn update_leases(
    state: &State,
    id: &str,
    change: impl Fn(&mut Attachment),
) -> Result<bool, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let changed = {
            let mut t = tx.open_table(LEASES).map_err(db)?;
            let mut new = Vec::new();
            for row in t.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                let mut lease: Lease = serde_json::from_slice(v.value()).map_err(corrupt)?;
                if lease.id == id {
                    let old = lease.attachment.clone();
                    change(&mut lease.attachment);
                    if lease.attachment != old {
                        new.push((
                            k.value().to_string(),
                            serde_json::to_vec(&lease).map_err(db)?,
                        ));
                    }
                }
            }
            for (k, v) in &new {
                t.insert(k.as_str(), v.as_slice()).map_err(db)?;
            }
            !new.is_empty()
        };
        tx.commit().map_err(db)?;
        Ok(changed)
    })
}

/// Gives back the workload's address and ports; whether it held any.
pub fn release(state: &State, id: &str) -> Result<bool, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let n = remove_leases_in(&tx, id)?;
        tx.commit().map_err(db)?;
        Ok(n > 0)
    })
}

/// Removes `id`'s leases inside an open transaction; how many there were.
pub(crate) fn remove_leases_in(tx: &redb::WriteTransaction, id: &str) -> Result<usize, StateError> {
    let mut t = tx.open_table(LEASES).map_err(db)?;
    let mut keys = Vec::new();
    for row in t.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let lease: Lease = serde_json::from_slice(v.value()).map_err(corrupt)?;
        if lease.id == id {
            keys.push(k.value().to_string());
        }
    }
    for k in &keys {
        t.remove(k.as_str()).map_err(db)?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::paths::Paths;
    use crate::state::subnet::Subnet;

    fn rec(id: &str) -> Record {
        crate::state::record::test_record(id, &format!("w-{id}"))
    }

    fn want(ports: &[&str]) -> Want {
        Want {
            network: "small".into(),
            ports: ports
                .iter()
                .map(|p| Publish::parse(p).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
            nameservers: vec![],
            allow_egress: vec![],
            deny_egress: vec![],
            no_internet: false,
        }
    }

    #[test]
    fn leases_are_unique_transactional_and_released() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = State::new(Paths::new(d.path()));
        let net = Network {
            name: "small".into(),
            bridge: "bh-small".into(),
            subnet: Subnet::parse("10.9.0.0/29").unwrap_or_else(|e| panic!("{e}")),
            created_ms: 0,
            cursor: 0,
            tenant: None,
            tunnel: None,
            vips: Vips::new(),
        };
        create_network(&s, &net).unwrap_or_else(|e| panic!("{e}"));
        let clash = Network {
            name: "other".into(),
            bridge: "bh-other".into(),
            subnet: Subnet::parse("10.9.0.0/24").unwrap_or_else(|e| panic!("{e}")),
            created_ms: 0,
            cursor: 0,
            tenant: None,
            tunnel: None,
            vips: Vips::new(),
        };
        assert!(
            matches!(create_network(&s, &clash), Err(StateError::Conflict(m)) if m.contains("overlaps"))
        );
        assert!(
            matches!(create_network(&s, &net), Err(StateError::Conflict(_))),
            "names are unique"
        );

        let mut ips = BTreeSet::new();
        for i in 0..5 {
            let mut r = rec(&format!("{i:02}"));
            insert_workload(&s, &mut r, Some(&want(&[]))).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ips.insert(r.config.network.map(|a| a.ip)),
                "an address handed out twice"
            );
        }
        let mut full = rec("99");
        assert!(
            matches!(insert_workload(&s, &mut full, Some(&want(&[]))), Err(StateError::Conflict(m)) if m.contains("no free address"))
        );
        assert!(
            s.get("w-99").is_err(),
            "a refused lease leaves no record either"
        );
        assert!(
            matches!(remove_network(&s, "small"), Err(StateError::Conflict(m)) if m.contains("in use"))
        );

        assert!(release(&s, "02").unwrap_or_else(|e| panic!("{e}")));
        let mut again = rec("05");
        insert_workload(&s, &mut again, Some(&want(&["8080:80"])))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.config.network.as_ref().map(|a| a.ip.octets()[3]),
            Some(4),
            "only the released address was free"
        );
        let mut port_clash = rec("06");
        s.remove("00").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(insert_workload(&s, &mut port_clash, Some(&want(&["127.0.0.1:8080:81"]))), Err(StateError::Conflict(m)) if m.contains("already published"))
        );
        assert_eq!(
            leases(&s).unwrap_or_else(|e| panic!("{e}")).len(),
            4,
            "rm released 00's lease"
        );
        for id in ["01", "03", "04", "05"] {
            s.remove(id).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            remove_network(&s, "small")
                .map(|n| n.bridge)
                .ok()
                .as_deref(),
            Some("bh-small")
        );
        assert!(networks(&s).unwrap_or_else(|e| panic!("{e}")).is_empty());
    }

    #[test]
    fn the_host_policy_is_kept_and_written_only_when_it_changes() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = State::new(Paths::new(d.path()));
        assert_eq!(host_policy(&s).ok(), Some(HostPolicy::default()));
        let p = Subnet::parse_cidr("172.31.9.1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            update_host_policy(&s, |h| h.protected = vec![p]).ok(),
            Some(true)
        );
        assert_eq!(
            update_host_policy(&s, |h| h.protected = vec![p]).ok(),
            Some(false),
            "the same again changes nothing"
        );
        assert_eq!(
            update_host_policy(&s, |h| h.forwarded_before_us = Some(false)).ok(),
            Some(true)
        );
        assert_eq!(
            host_policy(&s).ok(),
            Some(HostPolicy {
                protected: vec![p],
                forwarded_before_us: Some(false),
                ..HostPolicy::default()
            })
        );
    }
}
