//! seccomp-bpf: one filter per thread kind, installed before the guest runs
//! its first instruction; anything not listed kills the process (SIGSYS).
//!
//! THE ALLOWLISTS LIVE HERE AND NOWHERE ELSE. Review every addition: each
//! entry says which code needs it. They were found by tracing the VMM
//! (strace, in the nested test host) through a workload's paths: boot,
//! disk, vsock both ways, TAP both ways, exec, stop, SIGTERM; and kept as
//! small as the code allows: `ioctl` only with the request numbers used
//! after build (KVM_RUN on vCPUs, KVM_SIGNAL_MSI, FIONBIO), `socket` only
//! for AF_UNIX and only on vCPU threads, no `open*`, no `execve`, no
//! `ptrace`, no `clone`. Build-time work (opening files, KVM setup, TAP
//! ioctls) happens before the filters go in.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter for the {0} thread: {1}")]
    Build(ThreadKind, seccompiler::BackendError),
    #[error("seccomp filter for the {0} thread: {1}")]
    Compile(ThreadKind, seccompiler::BackendError),
    #[error("installing the seccomp filter for the {0} thread: {1}")]
    Install(ThreadKind, seccompiler::Error),
}

/// The threads of bulkhead-vmm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: host-side device events, signals, the exit path.
    Main,
    /// One per vCPU: KVM_RUN, port/MMIO exits, virtio queue processing.
    Vcpu,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
        })
    }
}

/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `_IOW(KVMIO, 0xa5, struct kvm_msi)` (32 bytes).
pub const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
/// `FIONBIO`: set_nonblocking on sockets.
pub const FIONBIO: u64 = 0x5421;

/// Calls with any arguments, both thread kinds: the Rust runtime, glibc,
/// the allocator and the device I/O either thread does.
const COMMON: &[(i64, &str)] = &[
    (
        libc::SYS_read,
        "eventfd, signalfd, vsock streams (recvfrom's sibling), TAP receive",
    ),
    (
        libc::SYS_write,
        "eventfd, serial output, TAP transmit, stderr",
    ),
    (libc::SYS_sendto, "vsock streams (MSG_NOSIGNAL)"),
    (libc::SYS_recvfrom, "vsock streams"),
    (libc::SYS_shutdown, "vsock: half-close"),
    (libc::SYS_close, "vsock streams ending"),
    (
        libc::SYS_epoll_ctl,
        "devices (re)register their fds with the event loop",
    ),
    (libc::SYS_futex, "mutexes, the start gate"),
    (libc::SYS_mmap, "the allocator"),
    (libc::SYS_munmap, "the allocator, thread exit"),
    (libc::SYS_mremap, "the allocator (growing big buffers)"),
    (libc::SYS_madvise, "the allocator, thread exit"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_mprotect, "the allocator (a new arena)"),
    (libc::SYS_rt_sigprocmask, "signal masks (thread exit)"),
    (libc::SYS_rt_sigreturn, "return from a signal handler"),
    (
        libc::SYS_sigaltstack,
        "Rust's stack-overflow handler (thread exit)",
    ),
    (
        libc::SYS_clock_gettime,
        "time, when the vDSO does not answer",
    ),
    (libc::SYS_getrandom, "virtio-rng, hash map keys"),
    (libc::SYS_sched_yield, "lock spinning"),
    (libc::SYS_gettid, "abort: a panic's report"),
    (libc::SYS_getpid, "abort"),
    (libc::SYS_tgkill, "abort raises SIGABRT"),
    (libc::SYS_rt_sigaction, "abort resets SIGABRT's handler"),
];

/// Only the main thread: the event loop and the exit path.
const MAIN_ONLY: &[(i64, &str)] = &[
    (libc::SYS_epoll_wait, "the event loop"),
    (libc::SYS_accept4, "vsock: host-initiated connections"),
    (
        libc::SYS_setsockopt,
        "vsock: a write timeout while flushing at exit",
    ),
    (libc::SYS_exit_group, "the process ends"),
];

/// Only vCPU threads: exits, and virtio queue processing on QueueNotify.
const VCPU_ONLY: &[(i64, &str)] = &[
    (libc::SYS_pread64, "virtio-blk reads"),
    (libc::SYS_pwrite64, "virtio-blk writes"),
    (libc::SYS_fdatasync, "virtio-blk flush"),
    (
        libc::SYS_connect,
        "vsock: guest connections to <uds>_<port>",
    ),
    (libc::SYS_exit, "a vCPU thread ends with the VM"),
];

fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra = match kind {
        ThreadKind::Main => MAIN_ONLY,
        ThreadKind::Vcpu => VCPU_ONLY,
    };
    for (nr, _why) in COMMON.iter().chain(extra) {
        map.insert(*nr, Vec::new());
    }
    if kind == ThreadKind::Vcpu {
        // socket(2): AF_UNIX only (vsock's guest-initiated connections).
        map.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )?])?],
        );
    }
    // ioctl(2): only these requests.
    let requests: &[u64] = match kind {
        ThreadKind::Main => &[KVM_SIGNAL_MSI, FIONBIO],
        ThreadKind::Vcpu => &[KVM_RUN, KVM_SIGNAL_MSI, FIONBIO],
    };
    let mut ioctl = Vec::new();
    for r in requests {
        ioctl.push(SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            *r,
        )?])?);
    }
    map.insert(libc::SYS_ioctl, ioctl);
    Ok(map)
}

/// The compiled filter of one thread kind.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let rules = rules(kind).map_err(|e| SeccompError::Build(kind, e))?;
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    BpfProgram::try_from(f).map_err(|e| SeccompError::Compile(kind, e))
}

/// Sets NO_NEW_PRIVS and installs `kind`'s compiled filter on the calling thread.
pub fn install(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install(kind, e))
}

/// What a thread does, for tests, to prove its filter holds: each of these
/// must kill the process with SIGSYS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Execve,
    OpenHostPath,
    InetSocket,
    Ptrace,
}

impl std::str::FromStr for Violation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "execve" => Violation::Execve,
            "open" => Violation::OpenHostPath,
            "socket" => Violation::InetSocket,
            "ptrace" => Violation::Ptrace,
            other => return Err(format!("{other:?}: execve, open, socket or ptrace")),
        })
    }
}

/// `main:execve`, `vcpu:socket`, ...
pub fn parse_violation(s: &str) -> Result<(ThreadKind, Violation), String> {
    let (kind, call) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: KIND:CALL"))?;
    let kind = match kind {
        "main" => ThreadKind::Main,
        "vcpu" => ThreadKind::Vcpu,
        other => return Err(format!("{other:?}: main or vcpu")),
    };
    Ok((kind, call.parse()?))
}

/// Makes the forbidden call. Returns only if the filter let it through.
pub fn violate(v: Violation) -> std::io::Result<()> {
    // SAFETY: each call gets valid pointers to NUL-terminated literals or
    // none; the point is that the kernel refuses it before it runs.
    let rc = unsafe {
        match v {
            Violation::Execve => libc::execve(
                c"/bin/true".as_ptr(),
                [c"/bin/true".as_ptr(), std::ptr::null()].as_ptr(),
                [std::ptr::null()].as_ptr(),
            ) as i64,
            Violation::OpenHostPath => libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64,
            Violation::InetSocket => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            Violation::Ptrace => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0),
        }
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_the_lists_are_disjoint_and_reviewed() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            assert!(!filter(kind).unwrap().is_empty());
        }
        for (nr, why) in COMMON.iter().chain(MAIN_ONLY).chain(VCPU_ONLY) {
            assert!(!why.is_empty(), "syscall {nr} has no reason");
        }
        let mut all: Vec<i64> = COMMON
            .iter()
            .chain(MAIN_ONLY)
            .chain(VCPU_ONLY)
            .map(|(n, _)| *n)
            .collect();
        all.sort_unstable();
        assert!(
            all.windows(2).all(|w| w[0] != w[1]),
            "a syscall is listed twice"
        );
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_ptrace,
            libc::SYS_fork,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_bind,
            libc::SYS_listen,
        ] {
            assert!(
                !all.contains(&forbidden),
                "syscall {forbidden} must stay forbidden"
            );
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: u64, ty: u64, nr: u64, size: u64| dir << 30 | size << 16 | ty << 8 | nr;
        assert_eq!(KVM_RUN, ioc(0, 0xae, 0x80, 0));
        assert_eq!(
            KVM_SIGNAL_MSI,
            ioc(
                1,
                0xae,
                0xa5,
                std::mem::size_of::<kvm_bindings::kvm_msi>() as u64
            )
        );
        assert_eq!(FIONBIO, libc::FIONBIO);
        assert_eq!("socket".parse::<Violation>(), Ok(Violation::InetSocket));
        assert_eq!(
            parse_violation("vcpu:ptrace"),
            Ok((ThreadKind::Vcpu, Violation::Ptrace))
        );
        assert!(parse_violation("io:ptrace").is_err() && parse_violation("main").is_err());
        assert!("chmod".parse::<Violation>().is_err());
    }
}
