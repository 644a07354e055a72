//! The node's side of the local runtime: starting and removing its
//! instances' workloads, and what it reports of them and of its images.

use super::*;

use bulkhead_images::store::{Digest, Store};

use crate::network::{egress, Publish};
use crate::runtime::create::{self, CreateError, Request, Started, VmAssets};
use crate::state::fencing::Fencing;
use crate::state::record::DiskFormat;
use crate::state::subnet::Subnet;

pub(super) enum Work {
    /// With the tenant's network slice on this node, as the server gave it.
    Start(Box<Assignment>, Option<crate::state::subnet::Subnet>),
    /// The workload id, and whether it may still run (stop it first).
    Remove(String, bool),
    /// Stop this workload (unhealthy); its exit is reported as any other.
    Stop(String),
}

/// What the node builds for a microVM runs in child processes (`bulkhead
/// kernel build`, `bulkhead image disk`): unpacking a tenant's layers and
/// mkfs never run in the daemon, whose lease renewal must go on.
struct InChildren<'a> {
    builds: &'a Builds,
    data: &'a Path,
}

/// How the node builds what a microVM needs.
#[derive(Debug, Clone)]
pub(crate) struct Builds {
    /// This program.
    pub bulkhead: PathBuf,
    /// How long an image's root disk may take to build before its child
    /// (and everything it started) is killed: a tenant's image must not
    /// hold a node's worker, and its tenant's network lock, forever.
    pub disk_timeout: Duration,
}

impl InChildren<'_> {
    /// `bulkhead ARGS` with the node's data dir, in a process group of its
    /// own, killed whole once `limit` passed: its last stdout line.
    fn path_from(
        &self,
        args: &[&str],
        what: &str,
        limit: Option<Duration>,
    ) -> Result<PathBuf, CreateError> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(&self.builds.bulkhead)
            .env("BULKHEAD_DATA", self.data)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| CreateError::asset(what, e))?;
        let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
        let timed_out = match limit {
            Some(limit) => !exits_within(&child, limit),
            None => false,
        };
        if timed_out {
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let status = child.wait().map_err(|e| CreateError::asset(what, e))?;
        if timed_out {
            // What the killed build was writing (a half-unpacked tree) goes;
            // other writers' entries are locked and stay.
            if let Err(e) = Store::open(self.data).and_then(|s| s.sweep_tmp()) {
                eprintln!(
                    "bulkhead node: remove what the killed build left: {}",
                    bulkhead_agent_proto::report(&e)
                );
            }
        }
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        let out = String::from_utf8_lossy(&out);
        match out.lines().last().map(str::trim) {
            Some(p) if status.success() && !p.is_empty() => Ok(PathBuf::from(p)),
            _ if timed_out => Err(CreateError::asset(
                what,
                format!(
                    "`bulkhead {}` took longer than {} s: killed (see `bulkhead node --disk-timeout`)",
                    args.join(" "),
                    limit.map_or(0, |l| l.as_secs())
                ),
            )),
            _ => Err(CreateError::asset(
                what,
                format!(
                    "`bulkhead {}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&err).trim()
                ),
            )),
        }
    }
}

/// Reads a child's pipe to its end (at most 1 MiB kept) on a thread.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = pipe {
            let mut p = p;
            let mut buf = [0u8; 8192];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if v.len() < 1 << 20 {
                    v.extend_from_slice(&buf[..n]);
                }
            }
        }
        v
    })
}

/// Whether `child` exits within `limit` (a pidfd polled; it stays a zombie
/// for `wait`).
fn exits_within(child: &std::process::Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let Some(fd) = i32::try_from(child.id())
        .ok()
        .and_then(crate::state::procs::ProcId::of)
        .and_then(|p| p.pidfd())
    else {
        return true; // gone already
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0) > 0 {
            return true;
        }
    }
}

impl VmAssets for InChildren<'_> {
    fn kernel(&mut self) -> Result<PathBuf, CreateError> {
        match bulkhead_images::kernel::find_built() {
            Ok(k) => Ok(k.vmlinux),
            // Our own input, however long it takes on this host.
            Err(_) => self.path_from(&["kernel", "build"], "build the guest kernel", None),
        }
    }

    fn root_disk(
        &mut self,
        _store: &Store,
        manifest: &Digest,
        format: DiskFormat,
    ) -> Result<PathBuf, CreateError> {
        self.path_from(
            &[
                "image",
                "disk",
                "--format",
                format.fstype(),
                &manifest.to_string(),
            ],
            "the image's root disk",
            Some(self.builds.disk_timeout),
        )
    }
}

/// Starts the workload for an assignment, on the tenant's `network`,
/// through the runtime library (no argv: every tenant value is a typed
/// field). Err: (the code to report when the runtime made no workload that
/// will report it, why).
pub(super) fn start(
    builds: &Builds,
    data: &Path,
    node: &str,
    k: &Key,
    a: &Assignment,
    fencing: Fencing,
    network: &str,
) -> Result<(), (Option<i32>, String)> {
    let spec = &a.spec;
    let refused = |why: String| (Some(125), why);
    let publish = spec
        .ports
        .iter()
        .map(|p| {
            // A tenant's port is on the node's public addresses only.
            Publish::parse(p)
                .map(|p| Publish {
                    public_only: true,
                    ..p
                })
                .map_err(|e| refused(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (allow_egress, deny_egress, no_internet) = egress_of(spec).map_err(refused)?;
    let health = spec
        .health
        .as_ref()
        .map(crate::cluster::spec::Health::ask)
        .transpose()
        .map_err(|e| refused(e.to_string()))?
        .unwrap_or_default();
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend([
        format!("BULKHEAD_TENANT={}", k.tenant),
        format!("BULKHEAD_SERVICE={}", k.service),
        format!("BULKHEAD_INSTANCE={}", k.index),
        format!("BULKHEAD_FENCE={}", k.fence),
        format!("BULKHEAD_NODE={node}"),
    ]);
    let req = Request {
        image: spec.image.clone(),
        name: Some(k.workload_name()),
        // Cluster services have no volumes or tmpfs yet.
        volumes: Vec::new(),
        tmpfs: Vec::new(),
        read_only_root: false,
        runtime: spec.runtime,
        oci_runtime: None,
        entrypoint: None,
        command: spec.command.clone(),
        env,
        workdir: None,
        user: None,
        tty: false,
        interactive: false,
        cpus: spec.cpus,
        memory: spec.memory.clone(),
        network: network.to_string(),
        publish,
        allow_egress,
        deny_egress,
        no_internet,
        attach: false,
        auto_remove: false,
        fencing: Some(fencing),
        other_vmm: None,
        tenant: Some(k.tenant.clone()),
        health,
    };
    let rec = create::create(data, &req, &mut InChildren { builds, data })
        .map_err(|e| refused(format!("{:#}", anyhow::Error::from(e))))?;
    match create::start(data, &rec.config.id) {
        Ok(Started::Running) => Ok(()),
        // The workload exists and reports its own end.
        Ok(Started::Ended(why)) => Err((None, why)),
        Err(e) => Err((None, format!("{:#}", anyhow::Error::from(e)))),
    }
}

/// A service's egress as the runtime takes it: what it allows, what it
/// denies, whether it is without the internet (the server folded the
/// tenant's policy in).
pub(super) fn egress_of(
    spec: &crate::cluster::spec::ServiceSpec,
) -> Result<(Vec<Subnet>, Vec<Subnet>, bool), String> {
    let parse = |list: &[String], f: fn(&str) -> Result<Subnet, crate::network::NetError>| {
        list.iter()
            .map(|c| f(c).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((
        parse(&spec.egress.allow, egress::parse_allow)?,
        parse(&spec.egress.deny, egress::parse_deny)?,
        spec.egress.internet == Some(false),
    ))
}

/// What the local image store holds, as the server matches a service's
/// image: every name and the manifest digests they point at. `None` when
/// the store cannot be read (the server then keeps what it was told last).
pub(super) fn local_images(data: &Path) -> Option<BTreeSet<String>> {
    let refs = bulkhead_images::store::Store::open(data)
        .and_then(|s| s.refs())
        .ok()?;
    Some(
        refs.into_iter()
            .flat_map(|(name, digest)| [name, digest.to_string()])
            .collect(),
    )
}

/// This node's instances among the local workloads.
pub(crate) fn local_instances(data: &Path) -> Result<BTreeMap<Key, Record>, NodeError> {
    let state = State::new(Paths::new(data));
    let records = state.list().map_err(|e| NodeError::Local(e.to_string()))?;
    Ok(records
        .into_iter()
        .filter_map(|r| Some((Key::from_env(&r.config.process.env)?, r)))
        .collect())
}

/// What to report of a local workload (nothing while it is starting).
pub(super) fn observed(r: &Record) -> Option<Observed> {
    match r.status() {
        Status::Created => None,
        Status::Running => Some(Observed::Running),
        Status::Exited(code) => Some(Observed::Exited { code }),
        Status::Failed(_) => Some(Observed::Exited {
            code: r.exit.as_ref().map_or(125, |e| e.code),
        }),
    }
}

/// What this host offers when not told: its CPUs, 90% of its memory, and
/// the runtimes it can run (microvm with /dev/kvm, container with crun or runc).
/// This host's CPUs and memory, whole.
pub fn host_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0);
    Resources {
        millicpus: cpus * 1000,
        memory_mib: mem_kib / 1024,
    }
}

/// What a node offers by default: every CPU, 90% of memory (the rest for
/// the host and the VMMs' own), and the runtimes this host has.
pub fn host_defaults() -> (Resources, Vec<RuntimeKind>) {
    let whole = host_capacity();
    let mut runtimes = Vec::new();
    if Path::new("/dev/kvm").exists() {
        runtimes.push(RuntimeKind::Microvm);
    }
    if crate::runtime::container::default_oci_runtime().is_some() {
        runtimes.push(RuntimeKind::Container);
    }
    (
        Resources {
            millicpus: whole.millicpus,
            memory_mib: whole.memory_mib * 9 / 10,
        },
        runtimes,
    )
}
