//! A hostile registry (a few lines of HTTP on loopback, as an attacker
//! would write it; the real one, docker-registry, never sends these): a
//! manifest that never ends, one that declares a gigabyte, a blob longer
//! than its descriptor says, a layer that declares more than the disk
//! holds. Each pull fails with a clear error, without holding the excess
//! in memory or on disk, and leaves nothing behind in the store.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulkhead_images::store::pull::{pull, PullOptions};
use bulkhead_images::store::{Digest, Store, StoreError};
use sha2::Digest as _;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// What the registry did: bytes it managed to send, requests seen.
#[derive(Default)]
struct Seen {
    sent: AtomicU64,
    blob_requests: AtomicU64,
    manifest_requests: AtomicU64,
}

struct Hostile {
    addr: String,
    seen: Arc<Seen>,
}

const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

fn manifest(layer_digest: &str, layer_size: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#,
        sha(CONFIG),
        CONFIG.len()
    )
    .into_bytes()
}

/// The layer the liar sends: 32 MiB, whatever its descriptor says.
fn long_layer() -> Vec<u8> {
    vec![0x5a; 32 << 20]
}

/// A 200 with `extra` headers, then 64 MiB of spaces as far as the
/// client keeps reading.
fn spaces(s: &mut TcpStream, seen: &Seen, extra: &str, ty: &str) {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\n{extra}Connection: close\r\n\r\n");
    let _ = s.write_all(head.as_bytes());
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..1024 {
        if s.write_all(&chunk).is_err() {
            return;
        }
        seen.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, seen: &Seen) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let send = |s: &mut TcpStream, head: String, body: &[u8]| {
        let _ = s.write_all(head.as_bytes());
        for chunk in body.chunks(64 << 10) {
            if s.write_all(chunk).is_err() {
                return;
            }
            seen.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    let ok = |len: usize, ty: &str| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let layer = long_layer();
    if path.contains("/blobs/") {
        seen.blob_requests.fetch_add(1, Ordering::Relaxed);
    }
    if path.contains("/manifests/") {
        seen.manifest_requests.fetch_add(1, Ordering::Relaxed);
    }
    match path.as_str() {
        "/v2/" => send(&mut s, ok(2, "application/json"), b"{}"),
        // A manifest with no length that never ends (64 MiB of spaces).
        "/v2/endless/manifests/latest" => spaces(&mut s, seen, "", oci),
        // A manifest that declares a gigabyte.
        "/v2/declared/manifests/latest" => spaces(
            &mut s,
            seen,
            &format!("Content-Length: {}\r\n", 1u64 << 30),
            oci,
        ),
        // A layer whose descriptor says 1 KiB; its blob is 32 MiB.
        "/v2/liar/manifests/latest" => {
            let m = manifest(&sha(&layer), 1024);
            send(&mut s, ok(m.len(), oci), &m);
        }
        // A layer that declares a petabyte.
        "/v2/vast/manifests/latest" => {
            let m = manifest(&sha(b"never sent"), 1 << 50);
            send(&mut s, ok(m.len(), oci), &m);
        }
        p if p.ends_with(&sha(CONFIG)) => {
            send(&mut s, ok(CONFIG.len(), "application/octet-stream"), CONFIG)
        }
        p if p.ends_with(&sha(&layer)) => {
            send(&mut s, ok(layer.len(), "application/octet-stream"), &layer)
        }
        _ => {
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

impl Hostile {
    fn start() -> Hostile {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let s2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let s3 = Arc::clone(&s2);
                std::thread::spawn(move || serve(c, &s3));
            }
        });
        Hostile { addr, seen }
    }
}

fn try_pull(store: &Store, reg: &Hostile, name: &str) -> Result<(), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = PullOptions {
        insecure: true,
        basic_auth: None,
    };
    let none = |_: &Digest, _: u64, _: u64| {};
    rt.block_on(pull(
        store,
        &format!("{}/{name}:latest", reg.addr),
        &opts,
        &none,
    ))
    .map(|_| ())
}

/// Files in the store's blobs and tmp dirs.
fn stored(root: &std::path::Path) -> Vec<String> {
    ["blobs/sha256", "tmp"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().path().display().to_string())
        .collect()
}

#[test]
fn a_manifest_that_never_ends_is_cut_off_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reg = Hostile::start();
    let e = try_pull(&store, &reg, "endless").unwrap_err().to_string();
    assert!(e.contains("larger than 4194304 bytes"), "{e}");
    // Read up to the cap, once (a refusal is not retried), not the 64 MiB
    // it would send.
    let sent = reg.seen.sent.load(Ordering::Relaxed);
    assert!(sent < 16 << 20, "{sent} bytes were taken from it");
    assert_eq!(reg.seen.manifest_requests.load(Ordering::Relaxed), 1);
    let e = try_pull(&store, &reg, "declared").unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
    assert!(stored(&dir.path().join("store")).is_empty());
}

#[test]
fn a_blob_longer_than_its_descriptor_is_cut_off_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reg = Hostile::start();
    let e = try_pull(&store, &reg, "liar").unwrap_err().to_string();
    assert!(e.contains("more than the 1024 bytes"), "{e}");
    // The config was fine and may stay; the layer is nowhere, tmp is empty.
    let left = stored(&dir.path().join("store"));
    assert!(
        left.iter().all(|p| p.ends_with(&sha(CONFIG)[7..])),
        "{left:?}"
    );
}

#[test]
fn a_layer_larger_than_the_disk_is_not_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reg = Hostile::start();
    let e = try_pull(&store, &reg, "vast").unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("not enough disk space"), "{e}");
    // The config (first, small) was fetched; the layer was never asked for.
    assert_eq!(reg.seen.blob_requests.load(Ordering::Relaxed), 1);
}
