//! The jail's cgroups: `bulkhead/<id>` under each controller it limits.
//! cgroup v2 (one unified tree) or v1 (a tree per controller, hosts like
//! these with v2 mounted beside at /sys/fs/cgroup/unified).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no cgroup hierarchy for {0} (neither v2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/{0})")]
    NoController(String),
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

fn dir_for(controller: &str, id: &str) -> Result<PathBuf, CgroupError> {
    let base = if unified() { PathBuf::from(ROOT) } else { Path::new(ROOT).join(controller) };
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
            if !made.dirs.contains(&dir) {
                if unified() {
                    // Children get the controller only if the parent passes it on.
                    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
                    std::fs::create_dir_all(&parent).map_err(|source| CgroupError::Io { path: parent.clone(), source })?;
                    let _ = std::fs::write(Path::new(ROOT).join("cgroup.subtree_control"), format!("+{controller}"));
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{controller}"));
                }
                std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Io { path: dir.clone(), source })?;
                made.dirs.push(dir.clone());
            }
            let path = dir.join(file);
            std::fs::write(&path, value).map_err(|source| CgroupError::Io { path, source })?;
        }
        Ok(())
    }

    /// Puts `pid` (and so what it starts) into every group.
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let path = d.join("cgroup.procs");
            std::fs::write(&path, pid.to_string()).map_err(|source| CgroupError::Io { path, source })?;
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
