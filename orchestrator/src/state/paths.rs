//! Where a workload's files are, and its ids.

use std::path::{Path, PathBuf};

/// Unix socket paths are capped at 108 bytes (sun_path): runtime files
/// live under a short fixed prefix and the id's first 12 characters.
pub const RUN_ROOT: &str = "/run/bulkhead";

#[derive(Debug, Clone)]
pub struct Paths {
    data: PathBuf,
}

impl Paths {
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self { data: data.into() }
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    pub fn state_db(&self) -> PathBuf {
        self.data.join("state.redb")
    }

    pub fn state_lock(&self) -> PathBuf {
        self.data.join("state.lock")
    }

    pub fn workload_dir(&self, id: &str) -> PathBuf {
        self.data.join("workloads").join(id)
    }

    /// A named volume's files: its filesystem image and, for a dir
    /// volume, where the host mounts it (`state::volumes`).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.data.join("volumes").join(name)
    }

    /// Root trees of images for the container runtime, by manifest digest.
    pub fn trees(&self) -> PathBuf {
        self.data.join("trees")
    }

    pub fn run_dir(id: &str) -> PathBuf {
        Path::new(RUN_ROOT).join(short(id))
    }

    pub fn ctl_socket(id: &str) -> PathBuf {
        Self::run_dir(id).join("ctl.sock")
    }

    /// The one dir of the run dir a jailed VMM sees (writable, its own):
    /// the vsock sockets, a Firecracker-style config.
    pub fn vm_dir(id: &str) -> PathBuf {
        Self::run_dir(id).join("vm")
    }

    /// Where bulkhead-jailer makes the VMMs' jail dirs (`<this>/<id>/root`).
    pub fn jail_base() -> PathBuf {
        Path::new(RUN_ROOT).join("jail")
    }

    /// Where the OCI runtime finds a container's root and the files bound
    /// into it: `<this>/<id12>/{rootfs,etc}`. Outside the data dir because
    /// the runtime walks these paths as the container's root, a uid of the
    /// container's own block, which may traverse only its own dir.
    pub fn container_base() -> PathBuf {
        Path::new(RUN_ROOT).join("ct")
    }

    pub fn container_dir(id: &str) -> PathBuf {
        Self::container_base().join(short(id))
    }

    /// What sets this data dir's host-wide names (its nftables tables, its
    /// bridges) apart from another data dir's on the same host: `None` for
    /// the default data dir (the plain names), else 4 hex digits of the
    /// SHA-256 of its canonical path.
    pub fn host_tag(&self) -> Option<String> {
        use sha2::Digest;
        let real = std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
        if real == Path::new(DEFAULT_DATA) {
            return None;
        }
        let h = sha2::Sha256::digest(real.as_os_str().as_encoded_bytes());
        Some(format!("{:02x}{:02x}", h[0], h[1]))
    }
}

/// The data dir of bulkhead run as root without `BULKHEAD_DATA`.
pub const DEFAULT_DATA: &str = "/var/lib/bulkhead";

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A new 64-hex-digit workload id from the kernel's random pool.
pub fn new_id() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Workload names: what docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 64.
pub fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && n.len() <= 64
        && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The data dir: `$BULKHEAD_DATA`, else bulkhead's default (the image
/// store's, which shares it).
pub fn data_dir() -> PathBuf {
    bulkhead_images::store::Store::default_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_socket_paths_fit_sun_path() {
        let id = new_id().unwrap_or_else(|e| panic!("{e}"));
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(Paths::vm_dir(&id).join("vsock_1024").as_os_str().len() < 108);
        assert_ne!(id, new_id().unwrap_or_else(|e| panic!("{e}")));
    }

    #[test]
    fn names_like_docker() {
        assert!(valid_name("web-1") && valid_name("a") && valid_name("A.b_c"));
        assert!(
            !valid_name("")
                && !valid_name("-x")
                && !valid_name("a/b")
                && !valid_name("a b")
                && !valid_name(&"a".repeat(65))
        );
    }
}
