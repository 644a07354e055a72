//! The node's side of its tenants' overlays: at each sync it brings each
//! tenant's tunnel in line with the peers the server handed out (only when
//! they changed, or the tunnel went), and reports its ends at the next.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::cluster::api::{OverlayEnd, OverlayPeer, OverlayReport};
use crate::network::overlay::{Join, LocalEnd, Mode, Peer};
use crate::state::subnet::Subnet;
use crate::state::State;

#[derive(Debug)]
struct Joined {
    mode: Mode,
    peers: Vec<Peer>,
    ifindex: u32,
    end: LocalEnd,
}

/// Each tenant's tunnel as last set up here.
#[derive(Debug, Default)]
pub(crate) struct Overlays {
    /// This node's address between nodes (`None`: it has none, and joins
    /// no overlay: its tenants' instances reach their own node only).
    address: Option<Ipv4Addr>,
    joined: BTreeMap<String, Joined>,
}

/// A peer as the server sent it, checked (`None`: unusable, said).
fn peer(tenant: &str, mode: Mode, p: &OverlayPeer) -> Option<Peer> {
    let parsed = (
        p.endpoint.parse::<std::net::SocketAddrV4>(),
        Subnet::parse(&p.slice),
    );
    let key_ok = mode == Mode::Plain || crate::network::overlay::valid_public_key(&p.public_key);
    match parsed {
        (Ok(endpoint), Ok(slice)) if key_ok => Some(Peer {
            public_key: p.public_key.clone(),
            endpoint,
            slice,
        }),
        _ => {
            eprintln!(
                "bulkhead node: tenant {tenant}'s peer {}: unusable ({} {})",
                p.node, p.endpoint, p.slice
            );
            None
        }
    }
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or(0)
}

impl Overlays {
    pub(crate) fn new(address: Option<Ipv4Addr>) -> Self {
        Self {
            address,
            joined: BTreeMap::new(),
        }
    }

    /// What the next sync says of this node's ends.
    pub(crate) fn report(&self) -> Option<OverlayReport> {
        Some(OverlayReport {
            address: self.address?,
            ends: self
                .joined
                .iter()
                .map(|(t, j)| {
                    (
                        t.clone(),
                        OverlayEnd {
                            public_key: j.end.public_key.clone(),
                            port: j.end.port,
                        },
                    )
                })
                .collect(),
        })
    }

    /// Each tenant this node runs (`tenants`): its tunnel set to the
    /// server's `peers`, unless that is what it has.
    pub(crate) fn sync(
        &mut self,
        state: &State,
        mode: Mode,
        tenants: &[&String],
        peers: &BTreeMap<String, Vec<OverlayPeer>>,
    ) {
        let Some(local) = self.address else {
            return;
        };
        self.joined.retain(|t, _| tenants.contains(&t));
        for tenant in tenants {
            let want: Vec<Peer> = peers
                .get(*tenant)
                .into_iter()
                .flatten()
                .filter_map(|p| peer(tenant, mode, p))
                .collect();
            if self.joined.get(*tenant).is_some_and(|j| {
                j.mode == mode
                    && j.peers == want
                    && j.ifindex != 0
                    && ifindex(&j.end.iface) == j.ifindex
            }) {
                continue;
            }
            let join = Join {
                mode,
                tenant,
                local,
            };
            match crate::network::lifecycle::set_tenant_overlay(state, &join, &want) {
                Ok(Some(end)) => {
                    let ifindex = ifindex(&end.iface);
                    self.joined.insert(
                        tenant.to_string(),
                        Joined {
                            mode,
                            peers: want,
                            ifindex,
                            end,
                        },
                    );
                }
                Ok(None) => {
                    self.joined.remove(*tenant);
                }
                Err(e) => {
                    self.joined.remove(*tenant);
                    eprintln!("bulkhead node: tenant {tenant}'s overlay: {e}");
                }
            }
        }
    }
}
