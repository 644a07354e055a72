//! Workload networking: one host bridge per network, an address per
//! workload from the state store, a TAP (microVM) or veth pair (container)
//! on the bridge, and bulkhead's own nftables tables (`inet bulkhead` for
//! NAT, published ports and isolation; `bridge bulkhead` for per-port
//! anti-spoofing), rendered whole from the state store and swapped in
//! atomically after every change.
//!
//! ```text
//! egress.rs    what workloads may reach beyond their network (pure)
//! rules.rs     the nft script for a set of networks and leases (pure)
//! lifecycle.rs set up, tear down, sweep (what supervisors and the CLI call)
//! dns/         a resolver per network for its workloads' names
//! overlay/     a cluster tenant's tunnels to its other nodes
//! daemon.rs    the small daemons' lock, spawn and ready protocol
//! host.rs      bridges, TAPs, veths, netns, sysctls, nft: the host side
//! userns.rs    a container's user namespace and the netns it owns
//! ```
//!
//! Networks, leases, subnets and published ports as stored are the state
//! layer's (`crate::state::{net, subnet, publish}`), below this one.

pub mod daemon;
pub mod dns;
pub mod egress;
pub mod host;
pub mod lifecycle;
pub mod overlay;
pub mod rules;
pub mod userns;

use std::net::Ipv4Addr;

pub use crate::state::net::{tap_name, veth_name, Attachment, Network, Vips};
pub use crate::state::publish::{Proto, Publish};
pub use crate::state::subnet::Subnet;

/// The network `run` uses unless told otherwise, created on first use.
pub const DEFAULT_NETWORK: &str = "bulkhead";
pub const DEFAULT_BRIDGE: &str = "bulkhead0";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// `--network none`: loopback only.
pub const NONE: &str = "none";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad input from the user: nothing was changed.
    #[error("{0}")]
    Input(String),
    #[error("no network {0:?} (`bulkhead network ls` lists them)")]
    NoSuchNetwork(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{what}: {why}")]
    Host { what: String, why: String },
    #[error(transparent)]
    State(crate::state::StateError),
}

/// The store's refusals keep their kind: a conflict is a conflict here too.
impl From<crate::state::StateError> for NetError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError as S;
        match e {
            S::Input(m) => NetError::Input(m),
            S::NoSuchNetwork(n) => NetError::NoSuchNetwork(n),
            S::Conflict(m) => NetError::Conflict(m),
            other => NetError::State(other),
        }
    }
}

impl NetError {
    pub fn host(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        NetError::Host {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

/// The network a cluster tenant's instances join on a node: `t-TENANT`,
/// or `t-` and a hash where the tenant's name does not fit.
pub fn tenant_network(tenant: &str) -> String {
    let name = format!("t-{tenant}");
    if valid_name(&name) {
        return name;
    }
    use sha2::Digest;
    let h = sha2::Sha256::digest(tenant.as_bytes());
    format!(
        "t-{}",
        h.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// An interface name: 1 to 15 (IFNAMSIZ) letters, digits, '-', '_', '.'.
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Network names: like workload names, at most 32 characters.
pub fn valid_name(n: &str) -> bool {
    n.len() <= 32 && n != NONE && crate::state::paths::valid_name(n)
}

/// One data dir's names for what it makes on the host, apart from another
/// data dir's on the same host (`Paths::host_tag`): the default data dir
/// has the plain ones (`inet bulkhead`, `bulkhead0`, `bh-NAME`), another
/// `bulkhead_TAG`, `bulkheadTAG`, `bTAG-NAME`. Interfaces of workloads
/// (`bht`/`bhv` and the workload id) never clash: their ids are random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNames {
    tag: Option<String>,
}

impl HostNames {
    pub fn of(paths: &crate::state::paths::Paths) -> Self {
        Self {
            tag: paths.host_tag(),
        }
    }

    /// The nftables tables' name (in the `inet` and `bridge` families).
    pub fn table(&self) -> String {
        match &self.tag {
            None => "bulkhead".into(),
            Some(t) => format!("bulkhead_{t}"),
        }
    }

    /// The default network's bridge.
    pub fn default_bridge(&self) -> String {
        match &self.tag {
            None => DEFAULT_BRIDGE.into(),
            Some(t) => format!("bulkhead{t}"),
        }
    }

    /// The bridge for a new network, within IFNAMSIZ.
    pub fn bridge_for(&self, name: &str) -> String {
        match &self.tag {
            None => bridge_for(name),
            Some(t) => {
                let fits =
                    name.len() <= 9 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if fits {
                    format!("b{t}-{name}")
                } else {
                    format!("b{t}-{}", &name_hash(name)[..9])
                }
            }
        }
    }

    /// Whether this is the default data dir's (plain names).
    pub fn is_default(&self) -> bool {
        self.tag.is_none()
    }
}

fn name_hash(name: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bridge for a new network: `bh-NAME` when that fits IFNAMSIZ.
pub fn bridge_for(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if clean.len() == name.len() && name.len() <= 12 {
        format!("bh-{name}")
    } else {
        use sha2::Digest;
        let h = sha2::Sha256::digest(name.as_bytes());
        format!(
            "bh-{}",
            h.iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

/// Nameservers for workloads: the host's own from /etc/resolv.conf, less
/// loopback ones (a workload cannot reach the host's 127.0.0.53) and IPv6
/// ones (workloads are IPv4-only); else public resolvers, like docker.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    let mine: Vec<String> = resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .map(|a| a.to_string())
        .take(3)
        .collect();
    if mine.is_empty() {
        vec!["8.8.8.8".into(), "8.8.4.4".into()]
    } else {
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let id = "0123456789abcdef0123";
        for n in [
            tap_name(id),
            veth_name(id),
            bridge_for("a-very-long-network-name"),
            bridge_for("web"),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_eq!(bridge_for("web"), "bh-web");
        assert_ne!(bridge_for("a.b"), bridge_for("a_b"));
    }

    #[test]
    fn two_data_dirs_name_their_tables_and_bridges_apart() {
        use crate::state::paths::{Paths, DEFAULT_DATA};
        let plain = HostNames::of(&Paths::new(DEFAULT_DATA));
        let (a, b) = (
            HostNames::of(&Paths::new("/srv/node-a")),
            HostNames::of(&Paths::new("/srv/node-b")),
        );
        assert!(plain.is_default());
        assert_eq!(
            (
                plain.table(),
                plain.default_bridge(),
                plain.bridge_for("web")
            ),
            ("bulkhead".into(), "bulkhead0".into(), "bh-web".into())
        );
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(!n.is_default());
            assert!(n.table().starts_with("bulkhead_"), "{}", n.table());
        }
        for name in ["web", "t-acme", "a-very-long-network-name", "a.b"] {
            for n in [&plain, &a, &b] {
                let br = n.bridge_for(name);
                assert!(br.len() <= 15 && br.is_ascii(), "{br}");
            }
            assert_ne!(a.bridge_for(name), b.bridge_for(name), "{name}");
            assert_ne!(a.bridge_for(name), plain.bridge_for(name), "{name}");
        }
        assert_ne!(a.table(), b.table());
        assert_ne!(a.default_bridge(), b.default_bridge());
        assert_ne!(a.bridge_for("a.b"), a.bridge_for("a_b"));
    }

    #[test]
    fn nameservers_skip_loopback_and_ipv6() {
        assert_eq!(
            nameservers("nameserver 127.0.0.53\nnameserver ::1\n# x\nnameserver 192.168.1.1\n"),
            vec!["192.168.1.1"]
        );
        assert_eq!(
            nameservers("nameserver 127.0.0.1\n"),
            vec!["8.8.8.8", "8.8.4.4"]
        );
        assert_eq!(nameservers(""), vec!["8.8.8.8", "8.8.4.4"]);
    }

    #[test]
    fn tenant_networks_are_one_per_tenant_and_valid() {
        assert_eq!(tenant_network("acme"), "t-acme");
        let long = tenant_network(&"x".repeat(60));
        assert!(
            valid_name(&long) && long != tenant_network(&"x".repeat(61)),
            "{long}"
        );
        assert_ne!(tenant_network("a.b"), tenant_network("a_b"));
    }

    #[test]
    fn network_names() {
        assert!(valid_name("web") && valid_name("tenant-1.prod"));
        assert!(
            !valid_name("none")
                && !valid_name("")
                && !valid_name("a/b")
                && !valid_name(&"a".repeat(33))
        );
    }
}
