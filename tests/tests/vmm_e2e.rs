//! bulkhead-vmm booting real Linux guests, in the test host (nested where
//! the host's /dev/kvm cannot boot Linux). Several VM boots share one
//! test-host boot: each case prints `CASE <name> exit=<code>` after its
//! serial log, and the assertions read that transcript.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::time::Duration;

use bulkhead_tests::testhost::{self, TestHost};
use bulkhead_tests::{guest_initramfs, guest_probe, vm_lock};

/// /init of the test guests: `ACTION=` on the kernel command line picks
/// what it does after reporting its CPU count.
const ACTIONS: &str = r#"echo "GUEST nproc=$($bb nproc)"
case "$ACTION" in
reboot) $bb reboot -f ;;
panic) echo c > /proc/sysrq-trigger ;;
probe) /bin/bulkhead-agent probe --expect-cpus "$CPUS"; echo "probe: exit $?"; $bb poweroff -f ;;
virtio)
	$bb mkdir -p /ro /rw
	$bb mount -o ro /dev/vda /ro && $bb cat /ro/hello.txt
	echo "serial=$($bb cat /sys/block/vda/serial)"
	$bb mount /dev/vdb /rw && echo "written by the guest" > /rw/out.txt && $bb umount /rw && echo "rw-done"
	echo "rng-bytes=$($bb head -c 16 /dev/hwrng | $bb wc -c)"
	echo "mac=$($bb cat /sys/class/net/eth0/address)"
	$bb ip addr add 10.0.2.2/24 dev eth0 && $bb ip link set eth0 up
	$bb ping -c 3 -W 5 10.0.2.1 >/dev/null && echo "ping-ok"
	/bin/bulkhead-agent probe-vsock-echo 5000 &
	echo_pid=$!
	/bin/bulkhead-agent probe-vsock-call 6000 "ping from guest"
	wait $echo_pid
	$bb poweroff -f ;;
*) $bb poweroff -f ;;
esac
"#;

struct Case {
    exit: i32,
    serial: String,
}

/// Splits the transcript into cases.
fn cases(stdout: &str) -> HashMap<String, Case> {
    let mut out = HashMap::new();
    let mut serial = String::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("CASE ") {
            let (name, exit) = rest.split_once(" exit=").unwrap();
            out.insert(
                name.to_string(),
                Case {
                    exit: exit.parse().unwrap(),
                    serial: std::mem::take(&mut serial),
                },
            );
        } else {
            serial.push_str(line);
            serial.push('\n');
        }
    }
    out
}

fn script(runs: &[(&str, &str, &str)]) -> String {
    let mut s = String::new();
    for (name, kernel, args) in runs {
        s.push_str(&format!(
            "bulkhead-vmm --kernel {kernel} --initrd /t/guest.cpio --serial /tmp/{name}.log {args}; rc=$?; cat /tmp/{name}.log; echo \"CASE {name} exit=$rc\"\n"
        ));
    }
    s
}

fn guest_cpio(dir: &std::path::Path) -> std::path::PathBuf {
    let init = format!("#!/bin/sh\n{}{ACTIONS}", guest_initramfs::MOUNTS);
    let agent = guest_probe::expect_static_agent();
    let path = dir.join("guest.cpio");
    std::fs::write(
        &path,
        guest_initramfs::busybox(&init, &[("/bin/bulkhead-agent", &agent)]).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn our_kernel_boots_on_1_and_2_vcpus_powers_off_reboots_panics_and_passes_the_probe() {
    let _vm = vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let cpio = guest_cpio(dir.path());
    let k = "\"$BULKHEAD_KERNEL\"";
    let s = script(&[
        (
            "poweroff1",
            k,
            "--vcpus 1 --cmdline 'console=ttyS0 quiet ACTION=poweroff'",
        ),
        (
            "reboot2",
            k,
            "--vcpus 2 --cmdline 'console=ttyS0 quiet ACTION=reboot'",
        ),
        (
            "probe2",
            k,
            "--vcpus 2 --memory 256 --cmdline 'console=ttyS0 quiet ACTION=probe CPUS=2'",
        ),
        (
            "panic1",
            k,
            "--vcpus 1 --cmdline 'console=ttyS0 quiet ACTION=panic'",
        ),
    ]);
    let out = TestHost::new()
        .unwrap()
        .stage(&cpio, "/t/guest.cpio")
        .timeout(Duration::from_secs(400))
        .run(&["sh", "-c", &s])
        .unwrap();
    let c = cases(&out.stdout_str());
    let report = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            out.stdout_str(),
            out.stderr_str()
        )
    };

    let p1 = &c.get("poweroff1").unwrap_or_else(|| panic!("{}", report()));
    assert_eq!(
        (p1.exit, p1.serial.contains("GUEST nproc=1")),
        (0, true),
        "{}",
        report()
    );
    let r2 = &c["reboot2"];
    assert_eq!(
        (r2.exit, r2.serial.contains("GUEST nproc=2")),
        (0, true),
        "{}",
        report()
    );
    let probe = &c["probe2"];
    assert_eq!(probe.exit, 0, "{}", report());
    assert!(
        probe.serial.contains("probe: all ok") && probe.serial.contains("probe: exit 0"),
        "{}",
        report()
    );
    assert!(
        probe.serial.contains("probe: cpus ok (2 online)"),
        "{}",
        report()
    );
    let panic = &c["panic1"];
    assert_eq!(
        panic.exit,
        i32::from(bulkhead_vmm::exit::code::GUEST_PANIC),
        "{}",
        report()
    );
}

#[test]
fn debian_cloud_kernel_bzimage_boots_with_2_vcpus() {
    let _vm = vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let cpio = guest_cpio(dir.path());
    let stock = testhost::stock_kernel().unwrap();
    let s = script(&[(
        "cloud2",
        "/t/vmlinuz",
        "--vcpus 2 --memory 256 --cmdline 'console=ttyS0 quiet ACTION=poweroff'",
    )]);
    let out = TestHost::new()
        .unwrap()
        .stage(&cpio, "/t/guest.cpio")
        .stage(&stock, "/t/vmlinuz")
        .timeout(Duration::from_secs(400))
        .run(&["sh", "-c", &s])
        .unwrap();
    let c = cases(&out.stdout_str());
    let cloud = c.get("cloud2").unwrap_or_else(|| {
        panic!(
            "stdout:\n{}\nstderr:\n{}",
            out.stdout_str(),
            out.stderr_str()
        )
    });
    assert_eq!(cloud.exit, 0, "{}", cloud.serial);
    assert!(cloud.serial.contains("GUEST nproc=2"), "{}", cloud.serial);
}

fn mkfs(
    dir: &std::path::Path,
    name: &str,
    contents: Option<&std::path::Path>,
) -> std::path::PathBuf {
    let img = dir.join(name);
    let mut cmd = std::process::Command::new("mkfs.ext4");
    cmd.arg("-q");
    if let Some(src) = contents {
        cmd.arg("-d").arg(src);
    }
    let status = cmd
        .arg(&img)
        .arg("8M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(status.success());
    img
}

#[test]
fn virtio_disks_rng_net_and_vsock_both_ways() {
    let _vm = vm_lock();
    let dir = tempfile::tempdir().unwrap();
    let cpio = guest_cpio(dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "from the read-only disk\n").unwrap();
    let ro = mkfs(dir.path(), "ro.img", Some(&src));
    let rw = mkfs(dir.path(), "rw.img", None);
    let back = dir.path().join("rw-back.img");
    // The host listener is bound before the VM starts; the FIFO unblocks
    // once it has served the guest's call, and by then the guest's echo
    // listener is up, so the host's CONNECT cannot race it.
    let script = r#"
bulkhead-testkit tap-create tap0 && ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up
mkfifo /tmp/served
bulkhead-testkit vsock-listen /tmp/v.sock_6000 "pong from host" /tmp/served
bulkhead-vmm --kernel "$BULKHEAD_KERNEL" --initrd /t/guest.cpio --serial /tmp/virtio.log \
  --cmdline "console=ttyS0 quiet ACTION=virtio" --disk /t/ro.img,ro --disk /t/rw.img \
  --vsock-uds /tmp/v.sock --vsock-cid 3 --tap tap0 --mac 02:00:00:00:00:02 &
vp=$!
cat /tmp/served
bulkhead-testkit vsock-connect /tmp/v.sock 5000 "echo me please"
wait $vp; rc=$?
cat /tmp/virtio.log
echo "CASE virtio exit=$rc"
"#;
    let out = TestHost::new()
        .unwrap()
        .stage(&cpio, "/t/guest.cpio")
        .stage(&ro, "/t/ro.img")
        .stage(&rw, "/t/rw.img")
        .collect("/t/rw.img", &back)
        .timeout(Duration::from_secs(120))
        .run(&["sh", "-c", script])
        .unwrap();
    let text = out.stdout_str();
    let report = format!("stdout:\n{text}\nstderr:\n{}", out.stderr_str());
    let c = cases(&text);
    let v = c.get("virtio").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(v.exit, 0, "{report}");
    for want in [
        "from the read-only disk",
        "serial=bulkhead-disk0",
        "rw-done",
        "rng-bytes=16",
        "mac=02:00:00:00:00:02",
        "ping-ok",
        "vsock-call: reply \"pong from host\"",
        "vsock-echo: echoed 14 bytes",
        "vsock-listen: got \"ping from guest\"",
        "vsock-connect: reply \"echo me please\"",
    ] {
        assert!(v.serial.contains(want), "missing {want:?}\n{report}");
    }
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /out.txt"])
        .arg(&back)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "written by the guest\n"
    );
}
