//! bulkhead-images: everything the guest boots from.
//!
//! - [`kernel`]: the guest kernel, built from Debian's `linux-source-6.1` with
//!   the project's config fragment and cached by input hash.
//! - [`cache`]: where cached artifacts live.
//! - [`debian`]: packages the builds need from the host.
//! - [`initramfs`]: cpio archives the kernel unpacks as its first root;
//!   [`agent_initramfs`]: the agent's, cached.
//! - [`private`]: the data dir closed to other users (0700 dirs, 0600 files).
//! - [`store`]: the content store (blobs, manifests, refs, gc) and imports
//!   (OCI layout, docker save, a root directory).
//! - [`unpack`]: applying layers, treating them as hostile.
//! - [`rootdisk`]: an image's root disk (ext4/erofs), cached.
//! - [`userns`]: the same, rootless, in a user namespace with subordinate ids.

pub mod agent_initramfs;
pub mod cache;
pub mod debian;
#[doc(hidden)]
pub mod fuzzing;
pub mod initramfs;
pub mod kernel;
pub mod private;
pub mod rootdisk;
pub mod store;
mod tarbound;
pub mod unpack;
pub mod userns;
