//! Making a workload, written once for every caller (`bulkhead run`, the
//! node daemon, bench): a typed [`Request`] is checked whole before
//! anything is made, then the record and its address lease go in in one
//! transaction, its config is written, and [`start`] hands it to its
//! supervisor.
//!
//! What may take minutes or meet hostile input (building the guest kernel,
//! unpacking an image into a root disk) is behind [`VmAssets`]: the CLI
//! builds in its own process with progress on the terminal, the node daemon
//! in child processes (`cluster::node`), so a hostile layer or a hung mkfs
//! never takes the daemon, and its lease renewal, with it.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use bulkhead_agent_proto::ProcessSpec;
use bulkhead_images::store::{Digest, Image, Store, StoreError};

use super::{container, limits};
use crate::network::{egress, lifecycle, NetError, Publish, Subnet};
use crate::state::fencing::Fencing;
use crate::state::net::{self, Want};
use crate::state::paths::{self, Paths};
use crate::state::record::WorkloadConfig;
use crate::state::record::{
    now_ms, write_json, DiskFormat, Jail, Record, RootDisk, RuntimeKind, UserIds, VmFiles,
    VmmFlavor,
};
use crate::state::{State, StateError};

/// What to run, typed: every value a tenant or a user gives travels here,
/// never as argv.
#[derive(Debug, Clone)]
pub struct Request {
    /// name[:tag] or a digest, as the image store resolves it.
    pub image: String,
    /// Default: the image's name and a short id.
    pub name: Option<String>,
    /// Named volumes to mount (made on first use), targets checked.
    pub volumes: Vec<crate::state::volumes::VolumeMount>,
    /// `--tmpfs`, targets checked.
    pub tmpfs: Vec<crate::state::volumes::TmpfsMount>,
    /// `--read-only`.
    pub read_only_root: bool,
    pub runtime: RuntimeKind,
    /// crun or runc (`--runtime container`); default: crun if installed.
    pub oci_runtime: Option<String>,
    /// Replaces the image's Entrypoint (its Cmd is dropped too).
    pub entrypoint: Option<String>,
    /// Replaces the image's Cmd (after its Entrypoint).
    pub command: Vec<String>,
    /// KEY=VALUE, over the image's Env, in order.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub cpus: Option<f64>,
    /// 512m, 1g, or bytes (see `limits`).
    pub memory: Option<String>,
    /// A network's name, or `none`.
    pub network: String,
    pub publish: Vec<Publish>,
    pub allow_egress: Vec<Subnet>,
    /// `--deny-egress`: closed even where the internet or an allowance would open it.
    pub deny_egress: Vec<Subnet>,
    /// `--no-internet`: nothing beyond its network but what it allowed.
    pub no_internet: bool,
    /// A client attaches (the supervisor keeps the output for it).
    pub attach: bool,
    /// Remove it once it ends.
    pub auto_remove: bool,
    pub fencing: Option<Fencing>,
    /// `bulkhead bench`: another VMM, started Firecracker's way.
    pub other_vmm: Option<PathBuf>,
    /// Whose workload it is (a cluster tenant); `None`: the local user.
    /// A microVM maps its owner's own copy of the guest kernel and
    /// initramfs (`boot_copies`): pages shared with that owner's VMs only.
    pub tenant: Option<String>,
    /// The health check asked for, over the image's.
    pub health: super::health::HealthAsk,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// What was asked for is wrong: nothing was made.
    #[error("{0}")]
    Input(String),
    /// This host cannot run it as asked: nothing was made.
    #[error("{0}")]
    Host(String),
    #[error("open the image store at {}", .0.display())]
    OpenStore(PathBuf, #[source] StoreError),
    #[error("image {0:?} (pull or import it first: `bulkhead image pull|import`)")]
    NoImage(String, #[source] StoreError),
    #[error("the image's StopSignal {0:?}")]
    StopSignal(String, #[source] UnknownSignal),
    #[error("--memory")]
    Memory(#[source] limits::LimitsError),
    #[error("the VM's configuration")]
    Vm(#[source] bulkhead_vmm::config::ConfigError),
    /// A file a microVM needs (kernel, initramfs, root disk, binaries).
    #[error("{what}")]
    Asset {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl CreateError {
    pub fn asset(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CreateError::Asset {
            what: what.into(),
            source: source.into(),
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| CreateError::Io { what, source }
    }
}

/// The files a microVM needs that may have to be built first.
pub trait VmAssets {
    /// The guest kernel (`vmlinux`).
    fn kernel(&mut self) -> Result<PathBuf, CreateError>;
    /// The image's root disk in `format`, cached per manifest in the store.
    fn root_disk(
        &mut self,
        store: &Store,
        manifest: &Digest,
        format: DiskFormat,
    ) -> Result<PathBuf, CreateError>;
}

#[derive(Debug, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

/// `SIGTERM`, `TERM`, `15` -> 15.
pub fn parse_signal(s: &str) -> Result<i32, UnknownSignal> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| UnknownSignal(s.to_string()))
}

/// Checks `req` whole, then makes the workload: its record with its
/// address lease (one transaction), its dir and config. Nothing runs yet
/// ([`start`]); on an error nothing is left behind.
pub fn create(
    data: &Path,
    req: &Request,
    assets: &mut dyn VmAssets,
) -> Result<Record, CreateError> {
    if req.volumes.len() > bulkhead_agent_proto::MAX_VOLUMES
        || req.tmpfs.len() > bulkhead_agent_proto::MAX_VOLUMES
    {
        return Err(CreateError::Input(format!(
            "at most {} volumes and {0} tmpfs",
            bulkhead_agent_proto::MAX_VOLUMES
        )));
    }
    let targets = req
        .volumes
        .iter()
        .map(|v| &v.target)
        .chain(req.tmpfs.iter().map(|t| &t.target));
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = targets.into_iter().find(|t| !seen.insert(*t)) {
        return Err(CreateError::Input(format!("two mounts at {twice}")));
    }
    if !req.volumes.is_empty() && req.other_vmm.is_some() {
        return Err(CreateError::Input(
            "another VMM runs without volumes".into(),
        ));
    }
    let store = Store::open(data).map_err(|e| CreateError::OpenStore(data.to_path_buf(), e))?;
    let manifest = store
        .resolve(&req.image)
        .map_err(|e| CreateError::NoImage(req.image.clone(), e))?;
    let img = store.image(&manifest)?;
    let process = process_spec(&img, req)?;
    let stop_signal = match img.config.config.stop_signal.as_deref() {
        Some(s) if !s.is_empty() => {
            parse_signal(s).map_err(|e| CreateError::StopSignal(s.to_string(), e))?
        }
        _ => libc::SIGTERM,
    };
    let image_check = img
        .config
        .config
        .healthcheck()
        .map_err(|e| CreateError::Input(format!("{e} (run without it: --no-healthcheck)")))?;
    let health =
        super::health::spec_for(image_check.as_ref(), &req.health).map_err(CreateError::Input)?;
    // Checked for the runtime before anything is made (the VMM's own bounds for a microVM).
    let memory_mib = req
        .memory
        .as_deref()
        .map(|m| limits::memory_for(req.runtime, m))
        .transpose()
        .map_err(CreateError::Memory)?;
    if let Some(c) = req.cpus {
        if !(c > 0.0 && c <= 64.0) {
            return Err(CreateError::Input(format!("--cpus {c}: between 0 and 64")));
        }
    }
    let id = paths::new_id().map_err(CreateError::io("a new workload id"))?;
    let vm = match req.runtime {
        RuntimeKind::Microvm => {
            let owner = req
                .tenant
                .as_deref()
                .unwrap_or(super::boot_copies::LOCAL_OWNER);
            let mut files = vm_files(data, owner, &store, &manifest, assets)?;
            // The VMM's configuration as it will get it, checked now (the
            // MAC comes with the address lease; it is ours, not asked for).
            super::microvm::vm_config(&id, req.cpus, memory_mib, &files, None, false, &[])
                .map_err(CreateError::Vm)?;
            if let Some(other) = &req.other_vmm {
                if req.network != crate::network::NONE {
                    return Err(CreateError::Input(
                        "another VMM runs with --network none only".into(),
                    ));
                }
                files.vmm = std::fs::canonicalize(other).map_err(CreateError::io(format!(
                    "the other VMM {}",
                    other.display()
                )))?;
                files.flavor = VmmFlavor::Firecracker;
                files.share_boot_files = false;
            }
            Some(files)
        }
        RuntimeKind::Container => {
            check_oci_runtime(req.oci_runtime.as_deref())?;
            None
        }
    };
    check_network_asks(req)?;
    let state = State::new(Paths::new(data));
    // The network lock, then the store, held from the sweep to the
    // record's insert: one open of the store for the whole step.
    let net_lock = lifecycle::lock(&state)?;
    let db = state.hold()?;
    // Leftovers of workloads that are gone (a crash, a reboot) go first.
    if let Err(e) = lifecycle::sweep(&state) {
        eprintln!("bulkhead: warning: cleaning up after workloads that are gone: {e}");
    }
    if let Err(e) = super::jail::sweep(&state) {
        eprintln!(
            "bulkhead: warning: removing the jails of workloads that are gone: {}",
            bulkhead_agent_proto::report(&e)
        );
    }
    let want = want(&state, req)?;
    let name = name_for(req, &id)?;
    volumes_for(&state, req, &store, &manifest)?;
    let p = state.paths().clone();
    let dir = p.workload_dir(&id);
    let mut rec = Record {
        config: WorkloadConfig {
            id: id.clone(),
            name,
            image: req.image.clone(),
            manifest: manifest.to_string(),
            runtime: req.runtime,
            oci_runtime: req.oci_runtime.clone(),
            process,
            cpus: req.cpus,
            memory_mib,
            stop_signal,
            attach: req.attach,
            auto_remove: req.auto_remove,
            vm,
            network: None,
            created_ms: now_ms(),
            fencing: req.fencing.clone(),
            userns: match req.runtime {
                RuntimeKind::Container => Some(UserIds {
                    base: 0,
                    ids: userns_ids()?,
                }),
                RuntimeKind::Microvm => None,
            },
            health,
            volumes: req.volumes.clone(),
            tmpfs: req.tmpfs.clone(),
            read_only_root: req.read_only_root,
        },
        running: None,
        exit: None,
    };
    // Configs, logs and writable layers: closed to other users.
    bulkhead_images::private::dir(&p.data().join("workloads"))
        .and_then(|()| bulkhead_images::private::dir(&dir))
        .map_err(CreateError::io(format!("create {}", dir.display())))?;
    // The record and its address lease in one transaction; then the config
    // (with the address) for the supervisor.
    let inserted = net::insert_workload(&state, &mut rec, want.as_ref())
        .map_err(CreateError::from)
        .and_then(|()| {
            write_json(&dir.join("config.json"), &rec.config)
                .map_err(CreateError::io("write the workload's config"))
        });
    if let Err(e) = inserted {
        let _ = state.remove(&id);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    drop(db);
    drop(net_lock);
    Ok(rec)
}

/// The volumes `req` mounts, checked under the store's hold (so no other
/// `run` slips in between): each made now if it is not there yet (of the
/// kind the runtime mounts), of that kind, not written by a live workload
/// (one writer at a time), and, on its first use, filled from the image's
/// content at its path.
fn volumes_for(
    state: &State,
    req: &Request,
    store: &Store,
    manifest: &Digest,
) -> Result<(), CreateError> {
    use crate::state::volumes::{self, VolumeKind};
    if req.volumes.is_empty() {
        return Ok(());
    }
    let kind = VolumeKind::for_runtime(req.runtime);
    let records = state.list()?;
    let vol_err = |e: super::volumes::VolumeError| match e {
        super::volumes::VolumeError::Input(m) => CreateError::Input(m),
        super::volumes::VolumeError::State(s) => CreateError::State(s),
        other => CreateError::asset("a volume", other),
    };
    let mut tree = None;
    for m in &req.volumes {
        let v = match volumes::get(state, &m.volume)? {
            Some(v) => v,
            None => {
                eprintln!("bulkhead: making volume {:?} ({kind})", m.volume);
                super::volumes::create(state, &m.volume, kind, volumes::DEFAULT_SIZE)
                    .map_err(vol_err)?
            }
        };
        if v.kind != kind {
            return Err(CreateError::Input(format!(
                "volume {:?} is a {} volume: a {} mounts {kind} volumes only (the host never mounts what a guest wrote, and a guest gets no host directory yet)",
                v.name, v.kind, req.runtime
            )));
        }
        if let Some(why) = volumes::conflict(&records, m) {
            return Err(CreateError::Input(why));
        }
        if !v.used {
            if tree.is_none() {
                tree = Some(
                    super::rootfs::ensure_tree(store, state.paths(), manifest)
                        .map_err(|e| CreateError::asset("the image's tree", e))?,
                );
            }
            if super::volumes::first_use(state, &v, tree.as_deref(), &m.target).map_err(vol_err)? {
                eprintln!(
                    "bulkhead: volume {:?} filled from the image's {}",
                    v.name, m.target
                );
            }
        }
    }
    Ok(())
}

/// Image config + the request -> the process to run.
fn process_spec(img: &Image, req: &Request) -> Result<ProcessSpec, CreateError> {
    let rc = &img.config.config;
    let mut spec = rc.process_spec();
    spec.args = match &req.entrypoint {
        Some(e) => std::iter::once(e.clone())
            .chain(req.command.iter().cloned())
            .collect(),
        None if !req.command.is_empty() => rc
            .entrypoint
            .iter()
            .flatten()
            .cloned()
            .chain(req.command.iter().cloned())
            .collect(),
        None => spec.args,
    };
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(CreateError::Input(
            "no command: the image has no Entrypoint or Cmd, so give one after the image name"
                .into(),
        ));
    }
    for kv in &req.env {
        let key = kv.split('=').next().unwrap_or_default();
        if key.is_empty() || !kv.contains('=') {
            return Err(CreateError::Input(format!(
                "-e {kv:?}: KEY=VALUE with a non-empty KEY"
            )));
        }
        spec.env.retain(|x| x.split('=').next() != Some(key));
        spec.env.push(kv.clone());
    }
    if let Some(w) = &req.workdir {
        if !w.starts_with('/') {
            return Err(CreateError::Input(format!(
                "-w {w:?}: the working directory must be absolute"
            )));
        }
        spec.cwd = Some(w.clone());
    }
    if let Some(u) = &req.user {
        spec.user = Some(u.clone());
    }
    spec.tty = req.tty;
    spec.stdin = req.interactive;
    Ok(spec)
}

fn check_oci_runtime(asked: Option<&str>) -> Result<(), CreateError> {
    match asked {
        Some(r) if r != "crun" && r != "runc" => Err(CreateError::Input(format!(
            "--oci-runtime {r:?}: crun or runc"
        ))),
        Some(r) => container::which(r).map(drop).ok_or_else(|| {
            CreateError::Host(format!("{r} is not installed (apt-get install {r})"))
        }),
        None if container::default_oci_runtime().is_none() => Err(CreateError::Host(
            "--runtime container needs crun or runc: apt-get install crun (or runc)".into(),
        )),
        None => Ok(()),
    }
}

fn check_network_asks(req: &Request) -> Result<(), CreateError> {
    let none = req.network == crate::network::NONE;
    if none && !req.publish.is_empty() {
        return Err(CreateError::Input(
            "-p needs a network: --network none has loopback only".into(),
        ));
    }
    if none && !req.allow_egress.is_empty() {
        return Err(CreateError::Input(
            "--allow-egress needs a network: --network none has loopback only".into(),
        ));
    }
    if none && !req.deny_egress.is_empty() {
        return Err(CreateError::Input(
            "--deny-egress needs a network: --network none has loopback only".into(),
        ));
    }
    for (flag, list) in [
        ("--allow-egress", &req.allow_egress),
        ("--deny-egress", &req.deny_egress),
    ] {
        if list.len() > egress::MAX_ALLOWS {
            return Err(CreateError::Input(format!(
                "{flag}: at most {} of them",
                egress::MAX_ALLOWS
            )));
        }
    }
    for (i, p) in req.publish.iter().enumerate() {
        if let Some(q) = req.publish[..i].iter().find(|q| q.clashes(p)) {
            return Err(CreateError::Input(format!(
                "-p {p} and -p {q} claim the same host port"
            )));
        }
    }
    Ok(())
}

/// The network and ports asked for, checked against what the host and the
/// other workloads hold (the insert checks workloads again, atomically).
fn want(state: &State, req: &Request) -> Result<Option<Want>, CreateError> {
    if req.network == crate::network::NONE {
        return Ok(None);
    }
    if req.network == crate::network::DEFAULT_NETWORK {
        lifecycle::ensure_default(state)?;
    }
    // A port another workload publishes, or a host program's: refused now, not at start.
    net::check_ports(&net::leases(state)?, &req.publish)?;
    for port in &req.publish {
        drop(crate::network::host::bind_port(port)?);
    }
    // A network with a resolver: its gateway; else the host's nameservers.
    let nameservers = match net::network(state, &req.network) {
        Ok(n) if crate::network::dns::serves(&n) => vec![n.gateway().to_string()],
        _ => crate::network::nameservers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    };
    Ok(Some(Want {
        network: req.network.clone(),
        ports: req.publish.clone(),
        nameservers,
        allow_egress: req.allow_egress.clone(),
        deny_egress: req.deny_egress.clone(),
        no_internet: req.no_internet,
    }))
}

fn name_for(req: &Request, id: &str) -> Result<String, CreateError> {
    match &req.name {
        Some(n) if paths::valid_name(n) => Ok(n.clone()),
        Some(n) => Err(CreateError::Input(format!(
            "--name {n:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
        ))),
        None => {
            let base: String = req
                .image
                .rsplit('/')
                .next()
                .unwrap_or("w")
                .split([':', '@'])
                .next()
                .unwrap_or("w")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            Ok(format!(
                "{}-{}",
                if base.is_empty() { "w" } else { &base },
                &id[..8]
            ))
        }
    }
}

fn vm_files(
    data: &Path,
    owner: &str,
    store: &Store,
    manifest: &Digest,
    assets: &mut dyn VmAssets,
) -> Result<VmFiles, CreateError> {
    match bulkhead_vmm::host::detect() {
        bulkhead_vmm::host::KvmKind::Hardware => {}
        other => return Err(CreateError::Host(format!(
            "this host cannot boot a microVM: {other}. A stock Linux guest needs VT-x/AMD-V behind /dev/kvm. Use --runtime container here, or run bulkhead inside the nested test host (`tests/testhost/run -- bulkhead run ...`; `make demo` does)"
        ))),
    }
    let kernel = match std::env::var_os("BULKHEAD_KERNEL").filter(|k| !k.is_empty()) {
        Some(k) => PathBuf::from(k),
        None => assets.kernel()?,
    };
    let shipped = |name: &str| {
        super::shipped_binary(name).map_err(|e| CreateError::asset(format!("find {name}"), e))
    };
    let agent = shipped("bulkhead-agent")?;
    let initrd = bulkhead_images::agent_initramfs::cached(&agent)
        .map_err(|e| CreateError::asset("the agent's initramfs", e))?;
    let (kernel, initrd) = super::boot_copies::kernel_and_initrd(data, owner, &kernel, &initrd)
        .map_err(|e| CreateError::asset("the guest kernel's and initramfs's copies", e))?;
    let disk = assets.root_disk(store, manifest, ROOT_DISK_FORMAT)?;
    let real =
        |p: PathBuf| std::fs::canonicalize(&p).map_err(CreateError::io(p.display().to_string()));
    let jail = Jail {
        jailer: real(shipped("bulkhead-jailer")?)?,
        chroot_base: Paths::jail_base(),
        uid: 0,
        gid: 0,
        ids: jail_ids()?,
    };
    Ok(VmFiles {
        vmm: real(shipped("bulkhead-vmm")?)?,
        kernel: real(kernel)?,
        initrd: real(initrd)?,
        disk: RootDisk::image(real(disk)?, ROOT_DISK_FORMAT),
        flavor: Default::default(),
        jail: Some(jail),
        share_boot_files: true,
    })
}

/// The filesystem a microVM's root disk is made as: ext4, which every
/// guest kernel config we build mounts (erofs is smaller, not yet the default).
pub const ROOT_DISK_FORMAT: DiskFormat = DiskFormat::Ext4;

/// The uids (and gids, the same numbers) jailed VMMs run as: one each,
/// `BULKHEAD_JAIL_IDS=FIRST-LAST`. The default lies above the ranges
/// distributions hand out (users, subuid maps from 100000, systemd's
/// containers up to 1879048191) and below 2^31.
pub const DEFAULT_JAIL_IDS: (u32, u32) = (2_000_000_000, 2_000_065_535);

fn jail_ids() -> Result<(u32, u32), CreateError> {
    id_range("BULKHEAD_JAIL_IDS", DEFAULT_JAIL_IDS, 1)
}

/// The ids containers' user namespaces map, in blocks of 65536 (one per
/// container): `BULKHEAD_USERNS_IDS=FIRST-LAST`. The default lies above
/// the jail ids and below 2^31: 2235 blocks.
pub const DEFAULT_USERNS_IDS: (u32, u32) = (2_001_010_944, 2_147_483_647);

fn userns_ids() -> Result<(u32, u32), CreateError> {
    id_range("BULKHEAD_USERNS_IDS", DEFAULT_USERNS_IDS, UserIds::SIZE)
}

/// `$VAR=FIRST-LAST` holding at least `min` ids, else `default`.
fn id_range(var: &str, default: (u32, u32), min: u32) -> Result<(u32, u32), CreateError> {
    let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    parse_jail_ids(&v)
        .filter(|(a, b)| b - a >= min.saturating_sub(1))
        .ok_or_else(|| {
            CreateError::Input(format!(
                "{var}={v:?}: FIRST-LAST, 0 < FIRST <= LAST < 4294967295, at least {min} ids (e.g. {}-{})",
                default.0, default.1
            ))
        })
}

fn parse_jail_ids(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('-')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b && b < u32::MAX).then_some((a, b))
}

/// How the supervisor's start went.
#[derive(Debug)]
pub enum Started {
    /// It runs the workload.
    Running,
    /// The workload ended (or never started) already: why. Its exit is in
    /// the store.
    Ended(String),
}

/// Starts the supervisor for the workload `id` (a `bulkhead __supervise`
/// child that outlives the caller) and waits for its first word: `ok`, or
/// `err MESSAGE` (it ended already).
pub fn start(data: &Path, id: &str) -> Result<Started, CreateError> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| CreateError::io("a pipe for the supervisor")(e.into()))?;
    let fd = write_end.as_raw_fd();
    let exe = std::env::current_exe().map_err(CreateError::io("find our own binary"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env("BULKHEAD_DATA", data)
        .arg("__supervise")
        .arg("--data")
        .arg(data)
        .args(["--notify-fd", "3", id]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 and the limit's two system calls are async-signal-safe;
    // the pipe end goes to fd 3 (without CLOEXEC) for the child, and the
    // workload gets the descriptor limit its daemon started with.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::state::fdlimit::restore_in_child()
        });
    }
    let status = cmd
        .status()
        .map_err(CreateError::io("start the supervisor"))?;
    drop(write_end);
    if !status.success() {
        return Err(CreateError::Host(format!(
            "the supervisor failed to start: {status}"
        )));
    }
    let mut msg = String::new();
    std::fs::File::from(read_end)
        .read_to_string(&mut msg)
        .map_err(CreateError::io("read the supervisor's first word"))?;
    let first = msg.lines().next().unwrap_or("").to_string();
    Ok(match first.as_str() {
        "ok" => Started::Running,
        "" => Started::Ended("the supervisor died before it started the workload".into()),
        other => Started::Ended(
            other
                .strip_prefix("err ")
                .unwrap_or(other)
                .replace("\\n", "\n"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_jail_ids() {
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert_eq!(parse_signal("2").ok(), Some(2));
        assert!(
            parse_signal("0").is_err()
                && parse_signal("NOPE").is_err()
                && parse_signal("65").is_err()
        );
        assert_eq!(parse_jail_ids("5-9"), Some((5, 9)));
        assert_eq!(parse_jail_ids("7-7"), Some((7, 7)));
        for bad in [
            "",
            "5",
            "9-5",
            "0-10",
            "-1-5",
            "a-b",
            "1-4294967295",
            "1-99999999999",
        ] {
            assert_eq!(parse_jail_ids(bad), None, "{bad}");
        }
    }
}
