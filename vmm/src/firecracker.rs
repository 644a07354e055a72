//! Firecracker's `--config-file` JSON (the subset bulkhead-vmm can honour),
//! so tools written for Firecracker (and `bulkhead bench --vmm-vs`) can
//! start bulkhead-vmm the same way, and the other way round.
//!
//! Supported: `boot-source`, `drives`, `machine-config`, `vsock`, at most
//! one `network-interfaces` entry and `entropy` (bulkhead-vmm always has a
//! virtio-rng). Anything else is refused by name rather than ignored.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{DiskConfig, MacAddr, NetConfig, VmConfig, VsockConfig};

#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(
        "\"machine-config\": smt=true is not supported (bulkhead-vmm gives each vCPU its own core)"
    )]
    Smt,
    #[error("\"drives\": {0}")]
    Drives(String),
    #[error("\"network-interfaces\": bulkhead-vmm takes at most one (it has {0})")]
    TooManyNics(usize),
    #[error("\"machine-config\": vcpu_count {0} is out of range")]
    Vcpus(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "boot-source")]
    boot_source: BootSource,
    #[serde(default)]
    drives: Vec<Drive>,
    #[serde(rename = "machine-config")]
    machine_config: MachineConfig,
    #[serde(default)]
    vsock: Option<Vsock>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    entropy: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
    #[serde(default)]
    boot_args: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfig {
    vcpu_count: u64,
    mem_size_mib: u32,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vsock {
    guest_cid: u32,
    uds_path: PathBuf,
    #[serde(default)]
    vsock_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkInterface {
    #[serde(rename = "iface_id")]
    _iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<MacAddr>,
}

/// Firecracker's config file as a [`VmConfig`] (still to be validated).
/// Like Firecracker, a root drive adds `root=/dev/vdX ro|rw` to the command
/// line, and the serial console goes to stdout.
pub fn parse(text: &str) -> Result<VmConfig, FirecrackerError> {
    let f: File = serde_json::from_str(text)?;
    let _ = (
        &f.entropy,
        f.machine_config.track_dirty_pages,
        f.vsock.as_ref().map(|v| &v.vsock_id),
    );
    if f.machine_config.smt {
        return Err(FirecrackerError::Smt);
    }
    if f.network_interfaces.len() > 1 {
        return Err(FirecrackerError::TooManyNics(f.network_interfaces.len()));
    }
    let vcpus = u8::try_from(f.machine_config.vcpu_count)
        .map_err(|_| FirecrackerError::Vcpus(f.machine_config.vcpu_count))?;
    let mut ids: Vec<&str> = f.drives.iter().map(|d| d.drive_id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(FirecrackerError::Drives(format!(
            "drive_id {:?} is given twice",
            w[0]
        )));
    }
    let roots: Vec<usize> = f
        .drives
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_root_device)
        .map(|(i, _)| i)
        .collect();
    if roots.len() > 1 {
        return Err(FirecrackerError::Drives(
            "more than one has is_root_device".into(),
        ));
    }
    let mut cmdline = f.boot_source.boot_args;
    if let Some(&i) = roots.first() {
        // Firecracker attaches the root drive first: it is /dev/vda.
        let mode = if f.drives[i].is_read_only { "ro" } else { "rw" };
        let base = cmdline.unwrap_or_else(|| "console=ttyS0 reboot=k".into());
        cmdline = Some(format!("{base} root=/dev/vda {mode}"));
    }
    let mut drives: Vec<&Drive> = f.drives.iter().collect();
    drives.sort_by_key(|d| !d.is_root_device);
    Ok(VmConfig {
        kernel: Some(f.boot_source.kernel_image_path),
        initrd: f.boot_source.initrd_path,
        cmdline,
        vcpus,
        memory_mib: f.machine_config.mem_size_mib,
        disks: drives
            .into_iter()
            .map(|d| DiskConfig {
                path: d.path_on_host.clone(),
                read_only: d.is_read_only,
            })
            .collect(),
        vsock: f.vsock.map(|v| VsockConfig {
            uds_path: v.uds_path,
            cid: v.guest_cid,
        }),
        net: f.network_interfaces.into_iter().next().map(|n| NetConfig {
            tap: n.host_dev_name,
            mac: n.guest_mac,
        }),
        ..VmConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0 quiet"},
        "drives": [
            {"drive_id": "data", "path_on_host": "/data.img", "is_root_device": false},
            {"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true, "is_read_only": true}
        ],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
        "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock", "vsock_id": "vsock0"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}],
        "entropy": {}
    }"#;

    #[test]
    fn a_full_firecracker_config_maps_onto_vm_config() {
        let c = parse(FULL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kernel, Some("/k".into()));
        assert_eq!(c.initrd, Some("/i".into()));
        assert_eq!(
            c.cmdline.as_deref(),
            Some("console=ttyS0 quiet root=/dev/vda ro")
        );
        assert_eq!((c.vcpus, c.memory_mib), (2, 256));
        assert_eq!(
            c.disks,
            vec![
                DiskConfig {
                    path: "/root.img".into(),
                    read_only: true
                },
                DiskConfig {
                    path: "/data.img".into(),
                    read_only: false
                }
            ]
        );
        assert_eq!(
            c.vsock,
            Some(VsockConfig {
                uds_path: "/run/v.sock".into(),
                cid: 3
            })
        );
        assert_eq!(c.net.as_ref().map(|n| n.tap.as_str()), Some("tap0"));
        assert_eq!(c.serial, crate::config::SerialOutput::Stdout);
    }

    #[test]
    fn minimal_config_takes_bulkhead_defaults() {
        let c = parse(r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.cmdline, c.disks.len(), c.vsock, c.net),
            (None, 0, None, None)
        );
    }

    #[test]
    fn unsupported_or_malformed_configs_are_refused_by_name() {
        let cases = [
            ("", "EOF"),
            ("[]", "invalid length"),
            ("7", "invalid type"),
            (
                r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
                "boot-source",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "balloon": {}}"#,
                "balloon",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "logger": {}}"#,
                "logger",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": true}}"#,
                "smt",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 99999, "mem_size_mib": 128}}"#,
                "vcpu_count 99999",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": -1, "mem_size_mib": 128}}"#,
                "invalid value",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "rate_limiter": {}}]}"#,
                "rate_limiter",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": true}, {"drive_id": "b", "path_on_host": "/b", "is_root_device": true}]}"#,
                "more than one",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": false}, {"drive_id": "a", "path_on_host": "/b", "is_root_device": false}]}"#,
                "twice",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "network-interfaces": [{"iface_id": "a", "host_dev_name": "t0"}, {"iface_id": "b", "host_dev_name": "t1"}]}"#,
                "at most one",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "network-interfaces": [{"iface_id": "a", "host_dev_name": "t0", "guest_mac": "zz"}]}"#,
                "zz",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
