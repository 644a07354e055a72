//! `bulkhead bench`: what VM isolation costs next to a shared-kernel
//! container, measured on the user's own host, the way a user starts them
//! (`bulkhead run`). `boot`: start phases; `density`: many idle workloads;
//! `overhead`: the VMM alone with the tiny built-in guest.
//!
//! Where /dev/kvm cannot boot Linux (kvm_pvm) the microVM runs go to the
//! nested test host in one batch, and the report says first that they are
//! emulated: there only VMM-against-VMM ratios mean something.

pub mod boot;
pub mod density;
pub mod facts;
pub mod io;
pub mod overhead;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use report::Report;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Start phases of the same image per runtime, runs alternating A B A B:
    /// microvm (VMM start, kernel entry, agent ready, first output byte,
    /// exit), containers (runtime invoked, first output byte, exit).
    Boot(boot::BootArgs),
    /// Start N idle workloads per runtime (or until a memory budget is
    /// used): start rate, memory per workload, time to remove them all.
    Density(density::DensityArgs),
    /// The VMM alone, with the tiny built-in guest (any /dev/kvm, kvm_pvm
    /// included): startup CPU time, time to first output and exit, memory
    /// beyond the guest's pages.
    Overhead(overhead::OverheadArgs),
    /// fio in the workload: sequential and random reads and writes on its
    /// root filesystem and on a volume, per runtime.
    Io(io::IoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Output options every bench takes.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// How to print the report on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the distributions (one box per runtime and phase) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let (report, out) = match cmd {
        BenchCommand::Boot(a) => {
            let out = a.output.clone();
            (boot::run(a)?, out)
        }
        BenchCommand::Density(a) => {
            let out = a.output.clone();
            (density::run(a)?, out)
        }
        BenchCommand::Overhead(a) => {
            let out = a.output.clone();
            (overhead::run(a)?, out)
        }
        BenchCommand::Io(a) => {
            let out = a.output.clone();
            (io::run(a)?, out)
        }
    };
    emit(&report, &out)
}

fn emit(report: &Report, out: &OutputArgs) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = &out.json {
        write_new(path, json.as_bytes())?;
    }
    if let Some(path) = &out.plot {
        let tmp = tmp_beside(path);
        report.plot(&tmp).map_err(anyhow::Error::msg)?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    }
    match out.format {
        Format::Json => println!("{json}"),
        Format::Table => print!("{}", report.text()),
    }
    Ok(())
}

fn tmp_beside(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Written whole or not at all.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_beside(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// What a bench starts workloads with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// bulkhead-vmm (the default microVM runtime).
    Microvm,
    /// Another VMM started Firecracker's way, same kernel, initramfs and disk.
    VmmVs(PathBuf),
    Crun,
    Runc,
}

impl Target {
    pub fn name(&self) -> String {
        match self {
            Target::Microvm => "microvm".into(),
            Target::VmmVs(p) => format!(
                "vmm-vs:{}",
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            ),
            Target::Crun => "crun".into(),
            Target::Runc => "runc".into(),
        }
    }

    pub fn is_vm(&self) -> bool {
        matches!(self, Target::Microvm | Target::VmmVs(_))
    }

    /// `bulkhead run` flags that pick this runtime.
    pub fn run_flags(&self, cmd: &mut Command) {
        match self {
            Target::Microvm => {}
            Target::VmmVs(p) => {
                cmd.arg("--vmm-firecracker").arg(p);
            }
            Target::Crun => {
                cmd.args(["--runtime", "container", "--oci-runtime", "crun"]);
            }
            Target::Runc => {
                cmd.args(["--runtime", "container", "--oci-runtime", "runc"]);
            }
        }
    }
}

/// `--runtimes` (default: every one this host has) and `--vmm-vs`.
pub fn targets(runtimes: Option<&[String]>, vmm_vs: Option<&Path>) -> Result<Vec<Target>> {
    let installed = |r: &str| crate::runtime::container::which(r).is_some();
    let names: Vec<String> = match runtimes {
        Some(r) => r.to_vec(),
        None => ["microvm", "crun", "runc"]
            .into_iter()
            .filter(|r| *r == "microvm" || installed(r))
            .map(String::from)
            .collect(),
    };
    let mut out = Vec::new();
    for n in &names {
        let t = match n.as_str() {
            "microvm" => Target::Microvm,
            "crun" | "runc" if !installed(n) => {
                bail!("--runtimes {n}: not installed (apt-get install {n})")
            }
            "crun" => Target::Crun,
            "runc" => Target::Runc,
            other => bail!("--runtimes {other:?}: microvm, crun or runc"),
        };
        if out.contains(&t) {
            bail!("--runtimes names {n} twice");
        }
        out.push(t);
    }
    if let Some(p) = vmm_vs {
        if !p.is_file() {
            bail!("--vmm-vs {}: no such file", p.display());
        }
        out.push(Target::VmmVs(std::fs::canonicalize(p)?));
    }
    if out.is_empty() {
        bail!("nothing to run: --runtimes is empty");
    }
    Ok(out)
}

/// Whether microVMs boot Linux here, or must go to the nested test host.
pub fn microvms_nested() -> bool {
    bulkhead_vmm::host::detect() != bulkhead_vmm::host::KvmKind::Hardware
}

/// Runs `bulkhead bench ARGS --format json` inside the nested test host
/// with the image store staged in, and returns its report. Its progress
/// goes to our stderr.
pub fn in_test_host(
    image: &str,
    bench_args: &[String],
    stage: &[(PathBuf, &str)],
    memory_mib: u64,
    timeout_s: u64,
) -> Result<Report> {
    let testhost = crate::runtime::shipped_binary("bulkhead-testhost")
        .context("microVMs on this host run inside the nested test host, and its launcher is missing (`make build` builds it; or bench only --runtimes crun,runc)")?;
    let data = crate::state::paths::data_dir();
    // The test host has no mkfs: the image's root disk is built (or found cached) here.
    let store = bulkhead_images::store::Store::open(&data)?;
    let manifest = store
        .resolve(image)
        .with_context(|| format!("image {image:?}"))?;
    bulkhead_images::rootdisk::build(
        &store,
        &manifest,
        bulkhead_images::rootdisk::Format::Ext4,
        &mut |m| eprintln!("{m}"),
    )
    .context("the image's root disk")?;
    let mut cmd = Command::new(testhost);
    cmd.args([
        "--no-stdin",
        "--timeout",
        &timeout_s.to_string(),
        "--memory",
        &memory_mib.to_string(),
    ]);
    cmd.arg("--stage")
        .arg(format!("{}:/t/data", data.display()));
    for (src, dst) in stage {
        cmd.arg("--stage").arg(format!("{}:{dst}", src.display()));
    }
    // `--format json` goes before the workload's command (after a `--`).
    let (sub, rest) = bench_args.split_first().context("no bench named")?;
    cmd.args([
        "-e",
        "BULKHEAD_DATA=/t/data",
        "-e",
        "BULKHEAD_CACHE=/t/cache",
        "--",
        "bulkhead",
        "bench",
        sub,
        "--format",
        "json",
    ])
    .args(rest);
    eprintln!("bulkhead bench: microVMs go to the nested test host (this host's /dev/kvm cannot boot Linux); booting it");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("start the nested test host")?;
    if !out.status.success() {
        bail!(
            "the microVM runs in the nested test host failed ({})",
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the nested test host's bench report: {:?}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(300)])
        )
    })
}

/// Where the nested report's microVMs ran, for the outer report.
pub fn nested_facts(inner: &Report) -> facts::HostFacts {
    facts::HostFacts {
        kvm: facts::KVM_NESTED.into(),
        ..inner.host.clone()
    }
}

pub const NESTED_NOTE: &str = "microVM runs ran inside the nested test host, where every guest exit and nested page walk is emulated (this host's /dev/kvm is kvm_pvm): only VMM-against-VMM ratios mean something here; any microvm-vs-container ratio in this report is NOT representative (real ones need a host with VT-x/AMD-V)";

pub fn image_facts(image: &str) -> Result<report::ImageFacts> {
    let store = bulkhead_images::store::Store::open(crate::state::paths::data_dir())?;
    let digest = store.resolve(image).with_context(|| {
        format!("image {image:?} (pull or import it first: `bulkhead image pull|import`)")
    })?;
    Ok(report::ImageFacts {
        name: image.into(),
        digest: digest.to_string(),
    })
}

pub fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`bulkhead bench` starts workloads with `bulkhead run`, which needs root for now");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_lists() {
        assert!(targets(Some(&["bogus".into()]), None)
            .is_err_and(|e| e.to_string().contains("microvm, crun or runc")));
        assert!(targets(Some(&["microvm".into(), "microvm".into()]), None)
            .is_err_and(|e| e.to_string().contains("twice")));
        assert!(targets(Some(&[]), None).is_err());
        assert!(
            targets(Some(&["microvm".into()]), Some(Path::new("/no/such/vmm")))
                .is_err_and(|e| e.to_string().contains("no such file"))
        );
        let t = targets(Some(&["microvm".into()]), Some(Path::new("/bin/true"))).unwrap();
        assert_eq!(t[0], Target::Microvm);
        assert!(t[1].is_vm() && t[1].name().starts_with("vmm-vs:"));
        assert!(targets(None, None).unwrap().contains(&Target::Microvm));
    }
}
