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
        if !(pool.prefix..=slice_prefix).contains(&range_prefix) {
            return Err(format!(
                "--tenant-range /{range_prefix}: between the pool's /{} and the node slice's /{slice_prefix}",
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

    /// The first slice of `range` no node holds.
    pub fn free_slice(&self, range: Subnet, taken: &[Subnet]) -> Option<Subnet> {
        first_free(Self::cuts(range, self.slice_prefix), taken)
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
        for _ in 0..8 {
            if let Some(e) = self.store.get(&slice_key(tenant, node))? {
                return decode(&e);
            }
            let (range, range_rev) = match self.store.get(&range_key(tenant))? {
                Some(e) => (decode::<Subnet>(&e)?, e.revision),
                None => {
                    self.allocate_range(pool, tenant)?;
                    continue;
                }
            };
            let taken: Vec<Subnet> = self
                .store
                .list(&slice_prefix_key(tenant))?
                .iter()
                .map(decode)
                .collect::<Result<_, _>>()?;
            let slice = pool.free_slice(range, &taken).ok_or_else(|| {
                StateError::Taken(format!(
                    "tenant {tenant:?}'s range {range} has no free /{} left for node {node:?} (the server's --tenant-range and --node-slice)",
                    pool.slice_prefix
                ))
            })?;
            match self.store.txn(
                &[
                    Compare::Absent(slice_key(tenant, node)),
                    Compare::Revision(range_key(tenant), range_rev),
                ],
                &[
                    Op::Put(slice_key(tenant, node), encode(&slice)),
                    Op::Put(range_key(tenant), encode(&range)),
                ],
            ) {
                Ok(_) => return Ok(slice),
                Err(StoreError::Conflict(_)) => continue, // another node's slice came first
                Err(e) => return Err(e.into()),
            }
        }
        Err(StateError::Taken(format!(
            "tenant {tenant:?}'s slice on {node:?}: the store kept changing; the next sync tries again"
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

    /// A tenant's service names for its resolvers: `<service>` and
    /// `<index>.<service>`, each also under `.<tenant>.internal`, -> the
    /// addresses of its running instances on any node (with a health
    /// check: the healthy ones only).
    pub fn service_names(
        &self,
        tenant: &str,
    ) -> Result<crate::network::dns::ClusterNames, StateError> {
        use crate::state::health::HealthStatus;
        let mut names = crate::network::dns::ClusterNames::new();
        let t = tenant.to_ascii_lowercase();
        for (i, _) in self.instances_with_status(Some(tenant))? {
            let (Some(ip), super::state::InstanceState::Running) = (i.ip, i.state) else {
                continue;
            };
            if i.health.is_some_and(|h| h != HealthStatus::Healthy) {
                continue;
            }
            let svc = i.service.to_ascii_lowercase();
            let one = format!("{}.{svc}", i.index);
            for n in [
                svc.clone(),
                format!("{svc}.{t}.internal"),
                one.clone(),
                format!("{one}.{t}.internal"),
            ] {
                names.entry(n).or_default().push(ip);
            }
        }
        Ok(names)
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
        // acme's /25 holds four /27s; a fifth node gets none, said as such.
        for n in ["n3", "n4"] {
            c.tenant_slice(&p, "acme", n)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let full = c.tenant_slice(&p, "acme", "n5");
        assert!(
            matches!(&full, Err(StateError::Taken(m)) if m.contains("no free /27")),
            "{full:?}"
        );
        // Two ranges in a /24 of /25s: a third tenant gets none.
        let none = c.tenant_slice(&p, "third", "n1");
        assert!(
            matches!(&none, Err(StateError::Taken(m)) if m.contains("no free /25")),
            "{none:?}"
        );
    }
}
