//! The VMM's own memory use: peak RSS minus what the guest's memory mapping
//! holds resident, i.e. what the VMM costs beyond the guest's pages.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    pub peak_rss_kib: u64,
    pub guest_rss_kib: u64,
}

impl MemoryReport {
    pub fn overhead_kib(&self) -> u64 {
        self.peak_rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// /proc/self/status and /proc/self/smaps, opened before the seccomp filter
/// (which allows no open(2)) and read once, at the end.
#[derive(Debug)]
pub struct Files {
    status: std::fs::File,
    smaps: std::fs::File,
}

impl Files {
    pub fn open() -> std::io::Result<Files> {
        Ok(Files {
            status: std::fs::File::open("/proc/self/status")?,
            smaps: std::fs::File::open("/proc/self/smaps")?,
        })
    }
}

/// read(2) until EOF: no fstat or lseek (not in the seccomp allowlist).
fn read_all(f: &mut std::fs::File) -> std::io::Result<String> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(String::from_utf8_lossy(&out).into_owned()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads the files now (their contents are made at read time).
pub fn measure(mem: &GuestMemoryMmap, mut files: Files) -> std::io::Result<MemoryReport> {
    let status = read_all(&mut files.status)?;
    let smaps = read_all(&mut files.smaps)?;
    let guest: Vec<(u64, u64)> = mem
        .iter()
        .filter_map(|r| {
            let host = mem.get_host_address(r.start_addr()).ok()? as u64;
            Some((host, host.checked_add(r.len())?))
        })
        .collect();
    Ok(MemoryReport {
        peak_rss_kib: status_field(&status, "VmHWM:").unwrap_or(0),
        guest_rss_kib: mappings_rss(&smaps, &guest),
    })
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Sum of `Rss:` over the mappings that overlap one of the guest's host
/// ranges `[start, end)`. Overlap, not "starts at": the kernel merges an
/// anonymous mapping with a neighbour of the same flags, so the guest's
/// memory may be the tail of a larger VMA (whose other pages then count too;
/// smaps cannot split them).
fn mappings_rss(smaps: &str, guest: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        let range = first.split_once('-').and_then(|(lo, hi)| {
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        });
        if let Some((lo, hi)) = range {
            counting = guest.iter().any(|&(start, end)| lo < end && start < hi);
        } else if counting {
            if let Some(kib) = status_field(line, "Rss:") {
                total += kib;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_guest_mappings() {
        let smaps =
            "7f0000000000-7f0008000000 rw-p 00000000 00:00 0 \nSize: 131072 kB\nRss: 44 kB\n\
55aa00000000-55aa00001000 r-xp 00000000 08:01 1 /bin/x\nRss: 300 kB\n";
        assert_eq!(
            mappings_rss(smaps, &[(0x7f00_0000_0000, 0x7f00_0800_0000)]),
            44
        );
        // The guest's memory merged into the tail of a larger mapping.
        assert_eq!(
            mappings_rss(smaps, &[(0x7f00_0400_0000, 0x7f00_0800_0000)]),
            44
        );
        // Next to it, not in it.
        assert_eq!(
            mappings_rss(smaps, &[(0x7f00_0800_0000, 0x7f00_0900_0000)]),
            0
        );
        assert_eq!(mappings_rss(smaps, &[]), 0);
        // Malformed lines: no range, no count.
        assert_eq!(mappings_rss("zz-yy rw-p\nRss: 9 kB\n", &[(0, u64::MAX)]), 0);
        assert_eq!(status_field("VmHWM:\t  2604 kB\n", "VmHWM:"), Some(2604));
    }

    #[test]
    fn measures_this_process() {
        use vm_memory::Bytes;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let before = measure(&mem, Files::open().unwrap()).unwrap();
        assert!(before.peak_rss_kib > 0);
        // Touching 64 guest pages (256 KiB) shows in the guest's share. Not
        // compared with "before": the kernel may merge this mapping with a
        // neighbour of the same flags (the guest memory of a test running
        // beside it in this process), whose pages then count too, and that
        // neighbour may be gone by the second reading.
        for page in 0..64u64 {
            mem.write_obj(1u8, vm_memory::GuestAddress(page * 4096))
                .unwrap();
        }
        let after = measure(&mem, Files::open().unwrap()).unwrap();
        assert!(after.guest_rss_kib >= 256, "{before:?} -> {after:?}");
        assert!(after.peak_rss_kib >= after.guest_rss_kib, "{after:?}");
    }
}
