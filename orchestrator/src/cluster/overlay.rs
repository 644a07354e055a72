//! A tenant's overlay as the control plane keeps it: each node's end per
//! tenant it runs (its public key and endpoint, `/overlay/TENANT/NODE`),
//! reported at its syncs; each node is handed the ends of the other nodes
//! that run the same tenant, with their slices, and nothing of tenants it
//! does not run. Private keys never leave their nodes.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::api::{OverlayEnd, OverlayPeer};
use super::state::{decode, encode, Cluster, StateError};
use super::store::Op;
use crate::state::subnet::Subnet;

/// A node's end for one tenant, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredEnd {
    public_key: String,
    endpoint: SocketAddrV4,
}

pub(crate) fn end_key(tenant: &str, node: &str) -> String {
    format!("/overlay/{tenant}/{node}")
}

/// Why a node's report of its end is not taken (`None`: it is).
pub fn refuse_end(address: Ipv4Addr, end: &OverlayEnd) -> Option<String> {
    if let Some(why) = refuse_address(address) {
        return Some(why);
    }
    if end.port == 0 {
        return Some("port 0".into());
    }
    if !end.public_key.is_empty() && !crate::network::overlay::valid_public_key(&end.public_key) {
        return Some("the public key is not 32 bytes of base64".into());
    }
    None
}

/// Why a node's reported address is not one others can send to.
pub fn refuse_address(address: Ipv4Addr) -> Option<String> {
    (address.is_unspecified() || address.is_broadcast() || address.is_multicast())
        .then(|| format!("address {address}: not one peers can send to"))
}

impl Cluster {
    /// Records `node`'s end of `tenant`'s overlay (written only when it
    /// changed: nodes report at every sync).
    pub fn set_overlay_end(
        &self,
        tenant: &str,
        node: &str,
        address: Ipv4Addr,
        end: &OverlayEnd,
    ) -> Result<(), StateError> {
        let new = StoredEnd {
            public_key: end.public_key.clone(),
            endpoint: SocketAddrV4::new(address, end.port),
        };
        let key = end_key(tenant, node);
        if let Some(e) = self.store.get(&key)? {
            if decode::<StoredEnd>(&e).ok().as_ref() == Some(&new) {
                return Ok(());
            }
        }
        self.store.txn(&[], &[Op::Put(key, encode(&new))])?;
        Ok(())
    }

    /// The ends of `tenant`'s overlay on the nodes other than `node` that
    /// run it now, with their slices.
    pub fn overlay_peers(&self, tenant: &str, node: &str) -> Result<Vec<OverlayPeer>, StateError> {
        let running: std::collections::BTreeSet<String> = self
            .instances(Some(tenant))?
            .into_iter()
            .map(|i| i.node)
            .filter(|n| n != node)
            .collect();
        let mut peers = Vec::new();
        for other in running {
            let (Some(end), Some(slice)) = (
                self.store.get(&end_key(tenant, &other))?,
                self.store.get(&format!("/netslices/{tenant}/{other}"))?,
            ) else {
                continue; // not reported yet
            };
            let end: StoredEnd = decode(&end)?;
            let slice: Subnet = decode(&slice)?;
            peers.push(OverlayPeer {
                node: other,
                public_key: end.public_key,
                endpoint: end.endpoint.to_string(),
                slice: slice.to_string(),
            });
        }
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ends_are_refused() {
        let key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let end = |k: &str, port| OverlayEnd {
            public_key: k.into(),
            port,
        };
        let a = Ipv4Addr::new(10, 78, 0, 11);
        assert_eq!(refuse_end(a, &end(key, 51820)), None);
        assert_eq!(refuse_end(a, &end("", 4789)), None, "plain: no key");
        assert!(refuse_end(a, &end(key, 0)).is_some());
        assert!(refuse_end(Ipv4Addr::UNSPECIFIED, &end(key, 1)).is_some());
        assert!(refuse_end(Ipv4Addr::BROADCAST, &end(key, 1)).is_some());
        assert!(refuse_end(a, &end("AllowedIPs = 0.0.0.0/0", 1)).is_some());
    }
}
