//! Nested mode: the command runs inside QEMU (TCG, `-cpu max`: an emulated
//! AMD CPU with SVM) on Debian's cloud kernel, where `/dev/kvm` is real.

use std::fs;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::pump::{pump, shell_status, spawn_reader, Channel, Event, Heartbeat};
use super::{assets, payload, tail_lines, Mode, Output, Stream, TestHost, TestHostError};

/// The virtio-serial ports, in the order their sockets are made.
const PORTS: [(&str, Channel); 5] = [
    ("stdout", Channel::Out(Stream::Stdout)),
    ("stderr", Channel::Out(Stream::Stderr)),
    ("control", Channel::Control),
    ("collect", Channel::Collect),
    ("heartbeat", Channel::Heartbeat),
];

/// The test host's init beats once a second from its own timer; this long
/// without a beat means the emulated machine froze.
pub const FROZEN_AFTER: Duration = Duration::from_secs(30);

/// The first beat comes once the test host booted (4-10 s here); none by
/// then means it stalled while booting (seen: RCU stalls with an idle
/// emulated CPU's timer never firing).
const FIRST_BEAT_WITHIN: Duration = Duration::from_secs(90);

pub fn run(
    th: &TestHost,
    argv: &[&str],
    sink: &mut dyn FnMut(Stream, &[u8]),
) -> Result<Output, TestHostError> {
    let started = Instant::now();
    let assets = assets::prepare(&mut |m| eprintln!("testhost: {m}"))?;
    let work = tempfile::Builder::new()
        .prefix("bulkhead-testhost-")
        .tempdir()
        .map_err(TestHostError::io("create a work dir"))?;
    let initrd = work.path().join("initrd");
    write_initrd(&initrd, &assets.base_initramfs, &payload::build(th, argv)?)?;

    let (tx, rx) = mpsc::channel();
    let mut sockets = Vec::new();
    for (name, channel) in PORTS {
        let path = work.path().join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path)
            .map_err(TestHostError::io(format!("bind {}", path.display())))?;
        let tx = tx.clone();
        std::thread::spawn(move || match listener.accept() {
            Ok((stream, _)) => spawn_reader(stream, channel, tx),
            Err(_) => {
                let _ = tx.send(Event::Closed);
            }
        });
        sockets.push(path);
    }

    let console = work.path().join("console.log");
    let mut qemu = qemu_command(th, &assets, &initrd, &console, &sockets);
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TestHostError::io("start qemu-system-x86_64"))?;
    let qemu_stderr = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || std::io::read_to_string(e).unwrap_or_default()));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    {
        let tx = tx.clone();
        let sockets = sockets.clone();
        std::thread::spawn(move || {
            let status = child.wait();
            // Ports QEMU never connected (it failed early) would keep their
            // acceptors waiting: connect once so they see EOF.
            for s in &sockets {
                let _ = UnixStream::connect(s);
            }
            if let Ok(status) = status {
                let _ = tx.send(Event::Exited(status));
            }
        });
    }
    drop(tx);

    let gathered = pump(
        &rx,
        PORTS.len(),
        started + th.timeout,
        Some(Heartbeat {
            first_within: FIRST_BEAT_WITHIN,
            silence: th.frozen_after,
        }),
        &mut || {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        },
        sink,
    );
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    let console_tail = tail_lines(&console_text, 25);
    if gathered.frozen {
        return Err(TestHostError::BrokeDown {
            why: format!("it froze (no heartbeat for {:?}, or none within {FIRST_BEAT_WITHIN:?} of the start)", th.frozen_after),
            console: console_tail,
            boots: 1,
        });
    }
    if gathered.timed_out {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&gathered.stdout),
            String::from_utf8_lossy(&gathered.stderr)
        );
        return Err(TestHostError::Timeout {
            after: th.timeout,
            output: tail_lines(&output, 25),
            console: console_tail,
        });
    }
    let control = String::from_utf8_lossy(&gathered.control).into_owned();
    let status = match control.lines().last().map(str::trim) {
        Some(line) if line.starts_with("exit ") => line[5..].parse::<i32>().ok(),
        _ => None,
    };
    let Some(status) = status else {
        if console_text.contains("Kernel panic") {
            return Err(TestHostError::BrokeDown {
                why: "its kernel panicked".into(),
                console: console_tail,
                boots: 1,
            });
        }
        let qemu_err = qemu_stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        // QEMU killed by a signal it did not get from us (an assertion's
        // abort, a crash): the emulator failed.
        if let Some(signal) = gathered
            .exit
            .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s))
        {
            return Err(TestHostError::BrokeDown {
                why: format!(
                    "QEMU died of signal {signal}: {}",
                    tail_lines(qemu_err.trim(), 3)
                ),
                console: console_tail,
                boots: 1,
            });
        }
        let qemu_exit = gathered.exit.map(shell_status);
        let reason = match control.lines().last() {
            Some(l) if l.starts_with("error ") => Some(l[6..].to_string()),
            _ if !qemu_err.trim().is_empty() => {
                Some(format!("qemu (exit {qemu_exit:?}): {}", qemu_err.trim()))
            }
            _ => None,
        };
        return Err(TestHostError::NoStatus {
            reason,
            console: console_tail,
        });
    };
    if !th.collects.is_empty() {
        unpack_collected(th, &gathered.collect, work.path())?;
    }
    Ok(Output {
        status,
        stdout: gathered.stdout,
        stderr: gathered.stderr,
        console: console_text,
        mode: Mode::Nested,
        elapsed: started.elapsed(),
    })
}

fn write_initrd(path: &Path, base: &Path, payload: &[u8]) -> Result<(), TestHostError> {
    let io = TestHostError::io(format!("write {}", path.display()));
    let mut out =
        fs::File::create(path).map_err(TestHostError::io(format!("create {}", path.display())))?;
    let mut base_file =
        fs::File::open(base).map_err(TestHostError::io(format!("open {}", base.display())))?;
    std::io::copy(&mut base_file, &mut out)
        .and_then(|_| out.write_all(payload))
        .map_err(io)
}

fn qemu_command(
    th: &TestHost,
    assets: &assets::Assets,
    initrd: &Path,
    console: &Path,
    sockets: &[PathBuf],
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &th.cpus.to_string(), "-m", &th.memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off {}", std::env::var("BULKHEAD_TESTHOST_CMDLINE").unwrap_or_default()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        // INTx, no MSI-X: QEMU 10.0.2's TCG once aborted on an MSI-X table
        // write from L1 (hw/pci/msix.c assertion); a few interrupts a second
        // do not need vectors.
        .args(["-device", "virtio-serial-pci,id=vs,vectors=0"]);
    for ((name, _), sock) in PORTS.iter().zip(sockets) {
        c.arg("-chardev")
            .arg(format!("socket,id={name},path={}", sock.display()))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vs.0,chardev={name},name=testhost.{name}"
            ));
    }
    // For debugging the emulated machine itself (a QEMU monitor socket, a
    // gdb stub): extra arguments, split on whitespace.
    if let Some(extra) = std::env::var_os("BULKHEAD_TESTHOST_QEMU_ARGS") {
        c.args(extra.to_string_lossy().split_whitespace());
    }
    c
}

/// The collect port carries one tar: `./<index>/<basename of the path>`.
fn unpack_collected(th: &TestHost, tar_bytes: &[u8], work: &Path) -> Result<(), TestHostError> {
    let dir = work.join("collected");
    fs::create_dir_all(&dir).map_err(TestHostError::io("create collect dir"))?;
    // The tar comes from the guest: the tar crate refuses entries that
    // climb out of `dir`.
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive.unpack(&dir).map_err(|e| TestHostError::Collect {
        guest: "(archive)".into(),
        why: e.to_string(),
    })?;
    for (i, c) in th.collects.iter().enumerate() {
        let base = c
            .guest
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let got = dir.join(i.to_string()).join(base);
        if fs::symlink_metadata(&got).is_err() {
            return Err(TestHostError::Collect {
                guest: c.guest.clone(),
                why: "not found in the test host".into(),
            });
        }
        super::direct::place(&got, &c.host).map_err(|e| TestHostError::Collect {
            guest: c.guest.clone(),
            why: e.to_string(),
        })?;
    }
    Ok(())
}
