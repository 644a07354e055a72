//! `bulkhead bench overhead`: the VMM alone. The tiny built-in guest (a few
//! bytes of machine code: print a line, power off) runs on any /dev/kvm,
//! kvm_pvm included, so this measures the VMM's own cost: CPU time from
//! exec to exit (setup and teardown dominate), time to the guest's first
//! serial byte and to exit, peak RSS, and bulkhead-vmm's own report of its
//! resident memory beyond the guest's pages.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use bulkhead_vmm::tiny_guest::Program;
use clap::Args;

use super::facts::HostFacts;
use super::report::{Report, Series};
use super::OutputArgs;

const LINE: &str = "bulkhead bench overhead\n";
const GUEST_MEMORY_MIB: u64 = 128;

#[derive(Debug, Clone, Args)]
pub struct OverheadArgs {
    /// Measured runs per VMM.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub runs: usize,
    /// Runs per VMM before measuring, discarded.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warmup: usize,
    /// Also run another VMM the Firecracker way (`--no-api --config-file`),
    /// alternating with bulkhead-vmm.
    #[arg(long, value_name = "PATH")]
    pub vmm_vs: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Default)]
struct Sample {
    first_output_ms: f64,
    exit_ms: f64,
    cpu_ms: f64,
    peak_rss_mib: f64,
    /// bulkhead-vmm's `--memory-report` (peak RSS minus the guest's resident pages).
    beyond_guest_mib: Option<f64>,
}

pub fn run(a: OverheadArgs) -> Result<Report> {
    if !(1..=10_000).contains(&a.runs) || a.warmup > 1000 {
        bail!("--runs 1 to 10000, --warmup at most 1000");
    }
    if !Path::new("/dev/kvm").exists() {
        bail!("no /dev/kvm on this host");
    }
    let ours = crate::runtime::shipped_binary("bulkhead-vmm")?;
    let other = match &a.vmm_vs {
        Some(p) if p.is_file() => Some(std::fs::canonicalize(p)?),
        Some(p) => bail!("--vmm-vs {}: no such file", p.display()),
        None => None,
    };
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-bench-overhead-")
        .tempdir()?;
    let kernel = dir.path().join("tiny-guest.elf");
    std::fs::write(&kernel, Program::new().print(LINE).power_off().elf())?;
    let config = dir.path().join("firecracker.json");
    let fc = serde_json::json!({"boot-source": {"kernel_image_path": kernel}, "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MEMORY_MIB}});
    std::fs::write(&config, fc.to_string())?;
    let mut vmms: Vec<(String, Command)> = Vec::new();
    let mut c = Command::new(&ours);
    c.arg("--kernel")
        .arg(&kernel)
        .args(["--memory", &GUEST_MEMORY_MIB.to_string()]);
    vmms.push(("bulkhead-vmm".into(), c));
    if let Some(p) = &other {
        let mut c = Command::new(p);
        c.args(["--no-api", "--config-file"]).arg(&config);
        vmms.push((
            format!(
                "vmm-vs:{}",
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            c,
        ));
    }
    let mut samples: Vec<Vec<Sample>> = vmms.iter().map(|_| Vec::new()).collect();
    let total = a.warmup + a.runs;
    for round in 0..total {
        for (i, (name, cmd)) in vmms.iter_mut().enumerate() {
            let s = run_once(cmd).with_context(|| format!("{name} run {}", round + 1))?;
            if round >= a.warmup {
                samples[i].push(s);
            }
        }
        if (round + 1) % 10 == 0 || round + 1 == total {
            eprintln!("bulkhead bench overhead: [{}/{total}]", round + 1);
        }
    }
    // Its memory report reads smaps at exit: in runs of their own, so the
    // timed runs above do the same work as another VMM's.
    let mut reported = Command::new(&ours);
    reported.arg("--kernel").arg(&kernel).args([
        "--memory",
        &GUEST_MEMORY_MIB.to_string(),
        "--memory-report",
    ]);
    let mut beyond = Vec::new();
    for i in 0..a.runs {
        let s = run_once(&mut reported)
            .with_context(|| format!("bulkhead-vmm --memory-report run {}", i + 1))?;
        beyond.push(
            s.beyond_guest_mib
                .context("bulkhead-vmm printed no memory report")?,
        );
    }
    if let Some(first) = samples.first_mut() {
        for (s, b) in first.iter_mut().zip(beyond) {
            s.beyond_guest_mib = Some(b);
        }
    }
    let mut series = Vec::new();
    for ((name, _), s) in vmms.iter().zip(&samples) {
        series.push(Series::new(
            name,
            "startup-cpu",
            "ms",
            s.iter().map(|x| x.cpu_ms).collect(),
        ));
        series.push(Series::new(
            name,
            "first-output",
            "ms",
            s.iter().map(|x| x.first_output_ms).collect(),
        ));
        series.push(Series::new(
            name,
            "exit",
            "ms",
            s.iter().map(|x| x.exit_ms).collect(),
        ));
        series.push(Series::new(
            name,
            "peak-rss",
            "MiB",
            s.iter().map(|x| x.peak_rss_mib).collect(),
        ));
        let beyond: Vec<f64> = s.iter().filter_map(|x| x.beyond_guest_mib).collect();
        if !beyond.is_empty() {
            series.push(Series::new(name, "rss-beyond-guest", "MiB", beyond));
        }
    }
    let mut notes = Vec::new();
    if let Some(p) = &other {
        notes.push(format!(
            "vmm-vs is {} started Firecracker's way (--no-api --config-file); rss-beyond-guest is bulkhead-vmm's own report (--memory-report, in separate runs), another VMM has only peak-rss (the tiny guest touches a few KiB)",
            p.display()
        ));
    }
    Ok(Report {
        bench: "overhead".into(),
        notes,
        host: HostFacts::of_this_host(),
        microvm_host: None,
        image: None,
        command: Vec::new(),
        vcpus: 1,
        memory_mib: GUEST_MEMORY_MIB,
        runs: a.runs,
        warmup: a.warmup,
        method: "each run: the VMM with the tiny built-in guest (prints a line, powers off), VMMs alternating; startup-cpu is user+system time from exec to exit (wait4), peak-rss its ru_maxrss"
            .into(),
        series,
        ratios: Vec::new(),
    })
}

fn run_once(cmd: &mut Command) -> Result<Sample> {
    let start = std::time::Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the VMM")?;
    let mut err_pipe = child.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut out = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 1];
    let got = out.read(&mut first)?;
    let first_output = start.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest)?;
    let pid = crate::state::procs::pid_t(child.id());
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers to locals; std's
    // Child is never waited on afterwards (it does not reap on drop).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let errors = errors.join().unwrap_or_default();
    let status = std::process::ExitStatus::from_raw(status);
    if !status.success() {
        bail!("the VMM failed ({status}): {}", errors.trim());
    }
    if got != 1 || [&first[..], &rest[..]].concat() != LINE.as_bytes() {
        bail!(
            "the tiny guest's line did not come out on stdout: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let tv_ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let beyond_guest_mib = errors
        .split_whitespace()
        .find_map(|w| w.strip_prefix("overhead_kib="))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|k| k / 1024.0);
    Ok(Sample {
        first_output_ms: first_output.as_secs_f64() * 1000.0,
        exit_ms: exit.as_secs_f64() * 1000.0,
        cpu_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        beyond_guest_mib,
    })
}
