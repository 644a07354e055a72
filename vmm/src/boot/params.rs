//! Boot parameters: the E820 memory map, the Linux zero page, PVH start_info.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{BootError, LoadedInitrd};
use crate::layout::{
    CMDLINE_ADDR, CMDLINE_ADDR32, EBDA_START, HIMEM_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR,
    PVH_MODLIST_ADDR, RSDP_ADDR, ZERO_PAGE_ADDR,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One E820 entry: (start, size, type).
pub type E820Entry = (u64, u64, u32);

/// The memory map: low RAM up to the EBDA, the BIOS area reserved (MP table,
/// ACPI tables), then every RAM region from 1 MiB up.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for r in mem.iter() {
        let start = r.start_addr().0.max(HIMEM_START);
        let end = r.start_addr().0 + r.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// The Linux boot protocol zero page, written at [`ZERO_PAGE_ADDR`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    // Fields every loader sets (Documentation/x86/boot.rst).
    params.hdr.type_of_loader = 0xff; // "other"
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len)
        .map_err(|_| BootError::Tables(format!("a command line of {cmdline_len} bytes")))?;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    if let Some(i) = initrd {
        // The zero page holds 32 bits: an initrd must sit below 4 GiB.
        let below_4g = |v: u64, what: &str| {
            u32::try_from(v)
                .map_err(|_| BootError::Tables(format!("initrd {what} {v:#x} above 4 GiB")))
        };
        params.hdr.ramdisk_image = below_4g(i.addr, "at")?;
        params.hdr.ramdisk_size = below_4g(i.size, "of size")?;
    }
    params.acpi_rsdp_addr = RSDP_ADDR;
    let map = e820_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(BootError::Tables(format!(
            "{} E820 entries do not fit the zero page",
            map.len()
        )));
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    // At most e820_table's 128 entries (checked above).
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootError::GuestMemory {
            what: "zero page",
            source,
        })
}

/// PVH `hvm_start_info` with the memory map and the initrd as module 0.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: 0x336e_c578, // XEN_HVM_START_MAGIC_VALUE
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: RSDP_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        ..Default::default()
    };
    let map: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        })
        .collect();
    info.memmap_entries = u32::try_from(map.len()).unwrap_or(u32::MAX);
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some(i) = initrd {
        let module = hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::Tables(format!("PVH start info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_the_bios_area_and_covers_high_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn pvh_start_info_is_readable_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        write_pvh_start_info(
            &mem,
            Some(LoadedInitrd {
                addr: 0x100_0000,
                size: 0x1000,
            }),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!(module.paddr, 0x100_0000);
    }
}
