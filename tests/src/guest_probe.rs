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

/// [`static_agent_path`], for tests: panics with the fix when it is not built.
pub fn expect_static_agent() -> PathBuf {
    let agent = static_agent_path();
    assert!(
        agent.is_file(),
        "no static agent at {} (`make static`)",
        agent.display()
    );
    agent
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

/// `image` padded clear of microvm's ACPI tables, in a fresh work dir
/// (removed when the returned guard drops).
fn staged_initrd(mut image: Vec<u8>) -> Result<(tempfile::TempDir, PathBuf), TestHostError> {
    let work = tempfile::Builder::new()
        .prefix("bulkhead-probe-")
        .tempdir()
        .map_err(TestHostError::io("create a work dir"))?;
    let initrd = work.path().join("initrd.cpio");
    image.resize(image.len() + clear_of_acpi_padding(image.len()), 0);
    std::fs::write(&initrd, image).map_err(TestHostError::io("write the initramfs"))?;
    Ok((work, initrd))
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
    let image = initramfs(agent).map_err(TestHostError::io("probe initramfs"))?;
    let (_work, initrd) = staged_initrd(image)?;

    // No PIT to calibrate against (see `run_qemu`): the command line gives
    // the TSC rate. earlyprintk: the console from the first line on.
    let tsc_khz = host_tsc_khz().ok_or_else(|| {
        TestHostError::Usage(
            "could not measure this host's TSC rate (the probe VM needs it)".into(),
        )
    })?;
    let append = format!(
        "console=ttyS0 earlyprintk=ttyS0 panic=-1 PROBE_CPUS={cpus} tsc_early_khz={tsc_khz}"
    );
    let (console, qemu_status) = run_qemu(
        &QemuBoot {
            kernel,
            initrd: &initrd,
            append: &append,
            cpus,
            memory_mib: 512,
            extra: &[],
        },
        started + timeout,
        live,
    )?;
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
        qemu_status,
        elapsed: started.elapsed(),
    })
}

/// One QEMU microvm boot (TCG) of `kernel` and `initrd`.
struct QemuBoot<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    append: &'a str,
    cpus: u32,
    memory_mib: u32,
    /// More QEMU arguments (devices, `-icount`).
    extra: &'a [std::ffi::OsString],
}

/// Runs `boot` until QEMU exits (the guest powered off or panicked: the
/// VM has `-no-reboot`) or `deadline`, which is an error; the serial
/// console and QEMU's exit status come back.
///
/// The VM has neither the 8259 PIC nor the PIT (pic=off,pit=off), the two
/// causes of boots that failed on their own:
/// - microvm's firmware leaves the 8259 unprogrammed (vector base 0, lines
///   unmasked) behind the LAPIC's virtual-wire input, and the kernel,
///   finding no PC/AT flag in microvm's ACPI tables, never programs it. A
///   PIT tick after the kernel's first `sti` (before its own timer setup)
///   then arrives as vector 0: "divide error" in the idle task, a panic,
///   and QEMU exits 0 within 0.3 s; without an early console that was a
///   boot with no output at all (7 of 12 boots on a quiet host with QEMU
///   10.0; 0 of 30 with pic=off).
/// - the kernel calibrated the TSC against the emulated PIT, which under
///   host load lost its race with the host's scheduler ("Unable to
///   calibrate against PIT") and the boot hung. Without a PIT that
///   calibration fails at once and the command line's `tsc_early_khz=`
///   gives the rate.
fn run_qemu(
    boot: &QemuBoot<'_>,
    deadline: Instant,
    live: &mut dyn FnMut(&[u8]),
) -> Result<(String, Option<i32>), TestHostError> {
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pic=off,pit=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args([
            "-smp",
            &boot.cpus.to_string(),
            "-m",
            &boot.memory_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(boot.kernel)
        .arg("-initrd")
        .arg(boot.initrd)
        .args(["-append", boot.append])
        .args(boot.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TestHostError::io("start qemu-system-x86_64"))?;
    let g = watch_child(child, deadline, false, &mut |_, bytes| live(bytes));
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&g.stdout),
        String::from_utf8_lossy(&g.stderr)
    );
    if g.timed_out {
        return Err(TestHostError::Timeout {
            after: deadline.saturating_duration_since(started),
            output: String::new(),
            console: crate::testhost::tail_lines(&console, 25),
        });
    }
    Ok((console, g.exit.map(shell_status)))
}

/// The virtual clock under `-icount shift=0`: one nanosecond per guest
/// instruction, so the guest's TSC (QEMU derives it from that clock) runs
/// at 1 GHz.
const ICOUNT_TSC_KHZ: u64 = 1_000_000;

/// The guest's own boot work, timed by the guest in virtual time.
#[derive(Debug, Clone)]
pub struct BootTime {
    /// The guest's CLOCK_BOOTTIME when the agent had its root mounted and
    /// switched into, in microseconds: virtual time, the guest's
    /// instructions (a nanosecond each) and its timer waits. It starts with
    /// the kernel's early TSC setup, so it is the kernel's and the agent's
    /// work alone. It does not move with the host's speed or load.
    pub ready_us: u64,
    /// The same moment by the guest's TSC, which counts from the VM's
    /// reset: QEMU's own firmware loading the kernel comes first (about
    /// 120 ms of it, none of it bulkhead's: bulkhead-vmm loads the kernel
    /// itself and enters it directly).
    pub since_reset_us: u64,
    /// The whole serial console.
    pub console: String,
}

/// What the boot-time probe needs: the kernel, the agent's initramfs (as
/// `bulkhead run` boots it), the image's root disk and its filesystem.
#[derive(Debug, Clone, Copy)]
pub struct BootTimeInput<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: &'a Path,
    pub fstype: &'a str,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// Boots `input` under QEMU microvm with `-icount shift=0,sleep=off` and
/// the agent in its boot probe (`bulkhead.boot_probe=`): the kernel with
/// bulkhead's own command line, the agent's PID 1 mounts, the root disk
/// (virtio-blk, read-only) mounted under the overlay and switched into.
/// Boots of the same input agree within tens of microseconds (what is left
/// is how long the host takes to answer a disk read), so a change to the
/// kernel's config, the command line, the agent or the disk shows as a
/// change in the figure, not in the host's noise. Virtual time weighs
/// every instruction the same: a `rep movs`/`rep stos` counts once per
/// iteration, so copying and clearing memory (unpacking the initramfs,
/// poisoning freed init memory) weigh more than on hardware.
pub fn boot_time(
    input: &BootTimeInput<'_>,
    timeout: Duration,
    live: &mut dyn FnMut(&[u8]),
) -> Result<BootTime, TestHostError> {
    let started = Instant::now();
    let image = std::fs::read(input.initrd).map_err(TestHostError::io(format!(
        "read {}",
        input.initrd.display()
    )))?;
    let (_work, initrd) = staged_initrd(image)?;
    // bulkhead's command line as bulkhead-vmm completes it; then what the
    // probe needs: idle=poll keeps the one vCPU executing while it waits
    // (for the disk, mostly), so a wait costs virtual time by its real
    // length at TCG's speed (tens of microseconds) instead of jumping to
    // the next timer tick (4 ms steps that made boots of the same input
    // differ by up to 12 ms); the TSC rate, as the VM has no PIT.
    let append = bulkhead_vmm::boot::build_cmdline(
        Some(&format!(
            "{} idle=poll tsc_early_khz={ICOUNT_TSC_KHZ} bulkhead.boot_probe={}",
            bulkhead_images::kernel::GUEST_CMDLINE,
            input.fstype
        )),
        &[],
    )
    .map_err(|e| TestHostError::Usage(format!("the probe's command line: {e}")))?;
    let mut drive = std::ffi::OsString::from("file=");
    drive.push(input.disk);
    drive.push(",format=raw,if=none,id=root,readonly=on");
    let extra: Vec<std::ffi::OsString> = vec![
        "-icount".into(),
        "shift=0,sleep=off".into(),
        "-drive".into(),
        drive,
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
    ];
    let (console, _status) = run_qemu(
        &QemuBoot {
            kernel: input.kernel,
            initrd: &initrd,
            append: &append,
            cpus: input.cpus,
            memory_mib: input.memory_mib,
            extra: &extra,
        },
        started + timeout,
        live,
    )?;
    match parse_boot_probe(&console) {
        Some(Ok((ready_us, tsc))) => Ok(BootTime {
            ready_us,
            since_reset_us: tsc / (ICOUNT_TSC_KHZ / 1000),
            console,
        }),
        Some(Err(why)) => Err(TestHostError::Usage(format!(
            "the boot probe failed: {why}\nconsole tail:\n{}",
            crate::testhost::tail_lines(&console, 25)
        ))),
        None => Err(TestHostError::Usage(format!(
            "the guest powered off without the boot probe's line\nconsole tail:\n{}",
            crate::testhost::tail_lines(&console, 25)
        ))),
    }
}

/// The agent's boot probe line on the console: `Ok((boottime_us, tsc))`
/// for `ready N us tsc M`, `Err(why)` for `failed: why`.
fn parse_boot_probe(console: &str) -> Option<Result<(u64, u64), String>> {
    console.lines().find_map(|l| {
        let rest = l
            .trim_end_matches('\r')
            .split_once("bulkhead-agent: boot probe ")?
            .1;
        if let Some(why) = rest.strip_prefix("failed: ") {
            return Some(Err(why.to_string()));
        }
        let (us, tsc) = rest.strip_prefix("ready ")?.split_once(" us tsc ")?;
        Some(match (us.parse(), tsc.parse()) {
            (Ok(us), Ok(tsc)) => Ok((us, tsc)),
            _ => Err(format!("unreadable times in {rest:?}")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{clear_of_acpi_padding, parse_boot_probe};

    #[test]
    fn boot_probe_line_is_read_and_anything_else_is_not_a_time() {
        assert_eq!(
            parse_boot_probe(
                "[ 0.1] x\r\nbulkhead-agent: boot probe ready 123456 us tsc 125000000\r\n"
            ),
            Some(Ok((123_456, 125_000_000)))
        );
        assert_eq!(
            parse_boot_probe("bulkhead-agent: boot probe failed: mount /dev/vda\n"),
            Some(Err("mount /dev/vda".into()))
        );
        assert!(matches!(
            parse_boot_probe("bulkhead-agent: boot probe ready -1 us tsc 5"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_boot_probe("bulkhead-agent: boot probe ready 1 us tsc x"),
            Some(Err(_))
        ));
        assert_eq!(
            parse_boot_probe("bulkhead-agent: boot probe ready 12 us"),
            None
        );
        assert_eq!(parse_boot_probe("Kernel panic - not syncing"), None);
    }

    #[test]
    fn padded_initramfs_ends_half_a_page_below_the_top_whatever_its_size() {
        for len in [0, 1, 2047, 2048, 2049, 4095, 4096, 0x3c_afb0, 0x3c_88f0] {
            let padded = len + clear_of_acpi_padding(len);
            assert_eq!(padded % 4096, 2048, "{len}");
            assert!(padded >= len && padded - len < 4096, "{len}");
        }
    }
}
