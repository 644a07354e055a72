//! What the run table checks of a jailed VMM: its threads' seccomp filters,
//! its root's tree, its cgroups.

use super::*;

/// (name, `Seccomp:`, `NoNewPrivs:`) of a VMM's own threads (not KVM's
/// `kvm-*` kernel workers in its thread group).
pub fn vmm_thread_filters(pid: i32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(t.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        if !name.starts_with("kvm-") {
            out.push((name, field("Seccomp:"), field("NoNewPrivs:")));
        }
    }
    out
}

/// Every path under `dir` (relative), not following symlinks, not into /proc.
pub(super) fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel))
            .into_iter()
            .flatten()
            .flatten()
        {
            let r = rel.join(e.file_name());
            out.push(r.display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) && r != Path::new("proc") {
                todo.push(r);
            }
        }
    }
    out.sort();
    out
}

/// `path` (absolute) and its parent dirs, relative to /.
pub(super) fn with_parents(path: &str) -> Vec<String> {
    let mut acc = PathBuf::new();
    Path::new(path)
        .components()
        .skip(1)
        .map(|c| {
            acc.push(c);
            acc.display().to_string()
        })
        .collect()
}

/// A limit of the cgroup `pid` is in for `controller` (v2, or v1 with
/// `v1_file`), read through /proc/PID/cgroup.
pub(super) fn cgroup_value(pid: i32, v2_file: &str, v1_file: &str) -> Option<String> {
    let controller = v2_file.split('.').next()?;
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for l in groups.lines() {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        let (dir, file) = match ctls {
            "" if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
                (PathBuf::from("/sys/fs/cgroup"), v2_file)
            }
            c if c.split(',').any(|x| x == controller) => {
                (Path::new("/sys/fs/cgroup").join(controller), v1_file)
            }
            _ => continue,
        };
        return std::fs::read_to_string(dir.join(path.trim_start_matches('/')).join(file))
            .ok()
            .map(|v| v.trim().to_string());
    }
    None
}

/// The owner of `bulkhead run`'s workloads (a cluster node's are tenants).
pub const LOCAL_OWNER: &str = "local";

/// Where `owner`'s copies of the guest kernel and initramfs are, as
/// `bulkhead::runtime::boot_copies` documents it (computed here on its
/// own): `<data>/boot/` and 16 hex digits of SHA-256 over "owner" and the
/// name, each after its length (u64, little-endian).
pub fn owner_boot_dir(data: &Path, owner: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in ["owner", owner] {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    data.join("boot").join(hex::encode(&h.finalize()[..8]))
}

/// What is wrong with how VMM `pid` of workload `name` (whose owner is
/// `owner`: a cluster tenant, or the local user) is jailed: its kernel and
/// initramfs its owner's own copies, mapped; uid and
/// gid its own (not 0, the one `inspect` shows), no capabilities, seccomp,
/// NO_NEW_PRIVS, mount/pid/ipc/uts/net namespaces not the host's (the net
/// one empty: loopback only, down), a root that
/// holds only its devices, /proc, the VMM, kernel, initrd and its vm dir
/// (not the disk: it comes as a descriptor), and the cgroup limits for `vcpus`/`memory_mib` (CPU: one per vCPU,
/// when `--cpus` was given).
pub fn vmm_jail_problems(
    ctx: &Ctx,
    name: &str,
    owner: &str,
    pid: i32,
    vcpus: u32,
    memory_mib: u64,
    cpus_flag: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    let v: serde_json::Value =
        serde_json::from_slice(&ctx.bh(&["inspect", name]).stdout).unwrap_or_default();
    let vm = &v["vm"];
    // Its kernel and initramfs are its owner's own copies (so no page is
    // shared with another tenant's VM, SECURITY.md), and it maps them.
    let own = owner_boot_dir(&ctx.data, owner);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    for key in ["kernel", "initrd"] {
        let file = vm[key].as_str().unwrap_or("");
        if Path::new(file).parent() != Some(own.as_path()) {
            bad.push(format!(
                "{key} {file:?} is not {owner}'s copy (in {})",
                own.display()
            ));
        }
        // As the jail sees it, or with the jail's root before it.
        if file.is_empty() || !maps.lines().any(|l| l.ends_with(file)) {
            bad.push(format!("{key} {file:?} is not mapped: {maps}"));
        }
    }
    let uid = vm["jail"]["uid"].as_u64().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let ids = |k: &str| {
        field(k)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    if uid == 0
        || ids("Uid:") != vec![uid.to_string(); 4]
        || ids("Gid:") != vec![uid.to_string(); 4]
        || !field("Groups:").is_empty()
    {
        bad.push(format!(
            "uid/gid: inspect {uid}, Uid {:?}, Gid {:?}, Groups {:?}",
            field("Uid:"),
            field("Gid:"),
            field("Groups:")
        ));
    }
    for (k, want) in [
        ("Seccomp:", "2"),
        ("NoNewPrivs:", "1"),
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
    ] {
        if field(k) != want {
            bad.push(format!("{k} {:?}", field(k)));
        }
    }
    // /proc/PID/net/dev: the interfaces of the VMM's network namespace.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if ifaces != ["lo"] {
        bad.push(format!(
            "the VMM's network namespace has {ifaces:?}, not only lo"
        ));
    }
    for kind in ["mnt", "pid", "ipc", "uts", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        if theirs.is_none() || theirs == std::fs::read_link(format!("/proc/self/ns/{kind}")).ok() {
            bad.push(format!("{kind} namespace: {theirs:?}, the host's"));
        }
    }
    let s = |k: &serde_json::Value| k.as_str().unwrap_or("/nowhere").to_string();
    let mut want: Vec<String> = vec!["dev".into(), "dev/kvm".into(), "proc".into()];
    if Path::new("/dev/net/tun").exists() {
        want.extend(["dev/net".into(), "dev/net/tun".into()]);
    }
    // Not the root disk: the VMM gets it open (fd 4), never its path.
    for file in [
        s(&vm["vmm"]),
        s(&vm["kernel"]),
        s(&vm["initrd"]),
        s(&vm["jail"]["vm_dir"]),
    ] {
        want.extend(with_parents(&file));
    }
    let vm_dir = s(&vm["jail"]["vm_dir"]);
    let vm_dir = vm_dir.trim_start_matches('/');
    let root: Vec<String> = tree(Path::new(&format!("/proc/{pid}/root")))
        .into_iter()
        .filter(|p| !p.starts_with(&format!("{vm_dir}/")))
        .collect();
    want.sort();
    want.dedup();
    if root != want {
        bad.push(format!(
            "its root holds {root:?}, wanted {want:?} (and the vm dir's sockets)"
        ));
    }
    let limits = [
        (
            "memory",
            cgroup_value(pid, "memory.max", "memory.limit_in_bytes"),
            ((memory_mib + 64) << 20).to_string(),
        ),
        (
            "pids",
            cgroup_value(pid, "pids.max", "pids.max"),
            (vcpus + 32).to_string(),
        ),
        (
            "cpu",
            cgroup_value(pid, "cpu.max", "cpu.cfs_quota_us")
                .map(|c| c.split_whitespace().next().unwrap_or_default().to_string()),
            (u64::from(vcpus) * 100_000).to_string(),
        ),
    ];
    // Without --cpus there is no CPU limit (and on v2 no cpu controller for it).
    for (what, got, want) in limits.into_iter().filter(|l| cpus_flag || l.0 != "cpu") {
        if got.as_deref() != Some(want.as_str()) {
            bad.push(format!("cgroup {what}: {got:?}, wanted {want}"));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_dir_is_where_bulkhead_puts_the_owners_copies() {
        let data = Path::new("/var/lib/bulkhead");
        for owner in [LOCAL_OWNER, "acme", "evil", "", "../x"] {
            assert_eq!(
                owner_boot_dir(data, owner),
                bulkhead::runtime::boot_copies::owner_dir(data, owner),
                "{owner:?}"
            );
        }
        assert_eq!(LOCAL_OWNER, bulkhead::runtime::boot_copies::LOCAL_OWNER);
    }
}
