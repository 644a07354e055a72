//! The host facts every report starts with: what makes two reports'
//! numbers comparable, or not.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `hardware`, `kvm_pvm`, `none`, or `nested emulation` (the nested
    /// test host: QEMU TCG with an emulated AMD CPU).
    pub kvm: String,
}

pub const KVM_NESTED: &str =
    "nested emulation (the nested test host: QEMU TCG, emulated AMD CPU, kvm_amd inside)";

impl HostFacts {
    pub fn of_this_host() -> HostFacts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kvm = match bulkhead_vmm::host::detect() {
            bulkhead_vmm::host::KvmKind::Hardware => "hardware (vmx/svm)",
            bulkhead_vmm::host::KvmKind::Pvm => {
                "kvm_pvm (software; stock Linux guests do not boot)"
            }
            bulkhead_vmm::host::KvmKind::Absent => "none",
        };
        HostFacts {
            cpu_model: cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_mib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kvm: kvm.into(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}, {} CPUs, {} MiB; Linux {}; KVM: {}",
            self.cpu_model, self.cpus, self.memory_mib, self.kernel, self.kvm
        )
    }
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A `Key:  N kB` line of /proc/meminfo, in KiB.
pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key)
            .then(|| v.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_and_meminfo_fields() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"),
            "AMD EPYC 7B13"
        );
        assert_eq!(cpu_model("garbage"), "unknown CPU");
        let m = "MemTotal:       24576000 kB\nMemAvailable:   1000 kB\nBogus: x kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), Some(24_576_000));
        assert_eq!(meminfo_kib(m, "MemAvailable"), Some(1000));
        assert_eq!(meminfo_kib(m, "Bogus"), None);
        assert_eq!(meminfo_kib(m, "Mem"), None);
        let here = HostFacts::of_this_host();
        assert!(
            here.cpus >= 1 && here.memory_mib > 0 && !here.kernel.is_empty(),
            "{here:?}"
        );
    }
}
