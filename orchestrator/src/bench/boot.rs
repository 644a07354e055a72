//! `bulkhead bench boot`: the same image through each runtime, one
//! `bulkhead run --rm --network none` at a time, alternating A B A B so
//! drift (caches, thermal, noisy neighbours) lands on every runtime alike.
//!
//! Every phase is milliseconds since `bulkhead run` was invoked, all on
//! CLOCK_MONOTONIC, so no cost outside the guest hides: `cli-parsed` and
//! `record-stored` (the workload's record and address lease committed) from
//! the CLI; `supervisor-up`, `client-attached` (the CLI connected to attach),
//! `network-attached`, `bundle-ready` (a container's OCI bundle and root),
//! `runtime-invoked` (the supervisor spawns bulkhead-jailer or crun/runc)
//! and `agent-connected` (the agent dialed in) from the supervisor;
//! `jail-ready` (the jailer about to exec the VMM) from the jailer;
//! `vmm-start` (the VMM exec'd), `kernel-entry` and `agent-ready` from
//! bulkhead-vmm's own timeline (its boot-stage port: guest-side times, not
//! guesses); the teardown from the supervisor: `workload-exited` (its exit
//! and last output in), `runtime-cleaned` (the VMM or OCI runtime gone),
//! `released` (network, jail, files, record); `first-output` (the first
//! byte on `run`'s stdout) and `exit` (`run` returned) measured here.
//! Beside the phases, a microVM's exits to bulkhead-vmm per run by kind and
//! device (`exits mmio-write ioapic`, ...: where the VMM's share of a boot
//! goes; a count, not a time).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::facts::HostFacts;
use super::report::{Report, Series};
use super::{OutputArgs, Target};
use crate::runtime::attach::Mark;

/// Phases in start order; a runtime reports those it has.
pub const PHASES: &[&str] = &[
    "cli-parsed",
    "record-stored",
    "supervisor-up",
    "client-attached",
    "network-attached",
    "bundle-ready",
    "runtime-invoked",
    "jail-ready",
    "vmm-start",
    "kernel-entry",
    "agent-ready",
    "agent-connected",
    "first-output",
    "workload-exited",
    "runtime-cleaned",
    "released",
    "exit",
];

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Every phase is milliseconds since `bulkhead run` was invoked (CLOCK_MONOTONIC). On a host whose /dev/kvm cannot boot Linux (kvm_pvm) the microVM runs happen in the nested test host (QEMU emulation) and the report says so first: there only VMM-against-VMM ratios mean something."
)]
pub struct BootArgs {
    /// Runtimes to compare, in this order [default: microvm and whichever of crun, runc are installed].
    #[arg(long, value_delimiter = ',', value_name = "microvm,crun,runc")]
    pub runtimes: Option<Vec<String>>,
    /// Also boot the same kernel, initramfs and root disk with another VMM
    /// that takes Firecracker's `--no-api --config-file` (guest-side phases
    /// come from bulkhead-vmm's boot-stage port only).
    #[arg(long, value_name = "PATH")]
    pub vmm_vs: Option<PathBuf>,
    /// Measured runs per runtime.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub runs: usize,
    /// Runs per runtime before measuring, discarded.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warmup: usize,
    /// vCPUs per microVM.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// The network each run attaches to (`bulkhead`, the default network, measures attaching one;
    /// `none` leaves loopback only).
    #[arg(long, default_value = "none", value_name = "NAME")]
    pub network: String,
    /// Memory per microVM, MiB.
    #[arg(long, default_value_t = crate::runtime::limits::DEFAULT_VM_MEMORY_MIB, value_name = "MIB")]
    pub memory: u64,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The image (from `bulkhead image ls`).
    pub image: String,
    /// The command [default: echo bulkhead-bench]; it must print something (first-output).
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl BootArgs {
    fn command(&self) -> Vec<String> {
        if self.command.is_empty() {
            vec!["echo".into(), "bulkhead-bench".into()]
        } else {
            self.command.clone()
        }
    }
}

pub fn run(a: BootArgs) -> Result<Report> {
    super::check_root()?;
    if !(1..=10_000).contains(&a.runs) || a.warmup > 1000 {
        bail!("--runs 1 to 10000, --warmup at most 1000");
    }
    if !(1..=64).contains(&a.cpus) || !(64..=1 << 20).contains(&a.memory) {
        bail!("--cpus 1 to 64, --memory 64 to 1048576 MiB");
    }
    if a.vmm_vs.is_some() && a.network != crate::network::NONE {
        bail!("--vmm-vs runs with --network none only (another VMM takes no TAP from us)");
    }
    let image = super::image_facts(&a.image)?;
    let targets = super::targets(a.runtimes.as_deref(), a.vmm_vs.as_deref())?;
    let command = a.command();
    let mut notes = Vec::new();
    let mut microvm_host = None;
    let mut series = Vec::new();
    let (vms, here): (Vec<Target>, Vec<Target>) = targets.iter().cloned().partition(Target::is_vm);
    let local = if !vms.is_empty() && super::microvms_nested() {
        let inner = nested(&a, &vms, &command)?;
        microvm_host = Some(super::nested_facts(&inner));
        notes.push(super::NESTED_NOTE.to_string());
        series.extend(inner.series);
        here
    } else {
        targets.clone()
    };
    if let Some(p) = &a.vmm_vs {
        notes.push(format!("vmm-vs is {} started Firecracker's way (--no-api --config-file) with the same kernel, initramfs and root disk; vmm-start, kernel-entry and agent-ready come from bulkhead-vmm's own timeline and are not known for another VMM", p.display()));
    }
    if !local.is_empty() {
        series.extend(measure(&a, &local, &command)?);
    }
    // VMM against VMM always means something; microVM against container
    // only where both ran on this host's own hardware.
    let native = microvm_host.is_none();
    let mut pairs = Vec::new();
    let names: Vec<String> = targets.iter().map(Target::name).collect();
    for (vm, other) in targets
        .iter()
        .filter(|t| matches!(t, Target::VmmVs(_)))
        .map(|t| (t.name(), "microvm".to_string()))
    {
        if names.contains(&other) {
            pairs.push((vm, other, true));
        }
    }
    for vm in targets.iter().filter(|t| t.is_vm()) {
        for c in targets.iter().filter(|t| !t.is_vm()) {
            pairs.push((vm.name(), c.name(), native));
        }
    }
    let ratios = ["first-output", "exit"]
        .iter()
        .flat_map(|p| super::report::Ratio::of(&series, p, &pairs))
        .collect();
    Ok(Report {
        bench: "boot".into(),
        notes,
        host: HostFacts::of_this_host(),
        microvm_host,
        image: Some(image),
        command,
        vcpus: a.cpus,
        memory_mib: a.memory,
        runs: a.runs,
        warmup: a.warmup,
        method: format!("each run: `bulkhead run --rm --network {} IMAGE CMD`, runtimes alternating A B A B; phases in ms since `bulkhead run` was invoked", a.network),
        series,
        ratios,
    })
}

/// The microVM targets in the nested test host, as one bench there.
fn nested(a: &BootArgs, vms: &[Target], command: &[String]) -> Result<Report> {
    let mut args: Vec<String> = vec![
        "boot".into(),
        a.image.clone(),
        "--network".into(),
        a.network.clone(),
        "--runs".into(),
        a.runs.to_string(),
        "--warmup".into(),
        a.warmup.to_string(),
        "--cpus".into(),
        a.cpus.to_string(),
        "--memory".into(),
        a.memory.to_string(),
    ];
    let mut stage = Vec::new();
    let mut runtimes = Vec::new();
    // The other VMM goes in under its own name (the report names it so).
    let staging = tempfile::Builder::new()
        .prefix("bulkhead-bench-vmm-vs-")
        .tempdir()?;
    for t in vms {
        match t {
            Target::VmmVs(p) => {
                let name = p.file_name().context("--vmm-vs names no file")?;
                std::fs::copy(p, staging.path().join(name))
                    .with_context(|| format!("copy {}", p.display()))?;
                stage.push((staging.path().to_path_buf(), "/t/vmm-vs"));
                args.extend([
                    "--vmm-vs".into(),
                    format!("/t/vmm-vs/{}", name.to_string_lossy()),
                ]);
            }
            _ => runtimes.push(t.name()),
        }
    }
    args.extend(["--runtimes".into(), runtimes.join(",")]);
    if runtimes.is_empty() {
        bail!("--vmm-vs on this host needs --runtimes to include microvm (both run in the nested test host)");
    }
    args.push("--".into());
    args.extend(command.iter().cloned());
    // A boot there takes seconds (emulated): ~30 s per run is generous.
    let boots = (a.runs + a.warmup) * vms.len();
    let timeout = 600 + 30 * boots as u64;
    super::in_test_host(&a.image, &args, &stage, 1024 + a.memory * 2, timeout)
}

/// Runs the targets here, alternating, and turns the samples into series.
fn measure(a: &BootArgs, targets: &[Target], command: &[String]) -> Result<Vec<Series>> {
    let exe = std::env::current_exe().context("find our own binary")?;
    let mut samples: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); targets.len()];
    let total = a.warmup + a.runs;
    for round in 0..total {
        let mut line = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let phases = run_once(&exe, t, a, command)
                .with_context(|| format!("{} run {}", t.name(), round + 1))?;
            line.push(format!(
                "{} {:.0} ms",
                t.name(),
                phases.get("exit").copied().unwrap_or(f64::NAN)
            ));
            if round >= a.warmup {
                let done = round - a.warmup;
                // A kind of exit one run had none of counts 0 there.
                for (phase, v) in phases {
                    let s = samples[i].entry(phase.clone()).or_default();
                    if phase.starts_with(EXITS) {
                        s.resize(done, 0.0);
                    }
                    s.push(v);
                }
                for (phase, s) in samples[i].iter_mut() {
                    if phase.starts_with(EXITS) {
                        s.resize(done + 1, 0.0);
                    }
                }
            }
        }
        let what = if round < a.warmup { "warm-up" } else { "run" };
        eprintln!(
            "bulkhead bench boot: [{}/{total}] {what}: {}",
            round + 1,
            line.join(", ")
        );
    }
    let mut series = Vec::new();
    for (t, mut by_phase) in targets.iter().zip(samples) {
        for phase in PHASES {
            if let Some(v) = by_phase.remove(*phase) {
                series.push(Series::new(&t.name(), phase, "ms", v));
            }
        }
        for (what, v) in by_phase.into_iter().filter(|(k, _)| k.starts_with(EXITS)) {
            series.push(Series::new(&t.name(), &what, "exits", v));
        }
    }
    Ok(series)
}

/// One `bulkhead run`; phase -> ms since it was invoked.
fn run_once(
    exe: &std::path::Path,
    t: &Target,
    a: &BootArgs,
    command: &[String],
) -> Result<BTreeMap<String, f64>> {
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-bench-")
        .tempdir()?;
    let timeline = dir.path().join("timeline.json");
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--rm", "--network", &a.network, "--timeline-json"])
        .arg(&timeline);
    t.run_flags(&mut cmd);
    if t.is_vm() {
        cmd.args([
            "--cpus",
            &a.cpus.to_string(),
            "--memory",
            &format!("{}m", a.memory),
        ]);
    }
    cmd.arg(&a.image)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = bulkhead_vmm::timeline::monotonic_us();
    let mut child = cmd.spawn().context("start `bulkhead run`")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 1];
    let first_at = match out.read(&mut first) {
        Ok(1) => Some(bulkhead_vmm::timeline::monotonic_us()),
        _ => None,
    };
    std::io::copy(&mut out, &mut std::io::sink())?;
    let status = child.wait()?;
    let exit_at = bulkhead_vmm::timeline::monotonic_us();
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        bail!("`bulkhead run` failed ({status}): {}", errors.trim());
    }
    let first_at = first_at.with_context(|| "the workload printed nothing on stdout (first-output needs a command that prints; give one after --)".to_string())?;
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&timeline).context("the run's timeline")?)?;
    let marks: Vec<Mark> =
        serde_json::from_value(report["timeline"].clone()).context("the run's timeline")?;
    let exits: Vec<(String, u64)> =
        serde_json::from_value(report["vm_exits"].clone()).unwrap_or_default();
    let mut out = phases(t0, &marks, first_at, exit_at);
    for (what, n) in exits {
        out.insert(format!("{EXITS}{what}"), n as f64);
    }
    Ok(out)
}

/// Prefix of the series of a microVM's exits to bulkhead-vmm (`exits
/// io-out serial`, ...): per run, over the VM's whole life.
pub const EXITS: &str = "exits ";

/// Milestones relative to `t0`, in ms; names outside [`PHASES`] and marks
/// before `t0` (a clock that cannot be right) are left out.
pub fn phases(t0: u64, marks: &[Mark], first_output: u64, exit: u64) -> BTreeMap<String, f64> {
    let ms = |at: u64| (at.checked_sub(t0)).map(|d| d as f64 / 1000.0);
    let mut out = BTreeMap::new();
    for m in marks {
        if let (true, Some(v)) = (PHASES.contains(&m.name.as_str()), ms(m.at_us)) {
            out.entry(m.name.clone()).or_insert(v);
        }
    }
    for (name, at) in [("first-output", first_output), ("exit", exit)] {
        if let Some(v) = ms(at) {
            out.insert(name.into(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_relative_to_the_invocation() {
        let m = |n: &str, at| Mark {
            name: n.into(),
            at_us: at,
        };
        let marks = [
            m("runtime-invoked", 11_000),
            m("vmm-start", 12_500),
            m("kernel-entry", 20_000),
            m("kernel-entry", 30_000),
            m("init-started", 25_000),
            m("agent-ready", 9_000),
            m("vmm-exit", 90_000),
        ];
        let p = phases(10_000, &marks, 50_000, 100_000);
        let got: Vec<(&str, f64)> = p.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            [
                ("exit", 90.0),
                ("first-output", 40.0),
                ("kernel-entry", 10.0),
                ("runtime-invoked", 1.0),
                ("vmm-start", 2.5)
            ]
        );
    }
}
