//! bulkhead-vmm binary. The monitor is being built (issue: bulkhead-vmm boots
//! Linux); until then it reports the host's KVM kind and refuses to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    let kvm = bulkhead_vmm::host::detect();
    eprintln!("bulkhead-vmm: not implemented yet (host KVM: {kvm})");
    ExitCode::from(1)
}
