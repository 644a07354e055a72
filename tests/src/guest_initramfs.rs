//! Initramfs images for test guests: static busybox, an `/init` script and
//! whatever files a test adds.

use std::path::Path;

use bulkhead_images::initramfs::CpioWriter;

/// busybox at /bin/busybox (+ /bin/sh), `init` as /init, /dev/console, and
/// `files` as (guest path, host path).
pub fn busybox(init: &str, files: &[(&str, &Path)]) -> std::io::Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new());
    w.host_file("/bin/busybox", 0o755, Path::new("/bin/busybox"))?;
    w.symlink("/bin/sh", "busybox")?;
    w.file("/init", 0o755, init.as_bytes())?;
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    w.char_device("/dev/console", 0o600, 5, 1)?;
    for d in ["/proc", "/sys", "/tmp"] {
        w.dir(d, 0o755)?;
    }
    for (guest, host) in files {
        w.host_file(guest, 0o755, host)?;
    }
    w.finish()
}

/// The mounts a container runtime expects, for `/init` scripts.
pub const MOUNTS: &str = r#"bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts
$bb mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
$bb ln -sf pts/ptmx /dev/ptmx
$bb mount -t tmpfs tmpfs /tmp
$bb mkdir -p /usr/bin /usr/sbin /sbin
$bb --install -s
"#;
