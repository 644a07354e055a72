//! The one place that wires a VM together: memory, devices, kernel, tables
//! and vCPUs, in the order they depend on each other.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bulkhead_agent_proto::BOOT_STAGE_PORT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot::{self, acpi, mptable, params, BootError, Entry};
use crate::config::{ConfigError, SerialOutput, VmConfig};
use crate::devices::ioapic::{Ioapic, IrqLine};
use crate::devices::legacy::{AcpiPm, BootStagePort, PvPanic, I8042};
use crate::devices::serial::{SerialDevice, SerialOutput as SerialSink};
use crate::devices::virtio::block::{Block, FileDisk};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::{random_mac, Net};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::{Bus, BusError};
use crate::event_loop::{EventLoop, Registry};
use crate::exit::ExitSignal;
use crate::layout::{
    self, IOAPIC_ADDR, IOAPIC_SIZE, IRQ_SERIAL, PORT_ACPI_SLEEP_CONTROL, PORT_COM1, PORT_I8042,
    PORT_PVPANIC, VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::timeline::Timeline;
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("device layout")]
    Bus(#[from] BusError),
    #[error("guest memory of {mib} MiB: {detail}")]
    Memory { mib: u32, detail: String },
    #[error("serial output {path}")]
    SerialFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    #[error("disk {path}")]
    Disk {
        path: String,
        source: std::io::Error,
    },
    #[error("TAP {name}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("vsock socket {path}")]
    Vsock {
        path: String,
        source: std::io::Error,
    },
    #[error("too many virtio devices: at most {0}")]
    TooManyDevices(usize),
}

/// A VM ready to run.
#[derive(Debug)]
pub struct BuiltVm {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub ctx: VcpuContext,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub event_loop: EventLoop,
}

pub fn build(config: &VmConfig) -> Result<BuiltVm, BuildError> {
    config.validate()?;
    let kernel_path = config.kernel.as_ref().ok_or(ConfigError::NoKernel)?;

    let vm = Vm::new()?;
    let mem_bytes = u64::from(config.memory_mib) << 20;
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), crate::convert::u64_to_usize(len)))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|e| BuildError::Memory {
        mib: config.memory_mib,
        detail: e.to_string(),
    })?;
    vm.register_memory(&mem)?;

    let exit = Arc::new(ExitSignal::new()?);
    let timeline = Arc::new(Timeline::default());
    let ioapic_id = mptable::ioapic_id(config.vcpus);
    let ioapic = Arc::new(Mutex::new(Ioapic::new(ioapic_id, vm.msi_sink())));

    let mut mmio = Bus::new();
    mmio.insert(ioapic.clone(), IOAPIC_ADDR, IOAPIC_SIZE, "ioapic")?;

    let mut io = Bus::new();
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        IrqLine::new(ioapic.clone(), IRQ_SERIAL),
        serial_sink(&config.serial)?,
    )));
    io.insert(serial.clone(), u64::from(PORT_COM1), 8, "serial")?;
    io.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(PORT_I8042),
        5,
        "i8042",
    )?;
    io.insert(
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        u64::from(PORT_ACPI_SLEEP_CONTROL),
        3,
        "acpi-pm",
    )?;
    io.insert(
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        u64::from(PORT_PVPANIC),
        1,
        "pvpanic",
    )?;
    io.insert(
        Arc::new(Mutex::new(BootStagePort::new(timeline.clone()))),
        u64::from(BOOT_STAGE_PORT),
        1,
        "boot-stage",
    )?;

    let mut event_loop = EventLoop::new()?;
    let mut virtio = VirtioSlots {
        mem: &mem,
        ioapic: &ioapic,
        mmio: &mut mmio,
        event_loop: &mut event_loop,
        declared: Vec::new(),
    };
    for (i, d) in config.disks.iter().enumerate() {
        let disk = FileDisk::open(&d.path, d.read_only).map_err(|source| BuildError::Disk {
            path: d.path.display().to_string(),
            source,
        })?;
        virtio.add(Box::new(Block::new(
            Box::new(disk),
            d.read_only,
            &format!("bulkhead-disk{i}"),
        )))?;
    }
    if let Some(n) = &config.net {
        let tap_err = |source| BuildError::Tap {
            name: n.tap.clone(),
            source,
        };
        let tap = Tap::open(&n.tap).map_err(tap_err)?;
        let mac = n.mac.map(|m| m.0).unwrap_or_else(random_mac);
        virtio.add(Box::new(
            Net::new(tap, mac, &virtio.registry()).map_err(tap_err)?,
        ))?;
    }
    if let Some(v) = &config.vsock {
        let vsock =
            Vsock::new(u64::from(v.cid), &v.uds_path, virtio.registry()).map_err(|source| {
                BuildError::Vsock {
                    path: v.uds_path.display().to_string(),
                    source,
                }
            })?;
        virtio.add(Box::new(vsock))?;
    }
    virtio.add(Box::new(Rng::new()))?;
    let virtio_devices = virtio.declared;

    let share = config.share_boot_files;
    // Huge pages while the kernel and the initramfs are read in; small ones
    // for whatever the guest touches later (its idle memory stays small).
    advise_huge_pages(&mem, libc::MADV_HUGEPAGE);
    let kernel = boot::load_kernel(&mem, kernel_path, share)?;
    let initrd = match &config.initrd {
        Some(p) => Some(boot::load_initrd(
            &mem,
            p,
            (kernel.end, boot::initrd_addr_max(&kernel.entry)),
            share,
        )?),
        None => None,
    };
    advise_huge_pages(&mem, libc::MADV_NOHUGEPAGE);
    let cmdline = boot::build_cmdline(config.cmdline.as_deref(), &[])?;
    boot::write_cmdline(&mem, &cmdline)?;
    match kernel.entry {
        Entry::Pvh(_) => params::write_pvh_start_info(&mem, initrd)?,
        Entry::Linux64 { header, .. } => {
            params::write_zero_page(&mem, header, cmdline.len(), initrd)?
        }
    }
    mptable::write(&mem, config.vcpus)?;
    acpi::write(&mem, config.vcpus, ioapic_id, &virtio_devices)?;

    let supported = vm.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = Vcpu::new(vm.create_vcpu(id)?, id);
        vcpu.configure(&mem, &kernel.entry, config.vcpus, &supported)?;
        vcpus.push(vcpu);
    }

    let ctx = VcpuContext {
        io: Arc::new(io),
        mmio: Arc::new(mmio),
        exit,
        timeline,
    };
    Ok(BuiltVm {
        vm,
        mem,
        vcpus,
        ctx,
        serial,
        event_loop,
    })
}

/// Hands out virtio-mmio windows and IRQs in order, and records each
/// device for the DSDT.
struct VirtioSlots<'a> {
    mem: &'a GuestMemoryMmap,
    ioapic: &'a Arc<Mutex<Ioapic>>,
    mmio: &'a mut Bus,
    event_loop: &'a mut EventLoop,
    declared: Vec<acpi::MmioDevice>,
}

/// What a virtio device's exits are counted under.
fn virtio_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "virtio-net",
        2 => "virtio-blk",
        4 => "virtio-rng",
        19 => "virtio-vsock",
        _ => "virtio",
    }
}

impl VirtioSlots<'_> {
    /// The event registry of the next device added.
    fn registry(&self) -> Registry {
        self.event_loop
            .registry(self.event_loop.next_device_index())
    }

    fn add(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), BuildError> {
        let n = self.declared.len();
        let irq = *VIRTIO_IRQS
            .get(n)
            .ok_or(BuildError::TooManyDevices(VIRTIO_IRQS.len()))?;
        let base = VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE;
        let interrupt = Arc::new(VirtioInterrupt::new(IrqLine::new(self.ioapic.clone(), irq)));
        let name = virtio_name(device.device_type());
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            interrupt,
        )));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE, name)?;
        self.event_loop.add_device(transport);
        self.declared.push(acpi::MmioDevice {
            base,
            size: VIRTIO_MMIO_SIZE,
            irq,
        });
        Ok(())
    }
}

fn serial_sink(out: &SerialOutput) -> Result<SerialSink, BuildError> {
    Ok(match out {
        SerialOutput::Stdout => {
            SerialSink::new(Some(Box::new(std::io::stdout()) as Box<dyn Write + Send>))
        }
        SerialOutput::None => SerialSink::new(None),
        SerialOutput::File(path) => {
            let f = File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::SerialFile {
                    path: path.display().to_string(),
                    source,
                })?;
            SerialSink::new(Some(Box::new(f)))
        }
    })
}

/// `MADV_HUGEPAGE` or `MADV_NOHUGEPAGE` over guest memory. With the first
/// (where the host's THP is `madvise` or `always`) the kernel and the
/// initramfs are read in with a fault per 2 MiB instead of one per 4 KiB;
/// the second keeps the guest's own later faults small (and khugepaged
/// away), so an idle VM's memory stays what it touched. Best effort: a host
/// without THP keeps small pages.
fn advise_huge_pages(mem: &GuestMemoryMmap, advice: libc::c_int) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for r in mem.iter() {
        let Ok(addr) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = crate::convert::u64_to_usize(r.len());
        // SAFETY: the range is exactly one guest memory region this
        // process mapped; (NO)HUGEPAGE changes how its pages are backed,
        // never their contents.
        unsafe {
            libc::madvise(addr.cast(), len, advice);
        }
    }
}
