//! What PID 1 owes the system: the standard mounts, signals as events,
//! boot-stage marks for the VMM, and power-off.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use bulkhead_agent_proto::{BootStage, BOOT_STAGE_PORT};

#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("mount {what} on {target}")]
    Mount {
        what: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    #[error("mkdir {path}")]
    Mkdir {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signals(nix::Error),
}

/// (source, target, fstype, flags, data) of every mount PID 1 makes, in order.
const MOUNTS: &[(&str, &str, &str, MsFlags, &str)] = &[
    (
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    // Since Linux 4.7 every devpts mount is its own instance and /dev/ptmx
    // opens the one at /dev/pts: no symlink needed (and devtmpfs is shared
    // with whatever else mounted it, so we change nothing in it).
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "mode=0620,ptmxmode=0666,gid=5",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
];

/// Makes every mount private (nothing we do propagates anywhere) and
/// mounts /proc: enough to read the command line and dial the host.
pub fn mount_proc() -> Result<(), Pid1Error> {
    // On the initramfs this is a no-op; in a test's mount namespace it
    // keeps our mounts from reaching the host.
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    );
    mount_list(&MOUNTS[..1])
}

/// The rest: sys, devtmpfs, devpts, tmpfs /run and /tmp, cgroup2.
pub fn mount_rest() -> Result<(), Pid1Error> {
    mount_list(&MOUNTS[1..])
}

fn mount_list(
    list: &[(
        &'static str,
        &'static str,
        &'static str,
        MsFlags,
        &'static str,
    )],
) -> Result<(), Pid1Error> {
    for &(source, target, fstype, flags, data) in list {
        if !Path::new(target).is_dir() {
            std::fs::create_dir_all(target).map_err(|source| Pid1Error::Mkdir {
                path: target,
                source,
            })?;
        }
        let data = (!data.is_empty()).then_some(data);
        match mount(Some(source), target, Some(fstype), flags, data) {
            // devtmpfs is one instance: where /dev already is devtmpfs (a
            // kernel with DEVTMPFS_MOUNT and no initramfs, or a test's
            // namespace on a host) mounting it again on itself is EBUSY.
            Err(nix::errno::Errno::EBUSY) if fstype == "devtmpfs" => {}
            r => r.map_err(|source| Pid1Error::Mount {
                what: fstype,
                target,
                source,
            })?,
        }
    }
    Ok(())
}

/// Blocks SIGCHLD, SIGTERM and SIGINT and returns a signalfd for them
/// (children get an empty mask back in `process::spawn`).
pub fn signal_fd() -> Result<SignalFd, Pid1Error> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set.thread_block().map_err(Pid1Error::Signals)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(Pid1Error::Signals)
}

/// Writes boot-stage codes to the VMM's debug port. Only ever enabled in a
/// VM: on a real machine that port belongs to other hardware.
#[derive(Debug)]
pub struct BootMarks {
    enabled: bool,
}

impl BootMarks {
    /// Asks for access to the port; disabled when `in_vm` is false or the
    /// kernel refuses (no `X86_IOPL_IOPERM`).
    pub fn new(in_vm: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        if in_vm {
            // SAFETY: ioperm only changes this process's I/O bitmap.
            let ok = unsafe { libc::ioperm(u64::from(BOOT_STAGE_PORT), 1, 1) } == 0;
            return Self { enabled: ok };
        }
        let _ = in_vm;
        Self { enabled: false }
    }

    pub fn mark(&self, stage: BootStage) {
        #[cfg(target_arch = "x86_64")]
        if self.enabled {
            // SAFETY: ioperm granted exactly this port; the VMM handles the
            // write (it records a timestamp); nothing else is touched.
            unsafe {
                std::arch::asm!("out dx, al", in("dx") BOOT_STAGE_PORT, in("al") stage as u8, options(nomem, nostack, preserves_flags))
            };
        }
        let _ = stage;
    }
}

/// Microseconds since the kernel started (CLOCK_BOOTTIME).
pub fn since_boot_us() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    u64::try_from(t.tv_sec())
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(u64::try_from(t.tv_nsec() / 1000).ok()?)
}

/// The time-stamp counter (0 where there is none).
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: rdtsc only reads the time-stamp counter, which every x86_64 CPU has.
    return unsafe { std::arch::x86_64::_rdtsc() };
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Flushes filesystems and powers the machine off (in a test's pid
/// namespace the kernel turns this into the end of that namespace).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached if reboot(2) was refused: exiting PID 1 panics the
    // kernel, which the VMM reports; better than hanging.
    std::process::exit(1)
}

/// The vsock port from `bulkhead.port=N` on the kernel command line.
pub fn port_from_cmdline(cmdline: &str) -> Option<u32> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        w.strip_prefix(bulkhead_agent_proto::PORT_CMDLINE_KEY)?
            .strip_prefix('=')?
            .parse()
            .ok()
    })
}

/// The root filesystem type from `bulkhead.boot_probe=FSTYPE` on the
/// kernel command line: the boot-time probe (`bulkhead-guest-probe
/// --boot-time`) asks the agent to mount `/dev/vda` as a start would, print
/// the time since boot and power off, without a host to dial.
pub fn boot_probe_from_cmdline(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("bulkhead.boot_probe="))
        .filter(|fstype| !fstype.is_empty())
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we hold.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_probe_is_asked_for_by_name_with_a_filesystem() {
        assert_eq!(
            boot_probe_from_cmdline("console=ttyS0 bulkhead.boot_probe=erofs quiet"),
            Some("erofs")
        );
        assert_eq!(boot_probe_from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(boot_probe_from_cmdline("bulkhead.boot_probe="), None);
        assert_eq!(boot_probe_from_cmdline("bulkhead.boot_probe"), None);
        assert_eq!(boot_probe_from_cmdline("xbulkhead.boot_probe=ext4"), None);
    }

    #[test]
    fn port_comes_from_the_command_line_or_not_at_all() {
        assert_eq!(
            port_from_cmdline("console=ttyS0 bulkhead.port=2048 quiet"),
            Some(2048)
        );
        assert_eq!(port_from_cmdline("console=ttyS0 bulkhead.portx=1"), None);
        assert_eq!(port_from_cmdline("bulkhead.port=-1 bulkhead.port="), None);
        assert_eq!(port_from_cmdline(""), None);
    }
}
