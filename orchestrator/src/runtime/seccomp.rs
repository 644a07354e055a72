//! The seccomp allowlist for containers (`--runtime container`), our own,
//! informed by the defaults of runc and Docker: a container shares the
//! node's kernel, so every system call it may make is kernel surface a
//! tenant reaches. Anything not listed fails with EPERM.
//!
//! Left out, with the reason (each group is a way out of a container or a
//! large, rarely needed attack surface):
//! - namespaces: `unshare`, `setns`, and `clone` with any `CLONE_NEW*`
//!   flag (a new user namespace gives a tenant "root" capabilities over
//!   kernel code paths that assume a trusted admin); `clone3` answers
//!   ENOSYS so libc falls back to the filtered `clone`;
//! - mounts: `mount`, `umount2`, `pivot_root`, `chroot`, the new mount API
//!   (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`,
//!   `open_tree`, `mount_setattr`);
//! - kernel keys: `keyctl`, `add_key`, `request_key` (the keyring is not
//!   namespaced);
//! - tracing and introspection: `ptrace`, `process_vm_readv/writev`,
//!   `perf_event_open`, `bpf`, `kcmp`, `syslog`, `lookup_dcookie`,
//!   `pidfd_getfd`;
//! - file handles: `open_by_handle_at`, `name_to_handle_at` (the
//!   "shocker" escape);
//! - the host's clock, modules, swap, reboot and accounting: `settimeofday`,
//!   `clock_settime`, `clock_adjtime`, `adjtimex`, `init_module`,
//!   `finit_module`, `delete_module`, `kexec_*`, `swapon`, `swapoff`,
//!   `reboot`, `acct`, `quotactl`, `iopl`, `ioperm`, `sethostname`,
//!   `setdomainname`, `vhangup`;
//! - `userfaultfd` and `io_uring_*` (kernel bugs exploited from
//!   containers more than once; Docker denies io_uring too).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};

/// The allowed system calls, by what they are for.
pub const ALLOWED: &[(&str, &[&str])] = &[
    (
        "files",
        &[
            "read",
            "write",
            "readv",
            "writev",
            "pread64",
            "pwrite64",
            "preadv",
            "pwritev",
            "preadv2",
            "pwritev2",
            "open",
            "openat",
            "openat2",
            "close",
            "close_range",
            "creat",
            "lseek",
            "stat",
            "fstat",
            "lstat",
            "newfstatat",
            "statx",
            "statfs",
            "fstatfs",
            "access",
            "faccessat",
            "faccessat2",
            "readlink",
            "readlinkat",
            "getdents",
            "getdents64",
            "mkdir",
            "mkdirat",
            "rmdir",
            "rename",
            "renameat",
            "renameat2",
            "link",
            "linkat",
            "symlink",
            "symlinkat",
            "unlink",
            "unlinkat",
            "chmod",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "chown",
            "fchown",
            "lchown",
            "fchownat",
            "truncate",
            "ftruncate",
            "fallocate",
            "fsync",
            "fdatasync",
            "sync",
            "syncfs",
            "sync_file_range",
            "utime",
            "utimes",
            "utimensat",
            "futimesat",
            "getcwd",
            "chdir",
            "fchdir",
            "umask",
            "dup",
            "dup2",
            "dup3",
            "fcntl",
            "flock",
            "pipe",
            "pipe2",
            "sendfile",
            "splice",
            "tee",
            "vmsplice",
            "copy_file_range",
            "mknod",
            "mknodat",
            "fadvise64",
            "readahead",
            "getxattr",
            "lgetxattr",
            "fgetxattr",
            "setxattr",
            "lsetxattr",
            "fsetxattr",
            "listxattr",
            "llistxattr",
            "flistxattr",
            "removexattr",
            "lremovexattr",
            "fremovexattr",
            "inotify_init",
            "inotify_init1",
            "inotify_add_watch",
            "inotify_rm_watch",
            "memfd_create",
            "ioctl",
        ],
    ),
    (
        "waiting on many",
        &[
            "select",
            "pselect6",
            "poll",
            "ppoll",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_wait",
            "epoll_pwait",
            "epoll_pwait2",
            "eventfd",
            "eventfd2",
            "timerfd_create",
            "timerfd_settime",
            "timerfd_gettime",
            "signalfd",
            "signalfd4",
            "io_setup",
            "io_destroy",
            "io_submit",
            "io_cancel",
            "io_getevents",
        ],
    ),
    (
        "memory",
        &[
            "mmap",
            "munmap",
            "mprotect",
            "mremap",
            "madvise",
            "brk",
            "msync",
            "mincore",
            "mlock",
            "mlock2",
            "munlock",
            "mlockall",
            "munlockall",
            "membarrier",
            "get_mempolicy",
        ],
    ),
    (
        "processes (clone: without CLONE_NEW* flags, below)",
        &[
            "fork",
            "vfork",
            "execve",
            "execveat",
            "exit",
            "exit_group",
            "wait4",
            "waitid",
            "kill",
            "tkill",
            "tgkill",
            "getpid",
            "getppid",
            "gettid",
            "getpgid",
            "setpgid",
            "getpgrp",
            "getsid",
            "setsid",
            "getpriority",
            "setpriority",
            "sched_yield",
            "sched_getaffinity",
            "sched_setaffinity",
            "sched_getparam",
            "sched_setparam",
            "sched_getscheduler",
            "sched_setscheduler",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_rr_get_interval",
            "sched_getattr",
            "sched_setattr",
            "prctl",
            "arch_prctl",
            "set_tid_address",
            "set_robust_list",
            "get_robust_list",
            "futex",
            "futex_waitv",
            "rseq",
            "restart_syscall",
            "pidfd_open",
            "pidfd_send_signal",
            "getrlimit",
            "setrlimit",
            "prlimit64",
            "getrusage",
            "times",
            "uname",
            "sysinfo",
            "personality",
            "capget",
            "capset",
            "getrandom",
            "getcpu",
            "ioprio_get",
            "ioprio_set",
            "seccomp",
            "landlock_create_ruleset",
            "landlock_add_rule",
            "landlock_restrict_self",
        ],
    ),
    (
        "user and group ids (within the container's own)",
        &[
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
            "getresuid",
            "getresgid",
            "getgroups",
            "setuid",
            "setgid",
            "setreuid",
            "setregid",
            "setresuid",
            "setresgid",
            "setgroups",
            "setfsuid",
            "setfsgid",
        ],
    ),
    (
        "signals",
        &[
            "rt_sigaction",
            "rt_sigprocmask",
            "rt_sigreturn",
            "rt_sigpending",
            "rt_sigtimedwait",
            "rt_sigqueueinfo",
            "rt_tgsigqueueinfo",
            "rt_sigsuspend",
            "sigaltstack",
            "pause",
            "alarm",
        ],
    ),
    (
        "time (reading it; setting it is the host's)",
        &[
            "nanosleep",
            "clock_nanosleep",
            "clock_gettime",
            "clock_getres",
            "gettimeofday",
            "time",
            "getitimer",
            "setitimer",
            "timer_create",
            "timer_settime",
            "timer_gettime",
            "timer_getoverrun",
            "timer_delete",
        ],
    ),
    (
        "network (the container's own namespace)",
        &[
            "socket",
            "socketpair",
            "bind",
            "listen",
            "accept",
            "accept4",
            "connect",
            "getsockname",
            "getpeername",
            "sendto",
            "recvfrom",
            "sendmsg",
            "recvmsg",
            "sendmmsg",
            "recvmmsg",
            "shutdown",
            "setsockopt",
            "getsockopt",
        ],
    ),
    (
        "System V and POSIX IPC (the container's own namespace)",
        &[
            "mq_open",
            "mq_unlink",
            "mq_timedsend",
            "mq_timedreceive",
            "mq_notify",
            "mq_getsetattr",
            "semget",
            "semop",
            "semtimedop",
            "semctl",
            "shmget",
            "shmat",
            "shmdt",
            "shmctl",
            "msgget",
            "msgsnd",
            "msgrcv",
            "msgctl",
        ],
    ),
];

/// Every `CLONE_NEW*` flag: `clone` passes only without them.
pub const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;
const _: () = assert!(CLONE_NAMESPACES != 0);

/// The profile: EPERM for anything not allowed, ENOSYS for `clone3`.
pub fn profile() -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let names: Vec<String> = ALLOWED
        .iter()
        .flat_map(|(_, calls)| calls.iter().map(|c| (*c).to_string()))
        .collect();
    let allowed = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?;
    let clone = LinuxSyscallBuilder::default()
        .names(vec!["clone".to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(0u64)
            .value_two(CLONE_NAMESPACES)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?])
        .build()?;
    let clone3 = LinuxSyscallBuilder::default()
        .names(vec!["clone3".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(u32::try_from(libc::ENOSYS).unwrap_or(38))
        .build()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(u32::try_from(libc::EPERM).unwrap_or(1))
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![allowed, clone, clone3])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_hatches_are_not_on_the_list() {
        let all: Vec<&str> = ALLOWED
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "kexec_load",
            "reboot",
            "userfaultfd",
            "io_uring_setup",
            "clone3",
            "clone",
            "fsopen",
            "move_mount",
            "settimeofday",
            "sethostname",
            "syslog",
        ] {
            assert!(!all.contains(&denied), "{denied} is allowed");
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a name listed twice");
        let p = profile().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.syscalls().as_ref().map(Vec::len), Some(3));
        assert_eq!(
            CLONE_NAMESPACES & (libc::CLONE_NEWUSER as u64),
            libc::CLONE_NEWUSER as u64
        );
    }
}
