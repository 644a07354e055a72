//! A 200 MB layer is pulled without holding it in memory: the test
//! process's peak RSS grows by far less than the layer. Its own test binary
//! so no other test shares the process.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::process::Command;

use bulkhead_images::store::pull::{pull, PullOptions};
use bulkhead_images::store::Store;
use common::{sh, Registry};

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_200_mb_layer_streams_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = format!("{}:t", layout.display());
    sh(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    sh(Command::new("umoci").args(["new", "--image", &image]));
    sh(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(dir.path().join("bundle")));
    // 200 MiB that gzip cannot shrink, written 1 MiB at a time.
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut big = std::fs::File::create(dir.path().join("bundle/rootfs/big")).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..200 {
        random.read_exact(&mut chunk).unwrap();
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    drop(chunk);
    sh(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(dir.path().join("bundle")));
    let reg = Registry::start(None);
    reg.push(&layout, "big:t", None);

    let store = Store::open(dir.path().join("store")).unwrap();
    let before = peak_rss_kib();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt
        .block_on(pull(
            &store,
            &format!("{}/big:t", reg.addr),
            &PullOptions {
                insecure: true,
                basic_auth: None,
            },
            &|_, _, _| {},
        ))
        .unwrap();
    let after = peak_rss_kib();
    let img = store.image(&got.manifest).unwrap();
    let layer = img.manifest.layers.iter().map(|l| l.size).max().unwrap();
    assert!(layer > 200 << 20, "the layer is {layer} bytes");
    let grew = (after - before) * 1024;
    assert!(
        grew < 64 << 20,
        "peak RSS grew by {} MiB pulling a {} MiB layer",
        grew >> 20,
        layer >> 20
    );
    eprintln!(
        "pulled a {} MiB layer; peak RSS grew by {} MiB",
        layer >> 20,
        grew >> 20
    );
}
