//! Boots the project's guest kernel with a probe initramfs (static busybox +
//! `bulkhead-agent probe`) under plain QEMU (`-M microvm`, TCG) on this host,
//! and reads the probe's report from the serial console.
//!
//! This checks the kernel itself (config, ACPI power-off, SMP) before
//! bulkhead-vmm can boot it; it then moves into the test host on the VMM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::testhost::pump::{shell_status, watch_child};
use crate::testhost::TestHostError;

/// The probe's `/init`: mount what a container runtime mounts, run the
/// probe, power off through ACPI (QEMU exits only if that works).
const PROBE_RUN: &str = r#"/bin/bulkhead-agent probe --expect-cpus "$PROBE_CPUS"
echo "probe: exit $?"
$bb poweroff -f
"#;

/// The probe's initramfs: busybox, the static agent, an /init that runs the
/// probe (expecting `$PROBE_CPUS` CPUs, from the kernel command line) and
/// powers off.
pub fn initramfs(agent: &Path) -> std::io::Result<Vec<u8>> {
    let init = format!("#!/bin/sh\n{}{PROBE_RUN}", crate::guest_initramfs::MOUNTS);
    crate::guest_initramfs::busybox(&init, &[("/bin/bulkhead-agent", agent)])
}

/// What the probe boot showed.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Lines starting with `probe: `, without the prefix.
    pub lines: Vec<String>,
    /// The whole serial console.
    pub console: String,
    /// QEMU's exit status: it exits by itself only when the guest powered
    /// off through ACPI (with `-no-reboot`, a panic exits too, without the
    /// probe's final line).
    pub qemu_status: Option<i32>,
    pub elapsed: Duration,
}

impl ProbeReport {
    /// True when every check passed and the probe exited 0.
    pub fn all_ok(&self) -> bool {
        self.lines.iter().any(|l| l == "all ok") && self.lines.iter().any(|l| l == "exit 0")
    }
}

/// The static agent built by `make static` (in `$CARGO_TARGET_DIR`).
pub fn static_agent_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("x86_64-unknown-linux-gnu/release/bulkhead-agent")
}

/// The host's TSC rate in kHz, counted against the monotonic clock over
/// 20 ms. QEMU's TCG gives a guest the host's TSC, so the probe tells the
/// guest kernel the rate (`tsc_early_khz=`) instead of letting it
/// calibrate against the emulated PIT: under host load that calibration
/// fails ("Unable to calibrate against PIT") and the kernel hangs.
fn host_tsc_khz() -> Option<u64> {
    let start = Instant::now();
    // SAFETY: rdtsc only reads the time-stamp counter, which every x86_64 CPU has.
    let t0 = unsafe { std::arch::x86_64::_rdtsc() };
    while start.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    // SAFETY: as above.
    let t1 = unsafe { std::arch::x86_64::_rdtsc() };
    let ns = start.elapsed().as_nanos();
    let khz = u64::try_from(u128::from(t1.checked_sub(t0)?) * 1_000_000 / ns.max(1)).ok()?;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

/// Boots `kernel` with the probe on `cpus` vCPUs; `live` sees console output.
/// What the guest kernel prints when QEMU's emulated PIT lost its race with
/// the host's scheduling during the early TSC calibration; the kernel then
/// hangs before /init. An emulation flaw under host load, not the kernel's
/// or the agent's: such a boot is tried once more (and says so).
const PIT_CALIBRATION_LOST: &str = "tsc: Unable to calibrate against PIT";

pub fn boot(kernel: &Path, agent: &Path, cpus: u32, timeout: Duration, live: &mut dyn FnMut(&[u8])) -> Result<ProbeReport, TestHostError> {
    match boot_once(kernel, agent, cpus, timeout, live) {
        Err(TestHostError::Timeout { console, .. }) if console.contains(PIT_CALIBRATION_LOST) => {
            eprintln!("guest probe: the emulated PIT calibration failed under host load (QEMU TCG) and the kernel hung; booting once more");
            boot_once(kernel, agent, cpus, timeout, live)
        }
        other => other,
    }
}

fn boot_once(kernel: &Path, agent: &Path, cpus: u32, timeout: Duration, live: &mut dyn FnMut(&[u8])) -> Result<ProbeReport, TestHostError> {
    let started = Instant::now();
    let work = tempfile::Builder::new().prefix("bulkhead-probe-").tempdir().map_err(TestHostError::io("create a work dir"))?;
    let initrd = work.path().join("probe.cpio");
    let image = initramfs(agent).map_err(TestHostError::io("probe initramfs"))?;
    std::fs::write(&initrd, image).map_err(TestHostError::io("write probe initramfs"))?;

    // earlyprintk: the console from the first line on. Under host load a
    // boot used to end at once, QEMU exiting 0 with nothing on the console
    // at all (6 of 15 with two busy loops beside it); with the early
    // console it showed none in 28 (see the commit that added it).
    let tsc = host_tsc_khz().map(|k| format!(" tsc_early_khz={k}")).unwrap_or_default();
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "tcg", "-cpu", "max", "-smp", &cpus.to_string(), "-m", "512"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &format!("console=ttyS0 earlyprintk=ttyS0 panic=-1 PROBE_CPUS={cpus}{tsc}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TestHostError::io("start qemu-system-x86_64"))?;
    let g = watch_child(child, started + timeout, false, &mut |_, bytes| live(bytes));
    let console = format!("{}{}", String::from_utf8_lossy(&g.stdout), String::from_utf8_lossy(&g.stderr));
    if g.timed_out {
        return Err(TestHostError::Timeout { after: timeout, output: String::new(), console: crate::testhost::tail_lines(&console, 25) });
    }
    let lines = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("probe: ").map(str::to_string))
        .collect();
    Ok(ProbeReport { lines, console, qemu_status: g.exit.map(shell_status), elapsed: started.elapsed() })
}
