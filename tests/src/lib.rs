//! bulkhead-tests: end-to-end tests and the tools they run on.
//!
//! [`testhost`] runs a command where `/dev/kvm` boots real Linux guests:
//! directly on hosts with VT-x/AMD-V, else inside a QEMU-emulated machine
//! with an emulated AMD CPU (the nested test host, DESIGN.md).

pub mod agent_vm;
pub mod busybox_root;
pub mod cluster_cases;
pub mod etcd;
pub mod guest_initramfs;
pub mod guest_probe;
pub mod net_cases;
pub mod netns;
pub mod run_cases;
pub mod testhost;

/// Serialises tests that boot VMs: each boot costs a full core of emulation,
/// and two side by side on a two-core machine only slow each other down.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
