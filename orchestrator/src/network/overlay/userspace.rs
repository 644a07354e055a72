//! `bulkhead __wg --iface NAME`: a tenant's tunnel where the kernel has no
//! WireGuard (these hosts' kernels have TUN but not WireGuard): boringtun's
//! userspace implementation on a TUN device named NAME, configured by `wg`
//! through boringtun's socket `/var/run/wireguard/NAME.sock`, as the kernel
//! one is over netlink. One process per tunnel, holding its lock
//! (`/run/bulkhead/overlay/NAME.lock`, see `network::daemon`); the device
//! goes with the process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::network::daemon;
use crate::network::NetError;

/// How often the daemon checks that its key is still there.
const KEY_WATCH: Duration = Duration::from_secs(2);

/// `/run/bulkhead/overlay`: root's.
fn dir() -> PathBuf {
    std::path::Path::new(crate::state::paths::RUN_ROOT).join("overlay")
}

fn lock_path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.lock"))
}

fn log_path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.log"))
}

fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
}

/// Starts the userspace tunnel `iface` unless it runs; returns once the
/// device is there. It ends by itself once `key` (its key in the node's
/// data dir) is gone: a data dir removed without its networks leaves no
/// tunnel running.
pub fn start(iface: &str, key: &Path) -> Result<(), NetError> {
    let what = format!("start the userspace tunnel {iface}");
    bulkhead_images::private::dir(&dir()).map_err(|e| NetError::host(&what, e))?;
    if daemon::holder(&lock_path(iface))?.is_some() {
        return Ok(());
    }
    let key = key.to_string_lossy();
    daemon::spawn(
        &what,
        &["__wg", "--iface", iface, "--key", &key],
        &log_path(iface),
    )
}

/// Stops the userspace tunnel `iface` (its device goes with it) and
/// removes its files; nothing to do for a kernel one.
pub fn stop(iface: &str) -> Result<(), NetError> {
    daemon::kill(&lock_path(iface))?;
    for p in [lock_path(iface), log_path(iface), socket_path(iface)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetError::host("remove the tunnel's files", e)),
        }
    }
    Ok(())
}

pub fn main(iface: &str, key: &Path) -> ExitCode {
    match run(iface, key) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead __wg {iface}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(iface: &str, key: &Path) -> Result<(), String> {
    if !crate::network::valid_ifname(iface) {
        return Err(format!("{iface:?}: not an interface name"));
    }
    let Some(mut lock) = daemon::take_lock(&lock_path(iface))? else {
        return daemon::ready(); // another one runs it already
    };
    // Before boringtun starts its threads.
    daemon::detach(&mut lock)?;
    let config = boringtun::device::DeviceConfig {
        n_threads: 2,
        use_connected_socket: true,
        use_multi_queue: false,
        uapi_fd: -1,
    };
    let mut device = boringtun::device::DeviceHandle::new(iface, config)
        .map_err(|e| format!("the tunnel device: {e:?}"))?;
    daemon::ready()?;
    let (name, key) = (iface.to_string(), key.to_path_buf());
    std::thread::spawn(move || loop {
        std::thread::sleep(KEY_WATCH);
        if !key.exists() {
            for p in [socket_path(&name), log_path(&name), lock_path(&name)] {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        }
    });
    device.wait();
    device.clean();
    Ok(())
}
