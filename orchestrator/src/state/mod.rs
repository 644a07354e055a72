//! The local state: what this host knows of its workloads and networks,
//! and the store that keeps it. The bottom layer of the orchestrator: the
//! network and runtime layers above both read and write it, and it uses
//! neither (`scripts/check-layers`).
//!
//! ```text
//! mod.rs       the store: one redb file in the data dir, workload records
//! paths.rs     where everything lives (data dir, run dir, per-workload files)
//! record.rs    a workload's record and config, its exit and running files
//! procs.rs     process identities that survive pid reuse (pidfds)
//! fencing.rs   the fence and lease deadline a cluster workload runs under
//! net.rs       networks, address leases and the host's policy in the store
//! subnet.rs    subnets, address allocation, MACs (pure)
//! publish.rs   -p HOSTIP:HOSTPORT:PORT/PROTO parsing (pure)
//! volumes.rs   named volumes in the store, `-v`/`--mount` parsing (pure)
//! ```
//!
//! redb locks its file for as long as a `Database` is open, so every
//! operation opens it for one transaction only, behind a blocking flock on
//! `state.lock`: any number of CLI invocations and supervisors take turns.
//! Opening costs fsyncs (redb marks the file in use and clean again), so a
//! step that reads and writes several times (`run`'s record, a network's
//! attach and rules) holds it open across them with [`State::hold`].

pub mod fdlimit;
pub mod fencing;
pub mod health;
pub mod hostids;
pub mod net;
pub mod paths;
pub mod procs;
pub mod publish;
pub mod record;
pub mod subnet;
pub mod volumes;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;

use redb::{Database, ReadableTable, TableDefinition};

use self::paths::Paths;
use self::record::{read_json, Exit, Record, Running};

const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("workloads");
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The cause is part of the sentence (printed once, here; not chained).
    #[error("state store {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("state store: {0}")]
    Db(String),
    #[error("no workload {0:?} (`bulkhead ps -a` lists them)")]
    NotFound(String),
    #[error("{0:?} matches more than one workload: give more of the id")]
    Ambiguous(String),
    #[error("the name {0:?} is taken (`bulkhead rm {0}` frees it, or pick another with --name)")]
    NameTaken(String),
    #[error("a record in the state store is damaged: {0}")]
    Corrupt(String),
    /// Bad input from the user (a subnet, a port): nothing was changed.
    #[error("{0}")]
    Input(String),
    #[error("no network {0:?} (`bulkhead network ls` lists them)")]
    NoSuchNetwork(String),
    /// What was asked for clashes with what the store holds (an address,
    /// a port, a subnet, a network in use).
    #[error("{0}")]
    Conflict(String),
    #[error("no free jail uid in {0}-{1}: every one belongs to a workload in the store (`bulkhead rm` ended ones, or widen BULKHEAD_JAIL_IDS)")]
    NoJailId(u32, u32),
    #[error("no free block of 65536 container ids in {0}-{1}: each belongs to a workload in the store (`bulkhead rm` ended ones, or widen BULKHEAD_USERNS_IDS)")]
    NoUserIds(u32, u32),
}

#[derive(Debug, Clone)]
pub struct State {
    paths: Paths,
}

impl State {
    pub fn new(paths: Paths) -> Self {
        Self { paths }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Runs `f` with the database open, holding the lock: the one this
    /// thread holds ([`State::hold`]), else opened for `f` alone.
    pub(crate) fn with_db<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(database) = held_db(&self.paths.state_db()) {
            return f(&database);
        }
        let (_held, database) = self.open_locked()?;
        f(&database)
    }

    /// Keeps the store open and locked in this thread until the guard
    /// drops: every `with_db` of this store in this thread uses it. For
    /// synchronous steps only (no `.await` while held: other tasks on the
    /// thread would share it). Take it after any other lock of the step
    /// (the network lock comes first, as everywhere). Nested holds are one.
    pub fn hold(&self) -> Result<Hold, StateError> {
        let path = self.paths.state_db();
        // Nested, or another store already held here (that one stays).
        if HELD.with(|h| h.borrow().is_some()) {
            return Ok(Hold {
                outer: false,
                _here: std::marker::PhantomData,
            });
        }
        let (lock, database) = self.open_locked()?;
        HELD.with(|h| {
            *h.borrow_mut() = Some(HeldDb {
                path,
                database: Rc::new(database),
                _lock: lock,
            })
        });
        Ok(Hold {
            outer: true,
            _here: std::marker::PhantomData,
        })
    }

    fn open_locked(&self) -> Result<(nix::fcntl::Flock<File>, Database), StateError> {
        let io = |error| StateError::Io {
            path: self.paths.state_lock().display().to_string(),
            error,
        };
        bulkhead_images::private::data_root(self.paths.data()).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.paths.state_lock())
            .map_err(io)?;
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(e.into()))?;
        let database = Database::create(self.paths.state_db()).map_err(db)?;
        bulkhead_images::private::tighten(&self.paths.state_db(), 0o600).map_err(io)?;
        Ok((held, database))
    }

    /// Adds a new workload; its name must be free.
    pub fn insert(&self, rec: &Record) -> Result<(), StateError> {
        self.with_db(|d| {
            let tx = d.begin_write().map_err(db)?;
            insert_in(&tx, rec)?;
            tx.commit().map_err(db)
        })
    }

    /// Every workload, oldest first, with the supervisors' files folded in.
    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let mut all = self.with_db(|d| {
            let tx = d.begin_read().map_err(db)?;
            let table = match tx.open_table(WORKLOADS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db(e)),
            };
            let mut v = Vec::new();
            for row in table.iter().map_err(db)? {
                let (_, value) = row.map_err(db)?;
                v.push(
                    serde_json::from_slice::<Record>(value.value())
                        .map_err(|e| StateError::Corrupt(e.to_string()))?,
                );
            }
            Ok(v)
        })?;
        for r in &mut all {
            self.fold(r)?;
        }
        all.sort_by_key(|r| r.config.created_ms);
        Ok(all)
    }

    /// The workload named `key`: a name, a full id or a unique id prefix.
    pub fn get(&self, key: &str) -> Result<Record, StateError> {
        let by_name = self.with_db(|d| {
            let tx = d.begin_read().map_err(db)?;
            match tx.open_table(NAMES) {
                Ok(t) => Ok(t.get(key).map_err(db)?.map(|v| v.value().to_string())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(db(e)),
            }
        })?;
        let all = self.list()?;
        if let Some(id) = by_name {
            return all.into_iter().find(|r| r.config.id == id).ok_or_else(|| {
                StateError::Corrupt(format!("name {key:?} points at a missing id"))
            });
        }
        let hex = !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit());
        let mut hits: Vec<Record> = all
            .into_iter()
            .filter(|r| hex && r.config.id.starts_with(key))
            .collect();
        match hits.len() {
            0 => Err(StateError::NotFound(key.to_string())),
            1 => Ok(hits.remove(0)),
            _ => Err(StateError::Ambiguous(key.to_string())),
        }
    }

    /// A running workload's health as its supervisor last wrote it (`None`:
    /// no check, or not running).
    pub fn health(&self, r: &Record) -> Option<health::Health> {
        if r.config.health.is_none() || r.status() != record::Status::Running {
            return None;
        }
        let path = self.paths.workload_dir(&r.config.id).join("health.json");
        record::read_json(&path).ok().flatten()
    }

    /// Reads `running.json` and `exit.json` into the record (and the store
    /// when they changed it).
    fn fold(&self, r: &mut Record) -> Result<(), StateError> {
        let dir = self.paths.workload_dir(&r.config.id);
        let io = |error| StateError::Io {
            path: dir.display().to_string(),
            error,
        };
        let running: Option<Running> = read_json(&dir.join("running.json")).map_err(io)?;
        let exit: Option<Exit> = read_json(&dir.join("exit.json")).map_err(io)?;
        let mut changed = false;
        if running.is_some() && running != r.running {
            r.running = running;
            changed = true;
        }
        if exit.is_some() && exit != r.exit {
            r.exit = exit;
            changed = true;
        }
        if changed {
            self.put(r)?;
        }
        Ok(())
    }

    fn put(&self, r: &Record) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(r).map_err(db)?;
        self.with_db(|d| {
            let tx = d.begin_write().map_err(db)?;
            {
                let mut t = tx.open_table(WORKLOADS).map_err(db)?;
                // A row removed meanwhile (rm) stays removed.
                if t.get(r.config.id.as_str()).map_err(db)?.is_none() {
                    return Ok(());
                }
                t.insert(r.config.id.as_str(), bytes.as_slice())
                    .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    /// Drops the row and frees the name.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        self.with_db(|d| {
            let tx = d.begin_write().map_err(db)?;
            {
                let mut t = tx.open_table(WORKLOADS).map_err(db)?;
                let name = match t.remove(id).map_err(db)? {
                    Some(v) => serde_json::from_slice::<Record>(v.value())
                        .ok()
                        .map(|r| r.config.name),
                    None => None,
                };
                if let Some(n) = name {
                    tx.open_table(NAMES)
                        .map_err(db)?
                        .remove(n.as_str())
                        .map_err(db)?;
                }
            }
            net::remove_leases_in(&tx, id)?;
            tx.commit().map_err(db)
        })
    }

    /// How many rows there are, by id or by name (whichever is more).
    #[cfg(test)]
    fn count(&self) -> Result<usize, StateError> {
        use redb::ReadableTableMetadata;
        self.with_db(|d| {
            let tx = d.begin_read().map_err(db)?;
            let n = match tx.open_table(WORKLOADS) {
                Ok(t) => usize::try_from(t.len().map_err(db)?).unwrap_or(usize::MAX),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(db(e)),
            };
            let m = match tx.open_table(NAMES) {
                Ok(t) => usize::try_from(t.len().map_err(db)?).unwrap_or(usize::MAX),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(db(e)),
            };
            Ok(n.max(m))
        })
    }
}

/// Gives a jailed VMM its uid/gid (uid = gid): the lowest of its range
/// no workload in the store holds, ended ones included (their files may
/// still be around until `rm`); a container its block of user namespace
/// ids the same way. In the insert's write transaction, so two `run`s at
/// once never get the same; with `host`, also none another data dir's live
/// workload holds, and the ids given are claimed there.
pub(crate) fn assign_ids(
    tx: &redb::WriteTransaction,
    rec: &mut Record,
    host: Option<&hostids::HostIds>,
) -> Result<(), StateError> {
    let rec_id = rec.config.id.clone();
    let jail = rec
        .config
        .vm
        .as_mut()
        .and_then(|v| v.jail.as_mut())
        .filter(|j| j.uid == 0);
    let userns = rec.config.userns.as_mut().filter(|u| u.base == 0);
    if jail.is_none() && userns.is_none() {
        return Ok(());
    }
    let (mut jail_uids, mut bases) = (BTreeSet::new(), BTreeSet::new());
    for row in tx.open_table(WORKLOADS).map_err(db)?.iter().map_err(db)? {
        let (_, value) = row.map_err(db)?;
        let other: Record = serde_json::from_slice(value.value())
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        if let Some(j) = other.config.vm.and_then(|v| v.jail) {
            jail_uids.insert(j.uid);
        }
        if let Some(u) = other.config.userns {
            bases.insert(u.base);
        }
    }
    let claim = |kind: &str, n: u32| match host {
        Some(h) => h.claim(kind, n, &rec_id).map_err(|error| StateError::Io {
            path: format!("the host's claim of {kind} id {n}"),
            error,
        }),
        None => Ok(()),
    };
    if let Some(h) = host {
        jail_uids.extend(h.held_by_others("jail"));
        bases.extend(h.held_by_others("userns"));
    }
    if let Some(jail) = jail {
        let (first, last) = jail.ids;
        let free = (first.max(1)..=last)
            .find(|u| !jail_uids.contains(u))
            .ok_or(StateError::NoJailId(first, last))?;
        claim("jail", free)?;
        jail.uid = free;
        jail.gid = free;
    }
    if let Some(u) = userns {
        u.base = free_block(u.ids, &bases).ok_or(StateError::NoUserIds(u.ids.0, u.ids.1))?;
        claim("userns", u.base)?;
    }
    Ok(())
}

/// The lowest block start `first + k * SIZE` (never 0) whose whole block
/// lies in `first..=last` and that no one holds. Blocks of one range never
/// overlap, so holding the start holds the block.
fn free_block((first, last): (u32, u32), taken: &BTreeSet<u32>) -> Option<u32> {
    let size = record::UserIds::SIZE;
    let first = first.max(1);
    let blocks = (u64::from(last) + 1).checked_sub(u64::from(first))? / u64::from(size);
    (0..blocks)
        .filter_map(|k| u32::try_from(u64::from(first) + k * u64::from(size)).ok())
        .find(|b| !taken.contains(b))
}

/// Inserts `rec` in an open write transaction; its name must be free.
pub(crate) fn insert_in(tx: &redb::WriteTransaction, rec: &Record) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(rec).map_err(db)?;
    let mut names = tx.open_table(NAMES).map_err(db)?;
    if names.get(rec.config.name.as_str()).map_err(db)?.is_some() {
        return Err(StateError::NameTaken(rec.config.name.clone()));
    }
    names
        .insert(rec.config.name.as_str(), rec.config.id.as_str())
        .map_err(db)?;
    tx.open_table(WORKLOADS)
        .map_err(db)?
        .insert(rec.config.id.as_str(), bytes.as_slice())
        .map_err(db)?;
    Ok(())
}

/// The store a thread holds open: the database, then its lock, go when
/// the outermost [`Hold`] drops.
struct HeldDb {
    path: PathBuf,
    database: Rc<Database>,
    _lock: nix::fcntl::Flock<File>,
}

thread_local! {
    static HELD: RefCell<Option<HeldDb>> = const { RefCell::new(None) };
}

fn held_db(path: &std::path::Path) -> Option<Rc<Database>> {
    HELD.with(|h| {
        h.borrow()
            .as_ref()
            .filter(|held| held.path == path)
            .map(|held| Rc::clone(&held.database))
    })
}

/// The store held open in this thread ([`State::hold`]) until this drops.
#[derive(Debug)]
#[must_use = "the store is closed again when the hold drops"]
pub struct Hold {
    outer: bool,
    /// Dropped in the thread that took it (the store is held per thread).
    _here: std::marker::PhantomData<*const ()>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.outer {
            // The database closes (redb's fsyncs) before the lock is let go.
            if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
                let HeldDb {
                    database, _lock, ..
                } = held;
                drop(database);
                drop(_lock);
            }
        }
    }
}

pub(crate) fn db<E: std::fmt::Display>(e: E) -> StateError {
    StateError::Db(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_keeps_one_open_store_for_every_step_and_lets_go_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(Paths::new(dir.path()));
        let others_can_lock = || {
            let f = File::options()
                .write(true)
                .open(state.paths().state_lock())
                .unwrap();
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
        };
        {
            let _hold = state.hold().unwrap();
            let _nested = state.hold().unwrap();
            // Each of these would open the store again (and block on its own
            // lock) if the hold were not used.
            state.insert(&rec("a1", "one")).unwrap();
            state.insert(&rec("b2", "two")).unwrap();
            assert_eq!(state.list().unwrap().len(), 2);
            drop(_nested);
            assert!(!others_can_lock(), "the store is let go while held");
            state.remove("a1").unwrap();
        }
        assert!(others_can_lock(), "the lock outlives the hold");
        let names: Vec<String> = state
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.config.name)
            .collect();
        assert_eq!(names, ["two"]);
    }

    fn rec(id: &str, name: &str) -> Record {
        super::record::test_record(id, name)
    }

    #[test]
    fn names_are_unique_lookups_by_name_or_prefix_and_exit_files_fold_in() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = State::new(Paths::new(d.path()));
        assert!(s.list().unwrap_or_else(|e| panic!("{e}")).is_empty());
        s.insert(&rec("abc123", "web"))
            .unwrap_or_else(|e| panic!("{e}"));
        s.insert(&rec("abd456", "db"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            s.insert(&rec("fff", "web")),
            Err(StateError::NameTaken(_))
        ));
        assert_eq!(
            s.get("web").unwrap_or_else(|e| panic!("{e}")).config.id,
            "abc123"
        );
        assert_eq!(
            s.get("abd").unwrap_or_else(|e| panic!("{e}")).config.name,
            "db"
        );
        assert!(matches!(s.get("ab"), Err(StateError::Ambiguous(_))));
        assert!(matches!(s.get("zz"), Err(StateError::NotFound(_))));
        assert!(matches!(s.get(""), Err(StateError::NotFound(_))));

        let dir = s.paths().workload_dir("abc123");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let exit = Exit {
            code: 7,
            signal: None,
            error: None,
            finished_ms: 1,
        };
        super::record::write_json(&dir.join("exit.json"), &exit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.get("web").unwrap_or_else(|e| panic!("{e}")).status(),
            super::record::Status::Exited(7)
        );
        std::fs::write(dir.join("exit.json"), b"{garbage").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            s.get("web").is_err(),
            "a damaged exit file is an error, not a silent running"
        );

        s.remove("abc123").unwrap_or_else(|e| panic!("{e}"));
        s.insert(&rec("abc999", "web"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.count().unwrap_or_else(|e| panic!("{e}")), 2);
    }

    #[test]
    fn jail_ids_are_the_lowest_free_in_range_and_never_shared() {
        use super::record::{Jail, VmFiles};
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = State::new(Paths::new(d.path()));
        let jailed = |id: &str| {
            let mut r = rec(id, id);
            let jail = Jail {
                jailer: "/j".into(),
                chroot_base: "/b".into(),
                uid: 0,
                gid: 0,
                ids: (7, 9),
            };
            r.config.vm = Some(VmFiles {
                vmm: "/v".into(),
                kernel: "/k".into(),
                initrd: "/i".into(),
                disk: super::record::RootDisk::image("/d".into(), super::record::DiskFormat::Ext4),
                flavor: Default::default(),
                jail: Some(jail),
                share_boot_files: true,
            });
            r
        };
        let insert = |id: &str| {
            let mut r = jailed(id);
            s.with_db(|d| {
                let tx = d.begin_write().map_err(db)?;
                assign_ids(&tx, &mut r, None)?;
                insert_in(&tx, &r)?;
                tx.commit().map_err(db)
            })
            .map(|()| r.config.vm.and_then(|v| v.jail).map(|j| (j.uid, j.gid)))
        };
        assert_eq!(insert("a").ok().flatten(), Some((7, 7)));
        assert_eq!(insert("b").ok().flatten(), Some((8, 8)));
        assert_eq!(insert("c").ok().flatten(), Some((9, 9)));
        assert!(
            matches!(insert("d"), Err(StateError::NoJailId(7, 9))),
            "the range is used up"
        );
        s.remove("b").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            insert("e").ok().flatten(),
            Some((8, 8)),
            "a removed workload's uid is free again"
        );
        let uids: Vec<u32> = s
            .list()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .filter_map(|r| r.config.vm.as_ref()?.jail.as_ref().map(|j| j.uid))
            .collect();
        assert_eq!(uids.len(), 3);
    }

    #[test]
    fn container_id_blocks_are_whole_apart_and_never_shared() {
        use super::record::UserIds;
        const N: u32 = UserIds::SIZE;
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = State::new(Paths::new(d.path()));
        // Room for two whole blocks and a part of a third.
        let ids = (1000, 1000 + 2 * N + 99);
        let insert = |id: &str| {
            let mut r = rec(id, id);
            r.config.userns = Some(UserIds { base: 0, ids });
            s.with_db(|d| {
                let tx = d.begin_write().map_err(db)?;
                assign_ids(&tx, &mut r, None)?;
                insert_in(&tx, &r)?;
                tx.commit().map_err(db)
            })
            .map(|()| r.config.userns.map(|u| u.base))
        };
        assert_eq!(insert("a").ok().flatten(), Some(1000));
        assert_eq!(insert("b").ok().flatten(), Some(1000 + N));
        assert!(
            matches!(insert("c"), Err(StateError::NoUserIds(1000, _))),
            "a part of a block is not a block"
        );
        s.remove("a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(insert("e").ok().flatten(), Some(1000), "freed by rm");
        let taken = BTreeSet::new();
        assert_eq!(free_block((0, N), &taken), Some(1), "never id 0");
        assert_eq!(free_block((1, N - 1), &taken), None, "too small");
        assert_eq!(
            free_block((u32::MAX - N + 1, u32::MAX), &taken),
            Some(u32::MAX - N + 1),
            "the top block, without overflow"
        );
    }
}
