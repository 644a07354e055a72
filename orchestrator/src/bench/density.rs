//! `bulkhead bench density`: N idle workloads per runtime, started one
//! after another with `bulkhead run -d --network none` (stopping early when
//! the memory budget is used up). Reports the start rate, memory per
//! workload — its host processes' PSS (supervisor, VMM or OCI runtime and
//! container processes), and for a microVM the VMM's RSS and the PSS of its
//! guest memory — the host's MemAvailable drop per workload, and the time
//! one `bulkhead rm -f` of them all takes.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::facts::{meminfo_kib, HostFacts};
use super::report::{Report, Series};
use super::{OutputArgs, Target};

#[derive(Debug, Clone, Args)]
pub struct DensityArgs {
    /// Runtimes, one after another [default: microvm and whichever of crun, runc are installed].
    #[arg(long, value_delimiter = ',', value_name = "microvm,crun,runc")]
    pub runtimes: Option<Vec<String>>,
    /// Workloads per runtime.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub count: usize,
    /// Stop starting once the host's MemAvailable dropped by this much
    /// (512m, 4g) [default: half of MemAvailable at the start].
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,
    /// Memory per microVM, MiB.
    #[arg(long, default_value_t = crate::runtime::limits::DEFAULT_VM_MEMORY_MIB, value_name = "MIB")]
    pub memory: u64,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The image (from `bulkhead image ls`).
    pub image: String,
    /// The idle command [default: sleep 3600].
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run(a: DensityArgs) -> Result<Report> {
    super::check_root()?;
    if !(1..=10_000).contains(&a.count) {
        bail!("--count 1 to 10000");
    }
    if !(64..=1 << 20).contains(&a.memory) {
        bail!("--memory 64 to 1048576 MiB");
    }
    let budget_mib = a
        .budget
        .as_deref()
        .map(crate::runtime::limits::parse_memory)
        .transpose()?;
    let image = super::image_facts(&a.image)?;
    let targets = super::targets(a.runtimes.as_deref(), None)?;
    let command = if a.command.is_empty() {
        vec!["sleep".into(), "3600".into()]
    } else {
        a.command.clone()
    };
    let (mut notes, mut microvm_host, mut series) = (Vec::new(), None, Vec::new());
    let (vms, here): (Vec<Target>, Vec<Target>) = targets.iter().cloned().partition(Target::is_vm);
    let local = if !vms.is_empty() && super::microvms_nested() {
        let mut args = vec![
            "density".into(),
            a.image.clone(),
            "--runtimes".into(),
            "microvm".into(),
            "--count".into(),
            a.count.to_string(),
            "--memory".into(),
            a.memory.to_string(),
        ];
        if let Some(b) = &a.budget {
            args.extend(["--budget".into(), b.clone()]);
        }
        args.push("--".into());
        args.extend(command.iter().cloned());
        let memory = 1024 + (a.count as u64) * (a.memory + 96);
        let inner = super::in_test_host(
            &a.image,
            &args,
            &[],
            memory.min(16 * 1024),
            600 + 60 * a.count as u64,
        )?;
        microvm_host = Some(super::nested_facts(&inner));
        notes.push(super::NESTED_NOTE.to_string());
        notes.extend(inner.notes.into_iter().filter(|n| n.starts_with("stopped")));
        series.extend(inner.series);
        here
    } else {
        targets
    };
    for t in &local {
        let (s, note) = one_runtime(&a, t, &command, budget_mib)?;
        series.extend(s);
        notes.extend(note);
    }
    Ok(Report {
        bench: "density".into(),
        notes,
        host: HostFacts::of_this_host(),
        microvm_host,
        image: Some(image),
        command,
        vcpus: 1,
        memory_mib: a.memory,
        runs: a.count,
        warmup: 0,
        method: "per runtime: N x `bulkhead run -d --network none IMAGE CMD` one after another, memory read once all run, then one `bulkhead rm -f` of them all".into(),
        series,
        ratios: Vec::new(),
    })
}

/// Removes the workloads it started, whatever happens.
struct Started(Vec<String>);

impl Started {
    fn remove_all(&mut self) -> Result<f64> {
        if self.0.is_empty() {
            return Ok(0.0);
        }
        let start = std::time::Instant::now();
        let out = Command::new(std::env::current_exe()?)
            .args(["rm", "-f"])
            .args(&self.0)
            .stdout(Stdio::null())
            .output()?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "bulkhead rm -f: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.0.clear();
        Ok(ms)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

fn mem_available_kib() -> u64 {
    meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemAvailable",
    )
    .unwrap_or(0)
}

fn one_runtime(
    a: &DensityArgs,
    t: &Target,
    command: &[String],
    budget_mib: Option<u64>,
) -> Result<(Vec<Series>, Option<String>)> {
    let exe = std::env::current_exe()?;
    let before = mem_available_kib();
    let budget_kib = budget_mib.map_or(before / 2, |m| m * 1024);
    let mut started = Started(Vec::new());
    let mut note = None;
    let start = std::time::Instant::now();
    for i in 0..a.count {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &format!("bench-density-{}-{}-{i}", std::process::id(), t.name()),
        ]);
        t.run_flags(&mut cmd);
        if t.is_vm() {
            cmd.args(["--memory", &format!("{}m", a.memory)]);
        }
        let out = cmd
            .arg(&a.image)
            .args(command)
            .stdin(Stdio::null())
            .output()
            .context("start `bulkhead run -d`")?;
        if !out.status.success() {
            bail!(
                "{} workload {}: `bulkhead run -d` failed ({}): {}",
                t.name(),
                i + 1,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        started
            .0
            .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let used = before.saturating_sub(mem_available_kib());
        if used > budget_kib && i + 1 < a.count {
            note = Some(format!(
                "stopped {} at {} workloads: the memory budget ({} MiB) was used",
                t.name(),
                i + 1,
                budget_kib / 1024
            ));
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = started.0.len();
    eprintln!(
        "bulkhead bench density: {}: {n} started in {:.1} s",
        t.name(),
        elapsed
    );
    let after = mem_available_kib();
    let state = crate::state::State::new(crate::state::paths::Paths::new(
        crate::state::paths::data_dir(),
    ));
    let parents = process_parents();
    let mut per: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for id in &started.0 {
        let rec = state.get(id)?;
        let Some(running) = rec.running else {
            bail!("{} workload {id} is not running", t.name())
        };
        let tree = descendants(&parents, running.supervisor.pid);
        per.entry("tree-pss").or_default().push(
            tree.iter()
                .map(|p| smaps_rollup_kib(*p, "Pss").unwrap_or(0))
                .sum::<u64>() as f64
                / 1024.0,
        );
        if let (true, Some(vmm)) = (t.is_vm(), running.runtime) {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", vmm.pid)).unwrap_or_default();
            per.entry("vmm-rss")
                .or_default()
                .push(meminfo_kib(&status, "VmRSS").unwrap_or(0) as f64 / 1024.0);
            per.entry("guest-pss")
                .or_default()
                .push(guest_pss_kib(vmm.pid, a.memory * 1024) as f64 / 1024.0);
        }
    }
    let stop_ms = started.remove_all()?;
    eprintln!(
        "bulkhead bench density: {}: all removed in {:.0} ms",
        t.name(),
        stop_ms
    );
    let name = t.name();
    let mut series = vec![Series::new(
        &name,
        "start-rate",
        "workloads/s",
        vec![n as f64 / elapsed.max(1e-9)],
    )];
    for (metric, v) in per {
        series.push(Series::new(&name, metric, "MiB", v));
    }
    // Signed: other processes may free memory meanwhile.
    series.push(Series::new(
        &name,
        "host-memory-delta",
        "MiB",
        vec![(before as f64 - after as f64) / 1024.0 / n.max(1) as f64],
    ));
    series.push(Series::new(&name, "remove-all", "ms", vec![stop_ms]));
    Ok((series, note))
}

/// pid -> parent pid, for every process now.
fn process_parents() -> BTreeMap<i32, i32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| parent_of(&s))
        {
            out.insert(pid, ppid);
        }
    }
    out
}

/// The parent pid in a /proc/PID/stat line (the command may hold spaces and parentheses).
pub fn parent_of(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `root` and every process below it.
pub fn descendants(parents: &BTreeMap<i32, i32>, root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

fn smaps_rollup_kib(pid: i32, key: &str) -> Option<u64> {
    meminfo_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?,
        key,
    )
}

/// PSS of a VMM's guest memory: a run of adjacent mappings as big as the
/// guest's RAM (or, above the MMIO hole, two runs that add up to it), with
/// anonymous memory in each. A run, not one mapping: the kernel and the
/// initramfs are mapped from their files into the middle of it
/// (`share_boot_files`), which splits it, and those pages are the guest's too.
fn guest_pss_kib(pid: i32, guest_kib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    guest_pss_in(&smaps, guest_kib)
}

/// One mapping of smaps.
#[derive(Debug, Default, Clone, Copy)]
struct Vma {
    start: u64,
    end: u64,
    anonymous: bool,
    size_kib: u64,
    pss_kib: u64,
}

fn vmas(smaps: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    let kib = |v: &str| {
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let head = words.next().unwrap_or("");
        let range = head.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        if let Some((start, end)) = range {
            out.push(Vma {
                start,
                end,
                // No path (the sixth field): anonymous.
                anonymous: words.nth(4).is_none(),
                ..Vma::default()
            });
        } else if let Some(v) = out.last_mut() {
            if let Some(rest) = line.strip_prefix("Size:") {
                v.size_kib = kib(rest);
            } else if let Some(rest) = line.strip_prefix("Pss:") {
                v.pss_kib = kib(rest);
            }
        }
    }
    out
}

pub fn guest_pss_in(smaps: &str, guest_kib: u64) -> u64 {
    let maps = vmas(smaps);
    // (first, last, size, pss) of every run of adjacent mappings with
    // anonymous memory in it, no bigger than the guest.
    let mut runs: Vec<(usize, usize, u64, u64)> = Vec::new();
    for i in 0..maps.len() {
        let (mut size, mut pss, mut anonymous) = (0u64, 0u64, false);
        for j in i..maps.len() {
            if j > i && maps[j].start != maps[j - 1].end {
                break;
            }
            size = size.saturating_add(maps[j].size_kib);
            pss = pss.saturating_add(maps[j].pss_kib);
            anonymous |= maps[j].anonymous;
            if size > guest_kib {
                break;
            }
            if anonymous {
                runs.push((i, j, size, pss));
            }
        }
    }
    if let Some(r) = runs.iter().find(|r| r.2 == guest_kib) {
        return r.3;
    }
    for a in &runs {
        if let Some(b) = runs
            .iter()
            .find(|b| b.0 > a.1 && a.2.checked_add(b.2) == Some(guest_kib))
        {
            return a.3 + b.3;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_and_process_trees() {
        assert_eq!(parent_of("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("garbage"), None);
        let parents: BTreeMap<i32, i32> = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 2)].into();
        let mut d = descendants(&parents, 2);
        d.sort_unstable();
        assert_eq!(d, [2, 3, 4, 6]);
        assert_eq!(descendants(&parents, 99), [99]);
    }

    #[test]
    fn guest_memory_mapping_pss() {
        let smaps = "\
7f00-7f10 rw-p 00000000 00:00 0 \nSize:             262144 kB\nPss:               20480 kB\n\
5500-5600 r-xp 00000000 08:01 123 /usr/bin/bulkhead-vmm\nSize:              65536 kB\nPss:                1000 kB\n\
7e00-7e10 rw-p 00000000 00:00 0 \nSize:               1024 kB\nPss:                  8 kB\n";
        assert_eq!(guest_pss_in(smaps, 262_144), 20_480);
        assert_eq!(
            guest_pss_in(smaps, 263_168),
            20_488,
            "two mappings around the MMIO hole"
        );
        assert_eq!(
            guest_pss_in(smaps, 65_536),
            0,
            "a file mapping is not guest memory"
        );
        assert_eq!(guest_pss_in("", 1), 0);
        assert_eq!(guest_pss_in("Size: x\nPss: y\n-\n", 1), 0);
        assert_eq!(
            guest_pss_in("zz-yy rw-p 0 00:00 0\nSize: 1 kB\nPss: 1 kB\n", 1),
            0
        );
    }

    #[test]
    fn guest_memory_split_by_the_mapped_kernel_counts_whole() {
        // 256 MiB of guest memory: anonymous, the kernel file mapped into
        // it (16 MiB at +16 MiB), anonymous again; a file mapping right
        // after it does not belong.
        let smaps = "\
7f0000000000-7f0001000000 rw-p 00000000 00:00 0 \nSize: 16384 kB\nPss: 100 kB\n\
7f0001000000-7f0002000000 rw-p 00000000 08:01 9 /data/boot/k/x-vmlinux\nSize: 16384 kB\nPss: 2000 kB\n\
7f0002000000-7f0010000000 rw-p 00000000 00:00 0 \nSize: 229376 kB\nPss: 300 kB\n\
7f0010000000-7f0010100000 r--p 00000000 08:01 9 /usr/lib/x.so\nSize: 1024 kB\nPss: 7 kB\n";
        assert_eq!(guest_pss_in(smaps, 262_144), 2_400);
        // Not adjacent: not one run.
        let apart = smaps.replace("7f0001000000-7f0002000000", "7f0001001000-7f0002001000");
        assert_eq!(guest_pss_in(&apart, 262_144), 0);
        // The file alone has no anonymous memory: not the guest's.
        let file_only = smaps.lines().skip(3).take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(guest_pss_in(&file_only, 16_384), 0);
    }
}
