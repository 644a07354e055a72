//! What kind of KVM the host offers.
//!
//! Some machines expose `/dev/kvm` through the `kvm_pvm` module: software
//! virtualization that runs only PVM-patched guests at speed. A stock Linux
//! guest there never reaches `/init`, so callers that boot Linux must know.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// The CPU has VT-x or AMD-V and `/dev/kvm` is the real thing.
    Hardware,
    /// `/dev/kvm` is `kvm_pvm` (or the CPU lacks vmx/svm): stock Linux guests
    /// do not boot; use the nested test host.
    Pvm,
    /// No `/dev/kvm` at all.
    Absent,
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmKind::Hardware => "hardware (vmx/svm)",
            KvmKind::Pvm => "kvm_pvm (software; stock Linux guests do not boot)",
            KvmKind::Absent => "none (/dev/kvm missing)",
        })
    }
}

/// Looks at this machine.
pub fn detect() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(
        Path::new("/dev/kvm").exists(),
        Path::new("/sys/module/kvm_pvm").exists(),
        &cpuinfo,
    )
}

/// The decision, apart from the filesystem so it can be tested.
pub fn classify(dev_kvm: bool, pvm_module: bool, cpuinfo: &str) -> KvmKind {
    if !dev_kvm {
        return KvmKind::Absent;
    }
    if pvm_module || !cpu_has_virt_flags(cpuinfo) {
        return KvmKind::Pvm;
    }
    KvmKind::Hardware
}

/// True when a `flags` line of /proc/cpuinfo names `vmx` or `svm`.
pub fn cpu_has_virt_flags(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v))
        .any(|flags| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ept\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm npt\n";
    const NONE: &str =
        "processor\t: 0\nflags\t\t: fpu vme hypervisor\nmodel name\t: svm-like vmx name\n";

    #[test]
    fn classifies_hosts() {
        assert_eq!(classify(true, false, INTEL), KvmKind::Hardware);
        assert_eq!(classify(true, false, AMD), KvmKind::Hardware);
        assert_eq!(classify(true, true, INTEL), KvmKind::Pvm);
        assert_eq!(classify(true, false, NONE), KvmKind::Pvm);
        assert_eq!(classify(false, false, INTEL), KvmKind::Absent);
        assert_eq!(classify(true, false, ""), KvmKind::Pvm);
    }

    #[test]
    fn flags_must_be_whole_words_on_a_flags_line() {
        assert!(!cpu_has_virt_flags("flags : vmxx svmm\n"));
        assert!(!cpu_has_virt_flags("model name : vmx svm\n"));
        assert!(cpu_has_virt_flags("flags : a b svm\n"));
    }
}
