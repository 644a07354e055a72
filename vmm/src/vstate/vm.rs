//! The KVM VM: split irqchip (in-kernel LAPICs, userspace IOAPIC, no PIT),
//! guest memory slots, MSI injection.

use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_msi, kvm_userspace_memory_region, CpuId, KVM_CAP_SPLIT_IRQCHIP,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::devices::ioapic::{Msi, MsiSink};
use crate::layout::IOAPIC_PINS;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("open /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Addresses KVM needs for Intel real-mode support, placed in the MMIO hole
/// just below the IOAPIC, away from RAM and devices.
const TSS_ADDRESS: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
}

impl Vm {
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        // Split irqchip: the LAPICs in the kernel, the IOAPIC here, no PIC
        // and no PIT. (A full in-kernel irqchip + PIT makes the first memory
        // slot change and VM teardown take milliseconds; see docs/DESIGN.md.)
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = IOAPIC_PINS as u64;
        fd.enable_cap(&cap)
            .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
        })
    }

    /// Registers every region of `mem` as a memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Kvm {
                    what: "guest memory region has no host mapping",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
            let r = kvm_userspace_memory_region {
                slot: crate::convert::len_u32(slot),
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which outlives
            // the VM (the builder keeps both until the process exits), and no
            // two slots overlap (GuestMemoryMmap refuses overlapping regions).
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Where the IOAPIC sends MSIs.
    pub fn msi_sink(&self) -> Arc<dyn MsiSink> {
        Arc::new(KvmMsi(self.fd.clone()))
    }
}

/// KVM_SIGNAL_MSI.
struct KvmMsi(Arc<VmFd>);

impl MsiSink for KvmMsi {
    fn send(&self, msi: Msi) -> std::io::Result<()> {
        let m = kvm_msi {
            address_lo: crate::convert::lo32(msi.address),
            address_hi: crate::convert::hi32(msi.address),
            data: msi.data,
            ..Default::default()
        };
        self.0
            .signal_msi(m)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
