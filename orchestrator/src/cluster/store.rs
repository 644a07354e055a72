//! Cluster state as etcd keeps it: keys to values, each with the revision
//! that last wrote it, changed only by transactions whose compares all
//! hold (so a writer that lost its lease or its leadership changes
//! nothing). This is the one-host store (`--store file:PATH`, redb); the
//! etcd store speaks the same model.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};

/// Key -> 8 bytes of revision (little endian), then the value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster store {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("cluster store: {0}")]
    Db(String),
    #[error("cluster store: a damaged entry under {0:?}")]
    Corrupt(String),
    /// A compare did not hold: someone else wrote first (or the writer is
    /// no longer the leader). Nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// This server is a standby (or was deposed): it writes nothing.
    #[error("this server is not the leader{}", .0.as_deref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader(Option<String>),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The store revision that last wrote this key.
    pub revision: u64,
}

/// What must hold for a transaction to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    Absent(String),
    /// Last written at exactly this revision.
    Revision(String, u64),
    /// Holds exactly this value (a leader key naming its holder).
    Value(String, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// What the cluster state needs of a store: etcd's model. Every write is
/// one `txn`; a store shared by several servers also refuses writes from
/// one that is not (or no longer) the leader.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The revision of the last transaction (0: none yet).
    fn revision(&self) -> Result<u64, StoreError>;
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Applies `ops` at a new revision if every compare holds, else
    /// nothing (`Conflict`, or `NotLeader` when leadership was lost).
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<u64, StoreError>;
    /// Whether this server may write now (a one-host store: always).
    fn is_leader(&self) -> bool {
        true
    }
    /// Where the leader's API is, as it announced it (if known).
    fn leader_hint(&self) -> Option<String> {
        None
    }
}

#[derive(Debug)]
pub struct FileStore {
    db: redb::Database,
}

fn decode(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
    let (rev, value) = raw
        .split_at_checked(8)
        .ok_or_else(|| StoreError::Corrupt(key.into()))?;
    let revision = u64::from_le_bytes(
        rev.try_into()
            .map_err(|_| StoreError::Corrupt(key.into()))?,
    );
    Ok(Entry {
        key: key.into(),
        value: value.to_vec(),
        revision,
    })
}

impl FileStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = |detail: String| StoreError::Open {
            path: path.display().to_string(),
            detail,
        };
        // A directory made here is closed to others (the default is the data dir).
        if let Some(parent) = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.exists())
        {
            bulkhead_images::private::dir(parent).map_err(|e| open(e.to_string()))?;
        }
        let database = redb::Database::create(path).map_err(|e| open(e.to_string()))?;
        // Tokens (hashed), node secrets, tenants' services and their env.
        bulkhead_images::private::tighten(path, 0o600).map_err(|e| open(e.to_string()))?;
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(KV).map_err(db)?;
        tx.open_table(META).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(FileStore { db: database })
    }
}

impl Store for FileStore {
    /// The revision of the last transaction (0: none yet).
    fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let meta = tx.open_table(META).map_err(db)?;
        Ok(meta
            .get(REVISION)
            .map_err(db)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let kv = tx.open_table(KV).map_err(db)?;
        let got = kv.get(key).map_err(db)?;
        got.map(|v| decode(key, v.value())).transpose()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let kv = tx.open_table(KV).map_err(db)?;
        let mut out = Vec::new();
        for row in kv.range(prefix..).map_err(db)? {
            let (k, v) = row.map_err(db)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Applies `ops` at a new revision if every compare holds, else
    /// nothing (`Conflict`, naming the first that failed).
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let revision = {
            let mut kv = tx.open_table(KV).map_err(db)?;
            for c in compares {
                let (key, holds) = match c {
                    Compare::Absent(k) => (k, kv.get(k.as_str()).map_err(db)?.is_none()),
                    Compare::Revision(k, r) => (
                        k,
                        kv.get(k.as_str())
                            .map_err(db)?
                            .map(|v| decode(k, v.value()))
                            .transpose()?
                            .is_some_and(|e| e.revision == *r),
                    ),
                    Compare::Value(k, want) => (
                        k,
                        kv.get(k.as_str())
                            .map_err(db)?
                            .map(|v| decode(k, v.value()))
                            .transpose()?
                            .is_some_and(|e| &e.value == want),
                    ),
                };
                if !holds {
                    return Err(StoreError::Conflict(format!(
                        "{key:?} changed (or is not what this writer expected)"
                    )));
                }
            }
            let mut meta = tx.open_table(META).map_err(db)?;
            let revision = meta
                .get(REVISION)
                .map_err(db)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let mut raw = revision.to_le_bytes().to_vec();
                        raw.extend_from_slice(v);
                        kv.insert(k.as_str(), raw.as_slice()).map_err(db)?;
                    }
                    Op::Delete(k) => {
                        kv.remove(k.as_str()).map_err(db)?;
                    }
                }
            }
            meta.insert(REVISION, revision).map_err(db)?;
            revision
        };
        tx.commit().map_err(db)?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.into(), v.as_bytes().to_vec())
    }

    #[test]
    fn revisions_compares_and_prefixes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("cluster.redb");
        let s = FileStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.revision().ok(), Some(0));
        let r1 = s
            .txn(
                &[Compare::Absent("/a/1".into())],
                &[put("/a/1", "x"), put("/a/2", "y"), put("/b/1", "z")],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r1, 1);
        assert!(matches!(
            s.txn(&[Compare::Absent("/a/1".into())], &[put("/a/3", "no")]),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.get("/a/3").ok(),
            Some(None),
            "a failed compare writes nothing"
        );
        assert_eq!(s.revision().ok(), Some(1), "nor moves the revision");
        let keys: Vec<String> = s
            .list("/a/")
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["/a/1", "/a/2"]);
        let r2 = s
            .txn(
                &[Compare::Revision("/a/1".into(), 1)],
                &[put("/a/1", "x2"), Op::Delete("/a/2".into())],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r2, 2);
        assert!(
            s.txn(
                &[Compare::Revision("/a/1".into(), 1)],
                &[put("/a/1", "stale")]
            )
            .is_err(),
            "a writer that read revision 1 lost"
        );
        assert_eq!(
            s.get("/a/1").ok().flatten().map(|e| (e.value, e.revision)),
            Some((b"x2".to_vec(), 2))
        );
        assert_eq!(s.get("/b/1").ok().flatten().map(|e| e.revision), Some(1));
        assert!(s
            .txn(&[Compare::Value("/b/1".into(), b"z".to_vec())], &[])
            .is_ok());
        assert!(s
            .txn(&[Compare::Value("/b/1".into(), b"other".to_vec())], &[])
            .is_err());
        assert!(s.list("/zz").unwrap_or_default().is_empty());
        drop(s);
        let again = FileStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.revision().ok(), Some(3), "kept across opens");
        assert_eq!(again.list("/").unwrap_or_default().len(), 2);
    }

    #[test]
    fn racing_writers_one_wins() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = std::sync::Arc::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        s.txn(&[], &[put("/leader", "none")])
            .unwrap_or_else(|e| panic!("{e}"));
        let rev = s.get("/leader").ok().flatten().map_or(0, |e| e.revision);
        let wins: usize = std::thread::scope(|t| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let s = &s;
                    t.spawn(move || {
                        s.txn(
                            &[Compare::Revision("/leader".into(), rev)],
                            &[put("/leader", &format!("server-{i}"))],
                        )
                        .is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap_or(false)))
                .sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn damaged_entries_are_errors() {
        assert!(matches!(
            decode("/k", b"short"),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(
            decode("/k", &[1, 0, 0, 0, 0, 0, 0, 0])
                .ok()
                .map(|e| (e.revision, e.value)),
            Some((1, vec![]))
        );
    }
}
