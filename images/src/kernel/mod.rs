//! The guest kernel: Linux 6.1 from Debian's `linux-source-6.1`, configured
//! from `tinyconfig` plus the project's fragment (`images/kernel/microvm.config`),
//! built once and cached under `<cache>/kernel/<key>/` where the key hashes
//! the fragment and the source package version.

mod builder;
pub mod fragment;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use builder::{build, BuildOptions, BuildProgress};

/// The project's config fragment, compiled in so the CLI works from anywhere.
pub const MICROVM_FRAGMENT: &str = include_str!("../../kernel/microvm.config");

/// The guest kernel's command line in a bulkhead microVM (the boot-time
/// probe boots with it too, so it measures the same boot).
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet reboot=k";

/// Debian package holding the kernel source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no cache directory: set BULKHEAD_CACHE or HOME")]
    NoCacheDir,
    #[error("{SOURCE_PACKAGE} is not installed, so no guest kernel can be built or found; run `bulkhead kernel build` (as root it installs it)")]
    SourceNotInstalled,
    #[error("no guest kernel built for this fragment and {SOURCE_PACKAGE} {version}; run `bulkhead kernel build`")]
    NotBuilt { version: String },
    #[error(transparent)]
    Packages(#[from] crate::debian::DebianError),
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    Command {
        command: String,
        status: String,
        tail: String,
    },
    #[error("config fragment: {0}")]
    Fragment(#[from] fragment::FragmentError),
    #[error("{} listed symbol(s) did not survive `make olddefconfig` (a dependency is missing from the fragment):\n  {}",
        .0.len(), .0.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("\n  "))]
    SymbolsDropped(Vec<fragment::Mismatch>),
}

impl KernelError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    pub source_version: String,
}

/// Cache key: sha256 over the fragment and the source package version.
pub fn cache_key(fragment: &str, source_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"bulkhead-kernel-v1\0");
    h.update(source_version.as_bytes());
    h.update(b"\0");
    h.update(fragment.as_bytes());
    hex::encode(&h.finalize()[..12])
}

/// `<cache>/kernel`.
pub fn kernel_cache_dir() -> Result<PathBuf, KernelError> {
    crate::cache::cache_root()
        .map(|c| c.join("kernel"))
        .ok_or(KernelError::NoCacheDir)
}

/// The cached kernel for the project fragment and the installed source, if built.
pub fn find_built() -> Result<BuiltKernel, KernelError> {
    let version =
        crate::debian::installed_version(SOURCE_PACKAGE)?.ok_or(KernelError::SourceNotInstalled)?;
    let dir = kernel_cache_dir()?.join(cache_key(MICROVM_FRAGMENT, &version));
    built_in(&dir, &version).ok_or(KernelError::NotBuilt { version })
}

fn built_in(dir: &Path, version: &str) -> Option<BuiltKernel> {
    let k = BuiltKernel {
        dir: dir.to_path_buf(),
        vmlinux: dir.join("vmlinux"),
        config: dir.join(".config"),
        source_version: version.to_string(),
    };
    (k.vmlinux.is_file() && k.config.is_file()).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_each_input() {
        let a = cache_key("CONFIG_A=y\n", "6.1.1");
        assert_eq!(a, cache_key("CONFIG_A=y\n", "6.1.1"));
        assert_ne!(a, cache_key("CONFIG_A=y\n", "6.1.2"));
        assert_ne!(a, cache_key("CONFIG_B=y\n", "6.1.1"));
        assert_eq!(a.len(), 24);
    }
}
