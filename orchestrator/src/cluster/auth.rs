//! Who is asking: bearer tokens (32 random bytes, hex), kept only as their
//! SHA-256 in the store, each naming the admin (nodes, tenants, cordon) or
//! one tenant (its own services and instances, within its quota).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schedule::Quota;
use super::state::{decode, encode, heartbeat_key, node_key, Cluster, Node, StateError};
use super::store::{Compare, Op};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Principal {
    Admin,
    Tenant(String),
    /// May join nodes (`bulkhead node token create`), nothing else.
    Join,
    /// One node: its own heartbeats, reports and assignments.
    Node(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub quota: Quota,
}

/// What the server needs to call a node's own API: the secret the node
/// made at start and the certificate its API serves (self-signed, made at
/// start too), both given at join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAccess {
    pub secret: String,
    pub cert: String,
}

/// A fresh token from the kernel's random pool.
pub fn new_token() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(format!("bh_{}", hex::encode(b)))
}

fn token_key(token: &str) -> String {
    format!("/tokens/{}", hex::encode(Sha256::digest(token.as_bytes())))
}

fn tenant_key(name: &str) -> String {
    format!("/tenants/{name}")
}

impl Cluster {
    /// The principal a token stands for, if any.
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, StateError> {
        match self.store.get(&token_key(token))? {
            Some(e) => serde_json::from_slice(&e.value)
                .map(Some)
                .map_err(|err| StateError::Corrupt(e.key, err.to_string())),
            None => Ok(None),
        }
    }

    /// Stores `token` for the admin unless an admin token exists; true if stored.
    pub fn init_admin(&self, token: &str) -> Result<bool, StateError> {
        if self.store.get("/admin")?.is_some() {
            return Ok(false);
        }
        let principal = serde_json::to_vec(&Principal::Admin).unwrap_or_default();
        self.store.txn(
            &[Compare::Absent("/admin".into())],
            &[
                Op::Put("/admin".into(), Vec::new()),
                Op::Put(token_key(token), principal),
            ],
        )?;
        Ok(true)
    }

    /// A new tenant and its first token.
    pub fn create_tenant(&self, name: &str, quota: Quota) -> Result<String, StateError> {
        if !crate::state::paths::valid_name(name) {
            return Err(StateError::Spec(super::spec::SpecError::Field {
                field: "name",
                why: format!("{name:?}: letters, digits, '_', '.', '-'"),
            }));
        }
        let token =
            new_token().map_err(|e| StateError::Corrupt("/dev/urandom".into(), e.to_string()))?;
        let tenant = serde_json::to_vec(&Tenant {
            name: name.into(),
            quota,
        })
        .unwrap_or_default();
        let principal = serde_json::to_vec(&Principal::Tenant(name.into())).unwrap_or_default();
        let key = tenant_key(name);
        match self.store.txn(
            &[Compare::Absent(key.clone())],
            &[Op::Put(key, tenant), Op::Put(token_key(&token), principal)],
        ) {
            Ok(_) => Ok(token),
            Err(super::store::StoreError::Conflict(_)) => {
                Err(StateError::Exists(format!("tenant {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new join token (reusable: one per cluster or per batch of hosts).
    pub fn create_join_token(&self) -> Result<String, StateError> {
        let token =
            new_token().map_err(|e| StateError::Corrupt("/dev/urandom".into(), e.to_string()))?;
        let principal = serde_json::to_vec(&Principal::Join).unwrap_or_default();
        self.store
            .txn(&[], &[Op::Put(token_key(&token), principal)])?;
        Ok(token)
    }

    /// Node `node.name` joins: its record (keeping a cordon), how the
    /// server reaches its API, a heartbeat at `now_ms` and a fresh token
    /// (the previous one stops working), in one transaction: all or
    /// nothing. A name that is registered and holds a token is bound to
    /// that token: joining under it needs it (`presented`, the node's own
    /// proof after a restart), else `Taken` and nothing changes; an admin
    /// frees a name by removing the node (`remove_node`).
    pub fn join_node(
        &self,
        mut node: Node,
        access: Option<&NodeAccess>,
        presented: Option<&str>,
        now_ms: u64,
    ) -> Result<String, StateError> {
        let name = node.name.clone();
        let bound = format!("/node-tokens/{name}");
        let nkey = node_key(&name);
        let mut guards = Vec::new();
        let mut ops = Vec::new();
        match self.store.get(&bound)? {
            Some(old) => {
                let current = String::from_utf8_lossy(&old.value).into_owned();
                if presented.map(token_key).as_deref() != Some(current.as_str()) {
                    return Err(StateError::Taken(format!(
                        "node {name:?} is registered and holds a token: a join under its name needs that token (a restarted node daemon sends it from its data dir). If that machine is gone, free the name: `bulkhead node rm {name}`"
                    )));
                }
                guards.push(Compare::Revision(bound.clone(), old.revision));
                ops.push(Op::Delete(current));
            }
            None => guards.push(Compare::Absent(bound.clone())),
        }
        match self.store.get(&nkey)? {
            Some(e) => {
                node.cordoned = decode::<Node>(&e)?.cordoned;
                guards.push(Compare::Revision(nkey.clone(), e.revision));
            }
            None => guards.push(Compare::Absent(nkey.clone())),
        }
        let token =
            new_token().map_err(|e| StateError::Corrupt("/dev/urandom".into(), e.to_string()))?;
        let principal = serde_json::to_vec(&Principal::Node(name.clone())).unwrap_or_default();
        ops.push(Op::Put(token_key(&token), principal));
        ops.push(Op::Put(bound, token_key(&token).into_bytes()));
        ops.push(Op::Put(nkey, encode(&node)));
        ops.push(Op::Put(heartbeat_key(&name), now_ms.to_le_bytes().to_vec()));
        let secrets = format!("/node-secrets/{name}");
        ops.push(match access {
            Some(a) => Op::Put(
                secrets,
                serde_json::to_vec(a).map_err(|e| {
                    StateError::Corrupt(format!("/node-secrets/{name}"), e.to_string())
                })?,
            ),
            None => Op::Delete(secrets),
        });
        match self.store.txn(&guards, &ops) {
            Ok(_) => Ok(token),
            Err(super::store::StoreError::Conflict(_)) => Err(StateError::Taken(format!(
                "node {name:?} joined or changed meanwhile: try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The keys that bind node `name`'s token (for its removal).
    pub(crate) fn node_token_ops(&self, name: &str) -> Result<Vec<Op>, StateError> {
        let bound = format!("/node-tokens/{name}");
        let mut ops = vec![Op::Delete(format!("/node-secrets/{name}"))];
        if let Some(old) = self.store.get(&bound)? {
            ops.push(Op::Delete(String::from_utf8_lossy(&old.value).into_owned()));
            ops.push(Op::Delete(bound));
        }
        Ok(ops)
    }

    /// How the server reaches node `name`'s own API (`None`: it has none).
    pub fn set_node_access(
        &self,
        name: &str,
        access: Option<&NodeAccess>,
    ) -> Result<u64, StateError> {
        let key = format!("/node-secrets/{name}");
        let op = match access {
            Some(a) => Op::Put(
                key,
                serde_json::to_vec(a).map_err(|e| {
                    StateError::Corrupt(format!("/node-secrets/{name}"), e.to_string())
                })?,
            ),
            None => Op::Delete(key),
        };
        Ok(self.store.txn(&[], &[op])?)
    }

    pub fn node_access(&self, name: &str) -> Result<Option<NodeAccess>, StateError> {
        let Some(e) = self.store.get(&format!("/node-secrets/{name}"))? else {
            return Ok(None);
        };
        serde_json::from_slice(&e.value)
            .map(Some)
            .map_err(|err| StateError::Corrupt(e.key, err.to_string()))
    }

    pub fn tenant(&self, name: &str) -> Result<Tenant, StateError> {
        let e = self
            .store
            .get(&tenant_key(name))?
            .ok_or_else(|| StateError::NoService(format!("tenant {name}")))?;
        serde_json::from_slice(&e.value).map_err(|err| StateError::Corrupt(e.key, err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::FileStore;

    #[test]
    fn tokens_map_to_principals_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        let admin = new_token().unwrap_or_default();
        assert!(admin.starts_with("bh_") && admin.len() == 67);
        assert!(c.init_admin(&admin).unwrap_or(false));
        assert!(
            !c.init_admin("bh_other").unwrap_or(true),
            "one admin token, set once"
        );
        assert_eq!(c.principal(&admin).ok().flatten(), Some(Principal::Admin));
        assert_eq!(c.principal("bh_other").ok().flatten(), None);
        let t = c
            .create_tenant(
                "acme",
                Quota {
                    instances: Some(3),
                    ..Default::default()
                },
            )
            .unwrap_or_default();
        assert_eq!(
            c.principal(&t).ok().flatten(),
            Some(Principal::Tenant("acme".into()))
        );
        assert!(matches!(
            c.create_tenant("acme", Quota::default()),
            Err(StateError::Exists(_))
        ));
        assert!(c.create_tenant("a/b", Quota::default()).is_err());
        assert_eq!(
            c.tenant("acme").map(|t| t.quota.instances).ok(),
            Some(Some(3))
        );
        let join = c.create_join_token().unwrap_or_default();
        assert_eq!(c.principal(&join).ok().flatten(), Some(Principal::Join));
        let node = |api: &str| Node {
            name: "n1".into(),
            labels: Default::default(),
            capacity: None,
            allocatable: Default::default(),
            runtimes: vec![],
            cordoned: false,
            api: Some(api.into()),
            images: None,
        };
        let n1 = c
            .join_node(node("https://10.0.0.1:7071"), None, None, 5)
            .unwrap_or_default();
        assert_eq!(
            c.principal(&n1).ok().flatten(),
            Some(Principal::Node("n1".into()))
        );
        // A second join under the bound name, without its token or with another: refused, nothing changes.
        let before = c.store.list("/").unwrap_or_default();
        for presented in [None, Some("bh_guess"), Some(join.as_str())] {
            assert!(
                matches!(
                    c.join_node(node("https://10.6.6.6:7071"), None, presented, 9),
                    Err(StateError::Taken(_))
                ),
                "{presented:?}"
            );
        }
        assert_eq!(
            c.store.list("/").unwrap_or_default(),
            before,
            "a refused join writes nothing"
        );
        let n1_again = c
            .join_node(node("https://10.0.0.1:7072"), None, Some(&n1), 10)
            .unwrap_or_default();
        assert_eq!(
            c.principal(&n1).ok().flatten(),
            None,
            "a node's new token replaces its old one"
        );
        assert_eq!(
            c.principal(&n1_again).ok().flatten(),
            Some(Principal::Node("n1".into()))
        );
        assert_eq!(c.last_heartbeat_ms("n1").ok(), Some(10));
        let raw: Vec<u8> = c
            .store
            .list("/")
            .unwrap_or_default()
            .iter()
            .flat_map(|e| [e.key.as_bytes(), &e.value].concat())
            .collect();
        let raw = String::from_utf8_lossy(&raw);
        assert!(
            !raw.contains(&admin[3..]) && !raw.contains(&t[3..]),
            "no token in the store as is"
        );
    }
}
