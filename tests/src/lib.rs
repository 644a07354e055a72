//! bulkhead-tests: end-to-end tests and the tools they run on.
//!
//! [`testhost`] runs a command where `/dev/kvm` boots real Linux guests:
//! directly on hosts with VT-x/AMD-V, else inside a QEMU-emulated machine
//! with an emulated AMD CPU (the nested test host, docs/DESIGN.md).

pub mod agent_vm;
pub mod busybox_root;
pub mod cluster_across;
pub mod cluster_cases;
pub mod copy_cases;
pub mod etcd;
pub mod guest_initramfs;
pub mod guest_probe;
pub mod net_cases;
pub mod netns;
pub mod run_cases;
pub mod testhost;
pub mod volume_cases;

/// Serialises tests that boot VMs: each boot costs a full core of emulation,
/// and two side by side on a two-core machine only slow each other down.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The CLI under test, from the same target dir as the test binary
/// (`<target>/release/deps/<test>` -> `<target>/release/bulkhead`).
pub fn bulkhead() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let b = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("bulkhead"))
        .unwrap_or_default();
    assert!(
        b.is_file(),
        "no {} (cargo build --release --workspace)",
        b.display()
    );
    b
}

/// A child process killed (and reaped) on drop; a stopped one is resumed
/// first, so the kill is not left pending.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).expect("a pid or fd fits")),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
