//! Per-vCPU CPUID from KVM's supported set.
//!
//! KVM_GET_SUPPORTED_CPUID describes what the host can offer, not a CPU:
//! each vCPU needs its APIC ID and the package topology (N cores, one thread
//! each, one socket) written into the leaves that carry them, on Intel and
//! AMD alike. The hypervisor leaves (0x4000_00xx) are kept as KVM reports
//! them so paravirtual guests (PVM-patched ones too) detect their host.

use kvm_bindings::kvm_cpuid_entry2;

/// KVM_CPUID_FLAG_SIGNIFICANT_INDEX: the entry applies to one subleaf.
const SIGNIFICANT_INDEX: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The vendor from leaf 0's signature.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(l0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&l0.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    sig[8..].copy_from_slice(&l0.ecx.to_le_bytes());
    match &sig {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` things (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// CPUID for vCPU `cpu` (its APIC ID) of `count` vCPUs.
pub fn for_vcpu(supported: &[kvm_cpuid_entry2], cpu: u8, count: u8) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(cpu);
    let count = u32::from(count.max(1));
    let core_bits = bits_for(count);
    let vendor = vendor(supported);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 4);

    for e in supported {
        let mut e = *e;
        match e.function {
            0x1 => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((1 << core_bits).max(count) << 16);
                // HTT: more than one logical processor in the package.
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            // Extended topology: rebuilt below for every subleaf.
            0xb | 0x1f => continue,
            0x8000_0001 if vendor == Vendor::Amd => {
                // CmpLegacy: cores are reported through 0x8000_0008.
                if count > 1 {
                    e.ecx |= 1 << 1;
                } else {
                    e.ecx &= !(1 << 1);
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            0x8000_001d if vendor == Vendor::Amd => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing.min(0xfff) << 14);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // compute unit id; one thread per unit
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
        out.push(e);
    }

    for leaf in [0xbu32, 0x1f] {
        if supported.iter().any(|e| e.function == leaf) {
            out.extend(topology_leaf(leaf, apic_id, count, core_bits));
        }
    }
    out
}

/// Leaf 0xB/0x1F: subleaf 0 is the SMT level (one thread per core),
/// subleaf 1 the core level, subleaf 2 ends the list.
fn topology_leaf(leaf: u32, apic_id: u32, count: u32, core_bits: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, 1),
        entry(1, core_bits, count, 2),
        entry(2, 0, 0, 0),
    ]
}

/// Parses recorded tables: one entry per line, `function index flags eax ebx
/// ecx edx` in hex (what `bulkhead-vmm --dump-supported-cpuid` prints).
pub fn parse_recorded(text: &str) -> Result<Vec<kvm_cpuid_entry2>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: Vec<u32> = line
            .split_whitespace()
            .map(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", n + 1))?;
        let [function, index, flags, eax, ebx, ecx, edx] = v[..] else {
            return Err(format!(
                "line {}: expected 7 fields, got {}",
                n + 1,
                v.len()
            ));
        };
        out.push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    Ok(out)
}

/// The inverse of [`parse_recorded`].
pub fn render(entries: &[kvm_cpuid_entry2]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{:08x} {:08x} {:x} {:08x} {:08x} {:08x} {:08x}\n",
                e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = include_str!("../../tests/data/cpuid-intel.txt");
    const AMD: &str = include_str!("../../tests/data/cpuid-amd.txt");

    fn leaf(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> Option<kvm_cpuid_entry2> {
        entries
            .iter()
            .find(|e| e.function == f && e.index == i)
            .copied()
    }

    fn check_common(supported: &[kvm_cpuid_entry2], count: u8) {
        for cpu in 0..count {
            let c = for_vcpu(supported, cpu, count);
            let l1 = leaf(&c, 1, 0).unwrap();
            assert_eq!(l1.ebx >> 24, u32::from(cpu), "leaf 1 APIC ID");
            assert!(
                (l1.ebx >> 16) & 0xff >= u32::from(count),
                "leaf 1 logical count"
            );
            assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
            assert_eq!(l1.edx & (1 << 28) != 0, count > 1, "HTT");
            // Hypervisor leaves pass through untouched.
            for h in supported
                .iter()
                .filter(|e| (0x4000_0000..0x4000_0100).contains(&e.function))
            {
                assert_eq!(leaf(&c, h.function, h.index), Some(*h));
            }
            // Extended topology, when the host has it, names this CPU.
            if leaf(supported, 0xb, 0).is_some() {
                assert_eq!(leaf(&c, 0xb, 0).unwrap().edx, u32::from(cpu));
                assert_eq!(leaf(&c, 0xb, 1).unwrap().ebx, u32::from(count));
                assert_eq!((leaf(&c, 0xb, 2).unwrap().ecx >> 8) & 0xff, 0, "list ends");
                assert_eq!(c.iter().filter(|e| e.function == 0xb).count(), 3);
            }
        }
    }

    #[test]
    fn recorded_intel_host() {
        let s = parse_recorded(INTEL).unwrap();
        assert_eq!(vendor(&s), Vendor::Intel);
        for n in [1, 2, 3, 8, 64] {
            check_common(&s, n);
        }
        let c = for_vcpu(&s, 1, 4);
        for l4 in c.iter().filter(|e| e.function == 4 && e.eax & 0x1f != 0) {
            assert_eq!(l4.eax >> 26, 3, "cores per package - 1");
            let level = (l4.eax >> 5) & 7;
            assert_eq!((l4.eax >> 14) & 0xfff, if level >= 3 { 3 } else { 0 });
        }
    }

    #[test]
    fn recorded_amd_host() {
        let s = parse_recorded(AMD).unwrap();
        assert_eq!(vendor(&s), Vendor::Amd);
        for n in [1, 2, 3, 8, 64] {
            check_common(&s, n);
        }
        let c = for_vcpu(&s, 2, 4);
        if let Some(l) = leaf(&c, 0x8000_0008, 0) {
            assert_eq!(l.ecx & 0xff, 3, "NC = cores - 1");
            assert_eq!((l.ecx >> 12) & 0xf, 2, "APIC ID core bits");
        }
        if let Some(l) = leaf(&c, 0x8000_001e, 0) {
            assert_eq!(l.eax, 2, "extended APIC ID");
        }
        assert_ne!(
            leaf(&c, 0x8000_0001, 0).unwrap().ecx & 2,
            0,
            "CmpLegacy with 4 cores"
        );
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 64].map(bits_for), [0, 1, 2, 2, 3, 6]);
    }

    #[test]
    fn recorded_tables_reject_junk() {
        assert!(parse_recorded("1 2 3").is_err());
        assert!(parse_recorded("zz 0 0 0 0 0 0").is_err());
        assert_eq!(parse_recorded("# c\n\n").unwrap().len(), 0);
        let s = parse_recorded(INTEL).unwrap();
        assert_eq!(parse_recorded(&render(&s)).unwrap().len(), s.len());
    }
}
