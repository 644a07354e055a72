//! The jail's cgroups: `bulkhead/<id>` under each controller it limits.
//! cgroup v2 (one unified tree) or v1 (a tree per controller, hosts like
//! these with v2 mounted beside at /sys/fs/cgroup/unified).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no cgroup hierarchy for {0} (neither v2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/{0})"
    )]
    NoController(String),
    #[error("cgroup {path}: no such file (is the {controller} controller available and enabled for bulkhead/ on this host?)")]
    NoFile { path: PathBuf, controller: String },
}

const ROOT: &str = "/sys/fs/cgroup";

/// The directories made for `limits` ((controller, file, value)).
#[derive(Debug, Default)]
pub struct Cgroups {
    dirs: Vec<PathBuf>,
}

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// `--cgroup` arguments for one VM in this host's hierarchy: memory in
/// bytes, a CPU share (`None`: unlimited; 1.5 = one and a half CPUs), pids.
pub fn limits(memory_bytes: u64, cpus: Option<f64>, pids: u32) -> Vec<String> {
    let v2 = unified();
    let mut out = vec![
        if v2 {
            format!("memory.max={memory_bytes}")
        } else {
            format!("memory.limit_in_bytes={memory_bytes}")
        },
        format!("pids.max={pids}"),
    ];
    if let Some(c) = cpus.filter(|c| c.is_finite() && *c > 0.0) {
        // Per 100 ms period; the kernel's floor is 1 ms.
        let quota = quota_us(c);
        out.push(if v2 {
            format!("cpu.max={quota} 100000")
        } else {
            format!("cpu.cfs_quota_us={quota}")
        });
    }
    out
}

/// Every `bulkhead/<id>` directory the jailer may make for `id`, made or not.
pub fn candidate_dirs(id: &str) -> Vec<PathBuf> {
    if unified() {
        vec![Path::new(ROOT).join("bulkhead").join(id)]
    } else {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join("bulkhead").join(id))
            .collect()
    }
}

/// The ids that have a `bulkhead/<id>` group under any controller.
pub fn ids() -> Vec<String> {
    let parents: Vec<PathBuf> = if unified() {
        vec![Path::new(ROOT).join("bulkhead")]
    } else {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|c| Path::new(ROOT).join(c).join("bulkhead"))
            .collect()
    };
    parents
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

fn dir_for(controller: &str, id: &str) -> Result<PathBuf, CgroupError> {
    let base = if unified() {
        PathBuf::from(ROOT)
    } else {
        Path::new(ROOT).join(controller)
    };
    if !base.is_dir() {
        return Err(CgroupError::NoController(controller.into()));
    }
    Ok(base.join("bulkhead").join(id))
}

impl Cgroups {
    /// Makes the groups and writes the limits.
    pub fn create(id: &str, limits: &[(String, String, String)]) -> Result<Cgroups, CgroupError> {
        let mut made = Cgroups::default();
        match made.fill(id, limits) {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove();
                Err(e)
            }
        }
    }

    fn fill(&mut self, id: &str, limits: &[(String, String, String)]) -> Result<(), CgroupError> {
        let made = self;
        for (controller, file, value) in limits {
            let dir = dir_for(controller, id)?;
            if unified() {
                // One dir for every controller; it gets a controller only if
                // its parents pass it on (each controller, not just the first).
                let parent = dir.parent().unwrap_or(&dir).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|source| CgroupError::Io {
                    path: parent.clone(),
                    source,
                })?;
                let _ = std::fs::write(
                    Path::new(ROOT).join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
                let _ = std::fs::write(
                    parent.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
            }
            if !made.dirs.contains(&dir) {
                std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
                    path: dir.clone(),
                    source,
                })?;
                made.dirs.push(dir.clone());
            }
            let path = dir.join(file);
            if !path.exists() {
                return Err(CgroupError::NoFile {
                    path,
                    controller: controller.clone(),
                });
            }
            std::fs::write(&path, value).map_err(|source| CgroupError::Io { path, source })?;
        }
        Ok(())
    }

    /// Puts the calling process (single-threaded: the jailer's child, just
    /// forked, that becomes the VMM) and so what it starts into every group.
    ///
    /// On v1 the one thread moves itself through `tasks`: a thread moving
    /// itself skips the global threadgroup lock, whose write side waits
    /// for an RCU grace period (3-12 ms here); moving a whole process
    /// through `cgroup.procs` takes it. v2 has no such path between
    /// domains: there the move waits unless the host mounts cgroup2 with
    /// `favordynmods` (clone3's CLONE_INTO_CGROUP would avoid it; not used:
    /// a raw clone leaves libc's thread state stale in the child).
    pub fn join_self(&self) -> Result<(), CgroupError> {
        let file = if unified() { "cgroup.procs" } else { "tasks" };
        for d in &self.dirs {
            let path = d.join(file);
            std::fs::write(&path, "0").map_err(|source| CgroupError::Io { path, source })?;
        }
        Ok(())
    }

    /// Puts process `pid` into every group (through `cgroup.procs`: the
    /// slow path, for processes other than the caller).
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let path = d.join("cgroup.procs");
            std::fs::write(&path, pid.to_string())
                .map_err(|source| CgroupError::Io { path, source })?;
        }
        Ok(())
    }

    /// Removes the groups (once their processes are gone).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// CPU time per 100 ms period for `cpus` (finite and positive), at least the
/// kernel's 1 ms floor.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // float `as` saturates; checked positive
fn quota_us(cpus: f64) -> u64 {
    ((cpus * 100_000.0).round() as u64).max(1000)
}
