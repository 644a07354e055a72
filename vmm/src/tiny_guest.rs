//! Tiny guests for KVM smoke tests and the boot benchmark: a few bytes of
//! 32-bit x86 machine code wrapped in an ELF with a Xen PVH note, so the VMM
//! loads and enters them exactly as it does a Linux kernel.
//!
//! They run on any /dev/kvm, `kvm_pvm` included (where Linux does not boot).

use crate::layout::{
    ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, PORT_ACPI_RESET, PORT_ACPI_SLEEP_CONTROL, PORT_COM1,
    PORT_PVPANIC,
};

/// Where the code is loaded and entered.
pub const LOAD_ADDR: u32 = 0x10_0000;

/// A program under construction.
#[derive(Debug, Default, Clone)]
pub struct Program {
    code: Vec<u8>,
}

impl Program {
    pub fn new() -> Self {
        Self::default()
    }

    /// `mov dx, port; mov al, value; out dx, al`
    pub fn out8(mut self, port: u16, value: u8) -> Self {
        self.code.extend_from_slice(&[0x66, 0xba]);
        self.code.extend_from_slice(&port.to_le_bytes());
        self.code.extend_from_slice(&[0xb0, value, 0xee]);
        self
    }

    /// Writes `text` to COM1, a byte at a time.
    pub fn print(mut self, text: &str) -> Self {
        self.code.extend_from_slice(&[0x66, 0xba]);
        self.code.extend_from_slice(&PORT_COM1.to_le_bytes());
        for b in text.bytes() {
            self.code.extend_from_slice(&[0xb0, b, 0xee]);
        }
        self
    }

    /// `mov dword [addr], value`
    pub fn mmio_write32(mut self, addr: u32, value: u32) -> Self {
        self.code.extend_from_slice(&[0xc7, 0x05]);
        self.code.extend_from_slice(&addr.to_le_bytes());
        self.code.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Reads a dword at `addr` and prints `ok` if it equals `expect`, else `bad`.
    pub fn mmio_check32(mut self, addr: u32, expect: u32, ok: &str, bad: &str) -> Self {
        self.code.push(0xa1); // mov eax, [addr]
        self.code.extend_from_slice(&addr.to_le_bytes());
        self.code.push(0x3d); // cmp eax, imm32
        self.code.extend_from_slice(&expect.to_le_bytes());
        let ok_part = Program::new().print(ok).code;
        let bad_part = Program::new().print(bad).code;
        // jne bad; <ok>; jmp end; bad: <bad>; end:
        self.code.extend_from_slice(&[0x0f, 0x85]);
        self.code
            .extend_from_slice(&crate::convert::len_u32(ok_part.len() + 5).to_le_bytes());
        self.code.extend_from_slice(&ok_part);
        self.code.push(0xe9);
        self.code
            .extend_from_slice(&crate::convert::len_u32(bad_part.len()).to_le_bytes());
        self.code.extend_from_slice(&bad_part);
        self
    }

    /// `iterations` pseudo-random 32-bit writes (xorshift32 from `seed`):
    /// each to a random register of the first 8 virtio-mmio windows, to a
    /// random dword of guest RAM in [2 MiB, 2.25 MiB) (where [`Self::virtio_init`]
    /// puts the rings: forged descriptor chains, their values kept below
    /// 2.25 MiB so they point into guest RAM), and a byte to a random
    /// COM1 register. No stack, no paging: the code at 1 MiB is never hit.
    pub fn hostile_writes(mut self, seed: u32, iterations: u32) -> Self {
        let c = &mut self.code;
        c.push(0xb8); // mov eax, seed
        c.extend_from_slice(&seed.max(1).to_le_bytes());
        c.push(0xbe); // mov esi, iterations
        c.extend_from_slice(&iterations.max(1).to_le_bytes());
        let top = c.len();
        c.extend_from_slice(&[
            0x89, 0xc1, 0xc1, 0xe1, 0x0d, 0x31, 0xc8, // x ^= x << 13
            0x89, 0xc1, 0xc1, 0xe9, 0x11, 0x31, 0xc8, // x ^= x >> 17
            0x89, 0xc1, 0xc1, 0xe1, 0x05, 0x31, 0xc8, // x ^= x << 5
            0x89, 0xc7, 0xc1, 0xc7, 0x07, // edi = rol(x, 7): the value
            0x89, 0xc2, 0xc1, 0xea, 0x0c, 0x83, 0xe2, 0x07, 0xc1, 0xe2,
            0x0c, // edx = ((x >> 12) & 7) << 12: the window
            0x89, 0xc3, 0x81, 0xe3, 0xfc, 0x01, 0x00, 0x00, // ebx = x & 0x1fc: the register
            0x01, 0xda, 0x81, 0xc2, 0x00, 0x00, 0x00, 0xd0, // edx += ebx + 0xd000_0000
            0x89, 0x3a, // mov [edx], edi
            0x89, 0xc2, 0x81, 0xe2, 0xfc, 0xff, 0x03, 0x00, 0x81, 0xc2, 0x00, 0x00, 0x20,
            0x00, // edx = (x & 0x3fffc) + 2 MiB
            0x81, 0xe7, 0xff, 0xff, 0x23,
            0x00, // edi &= 0x23ffff: addresses and lengths that land in guest RAM
            0x89, 0x3a, // mov [edx], edi
            0x89, 0xc2, 0xc1, 0xea, 0x18, 0x83, 0xe2, 0x07, 0x81, 0xc2, 0xf8, 0x03, 0x00,
            0x00, // edx = ((x >> 24) & 7) + 0x3f8
            0xee, // out dx, al
            0x4e, // dec esi
            0x0f, 0x85, // jnz top
        ]);
        // A short backward jump: both offsets are small.
        let back = c.len() + 4 - top;
        let rel = -i32::try_from(back).unwrap_or(i32::MAX);
        c.extend_from_slice(&rel.to_le_bytes());
        self
    }

    /// The virtio-mmio driver handshake on the first 8 windows, rings at
    /// 2 MiB: reset, ACKNOWLEDGE|DRIVER, FEATURES_OK, queue 0 of 16 entries,
    /// ready, DRIVER_OK, then a notify. What comes after runs "after DRIVER_OK".
    pub fn virtio_init(mut self) -> Self {
        for slot in 0..8u32 {
            let base = 0xd000_0000 + slot * 0x1000;
            self = self
                .mmio_write32(base + 0x70, 0)
                .mmio_write32(base + 0x70, 1)
                .mmio_write32(base + 0x70, 3);
            // VIRTIO_F_VERSION_1 (bit 32), nothing else.
            self = self
                .mmio_write32(base + 0x24, 1)
                .mmio_write32(base + 0x20, 1)
                .mmio_write32(base + 0x24, 0)
                .mmio_write32(base + 0x20, 0)
                .mmio_write32(base + 0x70, 0xb);
            for q in 0..3u32 {
                let ring = 0x20_0000 + q * 0x1_0000;
                self = self
                    .mmio_write32(base + 0x30, q)
                    .mmio_write32(base + 0x38, 16)
                    .mmio_write32(base + 0x80, ring)
                    .mmio_write32(base + 0x84, 0)
                    .mmio_write32(base + 0x90, ring + 0x1000)
                    .mmio_write32(base + 0x94, 0)
                    .mmio_write32(base + 0xa0, ring + 0x2000)
                    .mmio_write32(base + 0xa4, 0)
                    .mmio_write32(base + 0x44, 1);
            }
            self = self.mmio_write32(base + 0x70, 0xf);
            for q in 0..3u32 {
                self = self.mmio_write32(base + 0x50, q);
            }
        }
        self
    }

    /// ACPI S5 through the sleep control register.
    pub fn power_off(self) -> Self {
        self.out8(
            PORT_ACPI_SLEEP_CONTROL,
            (ACPI_S5_SLEEP_TYPE << 2) | (1 << 5),
        )
    }

    /// Reset through the i8042 (what `reboot=k` does).
    pub fn reset_i8042(self) -> Self {
        self.out8(0x64, 0xfe)
    }

    /// Reset through the ACPI reset register.
    pub fn reset_acpi(self) -> Self {
        self.out8(PORT_ACPI_RESET, ACPI_RESET_VALUE)
    }

    /// What a panicking Linux writes to pvpanic.
    pub fn panic(self) -> Self {
        self.out8(PORT_PVPANIC, 1)
    }

    /// `ud2` with no IDT: #UD, #DF, then a triple fault.
    pub fn triple_fault(mut self) -> Self {
        self.code.extend_from_slice(&[0x0f, 0x0b]);
        self
    }

    /// Burns time: `mov ecx, iterations; loop $`.
    pub fn delay(mut self, iterations: u32) -> Self {
        self.code.push(0xb9);
        self.code
            .extend_from_slice(&iterations.max(1).to_le_bytes());
        self.code.extend_from_slice(&[0xe2, 0xfe]);
        self
    }

    /// Spins forever (for signal tests).
    pub fn spin(mut self) -> Self {
        self.code.extend_from_slice(&[0xeb, 0xfe]);
        self
    }

    /// Ends with `hlt` in a loop, should the VM not stop on the last write.
    pub fn elf(mut self) -> Vec<u8> {
        self.code.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
        pvh_elf(&self.code)
    }

    /// The same without the PVH note: the VMM enters it through the 64-bit
    /// Linux boot protocol (long mode, paging on). The port and MMIO
    /// instructions this builder emits mean the same in 64-bit mode.
    pub fn elf_64bit_entry(mut self) -> Vec<u8> {
        self.code.extend_from_slice(&[0xf4, 0xeb, 0xfd]);
        elf(&self.code, false)
    }
}

/// An ELF64 image: one PT_LOAD with `code` at [`LOAD_ADDR`] and a PT_NOTE
/// holding XEN_ELFNOTE_PHYS32_ENTRY = [`LOAD_ADDR`].
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    elf(code, true)
}

fn elf(code: &[u8], pvh_note: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    // Without the PVH note the note segment holds a different Xen note type.
    let note_type: u32 = if pvh_note { 18 } else { 6 };
    let note: Vec<u8> = [
        4u32.to_le_bytes(),
        4u32.to_le_bytes(),
        note_type.to_le_bytes(),
    ] // namesz, descsz, type (18: XEN_ELFNOTE_PHYS32_ENTRY)
    .concat()
    .into_iter()
    .chain(*b"Xen\0")
    .chain(LOAD_ADDR.to_le_bytes())
    .collect();
    let code_off = 0x100;

    let mut out = Vec::with_capacity(code_off + code.len());
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, little endian, version 1
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&u64::from(LOAD_ADDR).to_le_bytes()); // e_entry
    out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    let header_size = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    for v in [header_size(EHDR), header_size(PHDR), 2, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        out.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |out: &mut Vec<u8>,
                kind: u32,
                flags: u32,
                off: usize,
                addr: u64,
                size: usize,
                align: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(off as u64).to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(size as u64).to_le_bytes());
        out.extend_from_slice(&(size as u64).to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
    };
    phdr(
        &mut out,
        1,
        5,
        code_off,
        u64::from(LOAD_ADDR),
        code.len(),
        16,
    ); // PT_LOAD, R+X
    phdr(&mut out, 4, 4, note_off, 0, note.len(), 4); // PT_NOTE
    out.extend_from_slice(&note);
    out.resize(code_off, 0);
    out.extend_from_slice(code);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{load_kernel, Entry};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn the_elf_loads_through_its_pvh_entry_or_the_64_bit_one() {
        let path = std::env::temp_dir().join(format!("bulkhead-tiny-{}", std::process::id()));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        std::fs::write(&path, Program::new().print("hi").power_off().elf()).unwrap();
        let k = load_kernel(&mem, &path, false).unwrap();
        assert!(matches!(k.entry, Entry::Pvh(GuestAddress(a)) if a == u64::from(LOAD_ADDR)));
        assert_eq!(
            mem.read_obj::<[u8; 4]>(GuestAddress(u64::from(LOAD_ADDR)))
                .unwrap(),
            [0x66, 0xba, 0xf8, 0x03]
        );
        std::fs::write(&path, Program::new().power_off().elf_64bit_entry()).unwrap();
        let k = load_kernel(&mem, &path, false).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(k.entry, Entry::Linux64 { entry: GuestAddress(a), header: None } if a == u64::from(LOAD_ADDR))
        );
    }

    #[test]
    fn branches_skip_the_other_message() {
        let p = Program::new().mmio_check32(0xfec0_0010, 7, "Y", "N");
        // mov eax,[m] (5) + cmp (5) + jne rel32 (6) + ok (4+3) + jmp rel32 (5) + bad (4+3)
        assert_eq!(p.code.len(), 5 + 5 + 6 + 7 + 5 + 7);
        assert_eq!(
            u32::from_le_bytes(p.code[12..16].try_into().unwrap()),
            7 + 5
        );
    }
}
