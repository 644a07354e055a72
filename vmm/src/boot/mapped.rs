//! Reading the kernel and the initramfs into guest memory by mapping them.
//!
//! A [`MappedFile`] is what the loaders read from. Where a read's
//! destination in guest memory and the file offset agree within a page,
//! whole pages of the file are mapped there copy-on-write (`MAP_PRIVATE |
//! MAP_FIXED`) instead of copied: no copy and no page faults at start, and
//! every VM booting the same file shares its page cache until it writes
//! (then it gets its own page, as the copy would have given it). What does
//! not line up (a head before a page boundary, the tail past the file's last
//! whole page, a bzImage's protected-mode code at an odd offset) is read as
//! before, so the bytes past the file in its last page stay the guest's
//! zeroes.
//!
//! Only for guest memory that is private anonymous memory of this process:
//! memory shared with another process (a vhost-user backend) would not see
//! the mapped pages. The file must not be truncated while the VM runs (its
//! pages would fault); bulkhead's kernels and initramfs files are written
//! once and published by rename.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PAGE: u64 = 4096;

/// A file the loaders read into guest memory, mapping what lines up.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    len: u64,
    /// Map at all (else every read is a copy).
    share: bool,
    /// Bytes mapped rather than copied so far.
    mapped: u64,
}

impl MappedFile {
    /// `share`: map what lines up; else copy everything, as a plain file.
    pub fn new(file: File, share: bool) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            share,
            mapped: 0,
        })
    }

    /// Bytes mapped rather than copied so far.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Maps `count` bytes (whole pages) of the file at `offset` over `dst`;
    /// whether it did.
    fn map_at(&mut self, dst: *mut u8, count: u64, offset: u64) -> bool {
        let (Ok(len), Ok(off)) = (usize::try_from(count), libc::off_t::try_from(offset)) else {
            return false;
        };
        // SAFETY: `dst..dst+len` lies within the VolatileSlice the caller
        // got from guest memory (checked by the caller: `count` is at most
        // the slice's length), which this process mapped and owns as
        // private anonymous memory; no vCPU has run and nothing holds a
        // reference into those bytes, so replacing their pages with private
        // pages of the file changes only their contents, to what a copy
        // would have written. MAP_FIXED at a page-aligned `dst` (checked).
        let got = unsafe {
            libc::mmap(
                dst.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                off,
            )
        };
        got == dst.cast()
    }
}

impl Read for MappedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for MappedFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for MappedFile {
    /// As much of `buf` as the file holds: guest memory's loaders read a
    /// region in one call, so a head, the mapped pages and a tail all go in
    /// this one.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < buf.len() {
            let step = buf
                .offset(done)
                .and_then(|mut rest| self.read_step(&mut rest));
            match step {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }
}

impl MappedFile {
    /// One step: a head up to a page boundary copied, or whole pages
    /// mapped, or (what does not line up) a plain read.
    fn read_step<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self
            .file
            .stream_position()
            .map_err(VolatileMemoryError::IOError)?;
        let want = buf.len() as u64;
        let dst = buf.ptr_guard_mut().as_ptr();
        let misalign = dst as u64 % PAGE;
        if self.share && misalign == offset % PAGE {
            if misalign != 0 {
                // The head, up to the page boundary: copied; the next read
                // starts aligned.
                let head = usize::try_from((PAGE - misalign).min(want)).unwrap_or(0);
                let mut part = buf.subslice(0, head)?;
                return (&self.file).read_volatile(&mut part);
            }
            let whole = want.min(self.len.saturating_sub(offset)) / PAGE * PAGE;
            if whole > 0 && self.map_at(dst, whole, offset) {
                buf.bitmap()
                    .mark_dirty(0, usize::try_from(whole).unwrap_or(0));
                self.file
                    .seek(SeekFrom::Current(i64::try_from(whole).unwrap_or(0)))
                    .map_err(VolatileMemoryError::IOError)?;
                self.mapped += whole;
                // At most buf.len(), a usize.
                return Ok(usize::try_from(whole).unwrap_or(0));
            }
        }
        (&self.file).read_volatile(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, MappedFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let m = MappedFile::new(File::open(f.path()).unwrap(), true).unwrap();
        (f, m)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 7 % 251).to_le_bytes()[0] + 1)
            .collect()
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn read_back(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn aligned_pages_are_mapped_the_tail_copied_and_the_rest_of_its_page_stays_zero() {
        let bytes = pattern(3 * 4096 + 100);
        let (_f, mut file) = file_of(&bytes);
        let mem = mem();
        mem.read_exact_volatile_from(GuestAddress(0x10000), &mut file, bytes.len())
            .unwrap();
        assert_eq!(file.mapped(), 3 * 4096);
        assert_eq!(read_back(&mem, 0x10000, bytes.len()), bytes);
        assert_eq!(
            read_back(&mem, 0x10000 + bytes.len() as u64, 4096 - 100),
            vec![0u8; 4096 - 100],
            "past the file: the guest's zeroes, not the file's page"
        );
    }

    #[test]
    fn the_guest_writes_its_own_copy_never_the_file() {
        let bytes = pattern(2 * 4096);
        let (f, mut file) = file_of(&bytes);
        let mem = mem();
        mem.read_exact_volatile_from(GuestAddress(0x20000), &mut file, bytes.len())
            .unwrap();
        mem.write_slice(&[0xEE; 16], GuestAddress(0x20000 + 4096))
            .unwrap();
        assert_eq!(read_back(&mem, 0x20000 + 4096, 16), vec![0xEE; 16]);
        assert_eq!(
            std::fs::read(f.path()).unwrap(),
            bytes,
            "the file unchanged"
        );
        // A second VM reading the same file sees the file, not the write.
        let (mem2, mut again) = (
            self::mem(),
            MappedFile::new(File::open(f.path()).unwrap(), true).unwrap(),
        );
        mem2.read_exact_volatile_from(GuestAddress(0x20000), &mut again, bytes.len())
            .unwrap();
        assert_eq!(read_back(&mem2, 0x20000, bytes.len()), bytes);
    }

    #[test]
    fn what_does_not_line_up_is_copied_and_a_head_before_a_boundary_too() {
        let bytes = pattern(5 * 4096);
        // File offset 512, page-aligned destination: all copied.
        let (_f, mut file) = file_of(&bytes);
        file.seek(SeekFrom::Start(512)).unwrap();
        let mem = mem();
        mem.read_exact_volatile_from(GuestAddress(0x30000), &mut file, 4 * 4096)
            .unwrap();
        assert_eq!(file.mapped(), 0);
        assert_eq!(
            read_back(&mem, 0x30000, 4 * 4096),
            bytes[512..512 + 4 * 4096]
        );
        // File offset 100 to 100 past a boundary: the head copied, the
        // pages after it mapped.
        file.seek(SeekFrom::Start(100)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x40000 + 100), &mut file, 4 * 4096)
            .unwrap();
        assert_eq!(file.mapped(), 3 * 4096);
        assert_eq!(
            read_back(&mem, 0x40000 + 100, 4 * 4096),
            bytes[100..100 + 4 * 4096]
        );
    }

    #[test]
    fn not_sharing_copies_everything() {
        let bytes = pattern(3 * 4096 + 5);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let mut file = MappedFile::new(File::open(f.path()).unwrap(), false).unwrap();
        let mem = mem();
        mem.read_exact_volatile_from(GuestAddress(0x60000), &mut file, bytes.len())
            .unwrap();
        assert_eq!(file.mapped(), 0);
        assert_eq!(read_back(&mem, 0x60000, bytes.len()), bytes);
    }

    #[test]
    fn a_read_past_the_end_of_the_file_fails_as_a_copy_would() {
        let bytes = pattern(4096 + 10);
        let (_f, mut file) = file_of(&bytes);
        let mem = mem();
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0x50000), &mut file, 3 * 4096)
            .is_err());
    }
}
