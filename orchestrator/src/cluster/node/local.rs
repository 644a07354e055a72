//! The node's side of the local runtime: starting and removing its
//! instances' workloads, and what it reports of them and of its images.

use super::*;

pub(super) enum Work {
    Start(Box<Assignment>),
    /// The workload id, and whether it may still run (stop it first).
    Remove(String, bool),
}

pub(super) fn local_cmd(bulkhead: &Path, data: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bulkhead);
    c.env("BULKHEAD_DATA", data)
        .stdin(std::process::Stdio::null());
    c
}

/// `bulkhead run -d` for an assignment, on the tenant's `network`. Err:
/// (the code to report when the runtime made no workload that will
/// report it, why).
#[allow(clippy::too_many_arguments)] // until the node calls the runtime directly (no argv)
pub(super) fn start(
    bulkhead: &Path,
    data: &Path,
    node: &str,
    k: &Key,
    a: &Assignment,
    lease: &Path,
    kill_after_ms: u64,
    network: &str,
) -> Result<(), (Option<i32>, String)> {
    let spec = &a.spec;
    let mut c = local_cmd(bulkhead, data);
    c.args([
        "run",
        "-d",
        "--name",
        &k.workload_name(),
        "--runtime",
        &spec.runtime.to_string(),
    ]);
    c.arg(format!("--network={network}"));
    for cidr in &spec.egress.allow {
        c.arg(format!("--allow-egress={cidr}"));
    }
    c.arg("--fence-deadline-file")
        .arg(lease)
        .args(["--fence-kill-after-ms", &kill_after_ms.to_string()]);
    for (key, value) in &spec.env {
        c.arg(format!("--env={key}={value}"));
    }
    for (key, value) in [
        ("BULKHEAD_TENANT", k.tenant.clone()),
        ("BULKHEAD_SERVICE", k.service.clone()),
        ("BULKHEAD_INSTANCE", k.index.to_string()),
        ("BULKHEAD_FENCE", k.fence.to_string()),
        ("BULKHEAD_NODE", node.to_string()),
    ] {
        c.arg(format!("--env={key}={value}"));
    }
    if let Some(cpus) = spec.cpus {
        c.arg(format!("--cpus={cpus}"));
    }
    if let Some(m) = &spec.memory {
        c.arg(format!("--memory={m}"));
    }
    for p in &spec.ports {
        c.arg(format!("--publish={p}"));
    }
    // Tenant values as `--flag=value` and after `--`: none can pass for a flag of `run`.
    c.arg("--").arg(&spec.image).args(&spec.command);
    let o = c
        .output()
        .map_err(|e| (Some(125), format!("{}: {e}", bulkhead.display())))?;
    if o.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
    // A workload that exists reports its own end; one that never got made is reported by us.
    let made = local_instances(data)
        .map(|l| l.contains_key(k))
        .unwrap_or(false);
    Err(((!made).then_some(o.status.code().unwrap_or(125)), why))
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
