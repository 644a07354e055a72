//! What one VM is made of: the settings `bulkhead-vmm` takes as flags or as
//! JSON (`--config`), validated before anything is created.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with
/// the terminating NUL).
pub const MAX_UNIX_SOCKET_PATH: usize = 107;

/// Most vCPUs: APIC IDs must fit the MP table and xAPIC's 8 bits with room.
pub const MAX_VCPUS: u8 = 64;

/// Least guest memory a Linux guest boots in (MiB).
pub const MIN_MEMORY_MIB: u32 = 16;

/// Most guest memory (MiB); bounded so a typo cannot ask the host for a petabyte.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no kernel given (--kernel PATH)")]
    NoKernel,
    #[error("--vcpus {0}: must be 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("--memory {0}: must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")]
    Memory(u32),
    #[error("--vsock-cid {0}: guest CIDs start at 3 (0-2 are reserved)")]
    VsockCid(u32),
    #[error("--vsock-uds {path:?} is {len} bytes; Unix socket paths hold at most {max} here (the VMM appends _<port> for guest-initiated connections): use a shorter runtime dir")]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("--vsock-uds and --vsock-cid go together")]
    VsockHalf,
    #[error("--disk {0:?}: expected PATH or PATH,ro")]
    Disk(String),
    #[error("--mac {0:?}: expected six hex bytes like 02:00:00:00:00:01")]
    Mac(String),
    #[error("--mac needs --tap")]
    MacWithoutTap,
    #[error("--tap {0:?}: interface names are 1 to 15 bytes (or fd:N for an open TAP)")]
    TapName(String),
    #[error("--serial {0:?}: expected stdout, none or a file path")]
    Serial(String),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialOutput {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

impl FromStr for SerialOutput {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Self::Stdout),
            "none" => Ok(Self::None),
            "" => Err(ConfigError::Serial(s.into())),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for SerialOutput {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SerialOutput> for String {
    fn from(s: SerialOutput) -> String {
        match s {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::None => "none".into(),
            SerialOutput::File(p) => p.to_string_lossy().into_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = ConfigError;
    /// `PATH` or `PATH,ro` (or `PATH,rw`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some(_) => return Err(ConfigError::Disk(s.into())),
            None => (s, false),
        };
        if path.is_empty() {
            return Err(ConfigError::Disk(s.into()));
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host side: a Unix socket the VMM listens on; guest connections to host
    /// port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    pub cid: u32,
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut out = [0u8; 6];
        if parts.len() != 6 {
            return Err(ConfigError::Mac(s.into()));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(ConfigError::Mac(s.into()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| ConfigError::Mac(s.into()))?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface name, opened with TUNSETIFF.
    pub tap: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// One VM. JSON field names are these names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    pub net: Option<NetConfig>,
    pub serial: SerialOutput,
    /// Print the boot timeline (stage codes with times) on exit.
    pub boot_timeline: bool,
    /// Print peak RSS, guest-resident memory and the difference on exit.
    pub memory_report: bool,
    /// seccomp filters on every thread (`--no-seccomp` turns them off, for debugging only).
    pub seccomp: bool,
    /// Map the kernel's and the initramfs's pages from their files
    /// (copy-on-write) instead of copying them: see `boot/mapped.rs`.
    /// VMs given the same files then share those physical pages until they
    /// write: a cache side channel between them. Off by default.
    pub share_boot_files: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_mib: 128,
            disks: Vec::new(),
            vsock: None,
            net: None,
            serial: SerialOutput::Stdout,
            boot_timeline: false,
            memory_report: false,
            seccomp: true,
            share_boot_files: false,
        }
    }
}

impl VmConfig {
    /// Checks everything that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 {
                return Err(ConfigError::VsockCid(v.cid));
            }
            // Room for "_<port>" (up to 10 digits) on guest-initiated connections.
            let max = MAX_UNIX_SOCKET_PATH - 11;
            let len = v.uds_path.as_os_str().len();
            if len > max {
                return Err(ConfigError::SocketPathTooLong {
                    path: v.uds_path.to_string_lossy().into_owned(),
                    len,
                    max,
                });
            }
        }
        if let Some(n) = &self.net {
            let fd_form = n
                .tap
                .strip_prefix("fd:")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if !fd_form && (n.tap.is_empty() || n.tap.len() > 15 || n.tap.contains('/')) {
                return Err(ConfigError::TapName(n.tap.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            "a.img".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            "/x/a,b.img,ro".parse::<DiskConfig>().unwrap(),
            DiskConfig {
                path: "/x/a,b.img".into(),
                read_only: true
            }
        );
        assert!("a.img,bogus".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn macs_parse_and_print() {
        let m: MacAddr = "02:00:0a:FF:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "2:00:00:00:00:001",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields() {
        let json = r#"{"kernel":"/k","vcpus":2,"memory_mib":256,"disks":[{"path":"/d","read_only":true}],
            "vsock":{"uds_path":"/run/v.sock","cid":3},"net":{"tap":"tap0","mac":"02:00:00:00:00:01"},"serial":"none"}"#;
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.serial, SerialOutput::None);
        assert_eq!(c.net.as_ref().unwrap().mac.unwrap().0[5], 1);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","vcpu":2}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"serial":""}"#).is_err());
    }

    #[test]
    fn validation_catches_bad_settings() {
        let ok = VmConfig {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(VmConfig::default().validate(), Err(ConfigError::NoKernel));
        assert_eq!(
            VmConfig {
                vcpus: 0,
                ..ok.clone()
            }
            .validate(),
            Err(ConfigError::Vcpus(0))
        );
        assert_eq!(
            VmConfig {
                vcpus: 65,
                ..ok.clone()
            }
            .validate(),
            Err(ConfigError::Vcpus(65))
        );
        assert_eq!(
            VmConfig {
                memory_mib: 8,
                ..ok.clone()
            }
            .validate(),
            Err(ConfigError::Memory(8))
        );
        let vsock = |path: String, cid| {
            Some(VsockConfig {
                uds_path: path.into(),
                cid,
            })
        };
        assert_eq!(
            VmConfig {
                vsock: vsock("/v".into(), 2),
                ..ok.clone()
            }
            .validate(),
            Err(ConfigError::VsockCid(2))
        );
        let long = format!("/{}", "x".repeat(100));
        assert!(matches!(
            VmConfig {
                vsock: vsock(long, 3),
                ..ok.clone()
            }
            .validate(),
            Err(ConfigError::SocketPathTooLong { len: 101, .. })
        ));
        let net = |tap: &str| {
            Some(NetConfig {
                tap: tap.into(),
                mac: None,
            })
        };
        assert!(VmConfig {
            net: net("a-very-long-tap-name"),
            ..ok.clone()
        }
        .validate()
        .is_err());
        assert!(VmConfig { net: net(""), ..ok }.validate().is_err());
    }
}
