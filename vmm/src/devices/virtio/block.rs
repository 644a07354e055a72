//! virtio-blk: read-only and read-write disks backed by a host file.
//!
//! A request is a descriptor chain: a 16-byte header (type, reserved,
//! sector) in readable descriptors, data, then one writable status byte.
//! Everything in it is guest input: a malformed chain, an access past the
//! end of the disk or a write to a read-only disk fails that request (status
//! IOERR/UNSUPP, or no status when there is nowhere to put one), never the
//! VMM. Data moves through a fixed bounce buffer, so a huge request costs
//! time, not memory.

use crate::convert::u64_to_usize;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    drain_queue, read_config_bytes, ActivateError, Activation, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const BOUNCE: usize = 64 * 1024;
const ID_BYTES: usize = 20;

const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// What a disk is to the device; a file in the VMM, memory in tests.
pub trait DiskBackend: Send {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
}

/// A shared disk (tests keep a handle to look at what the guest wrote).
impl<T: DiskBackend + Sync> DiskBackend for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        (**self).flush()
    }
}

#[derive(Debug)]
pub struct FileDisk {
    file: File,
    size: u64,
}

impl FileDisk {
    /// `path` is a file, or `fd:N` for one passed in open (a jailed VMM
    /// sees no disk path at all): a writable disk needs an fd opened for
    /// writing.
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = match path.to_str().and_then(|p| p.strip_prefix("fd:")) {
            Some(n) => inherited(n, read_only)?,
            None => File::options().read(true).write(!read_only).open(path)?,
        };
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

/// Takes fd `n` (the `fd:N` contract: passed to us to own), checking that
/// it is open and opened for what the disk needs.
fn inherited(n: &str, read_only: bool) -> std::io::Result<File> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let fd: i32 = n
        .parse()
        .map_err(|_| bad(format!("fd:{n}: not fd:<number>")))?;
    if fd < 3 {
        return Err(bad(format!(
            "fd:{fd}: stdin, stdout and stderr are not disks"
        )));
    }
    // SAFETY: F_GETFL only queries the number; an invalid fd fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if !read_only && flags & libc::O_ACCMODE != libc::O_RDWR {
        return Err(bad(format!(
            "fd:{fd}: a writable disk needs an fd opened read-write"
        )));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: the caller passed this fd for us to own; it is open (checked).
    Ok(File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
}

impl DiskBackend for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The outcome of one request: the status written (if any) and the bytes
/// written into guest memory, status included (the used-ring length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: Option<u8>,
    pub used_len: u32,
}

/// A disk as requests see it: the backend, its read-only flag, the id
/// GET_ID returns, and the bounce buffer data moves through (allocated once).
pub struct Backend {
    disk: Box<dyn DiskBackend>,
    read_only: bool,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("read_only", &self.read_only)
            .field("size", &self.disk.size())
            .finish()
    }
}

impl Backend {
    /// `id` is what VIRTIO_BLK_T_GET_ID returns (the guest's
    /// /sys/block/vdX/serial), cut to 20 bytes.
    pub fn new(disk: Box<dyn DiskBackend>, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        for (d, s) in id_bytes.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        Self {
            disk,
            read_only,
            id: id_bytes,
            bounce: vec![0u8; BOUNCE],
        }
    }

    pub fn size(&self) -> u64 {
        self.disk.size()
    }

    /// Runs one request chain.
    pub fn process_request(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Completion {
        let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(mem), chain.writer(mem))
        else {
            return Completion {
                status: None,
                used_len: 0,
            };
        };
        // The status byte is the last writable byte; without one there is no
        // way to answer, and the request is dropped.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            return Completion {
                status: None,
                used_len: 0,
            };
        };
        let Ok(mut status_writer) = writer.split_at(data_len) else {
            return Completion {
                status: None,
                used_len: 0,
            };
        };
        let (status, data_written) = self.execute(&mut reader, &mut writer);
        let ok = status_writer.write_all(&[status]).is_ok();
        Completion {
            status: ok.then_some(status),
            used_len: crate::convert::len_u32(data_written + usize::from(ok)),
        }
    }

    /// (status, bytes written to the guest's data buffers)
    fn execute(&mut self, reader: &mut Reader<'_>, writer: &mut Writer<'_>) -> (u8, usize) {
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
        match kind {
            T_IN => {
                let len = writer.available_bytes() as u64;
                let Some(offset) = checked_range(sector, len, self.disk.size()) else {
                    return (S_IOERR, 0);
                };
                self.copy_from_disk(offset, len, writer)
            }
            T_OUT => {
                if self.read_only {
                    return (S_IOERR, 0);
                }
                let len = reader.available_bytes() as u64;
                let Some(offset) = checked_range(sector, len, self.disk.size()) else {
                    return (S_IOERR, 0);
                };
                (self.copy_to_disk(offset, len, reader), 0)
            }
            T_FLUSH => (
                if self.disk.flush().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                match writer.write_all(&self.id[..n]) {
                    Ok(()) => (S_OK, n),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }

    fn copy_from_disk(&mut self, offset: u64, len: u64, writer: &mut Writer<'_>) -> (u8, usize) {
        let mut done = 0u64;
        while done < len {
            let n = BOUNCE.min(u64_to_usize(len - done));
            let buf = &mut self.bounce[..n];
            if self.disk.read_at(buf, offset + done).is_err() || writer.write_all(buf).is_err() {
                return (S_IOERR, u64_to_usize(done));
            }
            done += n as u64;
        }
        (S_OK, u64_to_usize(done))
    }

    fn copy_to_disk(&mut self, offset: u64, len: u64, reader: &mut Reader<'_>) -> u8 {
        let mut done = 0u64;
        while done < len {
            let n = BOUNCE.min(u64_to_usize(len - done));
            let buf = &mut self.bounce[..n];
            if reader.read_exact(buf).is_err() || self.disk.write_at(buf, offset + done).is_err() {
                return S_IOERR;
            }
            done += n as u64;
        }
        S_OK
    }
}

/// The byte offset of `sector` if `len` bytes from there fit on the disk;
/// lengths must be whole sectors.
fn checked_range(sector: u64, len: u64, disk_size: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (len.is_multiple_of(SECTOR_SIZE) && end <= disk_size).then_some(offset)
}

/// A disk in memory (tests and fuzzing); out-of-range access is an error.
#[derive(Debug)]
pub struct MemDisk(std::sync::Mutex<Vec<u8>>);

impl MemDisk {
    pub fn new(data: Vec<u8>) -> Self {
        Self(std::sync::Mutex::new(data))
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn range(&self, offset: u64, len: usize) -> std::io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= u64_to_usize(self.size()));
        end.map(|e| start..e)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
}

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap_or_else(|p| p.into_inner())[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.0.lock().unwrap_or_else(|p| p.into_inner())[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
pub struct Block {
    backend: Backend,
    config: [u8; 8],
    active: Option<Activation>,
}

impl Block {
    /// See [`Backend::new`].
    pub fn new(disk: Box<dyn DiskBackend>, read_only: bool, id: &str) -> Self {
        let backend = Backend::new(disk, read_only, id);
        let capacity = backend.size() / SECTOR_SIZE;
        Self {
            backend,
            config: capacity.to_le_bytes(),
            active: None,
        }
    }

    fn process_queue(&mut self) {
        let Self {
            backend, active, ..
        } = self;
        if let Some(a) = active {
            drain_queue(a, 0, |mem, chain| {
                backend.process_request(mem, chain).used_len
            });
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_FLUSH
            | if self.backend.read_only {
                VIRTIO_BLK_F_RO
            } else {
                0
            }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation);
        Ok(())
    }

    fn queue_notify(&mut self, _index: usize) {
        self.process_queue();
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;

    #[test]
    fn disks_passed_as_fds_are_checked_before_use() {
        use std::io::Write as _;
        use std::os::fd::IntoRawFd;
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&[7u8; 1024]).unwrap_or_else(|e| panic!("{e}"));
        let ro = std::fs::File::open(f.path()).unwrap_or_else(|e| panic!("{e}"));
        let ro_fd = ro.into_raw_fd();
        // A read-only fd cannot back a writable disk (and stays ours).
        assert!(FileDisk::open(Path::new(&format!("fd:{ro_fd}")), false).is_err());
        let disk = FileDisk::open(Path::new(&format!("fd:{ro_fd}")), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(disk.size(), 1024);
        let mut b = [0u8; 4];
        disk.read_at(&mut b, 100).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b, [7; 4]);
        for bad in ["fd:x", "fd:", "fd:-1", "fd:1", "fd:999999"] {
            assert!(FileDisk::open(Path::new(bad), true).is_err(), "{bad}");
        }
    }
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(addr)).unwrap();
    }

    /// Runs one chain made of `descs`.
    fn run(
        mem: &GuestMemoryMmap,
        disk: &std::sync::Arc<MemDisk>,
        read_only: bool,
        descs: &[RawDescriptor],
    ) -> Completion {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        Backend::new(Box::new(disk.clone()), read_only, "disk-id-0123456789ab")
            .process_request(mem, chain)
    }

    fn disk(sectors: usize) -> std::sync::Arc<MemDisk> {
        std::sync::Arc::new(MemDisk::new(
            (0..sectors * 512)
                .map(|i| (i / 512).to_le_bytes()[0])
                .collect(),
        ))
    }

    #[test]
    fn reads_writes_flushes_and_ids() {
        let m = mem();
        let d = disk(8);
        header(&m, 0x4000, T_IN, 2);
        let c = run(
            &m,
            &d,
            false,
            &[
                desc(0x4000, 16, F_NEXT),
                desc(0x5000, 1024, F_NEXT | F_WRITE),
                desc(0x6000, 1, F_WRITE),
            ],
        );
        assert_eq!(
            c,
            Completion {
                status: Some(S_OK),
                used_len: 1025
            }
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 2);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x5000 + 512)).unwrap(), 3);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x6000)).unwrap(), S_OK);

        m.write_slice(&[0x77u8; 512], GuestAddress(0x7000)).unwrap();
        header(&m, 0x4000, T_OUT, 5);
        let c = run(
            &m,
            &d,
            false,
            &[
                desc(0x4000, 16, F_NEXT),
                desc(0x7000, 512, F_NEXT),
                desc(0x6000, 1, F_WRITE),
            ],
        );
        assert_eq!(c.status, Some(S_OK));
        assert_eq!(d.contents()[5 * 512], 0x77);

        header(&m, 0x4000, T_FLUSH, 0);
        assert_eq!(
            run(
                &m,
                &d,
                false,
                &[desc(0x4000, 16, F_NEXT), desc(0x6000, 1, F_WRITE)]
            )
            .status,
            Some(S_OK)
        );

        header(&m, 0x4000, T_GET_ID, 0);
        let c = run(
            &m,
            &d,
            false,
            &[
                desc(0x4000, 16, F_NEXT),
                desc(0x5000, 20, F_NEXT | F_WRITE),
                desc(0x6000, 1, F_WRITE),
            ],
        );
        assert_eq!(
            c,
            Completion {
                status: Some(S_OK),
                used_len: 21
            }
        );
        assert_eq!(
            &m.read_obj::<[u8; 7]>(GuestAddress(0x5000)).unwrap(),
            b"disk-id"
        );
    }

    #[test]
    fn out_of_range_unaligned_and_read_only_fail_the_request() {
        let m = mem();
        let d = disk(4);
        for (kind, sector, len, ro) in [
            (T_IN, 4, 512, false),              // past the end
            (T_IN, 3, 1024, false),             // straddles the end
            (T_IN, u64::MAX / 256, 512, false), // offset overflows
            (T_IN, 0, 100, false),              // not whole sectors
            (T_OUT, 0, 512, true),              // read-only disk
        ] {
            header(&m, 0x4000, kind, sector);
            let flags = if kind == T_IN {
                F_NEXT | F_WRITE
            } else {
                F_NEXT
            };
            let c = run(
                &m,
                &d,
                ro,
                &[
                    desc(0x4000, 16, F_NEXT),
                    desc(0x5000, len, flags),
                    desc(0x6000, 1, F_WRITE),
                ],
            );
            assert_eq!(c.status, Some(S_IOERR), "{kind} {sector} {len} {ro}");
        }
        assert_eq!(d.contents()[0], 0, "nothing written to the read-only disk");
        header(&m, 0x4000, 0x55, 0);
        assert_eq!(
            run(
                &m,
                &d,
                false,
                &[desc(0x4000, 16, F_NEXT), desc(0x6000, 1, F_WRITE)]
            )
            .status,
            Some(S_UNSUPP)
        );
    }

    #[test]
    fn malformed_chains_get_no_status_or_ioerr_never_a_panic() {
        let m = mem();
        let d = disk(4);
        header(&m, 0x4000, T_IN, 0);
        // No writable byte at all: nowhere to put a status.
        assert_eq!(
            run(&m, &d, false, &[desc(0x4000, 16, 0)]),
            Completion {
                status: None,
                used_len: 0
            }
        );
        // Header too short.
        assert_eq!(
            run(
                &m,
                &d,
                false,
                &[desc(0x4000, 8, F_NEXT), desc(0x6000, 1, F_WRITE)]
            )
            .status,
            Some(S_IOERR)
        );
        // Buffers outside guest memory.
        let c = run(
            &m,
            &d,
            false,
            &[
                desc(0x4000, 16, F_NEXT),
                desc(0xfff_0000, 512, F_NEXT | F_WRITE),
                desc(0x6000, 1, F_WRITE),
            ],
        );
        assert_eq!(c.status, None);
        // Status descriptor outside guest memory.
        let c = run(
            &m,
            &d,
            false,
            &[desc(0x4000, 16, F_NEXT), desc(0x1_0000_0000, 1, F_WRITE)],
        );
        assert_eq!(c.status, None);
        // A huge length on a small disk: refused, nothing allocated.
        let c = run(
            &m,
            &d,
            false,
            &[
                desc(0x4000, 16, F_NEXT),
                desc(0x5000, u32::MAX, F_NEXT | F_WRITE),
                desc(0x6000, 1, F_WRITE),
            ],
        );
        assert_eq!(c.status, None);
    }

    #[test]
    fn a_looping_chain_is_consumed_without_hanging() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let (interrupt, _) = crate::devices::virtio::mmio::tests::interrupt();
        let mut blk = Block::new(Box::new(disk(4)), false, "x");
        header(&m, 0x4000, T_IN, 0);
        // Descriptor 0 points at itself; descriptor 1 loops back to 0.
        let raw =
            |addr, len, flags, next| RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        vq.add_desc_chains(&[raw(0x4000, 16, F_NEXT, 0)], 0)
            .unwrap();
        vq.add_desc_chains(&[raw(0x5000, 1, F_NEXT | F_WRITE, 0)], 1)
            .unwrap();
        let q: Queue = vq.create_queue().unwrap();
        blk.activate(Activation {
            mem: m.clone(),
            queues: vec![q],
            interrupt,
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        blk.queue_notify(0);
        // Both chains come back (failed, nothing written), and the loop ends.
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    }

    #[test]
    fn the_device_serves_a_queue_and_interrupts() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let (interrupt, counter) = crate::devices::virtio::mmio::tests::interrupt();
        let mut blk = Block::new(Box::new(disk(4)), true, "x");
        assert_ne!(blk.features() & VIRTIO_BLK_F_RO, 0);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4);
        header(&m, 0x4000, T_IN, 1);
        let linked =
            |addr, len, flags, next| RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        vq.add_desc_chains(
            &[
                linked(0x4000, 16, F_NEXT, 1),
                linked(0x5000, 512, F_NEXT | F_WRITE, 2),
                linked(0x6000, 1, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let q: Queue = vq.create_queue().unwrap();
        blk.activate(Activation {
            mem: m.clone(),
            queues: vec![q],
            interrupt,
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        blk.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(*counter.0.lock().unwrap(), 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 1);
    }
}
