//! Cached pieces of the nested test host: Debian's cloud kernel with its
//! modules, and the base initramfs (static busybox, the L1 init, the modules
//! to load, the guest kernel). Both live under `<cache>/testhost/`, keyed by
//! what they are made of.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_images::debian;
use sha2::{Digest, Sha256};

use super::{TestHostError, GUEST_KERNEL_PATH};
use bulkhead_images::initramfs::CpioWriter;

/// The L1 init script.
const INIT_SCRIPT: &str = include_str!("../../testhost/init");

/// Debian metapackage for the L1 kernel.
const CLOUD_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the L1 machine loads (with their dependencies, in order):
/// kvm-amd for nested KVM, virtio_pci + virtio_console for the stdio ports,
/// tun for the VMs' TAP devices, bridge + veth + nf_tables with NAT,
/// masquerade, conntrack and fib for workload networking, objref for the
/// per-workload refused counters (a map to named counters), numgen for
/// balancing service addresses and published ports, reject_inet for
/// refusing a service address with no instance behind it; wireguard for a
/// tenant's tunnels between nodes; overlay for containers' roots, and loop
/// (with ext4) for the filesystem a container node keeps its data on (the
/// test host's tmpfs root takes no idmapped mount). Add here what later
/// tests need.
const MODULES: &[&str] = &[
    "kvm_amd",
    "virtio_pci",
    "virtio_console",
    "tun",
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_meta_bridge",
    "nft_objref",
    "nft_numgen",
    "nft_reject_inet",
    "wireguard",
    "overlay",
    "loop",
    "ext4",
];

/// Host programs the L1 machine gets (with their shared libraries), in
/// /usr/local/sbin so they come before busybox's applets of the same name:
/// bulkhead's networking drives iproute2, nftables and (for kernel
/// WireGuard) wg; its container runtime drives crun; mkfs.ext4 makes a
/// container node's data filesystem.
const L1_PROGRAMS: &[(&str, &str)] = &[
    ("/usr/sbin/ip", "ip"),
    ("/usr/sbin/nft", "nft"),
    ("/usr/bin/wg", "wg"),
    ("/usr/bin/crun", "crun"),
    ("/usr/sbin/mkfs.ext4", "mkfs.ext4"),
];

/// Host tools the nested mode needs, and the packages that bring them.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("/sbin/depmod", "kmod"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/bin/wg", "wireguard-tools"),
    ("/usr/bin/crun", "crun"),
    ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
];

/// What a nested run boots.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub base_initramfs: PathBuf,
}

/// Installs missing tools (as root), fetches the cloud kernel and builds the
/// base initramfs unless cached. `log` hears about anything slow.
pub fn prepare(log: &mut dyn FnMut(&str)) -> Result<Assets, TestHostError> {
    let root = bulkhead_images::cache::cache_root()
        .ok_or_else(|| {
            TestHostError::Usage("no cache directory: set BULKHEAD_CACHE or HOME".into())
        })?
        .join("testhost");
    fs::create_dir_all(&root).map_err(TestHostError::io(format!("create {}", root.display())))?;
    // Tests boot test hosts side by side: one of them installs and builds,
    // the others wait for it (apt and dpkg take locks of their own and fail).
    let lock_path = root.join(".prepare.lock");
    let lock_file = fs::File::create(&lock_path)
        .map_err(TestHostError::io(format!("create {}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| TestHostError::io(format!("lock {}", lock_path.display()))(e.into()))?;
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        debian::ensure_packages(&missing, log).map_err(packages)?;
    }
    ensure_qemu(log)?;
    let cloud = cloud_kernel(&root, log)?;
    let base_initramfs = base_initramfs(&root, &cloud, log)?;
    Ok(Assets {
        kernel: cloud.dir.join("vmlinuz"),
        base_initramfs,
    })
}

/// The oldest QEMU seen to run the nested test host reliably. Debian 12's
/// own QEMU 7.2 does not: its emulated SVM now and then stops delivering the
/// L1 machine's interrupts (a timer or IPI stays pending in the local APIC
/// while L1 runs with interrupts enabled), so a guest vCPU spinning on
/// another (e.g. `smp_call_function_single` on reboot) freezes the whole
/// test host. Measured: 7.2.22 froze in most boots running eight 2-vCPU
/// guests one after another; 10.0.2 (bookworm-backports) never did.
const MIN_QEMU: (u32, u32) = (10, 0);

/// Makes sure QEMU is new enough, installing it from backports (as root, on
/// Debian) when it is not. When that cannot be done the old QEMU still runs
/// the test host, with a warning: it freezes more often, and a frozen test
/// host is booted again ([`super::DEFAULT_ATTEMPTS`]).
fn ensure_qemu(log: &mut dyn FnMut(&str)) -> Result<(), TestHostError> {
    let found = qemu_version()?;
    if found >= MIN_QEMU {
        return Ok(());
    }
    log(&format!(
        "QEMU {}.{} is too old for the nested test host (needs {}.{}+)",
        found.0, found.1, MIN_QEMU.0, MIN_QEMU.1
    ));
    let installed = debian::install_from_backports("qemu-system-x86", log)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let now = qemu_version().map_err(|e| e.to_string())?;
            if now >= MIN_QEMU {
                Ok(())
            } else {
                Err(format!("still QEMU {}.{} after the install", now.0, now.1))
            }
        });
    if let Err(why) = installed {
        log(&format!(
            "WARNING: keeping QEMU {}.{}, which freezes the test host more often (install QEMU {}.{}+; on Debian 12 \
             qemu-system-x86 from bookworm-backports): {why}",
            found.0, found.1, MIN_QEMU.0, MIN_QEMU.1
        ));
    }
    Ok(())
}

/// (major, minor) of `qemu-system-x86_64 --version`.
fn qemu_version() -> Result<(u32, u32), TestHostError> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map_err(TestHostError::io("run qemu-system-x86_64 --version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_qemu_version(&text).ok_or_else(|| TestHostError::Command {
        command: "qemu-system-x86_64 --version".into(),
        detail: format!(
            "no version in {:?}",
            text.lines().next().unwrap_or_default()
        ),
    })
}

fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn packages(e: debian::DebianError) -> TestHostError {
    TestHostError::Command {
        command: "install test host packages".into(),
        detail: e.to_string(),
    }
}

struct CloudKernel {
    dir: PathBuf,
    /// Kernel release (`uname -r` inside).
    release: String,
}

impl CloudKernel {
    fn modules_dir(&self) -> PathBuf {
        self.dir.join("root/lib/modules").join(&self.release)
    }
}

/// Debian's cloud kernel, unpacked (not installed) under `cloud-<version>/`.
fn cloud_kernel(root: &Path, log: &mut dyn FnMut(&str)) -> Result<CloudKernel, TestHostError> {
    let (version, depends) = match debian::candidate(CLOUD_KERNEL_PACKAGE) {
        Ok(v) => v,
        // No apt lists (offline): any kernel unpacked before will do.
        Err(e) => return newest_cached(root).ok_or_else(|| packages(e)),
    };
    let dir = root.join(format!("cloud-{version}"));
    if let Some(k) = read_cloud(&dir) {
        return Ok(k);
    }
    let image = depends
        .iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            TestHostError::Usage(format!(
                "{CLOUD_KERNEL_PACKAGE} {version} depends on no linux-image package"
            ))
        })?;
    log(&format!(
        "fetching {image} {version} for the nested test host"
    ));
    let tmp = root.join(format!(".cloud-{version}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(TestHostError::io(format!("create {}", tmp.display())))?;
    let deb = debian::download(image, &tmp).map_err(packages)?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(tmp.join("root")))?;
    fs::remove_file(&deb).map_err(TestHostError::io("remove .deb"))?;
    let release = only_entry(&tmp.join("root/lib/modules"))?;
    run(Command::new("depmod")
        .arg("-b")
        .arg(tmp.join("root"))
        .arg(&release))?;
    let vmlinuz = tmp.join("root/boot").join(format!("vmlinuz-{release}"));
    fs::rename(&vmlinuz, tmp.join("vmlinuz"))
        .map_err(TestHostError::io(format!("move {}", vmlinuz.display())))?;
    fs::write(tmp.join("release"), &release).map_err(TestHostError::io("write release"))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(TestHostError::io(format!("publish {}", dir.display())))?;
    read_cloud(&dir).ok_or_else(|| {
        TestHostError::Usage(format!("{} incomplete after unpacking", dir.display()))
    })
}

fn read_cloud(dir: &Path) -> Option<CloudKernel> {
    let release = fs::read_to_string(dir.join("release")).ok()?;
    let k = CloudKernel {
        dir: dir.to_path_buf(),
        release: release.trim().to_string(),
    };
    (dir.join("vmlinuz").is_file() && k.modules_dir().join("modules.dep").is_file()).then_some(k)
}

fn newest_cached(root: &Path) -> Option<CloudKernel> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cloud-"))
        })
        .collect();
    dirs.sort();
    dirs.iter().rev().find_map(|d| read_cloud(d))
}

fn only_entry(dir: &Path) -> Result<String, TestHostError> {
    let names: Vec<String> = fs::read_dir(dir)
        .map_err(TestHostError::io(format!("read {}", dir.display())))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(TestHostError::Usage(format!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        ))),
    }
}

/// The base initramfs, rebuilt when any input changes.
fn base_initramfs(
    root: &Path,
    cloud: &CloudKernel,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, TestHostError> {
    let dep_text = fs::read_to_string(cloud.modules_dir().join("modules.dep"))
        .map_err(TestHostError::io("read modules.dep"))?;
    // Built in (modules.builtin lists them as module paths): nothing to load.
    let builtin: BTreeSet<String> = fs::read_to_string(cloud.modules_dir().join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let wanted: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| !builtin.contains(&m.replace('-', "_")))
        .collect();
    let modules = load_order(&parse_modules_dep(&dep_text), &wanted)?;
    let guest_kernel = bulkhead_images::kernel::find_built()
        .ok()
        .map(|k| k.vmlinux);
    let busybox = Path::new("/bin/busybox");

    let mut key = Sha256::new();
    key.update(b"testhost-base-v2\0");
    key.update(cloud.dir.to_string_lossy().as_bytes());
    key.update(INIT_SCRIPT.as_bytes());
    key.update(modules.join("\n").as_bytes());
    key.update(fs::read(busybox).map_err(TestHostError::io("read /bin/busybox"))?);
    for (program, _) in L1_PROGRAMS {
        key.update(fs::read(program).map_err(TestHostError::io(format!("read {program}")))?);
    }
    if let Some(k) = &guest_kernel {
        let meta = fs::metadata(k).map_err(TestHostError::io(format!("stat {}", k.display())))?;
        key.update(format!("{}:{}:{:?}", k.display(), meta.len(), meta.modified().ok()).as_bytes());
    }
    let key = hex::encode(&key.finalize()[..12]);
    let path = root.join(format!("base-{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }

    log("building the test host's base initramfs");
    let mut w = CpioWriter::new(Vec::new());
    let io = |what: &str| TestHostError::io(format!("base initramfs: {what}"));
    w.host_file("/bin/busybox", 0o755, busybox)
        .map_err(io("busybox"))?;
    w.symlink("/bin/sh", "busybox").map_err(io("sh"))?;
    w.file("/init", 0o755, INIT_SCRIPT.as_bytes())
        .map_err(io("init"))?;
    w.char_device("/dev/console", 0o600, 5, 1)
        .map_err(io("console"))?;
    for d in [
        "/proc",
        "/sys",
        "/tmp",
        "/root",
        "/etc",
        "/usr/local/bin",
        "/usr/bin",
        "/usr/sbin",
        "/sbin",
    ] {
        w.dir(d, if d == "/tmp" { 0o1777 } else { 0o755 })
            .map_err(io(d))?;
    }
    let mut load_list = String::new();
    for m in &modules {
        let guest = format!("/lib/modules/{}/{m}", cloud.release);
        w.host_file(&guest, 0o644, &cloud.modules_dir().join(m))
            .map_err(io(m))?;
        load_list.push_str(&guest);
        load_list.push('\n');
    }
    w.file("/etc/testhost/modules", 0o644, load_list.as_bytes())
        .map_err(io("module list"))?;
    let mut libs = BTreeSet::new();
    for (program, name) in L1_PROGRAMS {
        w.host_file(
            &format!("/usr/local/sbin/{name}"),
            0o755,
            Path::new(program),
        )
        .map_err(io(name))?;
        libs.extend(super::payload::shared_libs(Path::new(program))?);
    }
    for lib in &libs {
        let guest = lib.to_str().ok_or_else(|| {
            TestHostError::Usage(format!("library path {} is not UTF-8", lib.display()))
        })?;
        w.host_file(guest, 0o755, lib).map_err(io(guest))?;
    }
    if let Some(k) = &guest_kernel {
        w.host_file(GUEST_KERNEL_PATH, 0o644, k)
            .map_err(io("guest kernel"))?;
    }
    let bytes = w.finish().map_err(io("finish"))?;

    // Only the current base is worth keeping.
    for old in fs::read_dir(root)
        .map_err(TestHostError::io("read cache"))?
        .filter_map(Result::ok)
    {
        if old
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("base-") && n.ends_with(".cpio"))
        {
            let _ = fs::remove_file(old.path());
        }
    }
    let tmp = root.join(format!(".base-{key}.tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(TestHostError::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(TestHostError::io(format!("publish {}", path.display())))?;
    Ok(path)
}

/// modules.dep: module path -> dependency paths (relative to the release dir).
fn parse_modules_dep(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// The module files for `wanted` names and their dependencies, each after
/// everything it depends on.
fn load_order(
    deps: &HashMap<String, Vec<String>>,
    wanted: &[&str],
) -> Result<Vec<String>, TestHostError> {
    let by_name: HashMap<String, &String> =
        deps.keys().map(|path| (module_name(path), path)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let path = by_name.get(&name.replace('-', "_")).ok_or_else(|| {
            TestHostError::Usage(format!(
                "module {name} is not in the cloud kernel's modules.dep"
            ))
        })?;
        visit(path, deps, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    path: &str,
    deps: &HashMap<String, Vec<String>>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<(), TestHostError> {
    if depth > 64 {
        return Err(TestHostError::Usage(format!(
            "module dependency loop at {path}"
        )));
    }
    if !seen.insert(path.to_string()) {
        return Ok(());
    }
    if !path.ends_with(".ko") {
        return Err(TestHostError::Usage(format!(
            "{path}: compressed modules are not supported (busybox insmod)"
        )));
    }
    for d in deps.get(path).into_iter().flatten() {
        visit(d, deps, seen, order, depth + 1)?;
    }
    order.push(path.to_string());
    Ok(())
}

/// "kernel/arch/x86/kvm/kvm-amd.ko" -> "kvm_amd".
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).replace('-', "_")
}

fn run(cmd: &mut Command) -> Result<(), TestHostError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(TestHostError::io(format!("run {shown}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestHostError::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_are_parsed() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"
            ),
            Some((7, 2))
        );
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
            ),
            Some((10, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1.0"),
            Some((9, 1))
        );
        assert!(
            (7, 2) < MIN_QEMU && (10, 0) >= MIN_QEMU && (10, 1) >= MIN_QEMU && (9, 2) < MIN_QEMU
        );
        assert_eq!(parse_qemu_version(""), None);
        assert_eq!(parse_qemu_version("something else"), None);
        assert_eq!(parse_qemu_version("QEMU emulator version x.y"), None);
    }

    const DEP: &str = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
kernel/virt/lib/irqbypass.ko:\n\
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio.ko:\n\
kernel/drivers/virtio/virtio_ring.ko:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let order = load_order(&parse_modules_dep(DEP), &["kvm-amd", "virtio_console"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/char/virtio_console.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_and_loops_are_errors() {
        assert!(load_order(&parse_modules_dep(DEP), &["nope"]).is_err());
        let looped = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        // A loop is cut by `seen`, never recursing forever.
        assert_eq!(load_order(&looped, &["a"]).unwrap(), ["b.ko", "a.ko"]);
    }
}
