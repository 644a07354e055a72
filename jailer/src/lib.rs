//! bulkhead-jailer: the box every VMM runs in. See `jail` for the order of
//! steps; `validate` checks what it is told before anything is made.

pub mod cgroup;
pub mod chroot;
pub mod cleanup;
pub mod jail;
pub mod validate;
