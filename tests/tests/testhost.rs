//! Tests of the test host itself. Mode-independent behaviour is checked in
//! both modes (direct runs on any host; nested boots QEMU); what only the
//! nested host provides (hardware-like KVM, pivot_root on a tmpfs root) is
//! checked in the mode this host takes.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::fs;
use std::time::Duration;

use bulkhead_tests::testhost::{Mode, TestHost, TestHostError};
use bulkhead_tests::vm_lock;

fn host(mode: Mode) -> TestHost {
    TestHost::new()
        .expect("test host settings")
        .with_mode(mode)
        .timeout(Duration::from_secs(240))
}

#[test]
fn kvm_works_and_pivot_root_works_in_the_detected_mode() {
    let _vm = vm_lock();
    let th = TestHost::new().unwrap();
    eprintln!("test host mode on this machine: {}", th.mode());
    let kvm =
        "test -c /dev/kvm && echo KVM-OK; grep -q -w -E 'svm|vmx' /proc/cpuinfo && echo VIRT-FLAGS";
    // Nested, the L1 root is a tmpfs (not rootfs), so pivot_root works:
    // runc, crun and the jailer need it. In the same boot (a nested boot
    // is the slow part).
    let pivot = "unshare -m sh -c 'mkdir -p /pr && mount -t tmpfs t /pr && mkdir /pr/old && cd /pr && pivot_root . old && echo PIVOT-OK'";
    let (script, want) = match th.mode() {
        Mode::Nested => (format!("{kvm}; {pivot}"), "KVM-OK\nVIRT-FLAGS\nPIVOT-OK\n"),
        Mode::Direct => (kvm.to_string(), "KVM-OK\nVIRT-FLAGS\n"),
    };
    let out = th.run(&["sh", "-c", &script]).unwrap();
    assert_eq!(
        out.stdout_str(),
        want,
        "stderr: {}\nconsole: {}",
        out.stderr_str(),
        out.console
    );
    assert_eq!(out.status, 0);
}

/// The mode this host takes is checked through the CLI (below), which
/// runs the same library: one boot fewer where that mode is nested.
#[test]
fn stdout_stderr_and_exit_status_stay_apart() {
    let detected = TestHost::new().unwrap().mode();
    for mode in [Mode::Direct, Mode::Nested]
        .into_iter()
        .filter(|m| *m != detected)
    {
        let _vm = vm_lock();
        let out = host(mode)
            .run(&[
                "sh",
                "-c",
                "echo out; echo err >&2; printf 'no newline'; exit 7",
            ])
            .unwrap();
        assert_eq!(out.stdout_str(), "out\nno newline", "{mode}");
        assert_eq!(out.stderr_str(), "err\n", "{mode}");
        assert_eq!(out.status, 7, "{mode}");
    }
}

#[test]
fn full_exit_status_survives_signals_and_missing_commands() {
    for mode in [Mode::Direct, Mode::Nested] {
        let _vm = vm_lock();
        let th = host(mode);
        let killed = th.run(&["sh", "-c", "kill -9 $$"]).unwrap();
        assert_eq!(killed.status, 137, "{mode}");
        let missing = th.run(&["no-such-command-here"]).unwrap();
        assert_eq!(missing.status, 127, "{mode}: {}", missing.stderr_str());
    }
}

#[test]
fn stdin_env_staging_and_collect() {
    for mode in [Mode::Direct, Mode::Nested] {
        let _vm = vm_lock();
        let scratch = tempfile::tempdir().unwrap();
        let src_dir = scratch.path().join("tree");
        fs::create_dir_all(src_dir.join("sub")).unwrap();
        fs::write(src_dir.join("sub/leaf.txt"), "leaf\n").unwrap();
        let src_file = scratch.path().join("file.txt");
        fs::write(&src_file, "staged file\n").unwrap();

        // A unique path, absent on this host, so direct mode may create it.
        let base = format!(
            "/tmp/bulkhead-testhost-{}-{}",
            std::process::id(),
            if mode == Mode::Direct { "d" } else { "n" }
        );
        let stdin: Vec<u8> = b"line one\n\x00binary\xff no newline".to_vec();
        let script = format!(
            "cat > {base}/stdin.copy; cat {base}/file.txt; cat {base}/tree/sub/leaf.txt; echo \"$GREETING\"; \
             mkdir -p {base}/out/d && echo result > {base}/out/d/r.txt"
        );
        let back = scratch.path().join("back");
        let out = host(mode)
            .stage(&src_file, format!("{base}/file.txt"))
            .stage(&src_dir, format!("{base}/tree"))
            .env("GREETING", "hello 'quoted' $world")
            .stdin(stdin.clone())
            .collect(format!("{base}/out"), &back)
            .collect(
                format!("{base}/stdin.copy"),
                scratch.path().join("stdin.copy"),
            )
            .run(&["sh", "-c", &script])
            .unwrap();
        assert_eq!(out.status, 0, "{mode}: {}", out.stderr_str());
        assert_eq!(
            out.stdout_str(),
            "staged file\nleaf\nhello 'quoted' $world\n",
            "{mode}"
        );
        assert_eq!(
            fs::read_to_string(back.join("d/r.txt")).unwrap(),
            "result\n",
            "{mode}"
        );
        assert_eq!(
            fs::read(scratch.path().join("stdin.copy")).unwrap(),
            stdin,
            "{mode}"
        );
        if mode == Mode::Direct {
            assert!(
                !std::path::Path::new(&base).exists(),
                "direct mode must remove what it staged"
            );
        }
    }
}

#[test]
fn collecting_a_missing_path_is_an_error() {
    for mode in [Mode::Direct, Mode::Nested] {
        let _vm = vm_lock();
        let dir = tempfile::tempdir().unwrap();
        let err = host(mode)
            .collect("/no/such/path", dir.path().join("x"))
            .run(&["true"])
            .unwrap_err();
        assert!(
            matches!(err, TestHostError::Collect { .. }),
            "{mode}: {err}"
        );
    }
}

#[test]
fn timeout_kills_the_run_with_a_clear_error() {
    for mode in [Mode::Direct, Mode::Nested] {
        let _vm = vm_lock();
        let err = host(mode)
            .timeout(Duration::from_secs(2))
            .run(&["sleep", "600"])
            .unwrap_err();
        assert!(
            matches!(err, TestHostError::Timeout { .. }),
            "{mode}: {err}"
        );
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(err.exit_code(), 124);
    }
}

#[test]
fn bad_requests_fail_before_anything_boots() {
    let th = TestHost::new().unwrap();
    assert!(matches!(th.run(&[]), Err(TestHostError::Usage(_))));
    let th = TestHost::new().unwrap().stage("/definitely/not/here", "/x");
    assert!(matches!(th.run(&["true"]), Err(TestHostError::Usage(_))));
    let th = TestHost::new()
        .unwrap()
        .stage("/etc/hostname", "relative/path");
    assert!(matches!(th.run(&["true"]), Err(TestHostError::Usage(_))));
}

/// In the mode this host takes: stdin in, stdout and stderr apart (a last
/// line without its newline too), the exit status.
#[test]
fn the_cli_passes_stdio_and_status_through() {
    let _vm = vm_lock();
    // tests/testhost/run only builds and execs this binary.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-testhost"))
        .args([
            "sh",
            "-c",
            "cat; echo out; echo err >&2; printf 'no newline'; exit 7",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nout\nno newline");
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("err\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn a_frozen_test_host_is_booted_again_then_given_up_on() {
    let _vm = vm_lock();
    // A stopped heartbeat looks, from outside, just like the emulated
    // machine freezing (QEMU's SVM flaw this guards against).
    let script = "echo booted; kill -STOP $(cat /run/testhost-heartbeat.pid); sleep 600";
    let mut booted = 0;
    let err = host(Mode::Nested)
        .attempts(2)
        .frozen_after(Duration::from_secs(5))
        .run_streaming(&["sh", "-c", script], &mut |_, data| {
            booted += String::from_utf8_lossy(data).matches("booted").count()
        })
        .unwrap_err();
    // Each boot breaks down (here by the stopped heartbeat; the emulation
    // may add its own breakdowns, which count the same).
    assert!(
        matches!(err, TestHostError::BrokeDown { boots: 2, .. }),
        "{err}"
    );
    assert!(booted >= 1, "the command ran: {booted}");
}
