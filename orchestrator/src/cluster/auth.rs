//! Who is asking: bearer tokens (32 random bytes, hex), kept only as their
//! SHA-256 in the store, each naming the admin (nodes, tenants, cordon),
//! one tenant (its own services and instances, within its quota), the
//! right to join nodes, or one node. A token may expire (join tokens do,
//! after 24 h unless asked otherwise, as kubeadm's); every token can be
//! listed by an id (the start of its hash, never the token) and revoked.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::schedule::Quota;
use super::state::{decode, encode, heartbeat_key, node_key, Cluster, Node, StateError};
use super::store::{Compare, Op};
use crate::state::record::RuntimeKind;

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

/// What the store keeps for a token (under `/tokens/<its SHA-256>`).
/// Older stores hold a bare [`Principal`]: read as never expiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub principal: Principal,
    /// Wall-clock ms when it was made (0: before records had times).
    #[serde(default)]
    pub created_ms: u64,
    /// Wall-clock ms after which it no longer works.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    fn new(principal: Principal, now_ms: u64, ttl_ms: Option<u64>) -> Self {
        TokenRecord {
            principal,
            created_ms: now_ms,
            expires_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(e: &super::store::Entry) -> Result<TokenRecord, StateError> {
        serde_json::from_slice::<TokenRecord>(&e.value)
            .or_else(|_| {
                serde_json::from_slice::<Principal>(&e.value)
                    .map(|principal| TokenRecord::new(principal, 0, None))
            })
            .map_err(|err| StateError::Corrupt(e.key.clone(), err.to_string()))
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|t| now_ms >= t)
    }
}

/// A token as `token ls` shows it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The first 16 hex digits of the token's SHA-256: what `token rm` takes.
    pub id: String,
    /// admin, tenant, join or node.
    pub kind: String,
    /// The tenant's or the node's name.
    pub name: Option<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    /// Whether it expired (it is refused; `token rm` clears it away).
    pub expired: bool,
}

/// How long a join token works unless asked otherwise: a day, as kubeadm's.
pub const JOIN_TOKEN_TTL_MS: u64 = 24 * 3600 * 1000;

const TOKENS: &str = "/tokens/";
/// An id is this many hex digits of the token's hash.
const ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    pub name: String,
    pub quota: Quota,
    /// The runtimes its services may use: microVMs only unless an admin
    /// allowed containers (a shared kernel) at `tenant create|update --runtimes`.
    #[serde(default = "runtimes_before_the_gate")]
    pub runtimes: Vec<RuntimeKind>,
    /// Whether its instances may reach the internet (an admin's policy;
    /// without it, only its network and the private ranges its services
    /// allow).
    #[serde(default = "yes")]
    pub internet: bool,
}

fn yes() -> bool {
    true
}

/// Tenants made before runtimes were gated could use both, and keep that.
fn runtimes_before_the_gate() -> Vec<RuntimeKind> {
    vec![RuntimeKind::Microvm, RuntimeKind::Container]
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
    format!("{TOKENS}{}", hex::encode(Sha256::digest(token.as_bytes())))
}

fn info_of(key: &str, r: &TokenRecord, now_ms: u64) -> TokenInfo {
    let hash = key.strip_prefix(TOKENS).unwrap_or(key);
    let (kind, name) = match &r.principal {
        Principal::Admin => ("admin", None),
        Principal::Tenant(t) => ("tenant", Some(t.clone())),
        Principal::Join => ("join", None),
        Principal::Node(n) => ("node", Some(n.clone())),
    };
    TokenInfo {
        id: hash.chars().take(ID_LEN).collect(),
        kind: kind.into(),
        name,
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        expired: r.expired(now_ms),
    }
}

pub(crate) fn tenant_key(name: &str) -> String {
    format!("/tenants/{name}")
}

impl Cluster {
    /// The principal a token stands for at `now_ms`, if any (an expired
    /// token stands for none).
    pub fn principal(&self, token: &str, now_ms: u64) -> Result<Option<Principal>, StateError> {
        match self.store.get(&token_key(token))? {
            Some(e) => {
                let r = TokenRecord::decode(&e)?;
                Ok((!r.expired(now_ms)).then_some(r.principal))
            }
            None => Ok(None),
        }
    }

    /// Every token, as ids: the admin's, tenants', join and node tokens.
    pub fn list_tokens(&self, now_ms: u64) -> Result<Vec<TokenInfo>, StateError> {
        let mut out = Vec::new();
        for e in self.store.list(TOKENS)? {
            out.push(info_of(&e.key, &TokenRecord::decode(&e)?, now_ms));
        }
        out.sort_by(|a, b| (&a.kind, &a.name, a.created_ms).cmp(&(&b.kind, &b.name, b.created_ms)));
        Ok(out)
    }

    /// Revokes the token whose id starts with `id` (8 hex digits at least,
    /// and one token only). The admin token is not revoked: nothing could
    /// make another. A node's token takes its name's binding with it, so
    /// the node must join again (with a join token).
    pub fn revoke_token(&self, id: &str, now_ms: u64) -> Result<TokenInfo, StateError> {
        let id = id.to_ascii_lowercase();
        if id.len() < 8 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StateError::Spec(super::spec::SpecError::Field {
                field: "id",
                why: format!("{id:?}: 8 to 64 hex digits, as `token ls` shows"),
            }));
        }
        let found = self.store.list(&format!("{TOKENS}{id}"))?;
        let e = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(StateError::NoService(format!("token {id}"))),
            _ => {
                return Err(StateError::Taken(format!(
                    "{id} names {} tokens: give more of its digits",
                    found.len()
                )))
            }
        };
        let r = TokenRecord::decode(&e)?;
        let mut ops = vec![Op::Delete(e.key.clone())];
        match &r.principal {
            Principal::Admin => {
                return Err(StateError::Taken(
                    "the admin token is not revoked: it is the only way in".into(),
                ))
            }
            Principal::Node(n) => {
                let bound = format!("/node-tokens/{n}");
                if let Some(b) = self.store.get(&bound)? {
                    if b.value == e.key.as_bytes() {
                        ops.push(Op::Delete(bound));
                    }
                }
            }
            Principal::Tenant(_) | Principal::Join => {}
        }
        self.store
            .txn(&[Compare::Revision(e.key.clone(), e.revision)], &ops)?;
        Ok(info_of(&e.key, &r, now_ms))
    }

    /// Stores `token` for the admin unless an admin token exists; true if stored.
    pub fn init_admin(&self, token: &str) -> Result<bool, StateError> {
        if self.store.get("/admin")?.is_some() {
            return Ok(false);
        }
        let now = crate::state::record::now_ms();
        let principal = TokenRecord::new(Principal::Admin, now, None).bytes();
        self.store.txn(
            &[Compare::Absent("/admin".into())],
            &[
                Op::Put("/admin".into(), Vec::new()),
                Op::Put(token_key(token), principal),
            ],
        )?;
        Ok(true)
    }

    /// A new tenant and its first token; limits `quota` leaves out are
    /// [`super::schedule::DEFAULT_QUOTA`]'s, and without `runtimes` it
    /// may use microVMs only.
    pub fn create_tenant(
        &self,
        name: &str,
        quota: Quota,
        runtimes: &[RuntimeKind],
    ) -> Result<String, StateError> {
        let quota = quota.or_defaults();
        let mut runtimes = runtimes.to_vec();
        if runtimes.is_empty() {
            runtimes.push(RuntimeKind::Microvm);
        }
        runtimes.sort_by_key(|r| *r as u8);
        runtimes.dedup();
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
            runtimes,
            internet: true,
        })
        .unwrap_or_default();
        let now = crate::state::record::now_ms();
        let principal = TokenRecord::new(Principal::Tenant(name.into()), now, None).bytes();
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

    /// A new join token (reusable: one per cluster or per batch of hosts)
    /// that works for `ttl_ms` (`None`: until revoked); and when it ends.
    pub fn create_join_token(
        &self,
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) -> Result<(String, Option<u64>), StateError> {
        let token =
            new_token().map_err(|e| StateError::Corrupt("/dev/urandom".into(), e.to_string()))?;
        let record = TokenRecord::new(Principal::Join, now_ms, ttl_ms);
        self.store
            .txn(&[], &[Op::Put(token_key(&token), record.bytes())])?;
        Ok((token, record.expires_ms))
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
        let principal = TokenRecord::new(Principal::Node(name.clone()), now_ms, None).bytes();
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

    /// Every tenant, by name.
    pub fn tenants(&self) -> Result<Vec<Tenant>, StateError> {
        let mut out = self
            .store
            .list("/tenants/")?
            .into_iter()
            .map(|e| {
                serde_json::from_slice::<Tenant>(&e.value)
                    .map_err(|err| StateError::Corrupt(e.key, err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// An admin changes a tenant: each limit `quota` sets replaces the
    /// tenant's (the rest stay), and `runtimes`, when given, replaces its
    /// list. A runtime one of its services uses cannot be taken away
    /// (remove or redeploy those first); a quota below what it uses now
    /// stands, and refuses growth until it fits (as Kubernetes'
    /// ResourceQuota). Written only if the tenant did not change meanwhile.
    pub fn update_tenant(
        &self,
        name: &str,
        quota: Quota,
        runtimes: Option<&[RuntimeKind]>,
        internet: Option<bool>,
    ) -> Result<Tenant, StateError> {
        let key = tenant_key(name);
        let e = self
            .store
            .get(&key)?
            .ok_or_else(|| StateError::NoService(format!("tenant {name}")))?;
        let mut t: Tenant = serde_json::from_slice(&e.value)
            .map_err(|err| StateError::Corrupt(e.key.clone(), err.to_string()))?;
        t.quota = Quota {
            millicpus: quota.millicpus.or(t.quota.millicpus),
            memory_mib: quota.memory_mib.or(t.quota.memory_mib),
            instances: quota.instances.or(t.quota.instances),
        };
        if let Some(r) = runtimes {
            if r.is_empty() {
                return Err(StateError::Spec(super::spec::SpecError::Field {
                    field: "runtimes",
                    why: "at least one (microvm, container)".into(),
                }));
            }
            let mut r = r.to_vec();
            r.sort_by_key(|k| *k as u8);
            r.dedup();
            let kept_out: Vec<String> = self
                .services(name)?
                .into_iter()
                .filter(|s| !r.contains(&s.spec.runtime))
                .map(|s| s.spec.name)
                .collect();
            if !kept_out.is_empty() {
                return Err(StateError::Taken(format!(
                    "tenant {name}'s services {} use a runtime this takes away: remove or redeploy them first",
                    kept_out.join(", ")
                )));
            }
            t.runtimes = r;
        }
        if let Some(i) = internet {
            t.internet = i;
        }
        let value = serde_json::to_vec(&t).unwrap_or_default();
        self.store.txn(
            &[Compare::Revision(key.clone(), e.revision)],
            &[Op::Put(key, value)],
        )?;
        Ok(t)
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
        assert_eq!(
            c.principal(&admin, 20).ok().flatten(),
            Some(Principal::Admin)
        );
        assert_eq!(c.principal("bh_other", 20).ok().flatten(), None);
        let t = c
            .create_tenant(
                "acme",
                Quota {
                    instances: Some(3),
                    ..Default::default()
                },
                &[],
            )
            .unwrap_or_default();
        assert_eq!(
            c.principal(&t, 20).ok().flatten(),
            Some(Principal::Tenant("acme".into()))
        );
        assert!(matches!(
            c.create_tenant("acme", Quota::default(), &[]),
            Err(StateError::Exists(_))
        ));
        assert!(c.create_tenant("a/b", Quota::default(), &[]).is_err());
        // Its limits, the defaults where none was given, and microVMs only.
        let acme = c.tenant("acme").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (acme.quota.instances, acme.quota.millicpus, acme.runtimes),
            (
                Some(3),
                crate::cluster::schedule::DEFAULT_QUOTA.millicpus,
                vec![RuntimeKind::Microvm]
            )
        );
        // A tenant record from before the gate keeps both runtimes.
        let old: Tenant = serde_json::from_str(
            r#"{"name":"old","quota":{"millicpus":null,"memory_mib":null,"instances":null}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.runtimes, [RuntimeKind::Microvm, RuntimeKind::Container]);
        let (join, _) = c.create_join_token(0, None).unwrap_or_default();
        assert_eq!(c.principal(&join, 20).ok().flatten(), Some(Principal::Join));
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
            c.principal(&n1, 20).ok().flatten(),
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
            c.principal(&n1, 20).ok().flatten(),
            None,
            "a node's new token replaces its old one"
        );
        assert_eq!(
            c.principal(&n1_again, 20).ok().flatten(),
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

    #[test]
    fn tokens_expire_are_listed_by_id_and_revoked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        let admin = new_token().unwrap_or_default();
        assert!(c.init_admin(&admin).unwrap_or(false));
        let tenant = c
            .create_tenant("acme", Quota::default(), &[])
            .unwrap_or_default();
        let (join, ends) = c
            .create_join_token(1000, Some(JOIN_TOKEN_TTL_MS))
            .unwrap_or_default();
        assert_eq!(ends, Some(1000 + JOIN_TOKEN_TTL_MS));
        let last = 1000 + JOIN_TOKEN_TTL_MS - 1;
        assert_eq!(
            c.principal(&join, last).ok().flatten(),
            Some(Principal::Join)
        );
        assert_eq!(c.principal(&join, last + 1).ok().flatten(), None, "expired");
        let (forever, none) = c.create_join_token(2000, None).unwrap_or_default();
        assert_eq!(none, None);
        assert!(c.principal(&forever, u64::MAX).ok().flatten().is_some());

        let list = c.list_tokens(last + 1).unwrap_or_default();
        let kinds: Vec<(&str, bool)> = list.iter().map(|t| (t.kind.as_str(), t.expired)).collect();
        assert_eq!(
            kinds,
            [
                ("admin", false),
                ("join", true),
                ("join", false),
                ("tenant", false)
            ]
        );
        let shown = serde_json::to_string(&list).unwrap_or_default();
        for secret in [&admin, &tenant, &join, &forever] {
            assert!(
                !shown.contains(&secret[3..]),
                "a listing never shows a token"
            );
        }

        // Bad ids and the admin token are refused, and nothing changes.
        let before = c.store.list("/").unwrap_or_default();
        let admin_id = list[0].id.clone();
        for bad in ["", "abc", "not-hex-at-all!", &admin_id] {
            assert!(c.revoke_token(bad, 0).is_err(), "{bad:?}");
        }
        assert_eq!(c.store.list("/").unwrap_or_default(), before);
        // The tenant's token, by a prefix of its id.
        let tenant_id = list
            .iter()
            .find(|t| t.kind == "tenant")
            .map(|t| t.id.clone());
        let gone = c.revoke_token(&tenant_id.unwrap_or_default()[..8], 0);
        assert_eq!(gone.map(|t| t.name).ok().flatten().as_deref(), Some("acme"));
        assert_eq!(c.principal(&tenant, 0).ok().flatten(), None);
        assert_eq!(
            c.principal(&admin, 0).ok().flatten(),
            Some(Principal::Admin)
        );

        // A node's token: revoked with its name's binding, so the name
        // can be joined again with a join token.
        let node = Node {
            name: "n1".into(),
            labels: Default::default(),
            capacity: None,
            allocatable: Default::default(),
            runtimes: vec![],
            cordoned: false,
            api: None,
            images: None,
        };
        let n1 = c.join_node(node.clone(), None, None, 5).unwrap_or_default();
        let id = c
            .list_tokens(5)
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.kind == "node")
            .map(|t| t.id)
            .unwrap_or_default();
        assert!(c.revoke_token(&id, 5).is_ok());
        assert_eq!(c.principal(&n1, 5).ok().flatten(), None);
        assert!(c.join_node(node, None, None, 6).is_ok());
    }
}
