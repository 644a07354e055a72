//! Thin wrappers over the KVM VM and vCPU file descriptors.

pub mod vcpu;
pub mod vm;
