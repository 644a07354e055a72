//! Putting a Linux kernel into guest memory: the image (ELF vmlinux or
//! bzImage), the initramfs, the command line, the boot parameters, and the
//! firmware tables (MP table and ACPI) that describe CPUs and devices.

pub mod acpi;
pub mod mapped;
pub mod mptable;
pub mod params;

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{elf::PvhBootCapability, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use self::mapped::MappedFile;
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, MMIO_HOLE_START};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("open {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel {path}: neither a loadable x86_64 ELF vmlinux nor a bzImage (ELF: {elf}; bzImage: {bzimage})")]
    KernelFormat {
        path: String,
        elf: String,
        bzimage: String,
    },
    #[error("initrd {path}: {size} bytes do not fit in guest memory above the kernel (below {limit:#x})")]
    InitrdTooBig { path: String, size: u64, limit: u64 },
    #[error("initrd {path}")]
    InitrdRead {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("writing {what} into guest memory")]
    GuestMemory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("{0}")]
    Tables(String),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start_info.
    Pvh(GuestAddress),
    /// 64-bit Linux boot protocol: long mode, `%rsi` = zero page.
    Linux64 {
        entry: GuestAddress,
        header: Option<setup_header>,
    },
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: Entry,
    /// First byte after the kernel image.
    pub end: u64,
}

/// Loads `path` into guest memory: ELF (with its PVH entry when the Xen PVH
/// note is there, else the 64-bit entry) or bzImage. `share`: map the pages
/// that line up instead of copying them ([`mapped`]).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    share: bool,
) -> Result<LoadedKernel, BootError> {
    let open = || {
        File::open(path)
            .and_then(|f| MappedFile::new(f, share))
            .map_err(|source| BootError::Open {
                path: path.display().to_string(),
                source,
            })
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let elf_err = match Elf::load(mem, None, &mut open()?, himem) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Entry::Pvh(addr),
                _ => Entry::Linux64 {
                    entry: r.kernel_load,
                    header: None,
                },
            };
            return Ok(LoadedKernel {
                entry,
                end: r.kernel_end,
            });
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut open()?, himem) {
        Ok(r) => Ok(LoadedKernel {
            // The 64-bit entry is 0x200 past the protected-mode code start.
            entry: Entry::Linux64 {
                entry: GuestAddress(r.kernel_load.0 + 0x200),
                header: r.setup_header,
            },
            end: r.kernel_end,
        }),
        Err(bz_err) => Err(BootError::KernelFormat {
            path: path.display().to_string(),
            elf: elf_err.to_string(),
            bzimage: bz_err.to_string(),
        }),
    }
}

/// Where an initrd went.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Loads the initrd as high as possible in low memory (below `addr_max`),
/// page-aligned and above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    (kernel_end, addr_max): (u64, u64),
    share: bool,
) -> Result<LoadedInitrd, BootError> {
    let file = File::open(path).map_err(|source| BootError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::InitrdRead {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().0 + r.len())
        .unwrap_or(0)
        .min(MMIO_HOLE_START);
    let limit = low_end.min(addr_max.saturating_add(1));
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig {
            path: path.display().to_string(),
            size,
            limit,
        });
    };
    let mut file = MappedFile::new(file, share).map_err(|source| BootError::InitrdRead {
        path: path.display().to_string(),
        source,
    })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig {
        path: path.display().to_string(),
        size,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::InitrdRead {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// The command line the guest gets: the caller's (or the default), plus
/// `panic=-1` (a dead guest must not hang) and `pci=off` (there is no PCI
/// bus to probe) unless the caller chose those keys, plus `extra` (device
/// declarations the VMM adds).
pub fn build_cmdline(user: Option<&str>, extra: &[String]) -> Result<String, BootError> {
    let base = user.unwrap_or(DEFAULT_CMDLINE).trim();
    let has = |key: &str| base.split_whitespace().any(|w| w.starts_with(key));
    let mut line = base.to_string();
    if !has("panic=") {
        line.push_str(" panic=-1");
    }
    if !has("pci=") {
        line.push_str(" pci=off");
    }
    for e in extra {
        line.push(' ');
        line.push_str(e);
    }
    if line.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    if line.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: line.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    Ok(line)
}

/// The command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k";

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemoryMmap, line: &str) -> Result<(), BootError> {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootError::GuestMemory {
            what: "command line",
            source,
        })
}

/// Where the kernel allows the initrd: its header's `initrd_addr_max`, or
/// the Linux boot protocol's old default when unknown.
pub fn initrd_addr_max(entry: &Entry) -> u64 {
    match entry {
        Entry::Pvh(_) => u64::MAX,
        Entry::Linux64 {
            header: Some(h), ..
        } if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        Entry::Linux64 { .. } => 0x37ff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_panic_and_extras_once() {
        let l = build_cmdline(
            Some("console=ttyS0"),
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        assert_eq!(
            l,
            "console=ttyS0 panic=-1 pci=off virtio_mmio.device=4K@0xd0000000:5"
        );
        let l = build_cmdline(Some("panic=5 quiet pci=nommconf"), &[]).unwrap();
        assert_eq!(l, "panic=5 quiet pci=nommconf");
        assert!(build_cmdline(None, &[])
            .unwrap()
            .starts_with(DEFAULT_CMDLINE));
        assert!(matches!(
            build_cmdline(Some(&"x".repeat(3000)), &[]),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            build_cmdline(Some("a\0b"), &[]),
            Err(BootError::CmdlineNul)
        ));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned_or_fails_cleanly() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("bulkhead-initrd-test-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 10_000]).unwrap();
        let r = load_initrd(&mem, &dir, (2 << 20, u64::MAX), false).unwrap();
        assert_eq!(r.addr % 4096, 0);
        assert!(r.addr + r.size <= 64 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(r.addr + 9_999)).unwrap(), 7);
        // Below a header limit.
        let r = load_initrd(&mem, &dir, (2 << 20, (16 << 20) - 1), false).unwrap();
        assert!(r.addr + r.size <= 16 << 20);
        // Does not fit above the kernel.
        assert!(matches!(
            load_initrd(&mem, &dir, (64 << 20, u64::MAX), true),
            Err(BootError::InitrdTooBig { .. })
        ));
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn garbage_is_neither_elf_nor_bzimage() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let path =
            std::env::temp_dir().join(format!("bulkhead-kernel-garbage-{}", std::process::id()));
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        assert!(matches!(
            load_kernel(&mem, &path, true),
            Err(BootError::KernelFormat { .. })
        ));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            load_kernel(&mem, &path, true),
            Err(BootError::KernelFormat { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
