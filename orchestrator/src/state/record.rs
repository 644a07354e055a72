//! What is known about a workload: its config (written once by `run`), what
//! its supervisor reports while it runs (`running.json`) and how it ended
//! (`exit.json`). The CLI folds the supervisor's files into the state store.

use std::path::{Path, PathBuf};

use bulkhead_agent_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

use super::procs::ProcId;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Its own KVM microVM with its own guest kernel.
    Microvm,
    /// The host's shared kernel, through crun or runc.
    Container,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Microvm => "microvm",
            RuntimeKind::Container => "container",
        })
    }
}

/// What the microVM boots (resolved by the CLI before the supervisor starts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFiles {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: RootDisk,
    /// How to start `vmm`: bulkhead-vmm's flags, or Firecracker's config file.
    #[serde(default)]
    pub flavor: VmmFlavor,
    /// The box the VMM runs in (`None` only in records from before jails).
    #[serde(default)]
    pub jail: Option<Jail>,
    /// `kernel` and `initrd` are this workload's owner's own copies, so
    /// bulkhead-vmm maps them rather than copying (`runtime::boot_copies`);
    /// false in records from before (theirs may be shared by all).
    #[serde(default)]
    pub share_boot_files: bool,
}

/// A microVM's root disk: the image as a filesystem image, the VM's first
/// disk (`/dev/vda` in the guest), never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredRootDisk")]
pub struct RootDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
}

impl RootDisk {
    /// The guest's device for the VM's first disk.
    pub const GUEST_DEVICE: &'static str = "/dev/vda";

    /// The image's root disk as `bulkhead image disk` builds it.
    pub fn image(path: PathBuf, format: DiskFormat) -> Self {
        RootDisk {
            path,
            format,
            read_only: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Ext4,
    Erofs,
}

impl DiskFormat {
    /// The filesystem type the guest mounts it as.
    pub fn fstype(self) -> &'static str {
        match self {
            DiskFormat::Ext4 => "ext4",
            DiskFormat::Erofs => "erofs",
        }
    }
}

/// Records from before the root disk had a type held only its path (an
/// ext4 image, read-only).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredRootDisk {
    Path(PathBuf),
    Typed {
        path: PathBuf,
        format: DiskFormat,
        read_only: bool,
    },
}

impl From<StoredRootDisk> for RootDisk {
    fn from(s: StoredRootDisk) -> Self {
        match s {
            StoredRootDisk::Path(path) => RootDisk::image(path, DiskFormat::Ext4),
            StoredRootDisk::Typed {
                path,
                format,
                read_only,
            } => RootDisk {
                path,
                format,
                read_only,
            },
        }
    }
}

/// How the VMM is jailed (`bulkhead-jailer`): its own uid and gid (from
/// the configured range, unique among the workloads in the store), its
/// jail dir `<chroot_base>/<workload id>`, cgroups `bulkhead/<workload id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jail {
    pub jailer: PathBuf,
    pub chroot_base: PathBuf,
    /// 0 until the store gives it one (in the insert's transaction).
    pub uid: u32,
    pub gid: u32,
    /// The range `uid` comes from, inclusive.
    pub ids: (u32, u32),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmFlavor {
    #[default]
    Bulkhead,
    /// `--no-api --config-file` (Firecracker and compatible VMMs; `bench --vmm-vs`).
    Firecracker,
}

/// Everything the supervisor needs to run the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    pub id: String,
    pub name: String,
    /// The image as the user named it, and what it resolved to.
    pub image: String,
    pub manifest: String,
    pub runtime: RuntimeKind,
    /// crun or runc (container runtime).
    pub oci_runtime: Option<String>,
    pub process: ProcessSpec,
    /// As asked (`--cpus`, `--memory`); a VM gets 1 vCPU and 256 MiB when
    /// not, a container no limit.
    pub cpus: Option<f64>,
    pub memory_mib: Option<u64>,
    /// From the image's StopSignal (default SIGTERM).
    pub stop_signal: i32,
    /// The supervisor waits for the first attach before starting the
    /// workload, so an attached `run` sees every byte.
    pub attach: bool,
    /// `--rm`: the supervisor removes every trace once it ends.
    pub auto_remove: bool,
    pub vm: Option<VmFiles>,
    /// Its address, ports and bridge (`None`: `--network none`).
    #[serde(default)]
    pub network: Option<super::net::Attachment>,
    pub created_ms: u64,
    /// Started by `bulkhead node`: stopped once its lease deadline passes.
    #[serde(default)]
    pub fencing: Option<super::fencing::Fencing>,
    /// A container's user namespace (`None`: a microVM, or a container
    /// recorded before containers had one).
    #[serde(default)]
    pub userns: Option<UserIds>,
    /// Its health check, run by its supervisor (`health.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<super::health::HealthSpec>,
    /// Named volumes it mounts (`-v NAME:/path`), in the order asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<super::volumes::VolumeMount>,
    /// `--tmpfs`, in the order asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<super::volumes::TmpfsMount>,
    /// `--read-only`: its root filesystem read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

/// The ids a container's user namespace maps: 0..SIZE inside are
/// `base..base+SIZE` on the host, a block no other workload in the store
/// holds (docs/DESIGN.md, "Which ids a container workload gets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    /// 0 until the store gives it one (in the insert's transaction).
    pub base: u32,
    /// The range the block comes from, inclusive.
    pub ids: (u32, u32),
}

impl UserIds {
    /// Ids per container: what an image's files and users may own.
    pub const SIZE: u32 = 65536;
}

/// Written by the supervisor once it is up, again when the workload started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub supervisor: ProcId,
    /// The VMM, or the OCI runtime's process for the container.
    pub runtime: Option<ProcId>,
    pub started_ms: Option<u64>,
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// Shell convention: the code, 128+N for signal N; 125 bulkhead failed,
    /// 126 not executable, 127 not found.
    pub code: i32,
    pub signal: Option<i32>,
    /// Why bulkhead (not the workload) failed, with the fix where known.
    pub error: Option<String>,
    pub finished_ms: u64,
}

/// A row of the state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub config: WorkloadConfig,
    pub running: Option<Running>,
    pub exit: Option<Exit>,
}

/// Where a workload stands, as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Exited(i32),
    /// bulkhead failed it (or its supervisor died): the reason.
    Failed(String),
}

impl Status {
    pub fn is_live(&self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Created => f.write_str("created"),
            Status::Running => f.write_str("running"),
            Status::Exited(c) => write!(f, "exited ({c})"),
            Status::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl Record {
    pub fn status(&self) -> Status {
        if let Some(e) = &self.exit {
            return match &e.error {
                Some(why) => Status::Failed(why.clone()),
                None => Status::Exited(e.code),
            };
        }
        match &self.running {
            Some(r) if r.supervisor.alive() => {
                if r.started_ms.is_some() {
                    Status::Running
                } else {
                    Status::Created
                }
            }
            Some(_) => Status::Failed("its supervisor died (`bulkhead rm -f` cleans up)".into()),
            None if now_ms().saturating_sub(self.config.created_ms) > 60_000 => {
                Status::Failed("its supervisor never came up".into())
            }
            None => Status::Created,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `value` as JSON to `path` atomically (temp file + rename).
/// Writes `value` as JSON to `path`, 0600 (configs hold tenants' env).
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    bulkhead_images::private::write(
        path,
        &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )
}

/// Writes `bytes` to `path`, 0600, whole or not at all.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        bulkhead_images::private::dir(dir)?;
    }
    bulkhead_images::private::write(path, bytes)
}

/// Reads JSON from `path`; `None` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A record for unit tests: a container workload that never ran.
#[cfg(test)]
pub fn test_record(id: &str, name: &str) -> Record {
    Record {
        config: WorkloadConfig {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            manifest: "sha256:00".into(),
            runtime: RuntimeKind::Container,
            oci_runtime: None,
            process: Default::default(),
            cpus: None,
            memory_mib: None,
            stop_signal: 15,
            attach: false,
            auto_remove: false,
            vm: None,
            network: None,
            created_ms: now_ms(),
            fencing: None,
            userns: None,
            health: None,
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            read_only_root: false,
        },
        running: None,
        exit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_disks_read_from_old_and_new_records_and_bad_ones_are_refused() {
        let old: RootDisk = serde_json::from_str(r#""/d/disk.ext4""#).unwrap();
        assert_eq!(
            old,
            RootDisk::image("/d/disk.ext4".into(), DiskFormat::Ext4)
        );
        let new = RootDisk {
            path: "/d/disk.erofs".into(),
            format: DiskFormat::Erofs,
            read_only: true,
        };
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<RootDisk>(&json).unwrap(), new);
        for bad in [
            r#"{"path": "/d", "format": "xfs", "read_only": true}"#,
            r#"{"path": "/d"}"#,
            "7",
        ] {
            assert!(serde_json::from_str::<RootDisk>(bad).is_err(), "{bad}");
        }
    }
}
