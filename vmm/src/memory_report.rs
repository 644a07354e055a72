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
    let starts: Vec<u64> = mem
        .iter()
        .filter_map(|r| mem.get_host_address(r.start_addr()).ok())
        .map(|p| p as u64)
        .collect();
    Ok(MemoryReport {
        peak_rss_kib: status_field(&status, "VmHWM:").unwrap_or(0),
        guest_rss_kib: mappings_rss(&smaps, &starts),
    })
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Sum of `Rss:` over the mappings that start at one of `starts`.
fn mappings_rss(smaps: &str, starts: &[u64]) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, _)) = first
            .split_once('-')
            .filter(|(lo, hi)| !lo.is_empty() && u64::from_str_radix(hi, 16).is_ok())
        {
            counting = u64::from_str_radix(lo, 16).is_ok_and(|a| starts.contains(&a));
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
        assert_eq!(mappings_rss(smaps, &[0x7f00_0000_0000]), 44);
        assert_eq!(mappings_rss(smaps, &[]), 0);
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
        // "0 before": the kernel may merge this mapping with the guest
        // memory of a test running beside it in this process, whose pages
        // then count too.
        for page in 0..64u64 {
            mem.write_obj(1u8, vm_memory::GuestAddress(page * 4096))
                .unwrap();
        }
        let after = measure(&mem, Files::open().unwrap()).unwrap();
        assert!(
            after.guest_rss_kib >= before.guest_rss_kib + 256,
            "{before:?} -> {after:?}"
        );
    }
}
