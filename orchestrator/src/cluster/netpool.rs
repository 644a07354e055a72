//! Tenant networks' addresses across the cluster: one pool (`bulkhead
//! server --tenant-pool`), a range of it per tenant, and a slice of that
//! range per node the tenant runs on. A node's bridge for the tenant takes
//! its slice, so no two nodes hand out one address and no two tenants share
//! a range: the ground an overlay between nodes routes on (each node owns
//! its slices, and only those).
//!
//! Allocation is a store transaction: a tenant's range guarded by the pool
//! record's revision (bumped by every range allocated), a node's slice by the
//! tenant's range record (bumped by every slice), so concurrent syncs never
//! hand out one twice; the loser reads again.

use serde::{Deserialize, Serialize};

use super::state::{decode, encode, Cluster, StateError};
use super::store::{Compare, Op, StoreError};
use crate::state::subnet::{first_free, Subnet};

/// The pool and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub pool: Subnet,
    /// Each tenant's range: a /`range_prefix` of the pool.
    pub range_prefix: u8,
    /// Each node's slice of a range: a /`slice_prefix`.
    pub slice_prefix: u8,
}

/// The default: 10.192.0.0/10 cut into /20 per tenant (1024 tenants) and
/// /24 per node (16 nodes per tenant, 253 instances each).
pub const DEFAULT_POOL: &str = "10.192.0.0/10";
pub const DEFAULT_RANGE_PREFIX: u8 = 20;
pub const DEFAULT_SLICE_PREFIX: u8 = 24;

impl Default for Pool {
    fn default() -> Self {
        Self {
            pool: Subnet {
                base: std::net::Ipv4Addr::new(10, 192, 0, 0),
                prefix: 10,
            },
            range_prefix: DEFAULT_RANGE_PREFIX,
            slice_prefix: DEFAULT_SLICE_PREFIX,
        }
    }
}

impl Pool {
    /// Checks the cut: the range within the pool, the slice within the
    /// range and big enough for a gateway and an instance (/29 at most).
    pub fn new(pool: Subnet, range_prefix: u8, slice_prefix: u8) -> Result<Self, String> {
        if !(pool.prefix..slice_prefix).contains(&range_prefix) {
            return Err(format!(
                "--tenant-range /{range_prefix}: from the pool's /{} to shorter than the node slice's /{slice_prefix} (a range holds node slices and, in its last slice, its services' addresses)",
                pool.prefix
            ));
        }
        if !(8..=29).contains(&slice_prefix) {
            return Err(format!(
                "--node-slice /{slice_prefix}: from /8 to /29 (a gateway and at least one instance)"
            ));
        }
        if u32::from(pool.base) & !pool.mask() != 0 {
            return Err(format!("--tenant-pool {pool}: not a network address"));
        }
        Ok(Self {
            pool,
            range_prefix,
            slice_prefix,
        })
    }

    fn cuts(within: Subnet, prefix: u8) -> impl Iterator<Item = Subnet> {
        let step = 1u64 << (32 - u32::from(prefix));
        let first = u64::from(u32::from(within.base));
        let end = first + u64::from(within.size());
        let step = usize::try_from(step).unwrap_or(usize::MAX);
        (first..end).step_by(step).map(move |b| Subnet {
            base: std::net::Ipv4Addr::from(u32::try_from(b).unwrap_or(u32::MAX)),
            prefix,
        })
    }

    /// The first range no tenant holds.
    pub fn free_range(&self, taken: &[Subnet]) -> Option<Subnet> {
        first_free(Self::cuts(self.pool, self.range_prefix), taken)
    }

    /// The first slice of `range` no node holds (never the last: that one
    /// holds the tenant's service addresses).
    pub fn free_slice(&self, range: Subnet, taken: &[Subnet]) -> Option<Subnet> {
        let vips = self.vip_slice(range);
        first_free(
            Self::cuts(range, self.slice_prefix).filter(|s| Some(*s) != vips),
            taken,
        )
    }

    /// The last slice of `range`: its services' addresses (VIPs).
    pub fn vip_slice(&self, range: Subnet) -> Option<Subnet> {
        Self::cuts(range, self.slice_prefix).last()
    }
}

fn range_key(tenant: &str) -> String {
    format!("/netranges/{tenant}")
}

fn slice_prefix_key(tenant: &str) -> String {
    format!("/netslices/{tenant}/")
}

fn slice_key(tenant: &str, node: &str) -> String {
    format!("/netslices/{tenant}/{node}")
}

/// The slices a node holds, listed under it (one per tenant, the slice as
/// value): what its syncs look at to give slices back.
fn node_slices_key(node: &str) -> String {
    format!("/nodeslices/{node}/")
}

fn node_slice_key(node: &str, tenant: &str) -> String {
    format!("/nodeslices/{node}/{tenant}")
}

/// Deleted with the service: its address goes back to its tenant.
pub(crate) fn vip_key(tenant: &str, service: &str) -> String {
    format!("/vips/{tenant}/{service}")
}

/// Bumped by every range allocated (its revision guards the next).
const POOL_KEY: &str = "/netpool";

impl Cluster {
    /// `tenant`'s slice on `node`, allocated on first use (its range too).
    pub fn tenant_slice(
        &self,
        pool: &Pool,
        tenant: &str,
        node: &str,
    ) -> Result<Subnet, StateError> {
        self.allocate_in_range(
            pool,
            tenant,
            (&slice_key(tenant, node), Some(&node_slice_key(node, tenant))),
            &slice_prefix_key(tenant),
            &format!("tenant {tenant:?}'s slice on {node:?}"),
            |range, taken: &[Subnet]| {
                pool.free_slice(range, taken).ok_or_else(|| {
                    StateError::Taken(format!(
                        "tenant {tenant:?}'s range {range} has no free /{} left for node {node:?} (the server's --tenant-range and --node-slice)",
                        pool.slice_prefix
                    ))
                })
            },
        )
    }

    /// `service`'s stable address (VIP), allocated on first use from the
    /// last slice of its tenant's range; kept while the service lives,
    /// however its instances move, and free again once it is removed.
    pub fn service_vip(
        &self,
        pool: &Pool,
        tenant: &str,
        service: &str,
    ) -> Result<std::net::Ipv4Addr, StateError> {
        self.allocate_in_range(
            pool,
            tenant,
            (&vip_key(tenant, service), None),
            &format!("/vips/{tenant}/"),
            &format!("service {service:?}'s address"),
            |range, taken: &[std::net::Ipv4Addr]| {
                pool.vip_slice(range)
                    .and_then(|s| {
                        let base = u32::from(s.base);
                        (1..s.size().saturating_sub(1))
                            .map(|i| std::net::Ipv4Addr::from(base + i))
                            .find(|a| !taken.contains(a))
                    })
                    .ok_or_else(|| {
                        StateError::Taken(format!(
                            "tenant {tenant:?} has no service address left for {service:?} (the last /{} of its range {range} holds them)",
                            pool.slice_prefix
                        ))
                    })
            },
        )
    }

    /// `key`, allocated on first use within `tenant`'s range (made on
    /// first use too), written to its `index` key as well if given: `pick`
    /// chooses from the range and what is under `taken_prefix`; one transaction guarded by the range record (bumped
    /// by every allocation), so concurrent syncs never hand out one thing
    /// twice: the loser reads again.
    fn allocate_in_range<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        pool: &Pool,
        tenant: &str,
        (key, index): (&str, Option<&String>),
        taken_prefix: &str,
        what: &str,
        pick: impl Fn(Subnet, &[T]) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        for _ in 0..8 {
            if let Some(e) = self.store.get(key)? {
                return decode(&e);
            }
            let (range, range_rev) = match self.store.get(&range_key(tenant))? {
                Some(e) => (decode::<Subnet>(&e)?, e.revision),
                None => {
                    self.allocate_range(pool, tenant)?;
                    continue;
                }
            };
            let taken: Vec<T> = self
                .store
                .list(taken_prefix)?
                .iter()
                .map(decode)
                .collect::<Result<_, _>>()?;
            let got = pick(range, &taken)?;
            let mut ops = vec![
                Op::Put(key.to_string(), encode(&got)),
                Op::Put(range_key(tenant), encode(&range)),
            ];
            ops.extend(index.map(|i| Op::Put(i.clone(), encode(&got))));
            match self.store.txn(
                &[
                    Compare::Absent(key.to_string()),
                    Compare::Revision(range_key(tenant), range_rev),
                ],
                &ops,
            ) {
                Ok(_) => return Ok(got),
                Err(StoreError::Conflict(_)) => continue, // another sync came first
                Err(e) => return Err(e.into()),
            }
        }
        Err(StateError::Taken(format!(
            "{what}: the store kept changing; the next sync tries again"
        )))
    }

    fn allocate_range(&self, pool: &Pool, tenant: &str) -> Result<(), StateError> {
        let guard = match self.store.get(POOL_KEY)? {
            Some(e) => Compare::Revision(POOL_KEY.into(), e.revision),
            None => Compare::Absent(POOL_KEY.into()),
        };
        let taken: Vec<Subnet> = self
            .store
            .list("/netranges/")?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        let range = pool.free_range(&taken).ok_or_else(|| {
            StateError::Taken(format!(
                "the tenant pool {} has no free /{} left for tenant {tenant:?} (the server's --tenant-pool and --tenant-range)",
                pool.pool, pool.range_prefix
            ))
        })?;
        match self.store.txn(
            &[guard, Compare::Absent(range_key(tenant))],
            &[
                Op::Put(range_key(tenant), encode(&range)),
                Op::Put(POOL_KEY.into(), Vec::new()),
            ],
        ) {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()), // either way: read again
            Err(e) => Err(e.into()),
        }
    }

    /// A tenant's services for its nodes: each service's address (VIP)
    /// -> the addresses of its running instances on any node (with a
    /// health check: the healthy ones only), and the names its resolvers
    /// answer: `<service>` and `<service>.<tenant>.internal` the VIP,
    /// `<index>.<service>` (also under `.<tenant>.internal`) one instance.
    pub fn service_names(
        &self,
        pool: &Pool,
        tenant: &str,
    ) -> Result<(crate::network::dns::ClusterNames, crate::network::Vips), StateError> {
        use crate::state::health::HealthStatus;
        let mut names = crate::network::dns::ClusterNames::new();
        let mut vips = crate::network::Vips::new();
        let t = tenant.to_ascii_lowercase();
        let mut of_service = std::collections::BTreeMap::new();
        for s in self.services(tenant)? {
            // One service without an address must not cost the sync (it
            // renews the node's leases): its names are its instances'.
            let vip = match self.service_vip(pool, tenant, &s.spec.name) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("bulkhead server: {e}");
                    continue;
                }
            };
            let svc = s.spec.name.to_ascii_lowercase();
            for n in [svc.clone(), format!("{svc}.{t}.internal")] {
                names.insert(n, vec![vip]);
            }
            vips.insert(vip, Vec::new());
            of_service.insert(s.spec.name.clone(), vip);
        }
        for (i, _) in self.instances_with_status(Some(tenant))? {
            let (Some(ip), super::state::InstanceState::Running) = (i.ip, i.state) else {
                continue;
            };
            if i.health.is_some_and(|h| h != HealthStatus::Healthy) {
                continue;
            }
            match of_service.get(&i.service).and_then(|v| vips.get_mut(v)) {
                Some(backends) => backends.push(ip),
                None => {
                    let svc = i.service.to_ascii_lowercase();
                    for n in [svc.clone(), format!("{svc}.{t}.internal")] {
                        names.entry(n).or_default().push(ip);
                    }
                }
            }
            let one = format!("{}.{}", i.index, i.service.to_ascii_lowercase());
            for n in [one.clone(), format!("{one}.{t}.internal")] {
                names.entry(n).or_default().push(ip);
            }
        }
        Ok((names, vips))
    }

    /// Gives back `node`'s slices of the tenants `keep` says no to (the
    /// node runs none of their instances and holds none of their networks
    /// any more), each to its tenant's range, with the node's end of that
    /// tenant's overlay: a tenant that once ran on many nodes does not keep
    /// their slices, and its range serves nodes it moves to. A slice whose
    /// records changed meanwhile stays (the next sync decides again). The
    /// tenants whose slices went.
    pub fn release_slices(
        &self,
        node: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, StateError> {
        let mut released = Vec::new();
        for e in self.store.list(&node_slices_key(node))? {
            let Some(tenant) = e.key.rsplit('/').next().filter(|t| !keep(t)) else {
                continue;
            };
            let slice = slice_key(tenant, node);
            let guard = match self.store.get(&slice)? {
                Some(s) => Compare::Revision(slice.clone(), s.revision),
                None => Compare::Absent(slice.clone()),
            };
            match self.store.txn(
                &[guard, Compare::Revision(e.key.clone(), e.revision)],
                &[
                    Op::Delete(slice),
                    Op::Delete(e.key.clone()),
                    Op::Delete(super::overlay::end_key(tenant, node)),
                ],
            ) {
                Ok(_) => released.push(tenant.to_string()),
                Err(StoreError::Conflict(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(released)
    }

    /// `node`'s slices: tenant -> CIDR.
    pub fn node_slices(
        &self,
        node: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, StateError> {
        self.store
            .list(&node_slices_key(node))?
            .iter()
            .map(|e| {
                let tenant = e.key.rsplit('/').next().unwrap_or_default().to_string();
                Ok((tenant, decode::<Subnet>(e)?.to_string()))
            })
            .collect()
    }

    /// Deletes of a removed node's slice index (`/nodeslices/NODE/...`).
    pub(crate) fn node_slice_index_deletes(&self, node: &str) -> Result<Vec<Op>, StateError> {
        Ok(self
            .store
            .list(&node_slices_key(node))?
            .into_iter()
            .map(|e| Op::Delete(e.key))
            .collect())
    }

    /// Deletes of a removed node's keys under `prefix` (`/PREFIX/TENANT/NODE`):
    /// its slices go back to their tenants' ranges, its overlay ends go.
    pub(crate) fn node_key_deletes(&self, prefix: &str, node: &str) -> Result<Vec<Op>, StateError> {
        Ok(self
            .store
            .list(prefix)?
            .into_iter()
            .filter(|e| e.key.rsplit('/').next() == Some(node))
            .map(|e| Op::Delete(e.key))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::FileStore;

    fn cluster() -> (tempfile::TempDir, Cluster) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        (dir, c)
    }

    fn cidr(s: &str) -> Subnet {
        Subnet::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cuts_are_checked_and_ranges_and_slices_come_apart() {
        assert!(Pool::new(cidr("10.200.0.0/16"), 20, 16).is_err());
        assert!(Pool::new(cidr("10.200.0.0/16"), 12, 24).is_err());
        assert!(Pool::new(cidr("10.200.0.0/16"), 20, 30).is_err());
        let host_bits = Subnet {
            base: std::net::Ipv4Addr::new(10, 200, 0, 1),
            prefix: 16,
        };
        assert!(Pool::new(host_bits, 20, 24).is_err());
        let p = Pool::new(cidr("10.200.0.0/16"), 22, 26).unwrap_or_else(|e| panic!("{e}"));
        let r1 = p.free_range(&[]).unwrap_or_else(|| panic!("a range"));
        let r2 = p.free_range(&[r1]).unwrap_or_else(|| panic!("a range"));
        assert_eq!((r1, r2), (cidr("10.200.0.0/22"), cidr("10.200.4.0/22")));
        let s1 = p.free_slice(r2, &[]).unwrap_or_else(|| panic!("a slice"));
        let s2 = p.free_slice(r2, &[s1]).unwrap_or_else(|| panic!("a slice"));
        assert_eq!((s1, s2), (cidr("10.200.4.0/26"), cidr("10.200.4.64/26")));
        let all: Vec<Subnet> = Pool::cuts(r2, 26).collect();
        assert_eq!(all.len(), 16);
        assert_eq!(p.free_slice(r2, &all), None);
        // The last slice is the services', never a node's.
        assert_eq!(p.vip_slice(r2), Some(cidr("10.200.7.192/26")));
        assert_eq!(p.free_slice(r2, &all[..15]), None);
        assert!(Pool::new(cidr("10.200.0.0/16"), 26, 26).is_err());
    }

    #[test]
    fn a_node_gives_back_the_slices_of_tenants_it_let_go_of() {
        let (_dir, c) = cluster();
        let p = Pool::new(cidr("10.200.0.0/24"), 25, 27).unwrap_or_else(|e| panic!("{e}"));
        let slice = |t: &str, n: &str| c.tenant_slice(&p, t, n).unwrap_or_else(|e| panic!("{e}"));
        let (a1, a2, e1) = (
            slice("acme", "n1"),
            slice("acme", "n2"),
            slice("evil", "n1"),
        );
        let end = crate::cluster::api::OverlayEnd {
            public_key: String::new(),
            port: 51820,
        };
        let addr = std::net::Ipv4Addr::new(10, 78, 0, 11);
        c.set_overlay_end("acme", "n1", addr, &end)
            .unwrap_or_else(|e| panic!("{e}"));
        // n1 keeps evil's (it still runs it), lets go of acme's: only
        // acme's slice and overlay end on n1 go; n2's stays.
        let listed = |n: &str| c.node_slices(n).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            listed("n1").into_iter().collect::<Vec<_>>(),
            [
                ("acme".into(), a1.to_string()),
                ("evil".into(), e1.to_string())
            ]
        );
        let released = c
            .release_slices("n1", |t| t == "evil")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(released, ["acme"]);
        assert_eq!(listed("n1").len(), 1);
        let key = |k: &str| c.store.get(k).unwrap_or_else(|e| panic!("{e}")).is_some();
        assert!(!key("/netslices/acme/n1") && !key("/overlay/acme/n1"));
        assert!(key("/netslices/acme/n2") && key("/netslices/evil/n1"));
        // Nothing more to give back: asked again, nothing goes.
        let again = c.release_slices("n1", |t| t == "evil");
        assert!(again.is_ok_and(|r| r.is_empty()));
        // The next node of acme's gets the slice back; n1, if acme comes
        // back to it, another free one; the others keep theirs.
        assert_eq!(slice("acme", "n3"), a1);
        assert_ne!(slice("acme", "n1"), a1);
        assert_eq!((slice("acme", "n2"), slice("evil", "n1")), (a2, e1));
    }

    #[test]
    fn each_tenant_a_range_each_node_a_slice_kept_and_exhaustion_said() {
        let (_dir, c) = cluster();
        let p = Pool::new(cidr("10.200.0.0/24"), 25, 27).unwrap_or_else(|e| panic!("{e}"));
        let a1 = c
            .tenant_slice(&p, "acme", "n1")
            .unwrap_or_else(|e| panic!("{e}"));
        let a2 = c
            .tenant_slice(&p, "acme", "n2")
            .unwrap_or_else(|e| panic!("{e}"));
        let e1 = c
            .tenant_slice(&p, "evil", "n1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a1, a2, e1),
            (
                cidr("10.200.0.0/27"),
                cidr("10.200.0.32/27"),
                cidr("10.200.0.128/27")
            )
        );
        // Asked again: the same.
        assert_eq!(c.tenant_slice(&p, "acme", "n1").ok(), Some(a1));
        // Services' addresses: from the range's last slice, kept.
        let vip = |s: &str| c.service_vip(&p, "acme", s).ok().map(|a| a.to_string());
        assert_eq!(vip("web").as_deref(), Some("10.200.0.97"));
        assert_eq!(vip("db").as_deref(), Some("10.200.0.98"));
        assert_eq!(vip("web").as_deref(), Some("10.200.0.97"));
        // acme's /25 holds four /27s, the last for its services'
        // addresses; a fourth node gets none, said as such.
        c.tenant_slice(&p, "acme", "n3")
            .unwrap_or_else(|e| panic!("{e}"));
        let full = c.tenant_slice(&p, "acme", "n4");
        assert!(
            matches!(&full, Err(StateError::Taken(m)) if m.contains("no free /27")),
            "{full:?}"
        );
        // A removed service's address is free again: the next one gets it.
        let (_d2, c2) = crate::cluster::assign::tests::cluster(&["n1"]);
        for name in ["web", "db"] {
            crate::cluster::assign::tests::deploy(
                &c2,
                &format!("name: {name}\nimage: bb\nruntime: container\n"),
            );
        }
        let vip2 = |s: &str| c2.service_vip(&p, "t", s).ok().map(|a| a.to_string());
        let (web, db) = (vip2("web"), vip2("db"));
        assert!(web.is_some() && db.is_some() && web != db, "{web:?} {db:?}");
        c2.remove("t", "web").unwrap_or_else(|e| panic!("{e}"));
        crate::cluster::assign::tests::deploy(&c2, "name: cache\nimage: bb\nruntime: container\n");
        assert_eq!(vip2("cache"), web, "web's address, free again");
        assert_eq!(vip2("db"), db, "db keeps its own");
        // Two ranges in a /24 of /25s: a third tenant gets none.
        let none = c.tenant_slice(&p, "third", "n1");
        assert!(
            matches!(&none, Err(StateError::Taken(m)) if m.contains("no free /25")),
            "{none:?}"
        );
    }
}
