//! Ingress: a service's published ports answer on every node, each
//! connection balanced over the service's healthy instances wherever they
//! run. The server tells each node, at its syncs, where each published
//! port goes from there: an instance on the node itself (its address and
//! port) or another node running one (that node's address and the same
//! host port, where the node's own publication takes it the last step).
//! Nodes learn every node's address, so a connection another node passed
//! on is never passed on again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::state::{decode, encode, Cluster, InstanceState, ServiceRecord, StateError};
use super::store::Op;
use crate::network::{Proto, Publish};
use crate::state::health::HealthStatus;

pub use crate::state::net::IngressPort;

/// What a node is told of ingress: every published port and every node's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ingress {
    pub ports: Vec<IngressPort>,
    #[schema(value_type = Vec<String>)]
    pub nodes: Vec<Ipv4Addr>,
}

fn address_key(node: &str) -> String {
    format!("/nodeaddr/{node}")
}

/// Where the nodes' addresses are kept (deleted with the node).
pub const ADDRESSES: &str = "/nodeaddr/";

impl Cluster {
    /// Records the address `node` is reached at (written only when it
    /// changed: nodes report at every sync).
    pub fn set_node_address(&self, node: &str, address: Ipv4Addr) -> Result<(), StateError> {
        let key = address_key(node);
        if let Some(e) = self.store.get(&key)? {
            if decode::<Ipv4Addr>(&e).ok() == Some(address) {
                return Ok(());
            }
        }
        self.store.txn(&[], &[Op::Put(key, encode(&address))])?;
        Ok(())
    }

    /// Each node's address, as last reported.
    fn node_addresses(&self) -> Result<BTreeMap<String, Ipv4Addr>, StateError> {
        let mut out = BTreeMap::new();
        for e in self.store.list(ADDRESSES)? {
            let node = e.key.trim_start_matches(ADDRESSES).to_string();
            // One unreadable record must not cost every node its ingress.
            if let Ok(a) = decode::<Ipv4Addr>(&e) {
                out.insert(node, a);
            }
        }
        Ok(out)
    }

    /// Every service's published ports on all nodes (those on a host
    /// address of their own stay on their node): (tenant, service) ->
    /// ports, and who holds each (proto, host port).
    #[allow(clippy::type_complexity)]
    fn published(
        &self,
    ) -> Result<
        (
            BTreeMap<(String, String), Vec<Publish>>,
            BTreeMap<(Proto, u16), Vec<(String, String)>>,
        ),
        StateError,
    > {
        let mut published = BTreeMap::new();
        let mut holders: BTreeMap<(Proto, u16), Vec<(String, String)>> = BTreeMap::new();
        for e in self.store.list("/services/")? {
            let s: ServiceRecord = decode(&e)?;
            let ports: Vec<Publish> = s
                .spec
                .ports
                .iter()
                .filter_map(|p| Publish::parse(p).ok())
                .filter(|p| p.host_ip.is_none())
                .collect();
            if ports.is_empty() {
                continue;
            }
            let tenant = e.key.split('/').nth(2).unwrap_or_default().to_string();
            for p in &ports {
                holders
                    .entry((p.proto, p.host_port))
                    .or_default()
                    .push((tenant.clone(), s.spec.name.clone()));
            }
            published.insert((tenant, s.spec.name), ports);
        }
        Ok((published, holders))
    }

    /// The service of another tenant or name that already publishes one of
    /// `ports` on every node: a deploy must not take it.
    pub fn ingress_clash(
        &self,
        tenant: &str,
        service: &str,
        ports: &[String],
    ) -> Result<Option<String>, StateError> {
        let (_, holders) = self.published()?;
        for p in ports.iter().filter_map(|p| Publish::parse(p).ok()) {
            if p.host_ip.is_some() {
                continue;
            }
            if let Some((t, s)) = holders
                .get(&(p.proto, p.host_port))
                .into_iter()
                .flatten()
                .find(|(t, s)| (t.as_str(), s.as_str()) != (tenant, service))
            {
                let whose = if t == tenant {
                    format!("service {s}")
                } else {
                    "another tenant's service".to_string()
                };
                return Ok(Some(format!(
                    "port {}/{} is published on every node by {whose}",
                    p.host_port, p.proto
                )));
            }
        }
        Ok(None)
    }

    /// The ingress as `node` sees it: each published port of every
    /// tenant's services and where its connections go from `node`. A port
    /// two services claim (a deploy raced another) goes nowhere rather
    /// than to both.
    pub fn ingress(&self, node: &str) -> Result<Ingress, StateError> {
        let addresses = self.node_addresses()?;
        let (mut published, holders) = self.published()?;
        for claim in holders.values().filter(|h| h.len() > 1) {
            for who in claim {
                published.remove(who);
            }
        }
        let mut by_port: BTreeMap<(Proto, u16), Vec<std::net::SocketAddrV4>> = BTreeMap::new();
        for (i, _) in self.instances_with_status(None)? {
            let (Some(ip), InstanceState::Running) = (i.ip, i.state) else {
                continue;
            };
            if i.health.is_some_and(|h| h != HealthStatus::Healthy) {
                continue;
            }
            let Some(ports) = published.get(&(i.tenant.clone(), i.service.clone())) else {
                continue;
            };
            for p in ports {
                let to = if i.node == node {
                    std::net::SocketAddrV4::new(ip, p.port)
                } else if let Some(a) = addresses.get(&i.node) {
                    std::net::SocketAddrV4::new(*a, p.host_port)
                } else {
                    continue;
                };
                by_port.entry((p.proto, p.host_port)).or_default().push(to);
            }
        }
        Ok(Ingress {
            ports: by_port
                .into_iter()
                .map(|((proto, port), backends)| IngressPort {
                    proto,
                    port,
                    backends,
                })
                .collect(),
            nodes: addresses.into_values().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::assign::tests::{cluster, deploy, report};
    use crate::cluster::assign::{Observed, Report};
    use crate::cluster::backoff::BackoffPolicy;

    /// Each node gets every published port: its own instance by address,
    /// another node's by that node's address and the host port; an
    /// instance not running (or unhealthy) is no backend; a node whose
    /// address is unknown is left out; a second service (any tenant)
    /// cannot take a published port, and a raced one goes nowhere.
    #[test]
    fn every_node_balances_over_the_running_instances_wherever_they_are() {
        let (_d, c) = cluster(&["a", "b", "c"]);
        deploy(&c, "name: web\nimage: bb\nruntime: container\nreplicas: 2\nplacement: {anti_affinity: true}\nports: ['18080:80']\n");
        let backoff = BackoffPolicy::default();
        let mut ran = BTreeMap::new();
        for (node, ip) in [
            ("a", "10.201.0.2"),
            ("b", "10.201.0.66"),
            ("c", "10.201.0.130"),
        ] {
            for a in c.assignments(node).unwrap_or_default() {
                let r = Report {
                    ip: ip.parse().ok(),
                    ..report(&a, Observed::Running)
                };
                c.report(node, &[r], 1_000, &backoff)
                    .unwrap_or_else(|e| panic!("{e}"));
                ran.insert(node, ip);
            }
        }
        assert_eq!(ran.len(), 2, "{ran:?}");
        for (n, a) in [("a", "10.78.0.2"), ("b", "10.78.0.3"), ("c", "10.78.0.4")] {
            c.set_node_address(n, a.parse().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for node in ["a", "b", "c"] {
            let i = c.ingress(node).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(i.nodes.len(), 3);
            assert_eq!(i.ports.len(), 1, "{i:?}");
            let p = &i.ports[0];
            assert_eq!((p.proto, p.port, p.backends.len()), (Proto::Tcp, 18080, 2));
            for (other, ip) in &ran {
                let addr = ["10.78.0.2", "10.78.0.3", "10.78.0.4"]
                    [usize::from(other.as_bytes()[0] - b'a')];
                let want = if *other == node {
                    format!("{ip}:80")
                } else {
                    format!("{addr}:18080")
                };
                assert!(
                    p.backends.iter().any(|b| b.to_string() == want),
                    "{node}: {want} in {p:?}"
                );
            }
        }
        // Another tenant's service cannot take the port; the same one can.
        assert!(c
            .ingress_clash("t", "web", &["18080:80".into()])
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let why = c
            .ingress_clash("evil", "grab", &["18080:9999".into()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert!(why.contains("another tenant's service"), "{why}");
        assert!(c
            .ingress_clash("evil", "grab", &["18080:80/udp".into(), "18081:80".into()])
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        // An unhealthy instance is out of the rotation.
        let (sick, ip) = ran.iter().next().map(|(n, i)| (*n, *i)).unwrap_or_default();
        let a = c.assignments(sick).unwrap_or_default();
        let r = Report {
            ip: ip.parse().ok(),
            health: Some(HealthStatus::Unhealthy),
            ..report(&a[0], Observed::Running)
        };
        c.report(sick, &[r], 2_000, &backoff)
            .unwrap_or_else(|e| panic!("{e}"));
        let p = c.ingress("a").unwrap_or_else(|e| panic!("{e}")).ports;
        assert_eq!(p.first().map(|p| p.backends.len()), Some(1), "{p:?}");
        // Raced in anyway: the port goes to nobody rather than to both.
        deploy(
            &c,
            "name: web2\nimage: bb\nruntime: container\nports: ['18080:81']\n",
        );
        assert!(c
            .ingress("a")
            .unwrap_or_else(|e| panic!("{e}"))
            .ports
            .is_empty());
    }
}
