//! A hostile tiny guest against the real bulkhead-vmm, on this machine's
//! /dev/kvm (any KVM): pseudo-random writes to every register of every
//! virtio-mmio window, to the serial port, and to the guest memory where
//! the rings live (forged descriptor chains, random QueueNotify), before,
//! during and after the DRIVER_OK handshake, with a disk, vsock, rng and a
//! network card on a TAP attached (the host keeps sending it frames through
//! a packet socket on the TAP: no address is involved), seccomp on. The VMM must survive (or stop with the guest-fault
//! code), never crash or die of a signal, keep its own memory within 1 MiB
//! of a calm run's, and a VM beside it must get all its output through.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use bulkhead_vmm::exit::code;
use bulkhead_vmm::tiny_guest::Program;

/// Random writes per storm (three storms): about 300k VM exits.
const ROUNDS: u32 = 100_000;

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead-vmm"))
}

/// Serial back to a sane state (8N1, no loopback) so the last line gets out.
fn sane_serial(p: Program) -> Program {
    p.out8(0x3fb, 0x03).out8(0x3fc, 0x00).out8(0x3f9, 0x00)
}

/// A well-formed virtio-blk write of 0xab x 512 to sector 0 on the first
/// window's queue 0 (rings where `virtio_init` put them), then its notify:
/// proof that the guest really drives the disk through these rings.
fn blk_write_sector0(mut p: Program) -> Program {
    let desc = [
        (0x23_0000u32, 16u32, 0x0001_0001u32),
        (0x23_1000, 512, 0x0002_0001),
        (0x23_2000, 1, 0x0000_0002),
    ];
    for (i, (addr, len, flags_next)) in desc.into_iter().enumerate() {
        let at = 0x20_0000 + 16 * u32::try_from(i).unwrap();
        p = p
            .mmio_write32(at, addr)
            .mmio_write32(at + 4, 0)
            .mmio_write32(at + 8, len)
            .mmio_write32(at + 12, flags_next);
    }
    p = p
        .mmio_write32(0x23_0000, 1)
        .mmio_write32(0x23_0004, 0)
        .mmio_write32(0x23_0008, 0)
        .mmio_write32(0x23_000c, 0);
    for i in 0..128 {
        p = p.mmio_write32(0x23_1000 + 4 * i, 0xabab_abab);
    }
    p.mmio_write32(0x20_1000, 0x0001_0000)
        .mmio_write32(0x20_1004, 0)
        .mmio_write32(0xd000_0050, 0)
}

fn program(hostile: bool) -> Program {
    let mut p = blk_write_sector0(Program::new().print("start\n").virtio_init());
    if hostile {
        p = p
            .hostile_writes(0x1234_5678, ROUNDS)
            .virtio_init()
            .hostile_writes(0x0bad_f00d, ROUNDS)
            .virtio_init()
            .hostile_writes(0xdead_beef, ROUNDS);
    } else {
        p = p.virtio_init();
    }
    sane_serial(p).print("\nsurvived\n").power_off()
}

struct Run {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// Frames the host sent into the VM's TAP while it ran.
    frames: u64,
}

/// Sends Ethernet frames out of TAP `tap` through a packet socket, so they
/// arrive on the VM's side, until `stop` (or the TAP goes with its VMM);
/// how many went. The TAP has no address, forwards nothing and has no
/// IPv6: what the guest sends ends in the host stack, never anywhere else.
fn feed_tap(tap: &str, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::sync::atomic::Ordering;
    let ifname = std::ffi::CString::new(tap).unwrap();
    // SAFETY: a NUL-terminated name, read for the call.
    let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if index == 0 {
        return 0; // the VM ended already
    }
    for (knob, value) in [
        (format!("/proc/sys/net/ipv4/conf/{tap}/forwarding"), "0"),
        (format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1"),
    ] {
        if std::fs::write(&knob, value).is_err() {
            return 0;
        }
    }
    let up = Command::new("ip")
        .args(["link", "set", tap, "up"])
        .status()
        .unwrap();
    if !up.success() {
        return 0;
    }
    // SAFETY: socket() with integer arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    addr.sll_ifindex = i32::try_from(index).unwrap();
    addr.sll_halen = 6;
    let mut sent = 0u64;
    let mut seed = 0x9e37_79b9u32;
    while !stop.load(Ordering::Relaxed) {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let len = 60 + usize::try_from(seed % 1400).unwrap();
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 4]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        for (i, b) in frame[14..].iter_mut().enumerate() {
            *b = (seed >> (i % 24)).to_le_bytes()[0];
        }
        // SAFETY: sendto reads `frame` and `addr`, both alive for the call.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        if n > 0 {
            sent += 1;
        }
        // Not a flood: a steady stream, so the guest side always has some.
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    sent
}

fn run_vm(dir: &Path, name: &str, p: Program) -> Run {
    let kernel = dir.join(format!("{name}.elf"));
    std::fs::write(&kernel, p.elf()).unwrap();
    let disk = dir.join(format!("{name}.img"));
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let tap = format!("bhst{}{}", std::process::id() % 100_000, &name[..1]);
    let mut child = vmm()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--disk")
        .arg(&disk)
        .arg("--vsock-uds")
        .arg(dir.join(format!("{name}.vsock")))
        .args(["--vsock-cid", "3", "--memory-report", "--tap", &tap])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "start\n", "{name}: the guest starts");
    // The VMM made the TAP before the guest ran: frames from the host
    // until the VM ends.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (tap, stop) = (tap.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || feed_tap(&tap, &stop))
    };
    let mut stdout = Vec::new();
    out.read_to_end(&mut stdout).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let frames = feeder.join().unwrap();
    eprintln!("{name}: {frames} frames sent into its TAP");
    Run {
        status,
        stdout,
        stderr,
        frames,
    }
}

fn overhead_kib(r: &Run) -> u64 {
    r.stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("overhead_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no memory report: {}", r.stderr))
}

#[test]
fn a_hostile_guest_cannot_crash_the_vmm_grow_it_or_disturb_a_neighbour() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let dir = tempfile::tempdir().unwrap();
    let calm = run_vm(dir.path(), "calm", program(false));
    assert_eq!(calm.status.code(), Some(0), "{}", calm.stderr);
    assert!(
        std::fs::read(dir.path().join("calm.img")).unwrap()[..512]
            .iter()
            .all(|b| *b == 0xab),
        "the guest's block write reached the disk"
    );

    // The neighbour prints steadily while the hostile one runs.
    let line = "neighbour: every byte of this line arrives\n";
    let mut neighbour = Program::new();
    for _ in 0..40 {
        neighbour = neighbour.print(line).delay(250_000);
    }
    let kernel = dir.path().join("neighbour.elf");
    std::fs::write(&kernel, neighbour.power_off().elf()).unwrap();
    let beside = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        (
            vmm().arg("--kernel").arg(&kernel).output().unwrap(),
            start.elapsed(),
        )
    });

    let hostile = run_vm(dir.path(), "hostile", program(true));
    assert!(
        hostile.frames > 0,
        "the storm's network card was fed frames from the host"
    );
    let (beside, took) = beside.join().unwrap();
    eprintln!("neighbour ran {took:?} beside the storm");

    // Survived, or stopped with the guest-fault code: never a signal or a VMM error.
    assert_eq!(
        hostile.status.signal(),
        None,
        "the VMM died of a signal: {:?}\n{}",
        hostile.status,
        hostile.stderr
    );
    match hostile.status.code() {
        Some(0) => assert!(
            hostile.stdout.ends_with(b"\nsurvived\n"),
            "{:?}",
            String::from_utf8_lossy(&hostile.stdout[hostile.stdout.len().saturating_sub(200)..])
        ),
        Some(c) if c == i32::from(code::GUEST_CRASH) => {}
        other => panic!("the VMM ended with {other:?}: {}", hostile.stderr),
    }
    let disk = std::fs::read(dir.path().join("hostile.img")).unwrap();
    assert!(
        disk[..512].iter().all(|b| *b == 0xab),
        "the disk was live when the storm began"
    );
    eprintln!(
        "hostile: {} bytes of serial output, {} disk bytes non-zero; {}",
        hostile.stdout.len(),
        disk.iter().filter(|b| **b != 0).count(),
        hostile.stderr.trim()
    );
    let (h, c) = (overhead_kib(&hostile), overhead_kib(&calm));
    assert!(
        h <= c + 1024,
        "the VMM's own memory grew: {h} KiB beyond the guest vs {c} KiB in a calm run"
    );
    assert_eq!(
        beside.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&beside.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&beside.stdout),
        line.repeat(40),
        "the neighbour's output is intact"
    );
}
