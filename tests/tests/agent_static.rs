//! The agent's static build refuses programs that would need NSS (shared
//! glibc libraries) at run time: a guest has none of them.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;

/// STATIC_RUSTFLAGS as the Makefile sets them, so this test and the real
/// build cannot drift apart.
fn agent_rustflags() -> String {
    let makefile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Makefile")).unwrap();
    makefile
        .lines()
        .find_map(|l| l.strip_prefix("STATIC_RUSTFLAGS := "))
        .expect("STATIC_RUSTFLAGS in the Makefile")
        .to_string()
}

#[test]
fn a_static_program_calling_getpwnam_fails_to_link() {
    let target = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--manifest-path",
        ])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/nss-canary/Cargo.toml"
        ))
        .env("CARGO_TARGET_DIR", target.path())
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("RUSTFLAGS", agent_rustflags())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the canary linked; the NSS guard is not working:\n{stderr}"
    );
    assert!(
        stderr.contains("Using 'getpwnam' in statically linked applications"),
        "{stderr}"
    );
}

#[test]
fn the_built_agent_and_vmm_are_static() {
    let agent = bulkhead_tests::guest_probe::static_agent_path();
    let vmm = agent.with_file_name("bulkhead-vmm");
    for bin in [agent, vmm] {
        let out = Command::new("readelf")
            .arg("-d")
            .arg(&bin)
            .output()
            .expect("readelf");
        assert!(
            out.status.success(),
            "{}: not built? run `make static`",
            bin.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("(NEEDED)"),
            "{} needs shared libraries:\n{text}",
            bin.display()
        );
    }
}
