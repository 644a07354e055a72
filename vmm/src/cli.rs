//! `bulkhead-vmm` flags, and merging them over a `--config` JSON file.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{
    ConfigError, DiskConfig, MacAddr, NetConfig, SerialOutput, VmConfig, VsockConfig,
};

pub const AFTER_HELP: &str = "\
--config FILE.json takes the same settings (keys: kernel, initrd, cmdline, vcpus,
memory_mib, disks [{path, read_only}], vsock {uds_path, cid}, net {tap, mac},
serial, boot_timeline, memory_report, seccomp, share_boot_files); flags given on the command line override it.
Firecracker's form works too: `--no-api --config-file FILE.json` with its keys
boot-source, drives, machine-config, vsock, network-interfaces (one) and entropy;
other Firecracker keys are refused by name.

The VMM adds to the kernel command line panic=-1 and pci=off (unless panic= or
pci= is given). Without --cmdline it starts from \"console=ttyS0 reboot=k\".
Devices (COM1, virtio-mmio disks, vsock, net, rng, pvpanic) are described in the
ACPI DSDT, CPUs in the MADT and the MP table: the guest kernel needs ACPI.

Exit codes:
  0    the guest powered off (ACPI S5) or rebooted (i8042 or ACPI reset)
  1    the VMM failed (bad configuration, unreadable kernel, KVM error)
  2    bad usage
  3    the guest kernel panicked (pvpanic)
  4    the guest crashed: triple fault, KVM internal/emulation error, failed
       VM entry (a one-line reason goes to stderr)
  130  stopped by SIGINT
  143  stopped by SIGTERM
Whether a workload succeeded is the guest agent's report, not this code.";

#[derive(Debug, Parser)]
#[command(name = "bulkhead-vmm", version, about = "Run one KVM microVM: boot a Linux kernel with virtio-mmio devices", after_help = AFTER_HELP)]
pub struct Args {
    /// Guest kernel: ELF vmlinux (PVH entry if present) or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs loaded next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-64) [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// A virtio-blk disk; append ",ro" for read-only (repeatable).
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<DiskConfig>,
    /// Host side of virtio-vsock: this Unix socket accepts host connections
    /// ("CONNECT <port>\n"); guest connections to host port P go to <PATH>_P.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (3 or more).
    #[arg(long, value_name = "N")]
    pub vsock_cid: Option<u32>,
    /// virtio-net on this TAP interface (created if missing), or fd:N for an
    /// open TAP file descriptor (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) passed in.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// The guest NIC's MAC address.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddr>,
    /// Where the serial console goes: stdout, none or a file [default: stdout].
    #[arg(long, value_name = "stdout|none|PATH")]
    pub serial: Option<SerialOutput>,
    /// Settings as JSON; flags override them.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
    /// Settings in Firecracker's config-file JSON (a subset); flags override them.
    #[arg(long, value_name = "FILE.json", conflicts_with = "config")]
    pub config_file: Option<PathBuf>,
    /// Firecracker's flag: bulkhead-vmm never serves an API (accepted for compatibility).
    #[arg(long)]
    pub no_api: bool,
    /// Firecracker's instance id (accepted for compatibility; unused).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Print boot milestones (kernel entry, guest stage codes) with their
    /// microseconds since process start to stderr at exit.
    #[arg(long)]
    pub boot_timeline: bool,
    /// Print peak RSS, the guest memory's resident part and the VMM's
    /// overhead (the difference) to stderr at exit.
    #[arg(long)]
    pub memory_report: bool,
    /// Run without the seccomp filters. For debugging only: a guest that
    /// breaks the VMM then has every system call of this process.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Map the kernel's and the initramfs's pages from their files
    /// (copy-on-write) instead of copying them: kernel entry in ~2 ms, not
    /// ~15. Every VM given the same files then shares those physical pages
    /// with the others until it writes, a cache side channel (Flush+Reload)
    /// between them: only for VMs that trust each other (one tenant).
    #[arg(long)]
    pub share_boot_files: bool,
    /// Tests only (feature test-hooks): once the filters are in, the main
    /// or a vCPU thread makes a forbidden call: KIND:CALL with KIND main or
    /// vcpu, CALL execve, open, socket or ptrace.
    #[cfg(feature = "test-hooks")]
    #[arg(long, value_name = "KIND:CALL", hide = true)]
    pub seccomp_violation: Option<String>,
    /// Print KVM's supported CPUID table (for recording test data) and exit.
    #[arg(long)]
    pub dump_supported_cpuid: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--config {path}: {detail}")]
    ConfigFile { path: String, detail: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Args {
    /// The config file (if any) with every given flag on top.
    pub fn into_config(self) -> Result<VmConfig, CliError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|e| CliError::ConfigFile {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
        };
        let mut c = match (&self.config, &self.config_file) {
            (Some(path), _) => {
                serde_json::from_str(&read(path)?).map_err(|e| CliError::ConfigFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?
            }
            (None, Some(path)) => {
                crate::firecracker::parse(&read(path)?).map_err(|e| CliError::ConfigFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?
            }
            (None, None) => VmConfig::default(),
        };
        if self.kernel.is_some() {
            c.kernel = self.kernel;
        }
        if self.initrd.is_some() {
            c.initrd = self.initrd;
        }
        if self.cmdline.is_some() {
            c.cmdline = self.cmdline;
        }
        if let Some(v) = self.vcpus {
            c.vcpus = v;
        }
        if let Some(m) = self.memory {
            c.memory_mib = m;
        }
        if !self.disk.is_empty() {
            c.disks = self.disk;
        }
        match (self.vsock_uds, self.vsock_cid, c.vsock.as_mut()) {
            (None, None, _) => {}
            (Some(uds_path), Some(cid), _) => c.vsock = Some(VsockConfig { uds_path, cid }),
            (Some(uds_path), None, Some(v)) => v.uds_path = uds_path,
            (None, Some(cid), Some(v)) => v.cid = cid,
            _ => return Err(ConfigError::VsockHalf.into()),
        }
        match (self.tap, self.mac, c.net.as_mut()) {
            (Some(tap), mac, _) => c.net = Some(NetConfig { tap, mac }),
            (None, Some(mac), Some(n)) => n.mac = Some(mac),
            (None, Some(_), None) => return Err(ConfigError::MacWithoutTap.into()),
            (None, None, _) => {}
        }
        if let Some(s) = self.serial {
            c.serial = s;
        }
        c.boot_timeline |= self.boot_timeline;
        c.memory_report |= self.memory_report;
        c.share_boot_files |= self.share_boot_files;
        if self.no_seccomp {
            c.seccomp = false;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, CliError> {
        Args::try_parse_from(std::iter::once("bulkhead-vmm").chain(args.iter().copied()))
            .unwrap()
            .into_config()
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir =
            std::env::temp_dir().join(format!("bulkhead-vmm-cli-{}.json", std::process::id()));
        std::fs::write(&dir, r#"{"kernel":"/from-file","vcpus":4,"vsock":{"uds_path":"/v","cid":7},"serial":"none"}"#).unwrap();
        let c = parse(&[
            "--config",
            dir.to_str().unwrap(),
            "--vcpus",
            "2",
            "--vsock-cid",
            "9",
            "--disk",
            "/d,ro",
        ])
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            c.kernel.as_deref(),
            Some(std::path::Path::new("/from-file"))
        );
        assert_eq!(c.vcpus, 2);
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                uds_path: "/v".into(),
                cid: 9
            })
        );
        assert_eq!(
            c.disks,
            vec![DiskConfig {
                path: "/d".into(),
                read_only: true
            }]
        );
        assert_eq!(c.serial, SerialOutput::None);
    }

    #[test]
    fn firecracker_form_is_accepted_and_flags_override_it() {
        let path =
            std::env::temp_dir().join(format!("bulkhead-vmm-fc-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"boot-source":{"kernel_image_path":"/k"},"machine-config":{"vcpu_count":2,"mem_size_mib":64}}"#).unwrap();
        let c = parse(&[
            "--no-api",
            "--id",
            "a",
            "--config-file",
            path.to_str().unwrap(),
            "--memory",
            "96",
        ]);
        let bad = parse(&["--config-file", "/no/such/file.json"]);
        std::fs::write(&path, r#"{"boot-source":{"kernel_image_path":"/k"},"machine-config":{"vcpu_count":2,"mem_size_mib":64},"mmds-config":{}}"#).unwrap();
        let unsupported = parse(&["--config-file", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        let c = c.unwrap();
        assert_eq!(
            (c.kernel.as_deref(), c.vcpus, c.memory_mib),
            (Some(std::path::Path::new("/k")), 2, 96)
        );
        assert!(matches!(bad, Err(CliError::ConfigFile { .. })));
        assert!(unsupported.is_err_and(|e| e.to_string().contains("mmds-config")));
        assert!(
            Args::try_parse_from(["bulkhead-vmm", "--config", "a", "--config-file", "b"]).is_err()
        );
        assert!(
            parse(&["--kernel", "/k"]).unwrap().seccomp,
            "seccomp is on unless turned off"
        );
        assert!(!parse(&["--kernel", "/k", "--no-seccomp"]).unwrap().seccomp);
    }

    #[test]
    fn half_settings_and_bad_files_are_errors() {
        assert!(matches!(
            parse(&["--vsock-cid", "3"]),
            Err(CliError::Config(ConfigError::VsockHalf))
        ));
        assert!(matches!(
            parse(&["--mac", "02:00:00:00:00:01"]),
            Err(CliError::Config(ConfigError::MacWithoutTap))
        ));
        assert!(matches!(
            parse(&["--config", "/no/such/file.json"]),
            Err(CliError::ConfigFile { .. })
        ));
        assert!(Args::try_parse_from(["bulkhead-vmm", "--disk", "x,bogus"]).is_err());
        assert!(Args::try_parse_from(["bulkhead-vmm", "--serial", ""]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
