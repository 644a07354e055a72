//! bulkhead-jailer: the box every VMM runs in. See `jail` for the order of
//! steps; `validate` checks what it is told before anything is made.

pub mod cgroup;
pub mod chroot;
pub mod cleanup;
pub mod deadline;
pub mod jail;
pub mod timeline;
pub mod validate;

/// An error with each of its causes once (no message repeats its cause).
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
