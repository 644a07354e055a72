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
/// guest kernel the rate (`tsc_early_khz=`): the probe VM has no PIT to
/// calibrate against (see `boot`).
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

/// Zero bytes to append to an initramfs of `len` bytes (the kernel skips
/// zeros after an archive) so that it stays clear of microvm's ACPI tables.
/// QEMU's microvm loads the initrd page-aligned against the top of RAM,
/// where it also puts its ACPI tables (the last 768 bytes of the last
/// page): an initramfs whose size is within 768 bytes below a multiple of
/// 4 KiB overwrote them, and the kernel faulted reading the DSDT
/// (`acpi_tb_load_namespace`) on every boot. Padded to 2 KiB past a
/// page, its last byte lands 2 KiB below the top.
fn clear_of_acpi_padding(len: usize) -> usize {
    (2048 + 4096 - len % 4096) % 4096
}

/// Boots `kernel` with the probe on `cpus` vCPUs; `live` sees console output.
pub fn boot(
    kernel: &Path,
    agent: &Path,
    cpus: u32,
    timeout: Duration,
    live: &mut dyn FnMut(&[u8]),
) -> Result<ProbeReport, TestHostError> {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("bulkhead-probe-")
        .tempdir()
        .map_err(TestHostError::io("create a work dir"))?;
    let initrd = work.path().join("probe.cpio");
    let mut image = initramfs(agent).map_err(TestHostError::io("probe initramfs"))?;
    image.resize(image.len() + clear_of_acpi_padding(image.len()), 0);
    std::fs::write(&initrd, image).map_err(TestHostError::io("write probe initramfs"))?;

    // The probe VM has neither the 8259 PIC nor the PIT (pic=off,pit=off),
    // the two causes of boots that failed on their own:
    // - microvm's firmware leaves the 8259 unprogrammed (vector base 0,
    //   lines unmasked) behind the LAPIC's virtual-wire input, and the
    //   kernel, finding no PC/AT flag in microvm's ACPI tables, never
    //   programs it. A PIT tick after the kernel's first `sti` (before its
    //   own timer setup) then arrives as vector 0: "divide error" in the
    //   idle task, a panic, and QEMU exits 0 within 0.3 s; without an early
    //   console that was a boot with no output at all (7 of 12 boots on a
    //   quiet host with QEMU 10.0; 0 of 30 with pic=off).
    // - the kernel calibrated the TSC against the emulated PIT, which under
    //   host load lost its race with the host's scheduler ("Unable to
    //   calibrate against PIT") and the boot hung. Without a PIT that
    //   calibration fails at once and `tsc_early_khz=` gives the rate.
    // earlyprintk: the console from the first line on.
    let tsc_khz = host_tsc_khz().ok_or_else(|| {
        TestHostError::Usage(
            "could not measure this host's TSC rate (the probe VM needs it)".into(),
        )
    })?;
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,pic=off,pit=off", "-accel", "tcg", "-cpu", "max", "-smp", &cpus.to_string(), "-m", "512"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &format!("console=ttyS0 earlyprintk=ttyS0 panic=-1 PROBE_CPUS={cpus} tsc_early_khz={tsc_khz}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TestHostError::io("start qemu-system-x86_64"))?;
    let g = watch_child(child, started + timeout, false, &mut |_, bytes| live(bytes));
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&g.stderr)
    );
    if g.timed_out {
        return Err(TestHostError::Timeout {
            after: timeout,
            output: String::new(),
            console: crate::testhost::tail_lines(&console, 25),
        });
    }
    let lines = console
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("probe: ")
                .map(str::to_string)
        })
        .collect();
    Ok(ProbeReport {
        lines,
        console,
        qemu_status: g.exit.map(shell_status),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::clear_of_acpi_padding;

    #[test]
    fn padded_initramfs_ends_half_a_page_below_the_top_whatever_its_size() {
        for len in [0, 1, 2047, 2048, 2049, 4095, 4096, 0x3c_afb0, 0x3c_88f0] {
            let padded = len + clear_of_acpi_padding(len);
            assert_eq!(padded % 4096, 2048, "{len}");
            assert!(padded >= len && padded - len < 4096, "{len}");
        }
    }
}
