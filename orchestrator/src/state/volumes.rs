//! Named volumes: data that outlives the workloads that use it. A volume
//! is one ext4 image under `<data>/volumes/NAME/`; its kind says who may
//! mount it, fixed when it is made, because the host never mounts a
//! filesystem a guest wrote (that would hand a guest the host kernel's ext4
//! code, around the VM's wall):
//!
//! - *block*: attached to microVMs as a disk; only guests mount it;
//! - *dir*: mounted by the host (loop, nosuid, nodev) and bound into
//!   containers through an idmapped mount, files kept with the ids they
//!   have inside (as image trees are); only the host kernel writes it.
//!
//! The image's size is the volume's limit. The store keeps one row per
//! volume; which workloads use it is in their records (`WorkloadConfig::
//! volumes`), so "in use" is read from the same store the insert checks.
//! Also the pure parsing of `-v` and `--mount`.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::net::{corrupt, read_all};
use super::record::{Record, RuntimeKind};
use super::{db, State, StateError};

const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

/// Size of a volume made without `--size` (sparse: it costs what is written).
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest and largest volume (ext4 with a journal needs a few MiB).
pub const MIN_SIZE: u64 = 16 << 20;
pub const MAX_SIZE: u64 = 16 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// An ext4 disk for microVMs: only guests mount it.
    Block,
    /// A host-mounted directory for containers.
    Dir,
}

impl VolumeKind {
    /// The kind a workload of `runtime` can mount (and gets when `-v`
    /// makes the volume).
    pub fn for_runtime(runtime: RuntimeKind) -> Self {
        match runtime {
            RuntimeKind::Microvm => VolumeKind::Block,
            RuntimeKind::Container => VolumeKind::Dir,
        }
    }
}

impl std::fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeKind::Block => "block",
            VolumeKind::Dir => "dir",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub kind: VolumeKind,
    pub size_bytes: u64,
    pub created_ms: u64,
    /// A workload has mounted it: its content is the workloads' from then
    /// on, never again filled from an image.
    #[serde(default)]
    pub used: bool,
}

/// One volume in a workload, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume: String,
    /// Absolute, normalised path inside the workload.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A tmpfs in a workload (`--tmpfs /path[:size=..,mode=..,exec]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    pub target: String,
    pub size_bytes: u64,
    pub mode: u32,
    pub noexec: bool,
}

/// A tmpfs's size when `--tmpfs` gives none (it is memory: the
/// workload's, a container's counted in its cgroup).
pub const DEFAULT_TMPFS_SIZE: u64 = 64 << 20;

/// `--tmpfs /path[:OPTIONS]`, docker's options: `size=SIZE` (default 64m,
/// 1m to 1t), `mode=OCTAL` (default 1777), `exec`/`noexec` (default
/// noexec), `rw`, `nosuid`, `nodev` (always so).
pub fn parse_tmpfs_flag(s: &str) -> Result<TmpfsMount, String> {
    let flag = format!("--tmpfs {s}");
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    let target = check_target(target).map_err(|e| format!("{flag}: {e}"))?;
    let mut t = TmpfsMount {
        target,
        size_bytes: DEFAULT_TMPFS_SIZE,
        mode: 0o1777,
        noexec: true,
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                t.size_bytes = parse_bytes(v)
                    .filter(|b| (1 << 20..=1 << 40).contains(b))
                    .ok_or_else(|| format!("{flag}: size={v}: 1m to 1t"))?;
            }
            Some(("mode", v)) => {
                t.mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("{flag}: mode={v}: octal, at most 7777"))?;
            }
            None if o == "exec" => t.noexec = false,
            None if o == "noexec" => t.noexec = true,
            None if matches!(o, "rw" | "nosuid" | "nodev") => {}
            _ => {
                return Err(format!(
                    "{flag}: {o:?}: size=, mode=, exec, noexec, rw, nosuid, nodev"
                ))
            }
        }
    }
    Ok(t)
}

/// What `-v` or `--mount` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountAsk {
    Volume(VolumeMount),
    /// A host path (`-v /srv/data:/data`, `--mount type=bind`).
    Bind {
        source: String,
        target: String,
    },
}

/// Volume names: docker's (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`), at most 64.
pub fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && (2..=64).contains(&n.len())
        && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

pub fn check_name(n: &str) -> Result<(), StateError> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(StateError::Input(format!(
            "volume name {n:?}: 2 to 64 of a-z A-Z 0-9 _ . -, starting with a letter or digit"
        )))
    }
}

/// A path inside a workload: absolute, without `.`/`..`, not `/` and not
/// under /proc, /sys or /dev (the runtime's own); returned normalised.
pub fn check_target(t: &str) -> Result<String, String> {
    if !t.starts_with('/') {
        return Err(format!("{t:?}: the path inside must be absolute"));
    }
    if t.len() > 1024 || t.contains('\0') || t.contains(',') {
        return Err(format!("{t:?}: at most 1024 bytes, without NUL or commas"));
    }
    let parts: Vec<&str> = t.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("{t:?}: no . or .. in the path inside"));
    }
    match parts.first() {
        None => Err(format!("{t:?}: not the root itself")),
        Some(&("proc" | "sys" | "dev")) => {
            Err(format!("{t:?}: /proc, /sys and /dev belong to the runtime"))
        }
        _ => Ok(format!("/{}", parts.join("/"))),
    }
}

fn access(mode: &str, flag: &str) -> Result<bool, String> {
    match mode {
        "ro" => Ok(true),
        "rw" => Ok(false),
        m => Err(format!("{flag}: {m:?}: ro or rw")),
    }
}

/// `-v NAME:/path[:ro|rw]` (a volume) or `-v /host/path:/path[:ro|rw]` (a bind).
pub fn parse_volume_flag(s: &str) -> Result<MountAsk, String> {
    let flag = format!("-v {s}");
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, mode] => (*src, *dst, access(mode, &flag)?),
        [_] => {
            return Err(format!(
                "{flag}: NAME:/path[:ro] (an anonymous volume needs a name here)"
            ))
        }
        _ => return Err(format!("{flag}: NAME:/path[:ro]")),
    };
    let target = check_target(target).map_err(|e| format!("{flag}: {e}"))?;
    if source.starts_with('/') || source.starts_with('.') {
        return Ok(MountAsk::Bind {
            source: source.to_string(),
            target,
        });
    }
    check_name(source).map_err(|e| format!("{flag}: {e}"))?;
    Ok(MountAsk::Volume(VolumeMount {
        volume: source.to_string(),
        target,
        read_only,
    }))
}

/// `--mount type=volume,source=NAME,target=/path[,readonly]` (docker's
/// keys: `src`, `dst`, `destination`, `ro`, `readonly=true|false`).
pub fn parse_mount_flag(s: &str) -> Result<MountAsk, String> {
    let flag = format!("--mount {s}");
    let (mut ty, mut source, mut target, mut read_only) = ("volume", None, None, false);
    for field in s.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (k, v) {
            ("type", Some(t)) => ty = t,
            ("source" | "src", Some(v)) => source = Some(v),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            _ => {
                return Err(format!(
                "{flag}: {field:?} is not a key this understands (type, source, target, readonly)"
            ))
            }
        }
    }
    let target = check_target(target.ok_or_else(|| format!("{flag}: target= is missing"))?)
        .map_err(|e| format!("{flag}: {e}"))?;
    let source = source.ok_or_else(|| format!("{flag}: source= is missing"))?;
    match ty {
        "volume" => {
            check_name(source).map_err(|e| format!("{flag}: {e}"))?;
            Ok(MountAsk::Volume(VolumeMount {
                volume: source.to_string(),
                target,
                read_only,
            }))
        }
        "bind" => Ok(MountAsk::Bind {
            source: source.to_string(),
            target,
        }),
        t => Err(format!("{flag}: type={t}: volume or bind (tmpfs: --tmpfs)")),
    }
}

/// `512m`, `1g`, `1024k`, `1t`, plain bytes (a trailing `b` is allowed) ->
/// bytes; `None` for anything else or past u64 (memory limits use it too).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A volume's size: [`parse_bytes`], within [`MIN_SIZE`]..=[`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes =
        parse_bytes(s).ok_or_else(|| format!("--size {s:?}: a size like 512m, 10g or 1t"))?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&bytes) {
        return Err(format!("--size {s:?}: between 16m and 16t"));
    }
    Ok(bytes)
}

pub fn list(state: &State) -> Result<Vec<Volume>, StateError> {
    let mut v: Vec<Volume> = read_all(state, VOLUMES)?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

pub fn get(state: &State, name: &str) -> Result<Option<Volume>, StateError> {
    Ok(list(state)?.into_iter().find(|v| v.name == name))
}

/// Adds `v`; its name must be free.
pub fn insert(state: &State, v: &Volume) -> Result<(), StateError> {
    check_name(&v.name)?;
    let bytes = serde_json::to_vec(v).map_err(db)?;
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(VOLUMES).map_err(db)?;
            if t.get(v.name.as_str()).map_err(db)?.is_some() {
                return Err(StateError::Conflict(format!(
                    "volume {:?} exists already",
                    v.name
                )));
            }
            t.insert(v.name.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    })
}

/// Marks `name` used by a workload (never filled from an image again).
pub fn mark_used(state: &State, name: &str) -> Result<(), StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(VOLUMES).map_err(db)?;
            let mut v: Volume = match t.get(name).map_err(db)? {
                Some(row) => serde_json::from_slice(row.value()).map_err(corrupt)?,
                None => return Err(StateError::Input(format!("no volume {name:?}"))),
            };
            v.used = true;
            let bytes = serde_json::to_vec(&v).map_err(db)?;
            t.insert(name, bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)
    })
}

/// Drops `name`'s row; false if there was none.
pub fn remove_row(state: &State, name: &str) -> Result<bool, StateError> {
    state.with_db(|d| {
        let tx = d.begin_write().map_err(db)?;
        let had = tx
            .open_table(VOLUMES)
            .map_err(db)?
            .remove(name)
            .map_err(db)?
            .is_some();
        tx.commit().map_err(db)?;
        Ok(had)
    })
}

/// The workloads in `records` that mount `name` (ended ones too: their
/// record still names it until `rm`).
pub fn users<'a>(records: &'a [Record], name: &str) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| r.config.volumes.iter().any(|m| m.volume == name))
        .collect()
}

/// Why `want` cannot be mounted next to the live workloads in `records`:
/// one writer at a time, and no reader while it writes (a block volume's
/// ext4 is not made to be read by one kernel while another writes it).
pub fn conflict(records: &[Record], want: &VolumeMount) -> Option<String> {
    let live = records.iter().filter(|r| r.status().is_live());
    for r in live {
        for m in r.config.volumes.iter().filter(|m| m.volume == want.volume) {
            if !(m.read_only && want.read_only) {
                return Some(format!(
                    "volume {:?} is mounted {} by {} ({}): one writer at a time, and no readers while it writes",
                    want.volume,
                    if m.read_only { "read-only" } else { "read-write" },
                    r.config.name,
                    super::paths::short(&r.config.id),
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(name: &str, target: &str, read_only: bool) -> MountAsk {
        MountAsk::Volume(VolumeMount {
            volume: name.into(),
            target: target.into(),
            read_only,
        })
    }

    #[test]
    fn dash_v_takes_docker_syntax_and_refuses_the_rest() {
        assert_eq!(
            parse_volume_flag("db:/var/lib/db"),
            Ok(vol("db", "/var/lib/db", false))
        );
        assert_eq!(
            parse_volume_flag("db:/data/:ro"),
            Ok(vol("db", "/data", true))
        );
        assert_eq!(
            parse_volume_flag("db:/a//b:rw"),
            Ok(vol("db", "/a/b", false))
        );
        assert_eq!(
            parse_volume_flag("/srv/x:/x"),
            Ok(MountAsk::Bind {
                source: "/srv/x".into(),
                target: "/x".into()
            })
        );
        for bad in [
            "db",
            "db:",
            "db:relative",
            "db:/",
            "db:/x:rx",
            "db:/x:ro:extra",
            "db:/../etc",
            "db:/a/./b",
            "db:/proc/sys",
            "db:/sys",
            "db:/dev/shm",
            "-db:/x",
            "d:/x",
            "db$:/x",
            "db:/x,y",
            "db:/x\0",
            "",
            ":::",
        ] {
            assert!(parse_volume_flag(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}:/x", "a".repeat(65));
        assert!(parse_volume_flag(&long).is_err());
        let deep = format!("db:/{}", "a/".repeat(600));
        assert!(parse_volume_flag(&deep).is_err());
    }

    #[test]
    fn dash_dash_mount_takes_docker_keys() {
        assert_eq!(
            parse_mount_flag("type=volume,source=db,target=/data"),
            Ok(vol("db", "/data", false))
        );
        assert_eq!(
            parse_mount_flag("src=db,dst=/data,readonly"),
            Ok(vol("db", "/data", true))
        );
        assert_eq!(
            parse_mount_flag("source=db,destination=/data,ro=false"),
            Ok(vol("db", "/data", false))
        );
        assert!(matches!(
            parse_mount_flag("type=bind,source=/srv,target=/srv"),
            Ok(MountAsk::Bind { .. })
        ));
        for bad in [
            "type=tmpfs,target=/t",
            "source=db",
            "target=/x",
            "source=db,target=/x,volume-opt=a",
            "source=db,target=/x,readonly=maybe",
            "source=d b,target=/x",
            "source=db,target=x",
            "",
        ] {
            assert!(parse_mount_flag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dash_dash_tmpfs_takes_docker_options() {
        let t = parse_tmpfs_flag("/run").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.target.as_str(), t.size_bytes, t.mode, t.noexec),
            ("/run", 64 << 20, 0o1777, true)
        );
        let t = parse_tmpfs_flag("/scratch/:size=8m,mode=700,exec,rw")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.target.as_str(), t.size_bytes, t.mode, t.noexec),
            ("/scratch", 8 << 20, 0o700, false)
        );
        for bad in [
            "",
            "run",
            "/",
            "/proc",
            "/a/../b",
            "/t:size=0",
            "/t:size=2t",
            "/t:size=big",
            "/t:mode=9",
            "/t:mode=17777",
            "/t:uid=0",
            "/t:ro",
            "/t:suid",
        ] {
            assert!(parse_tmpfs_flag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_parse_within_bounds() {
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16777216"), Ok(16 << 20));
        for bad in [
            "",
            "g",
            "1x",
            "-1g",
            "1.5g",
            "15m",
            "17t",
            "99999999999999999999",
            "1 g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_store_keeps_volumes_by_name() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let st = State::new(super::super::paths::Paths::new(dir.path()));
        let v = Volume {
            name: "db".into(),
            kind: VolumeKind::Block,
            size_bytes: DEFAULT_SIZE,
            created_ms: 1,
            used: false,
        };
        insert(&st, &v).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(insert(&st, &v), Err(StateError::Conflict(_))));
        let bad = Volume {
            name: "x".into(),
            ..v.clone()
        };
        assert!(matches!(insert(&st, &bad), Err(StateError::Input(_))));
        mark_used(&st, "db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&st, "db").ok().flatten().map(|v| v.used), Some(true));
        assert!(remove_row(&st, "db").unwrap_or_else(|e| panic!("{e}")));
        assert!(!remove_row(&st, "db").unwrap_or_else(|e| panic!("{e}")));
        assert!(list(&st).unwrap_or_else(|e| panic!("{e}")).is_empty());
    }
}
