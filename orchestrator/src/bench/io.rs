//! `bulkhead bench io`: fio in the workload, on its root filesystem and on a
//! named volume, each runtime in turn on the same image and host:
//! sequential 1 MiB writes and reads (MiB/s), random 4 KiB writes and reads
//! (IOPS), each job on a file of its own (`--size`, at most `--seconds`),
//! writes ending in fsync, reads after the cache is dropped for the file.
//!
//! fio is Debian's: the host's own binary and the libraries it links, in an
//! image bulkhead makes once (`bulkhead-bench/fio:VERSION`). A microVM's
//! volume is a block volume (a disk of its own), a container's a dir volume
//! (an ext4 image the host mounts); both roots keep their writes in memory
//! (a tmpfs upper layer), which the report says. Bind mounts are not here:
//! host directories are not built yet.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use super::facts::HostFacts;
use super::report::{Ratio, Report, Series};
use super::{OutputArgs, Target};

/// fio's jobs, in order: name, fio's `rw`, block size, what is reported.
const JOBS: &[(&str, &str, &str, Metric)] = &[
    ("seq-write", "write", "1m", Metric::Bandwidth),
    ("seq-read", "read", "1m", Metric::Bandwidth),
    ("rand-write", "randwrite", "4k", Metric::Iops),
    ("rand-read", "randread", "4k", Metric::Iops),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Bandwidth,
    Iops,
}

/// Where in the workload fio writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Place {
    /// The workload's root filesystem (`/var/bench`).
    Root,
    /// A named volume made for the bench (`/bench`), removed after.
    Volume,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Root => "root",
            Place::Volume => "volume",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Place::Root => "/var/bench",
            Place::Volume => "/bench",
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "On a host whose /dev/kvm cannot boot Linux (kvm_pvm) the microVM runs happen in the nested test host (QEMU emulation), and the report says so first: its microVM figures are emulated, and no microVM/container ratio from there is representative."
)]
pub struct IoArgs {
    /// Runtimes to compare, in this order [default: microvm and whichever of crun, runc are installed].
    #[arg(long, value_delimiter = ',', value_name = "microvm,crun,runc")]
    pub runtimes: Option<Vec<String>>,
    /// Where fio writes.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Place::Root, Place::Volume])]
    pub on: Vec<Place>,
    /// The file each job writes and reads.
    #[arg(long, default_value = "64m", value_name = "SIZE")]
    pub size: String,
    /// Each job stops after this many seconds even if its file is not done.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub seconds: u32,
    /// Measured runs per runtime and place.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: usize,
    /// vCPUs per microVM.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Memory per microVM, MiB (its root's writes live in it).
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub memory: u64,
    /// An image with fio on its PATH [default: the one made from this host's fio].
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(a: IoArgs) -> Result<Report> {
    super::check_root()?;
    let size = file_size(&a.size)?;
    if !(1 << 20..=64 << 30).contains(&size) || !(1..=3600).contains(&a.seconds) {
        bail!("--size 1m to 64g, --seconds 1 to 3600");
    }
    if !(1..=1000).contains(&a.runs) || a.on.is_empty() {
        bail!("--runs 1 to 1000, and at least one --on");
    }
    if !(1..=64).contains(&a.cpus) || !(128..=1 << 20).contains(&a.memory) {
        bail!("--cpus 1 to 64, --memory 128 to 1048576 MiB");
    }
    let image = match &a.image {
        Some(i) => i.clone(),
        None => fio_image()?,
    };
    let facts = super::image_facts(&image)?;
    let targets = super::targets(a.runtimes.as_deref(), None)?;
    let (vms, here): (Vec<Target>, Vec<Target>) = targets.iter().cloned().partition(Target::is_vm);
    let mut notes = vec![
        "the root filesystem keeps its writes in memory in both runtimes (the writable layer is a tmpfs): `root` rows measure the overlay and memory, `volume` rows a disk".to_string(),
        "bind mounts are not measured: host directories are not built yet".to_string(),
    ];
    let mut series = Vec::new();
    let mut microvm_host = None;
    let local = if !vms.is_empty() && super::microvms_nested() {
        let inner = nested(&a, &image)?;
        microvm_host = Some(super::nested_facts(&inner));
        notes.insert(0, super::NESTED_NOTE.to_string());
        series.extend(inner.series);
        here
    } else {
        targets.clone()
    };
    for t in &local {
        for place in &a.on {
            series.extend(measure(&a, t, *place, &image)?);
        }
    }
    let native = microvm_host.is_none();
    let mut pairs = Vec::new();
    for vm in targets.iter().filter(|t| t.is_vm()) {
        for c in targets.iter().filter(|t| !t.is_vm()) {
            for p in &a.on {
                pairs.push((
                    format!("{}/{}", vm.name(), p.name()),
                    format!("{}/{}", c.name(), p.name()),
                    native,
                ));
            }
        }
    }
    let ratios = JOBS
        .iter()
        .flat_map(|(job, ..)| Ratio::of(&series, job, &pairs))
        .collect();
    Ok(Report {
        bench: "io".into(),
        notes,
        host: HostFacts::of_this_host(),
        microvm_host,
        image: Some(facts),
        command: fio_args(&a, "DIR"),
        vcpus: a.cpus,
        memory_mib: a.memory,
        runs: a.runs,
        warmup: 0,
        method: "each run: `bulkhead run --rm --network none [-v VOLUME:/bench] IMAGE fio ...` per runtime and place; MiB/s for the sequential jobs, IOPS for the random ones".into(),
        series,
        ratios,
    })
}

/// fio's command line for `dir`: the jobs one after another (stonewall),
/// each on its own file, removed after.
fn fio_args(a: &IoArgs, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "fio",
        "--output-format=json",
        "--ioengine=psync",
        "--unlink=1",
        "--invalidate=1",
    ]
    .map(String::from)
    .into();
    v.push(format!("--directory={dir}"));
    v.push(format!("--size={}", a.size));
    v.push(format!("--runtime={}", a.seconds));
    for (i, (name, rw, bs, _)) in JOBS.iter().enumerate() {
        v.push(format!("--name={name}"));
        if i > 0 {
            v.push("--stonewall".into());
        }
        v.push(format!("--rw={rw}"));
        v.push(format!("--bs={bs}"));
        if rw.ends_with("write") {
            v.push("--end_fsync=1".into());
        }
    }
    v
}

/// The microVM runs in the nested test host, as one bench there.
fn nested(a: &IoArgs, image: &str) -> Result<Report> {
    let on: Vec<&str> = a.on.iter().map(|p| p.name()).collect();
    let args: Vec<String> = [
        "io",
        "--runtimes",
        "microvm",
        "--on",
        &on.join(","),
        "--size",
        &a.size,
        "--seconds",
        &a.seconds.to_string(),
        "--runs",
        &a.runs.to_string(),
        "--cpus",
        &a.cpus.to_string(),
        "--memory",
        &a.memory.to_string(),
        "--image",
        image,
    ]
    .map(String::from)
    .into();
    // Each run: a boot (seconds, emulated) and four jobs of --seconds at most.
    let runs = (a.runs * a.on.len()) as u64;
    let timeout = 600 + runs * (60 + 4 * u64::from(a.seconds) * 3);
    // Room in the test host's memory-backed disk for the image's tree too
    // (a volume's first use unpacks it to fill the volume).
    super::in_test_host(image, &args, &[], 2048 + a.memory * 2, timeout)
}

/// `--runs` runs of target `t` at `place`: one series per job.
fn measure(a: &IoArgs, t: &Target, place: Place, image: &str) -> Result<Vec<Series>> {
    let exe = std::env::current_exe().context("find our own binary")?;
    let label = format!("{}/{}", t.name(), place.name());
    let volume = (place == Place::Volume).then(|| format!("bench-io-{}", t.name()));
    if let Some(v) = &volume {
        let kind = if t.is_vm() { "block" } else { "dir" };
        // Room for one job's file at a time (they are removed after), and ext4's own.
        let size = file_size(&a.size)?;
        let vol_size = format!("{}m", (size >> 20) * 2 + 64);
        let _ = Command::new(&exe).args(["volume", "rm", "-f", v]).output();
        bulkhead(
            &exe,
            &["volume", "create", "--type", kind, "--size", &vol_size, v],
        )?;
    }
    let result = (|| {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); JOBS.len()];
        for run in 0..a.runs {
            let mut cmd = Command::new(&exe);
            cmd.args(["run", "--rm", "--network", "none"]);
            t.run_flags(&mut cmd);
            if t.is_vm() {
                cmd.args([
                    "--cpus",
                    &a.cpus.to_string(),
                    "--memory",
                    &format!("{}m", a.memory),
                ]);
            }
            if let Some(v) = &volume {
                cmd.args(["-v", &format!("{v}:{}", place.dir())]);
            }
            cmd.arg(image).args(fio_args(a, place.dir()));
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .context("start `bulkhead run`")?;
            if !out.status.success() {
                bail!(
                    "{label} run {}: `bulkhead run ... fio` failed ({}): {}",
                    run + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let figures = parse_fio(&out.stdout)
                .with_context(|| format!("{label} run {}: fio's report", run + 1))?;
            eprintln!(
                "bulkhead bench io: {label} [{}/{}]: {}",
                run + 1,
                a.runs,
                JOBS.iter()
                    .zip(&figures)
                    .map(|((n, ..), v)| format!("{n} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (s, v) in samples.iter_mut().zip(figures) {
                s.push(v);
            }
        }
        Ok(JOBS
            .iter()
            .zip(samples)
            .map(|((name, _, _, metric), v)| {
                let unit = match metric {
                    Metric::Bandwidth => "MiB/s",
                    Metric::Iops => "IOPS",
                };
                Series::new(&label, name, unit, v)
            })
            .collect())
    })();
    if let Some(v) = &volume {
        let _ = Command::new(&exe).args(["volume", "rm", "-f", v]).output();
    }
    result
}

/// `--size`: `64m`, `1g`, bytes.
fn file_size(s: &str) -> Result<u64> {
    crate::state::volumes::parse_bytes(s)
        .with_context(|| format!("--size {s:?}: a size like 64m or 1g"))
}

fn bulkhead(exe: &Path, args: &[&str]) -> Result<()> {
    let o = Command::new(exe).args(args).stdin(Stdio::null()).output()?;
    if !o.status.success() {
        bail!(
            "bulkhead {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// Each job's figure from fio's JSON (in [`JOBS`]' order): MiB/s or IOPS
/// of the direction the job ran. What precedes the JSON (fio's notes) is
/// skipped.
fn parse_fio(stdout: &[u8]) -> Result<Vec<f64>> {
    let start = stdout
        .iter()
        .position(|b| *b == b'{')
        .context("no JSON in fio's output")?;
    let v: serde_json::Value = serde_json::from_slice(&stdout[start..]).context("fio's JSON")?;
    let jobs = v["jobs"].as_array().context("no jobs in fio's JSON")?;
    JOBS.iter()
        .map(|(name, rw, _, metric)| {
            let job = jobs
                .iter()
                .find(|j| j["jobname"] == *name)
                .with_context(|| format!("no job {name} in fio's JSON"))?;
            let side = if rw.ends_with("write") {
                "write"
            } else {
                "read"
            };
            let figure = match metric {
                Metric::Bandwidth => job[side]["bw_bytes"]
                    .as_f64()
                    .map(|b| b / f64::from(1u32 << 20)),
                Metric::Iops => job[side]["iops"].as_f64(),
            };
            figure.with_context(|| format!("job {name}: no {side} figure"))
        })
        .collect()
}

/// The image with the host's fio (installed if missing), made once per fio
/// version: the binary, the libraries `ldd` names, its loader, and the
/// directories the bench writes in.
fn fio_image() -> Result<String> {
    bulkhead_images::debian::ensure_packages(&["fio"], &mut |m| eprintln!("{m}"))?;
    let version = Command::new("fio")
        .arg("--version")
        .output()
        .context("fio --version")?;
    let version = String::from_utf8_lossy(&version.stdout)
        .trim()
        .trim_start_matches("fio-")
        .to_string();
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        bail!("fio --version said {version:?}");
    }
    let name = format!("bulkhead-bench/fio:{version}");
    let store = bulkhead_images::store::Store::open(crate::state::paths::data_dir())?;
    if store.resolve(&name).is_ok() {
        return Ok(name);
    }
    eprintln!("bulkhead bench io: making image {name} from this host's fio");
    let tree = tempfile::Builder::new().prefix("bulkhead-fio-").tempdir()?;
    let fio = Path::new("/usr/bin/fio");
    let ldd = Command::new("ldd")
        .arg(fio)
        .output()
        .context("ldd /usr/bin/fio")?;
    let mut files = vec![fio.to_path_buf()];
    files.extend(
        String::from_utf8_lossy(&ldd.stdout)
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with('/'))
                    .map(std::path::PathBuf::from)
            }),
    );
    for f in &files {
        let rel = f.strip_prefix("/").unwrap_or(f);
        let to = tree.path().join(rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(f, &to).with_context(|| format!("copy {}", f.display()))?;
    }
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var/bench",
        "bench",
        "etc",
    ] {
        std::fs::create_dir_all(tree.path().join(d))?;
    }
    std::fs::write(
        tree.path().join("etc/passwd"),
        "root:x:0:0:root:/:/usr/bin/fio\n",
    )?;
    std::fs::write(tree.path().join("etc/group"), "root:x:0:\n")?;
    bulkhead_images::store::import::import_dir(&store, tree.path(), &name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_reports_are_read_by_job_and_junk_is_refused() {
        let job = |name: &str, rbw: u64, riops: f64, wbw: u64, wiops: f64| {
            serde_json::json!({
                "jobname": name,
                "read": {"bw_bytes": rbw, "iops": riops},
                "write": {"bw_bytes": wbw, "iops": wiops},
            })
        };
        let report = serde_json::json!({"jobs": [
            job("seq-write", 0, 0.0, 100 << 20, 100.0),
            job("seq-read", 200 << 20, 200.0, 0, 0.0),
            job("rand-write", 0, 0.0, 1 << 20, 256.0),
            job("rand-read", 2 << 20, 512.0, 0, 0.0),
        ]});
        let mut out = b"fio: note: something\n".to_vec();
        out.extend(serde_json::to_vec(&report).unwrap_or_default());
        let figures = parse_fio(&out).unwrap_or_default();
        assert_eq!(figures, vec![100.0, 200.0, 256.0, 512.0]);
        for junk in [
            &b""[..],
            b"no json",
            b"{\"jobs\": []}",
            b"{\"jobs\": [{\"jobname\": \"seq-write\"}]}",
        ] {
            assert!(parse_fio(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn fio_runs_each_job_after_the_last_on_its_own_file() {
        let a = IoArgs {
            runtimes: None,
            on: vec![Place::Root],
            size: "8m".into(),
            seconds: 2,
            runs: 1,
            cpus: 1,
            memory: 256,
            image: None,
            output: OutputArgs {
                format: super::super::Format::Json,
                json: None,
                plot: None,
            },
        };
        let args = fio_args(&a, "/bench");
        assert_eq!(args[0], "fio");
        assert!(args.contains(&"--directory=/bench".to_string()));
        assert_eq!(
            args.iter().filter(|x| x.starts_with("--name=")).count(),
            JOBS.len()
        );
        assert_eq!(
            args.iter().filter(|x| *x == "--stonewall").count(),
            JOBS.len() - 1
        );
        // Global options come before the first job.
        let first_job = args
            .iter()
            .position(|x| x.starts_with("--name="))
            .unwrap_or(0);
        assert!(args
            .iter()
            .position(|x| x == "--unlink=1")
            .is_some_and(|i| i < first_job));
    }
}
