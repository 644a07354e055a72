//! One home for a workload's size: how memory is written, what each
//! runtime accepts, and the defaults. The CLI, service files, the node
//! daemon and the benchmarks all check here, before anything is created; a
//! microVM's bounds are the VMM's own (`bulkhead_vmm::config`), so a size
//! that passes here never fails later in the VMM.

use crate::state::record::RuntimeKind;

/// A microVM's guest memory unless asked (MiB).
pub const DEFAULT_VM_MEMORY_MIB: u64 = 256;
/// A microVM's vCPUs unless asked (`--cpus` rounds up to whole vCPUs).
pub const DEFAULT_VM_VCPUS: u32 = 1;
/// The most vCPUs a microVM gets.
pub const MAX_VM_VCPUS: u32 = 64;
/// Memory the VMM process needs beyond guest RAM: its own pages, KVM's
/// page tables, page cache of the disk it reads (reclaimable). Its cgroup
/// gets guest + this; the scheduler counts the same.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// The VMM's threads beyond one per vCPU (main loop, KVM's workers,
/// headroom): its cgroup's pids limit.
pub const VMM_EXTRA_PIDS: u32 = 32;
/// The smallest memory limit a container gets (MiB): below it the OCI
/// runtime's own processes do not fit.
pub const MIN_CONTAINER_MEMORY_MIB: u64 = 4;
/// The largest memory anything may ask for (MiB): 1 TiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// A container's processes at most (`pids.max`): a fork bomb stops there.
pub const CONTAINER_PIDS: u32 = 1024;
/// A container's writable layer at most (a tmpfs, charged to its memory).
pub const CONTAINER_WRITABLE_MIB: u64 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{0:?}: use a size like 512m or 1g (k, m, g, t; or bytes)")]
    Syntax(String),
    #[error("{given}: {runtime} workloads take {} to {}", size(*min), size(*max))]
    OutOfRange {
        given: String,
        runtime: RuntimeKind,
        min: u64,
        max: u64,
    },
}

/// 16 MiB, 256 GiB, 1 TiB: MiB in the largest unit that divides them.
fn size(mib: u64) -> String {
    match mib {
        m if m >= 1 << 20 && m % (1 << 20) == 0 => format!("{} TiB", m >> 20),
        m if m >= 1 << 10 && m % (1 << 10) == 0 => format!("{} GiB", m >> 10),
        m => format!("{m} MiB"),
    }
}

/// `512m`, `1g`, `1024k`, plain bytes (a trailing `b` is allowed) -> MiB,
/// rounded down; at least 1 MiB and at most [`MAX_MEMORY_MIB`].
pub fn parse_memory(s: &str) -> Result<u64, LimitsError> {
    let bytes =
        crate::state::volumes::parse_bytes(s).ok_or_else(|| LimitsError::Syntax(s.to_string()))?;
    let mib = bytes >> 20;
    if mib == 0 || mib > MAX_MEMORY_MIB {
        return Err(LimitsError::OutOfRange {
            given: s.to_string(),
            runtime: RuntimeKind::Container,
            min: 1,
            max: MAX_MEMORY_MIB,
        });
    }
    Ok(mib)
}

/// The memory a `runtime` workload may have (MiB, inclusive).
pub fn memory_bounds(runtime: RuntimeKind) -> (u64, u64) {
    match runtime {
        RuntimeKind::Microvm => (
            u64::from(bulkhead_vmm::config::MIN_MEMORY_MIB),
            u64::from(bulkhead_vmm::config::MAX_MEMORY_MIB).min(MAX_MEMORY_MIB),
        ),
        RuntimeKind::Container => (MIN_CONTAINER_MEMORY_MIB, MAX_MEMORY_MIB),
    }
}

/// `s` parsed and checked for `runtime`: the MiB it stands for.
pub fn memory_for(runtime: RuntimeKind, s: &str) -> Result<u64, LimitsError> {
    let mib = parse_memory(s)?;
    let (min, max) = memory_bounds(runtime);
    if !(min..=max).contains(&mib) {
        return Err(LimitsError::OutOfRange {
            given: s.to_string(),
            runtime,
            min,
            max,
        });
    }
    Ok(mib)
}

/// A microVM's vCPUs for `--cpus` (whole vCPUs, rounded up, 1 to
/// [`MAX_VM_VCPUS`]).
pub fn vm_vcpus(cpus: Option<f64>) -> u32 {
    cpus.map_or(DEFAULT_VM_VCPUS, |c| {
        // Clamped to 1..=MAX_VM_VCPUS first (a NaN casts to 0 and is raised to 1).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = c.ceil().clamp(1.0, f64::from(MAX_VM_VCPUS)) as u32;
        n.max(1)
    })
}

/// `cpus` as thousandths of a CPU, rounded up: the unit of requests, node
/// capacity and quotas. Callers refuse non-finite and non-positive values
/// first; float-to-int `as` saturates, so a huge value is `u64::MAX`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn millicpus(cpus: f64) -> u64 {
    (cpus * 1000.0).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_memory("512m"), Ok(512));
        assert_eq!(parse_memory("1G"), Ok(1024));
        assert_eq!(parse_memory("1gb"), Ok(1024));
        assert_eq!(parse_memory("268435456"), Ok(256));
        assert_eq!(parse_memory("1t"), Ok(1 << 20));
        for bad in [
            "",
            "lots",
            "m",
            "-1m",
            "+1m",
            "1.5g",
            "1 g",
            "99999999999999999999",
            "99999999999999g",
        ] {
            assert!(
                matches!(parse_memory(bad), Err(LimitsError::Syntax(_))),
                "{bad:?}"
            );
        }
        for small_or_huge in ["1k", "1023k", "2t", "2048g"] {
            assert!(
                matches!(
                    parse_memory(small_or_huge),
                    Err(LimitsError::OutOfRange { .. })
                ),
                "{small_or_huge:?}"
            );
        }
    }

    /// What passes here passes the VMM's own check: the bounds are its.
    #[test]
    fn a_microvm_size_that_passes_here_passes_the_vmm() {
        assert_eq!(
            memory_for(RuntimeKind::Microvm, "8m").map_err(|e| e.to_string()),
            Err("8m: microvm workloads take 16 MiB to 1 TiB".into())
        );
        assert_eq!(memory_for(RuntimeKind::Container, "8m"), Ok(8));
        for ok in ["16m", "256m", "4g"] {
            let mib = memory_for(RuntimeKind::Microvm, ok).unwrap_or_else(|e| panic!("{e}"));
            let vm = bulkhead_vmm::config::VmConfig {
                memory_mib: u32::try_from(mib).unwrap_or(u32::MAX),
                kernel: Some("/k".into()),
                ..Default::default()
            };
            assert!(
                !matches!(
                    vm.validate(),
                    Err(bulkhead_vmm::config::ConfigError::Memory(_))
                ),
                "{ok}"
            );
        }
        assert!(memory_for(RuntimeKind::Container, "2m").is_err());
    }
}
