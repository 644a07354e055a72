//! `bulkhead cp` streams from a workload, landed on the host with
//! `Unpacker::for_copy`: hostile input like a layer, with a canary beside.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod layer_kit;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bulkhead_images::unpack::{Limits, UnpackError, Unpacker};
use layer_kit::{tree_hash, Layer, Scene};
use tar::EntryType;

/// A `bulkhead cp` stream from a workload, landed with `for_copy`.
fn land(
    stream: Vec<u8>,
    landing: bulkhead_images::unpack::Landing,
) -> (Scene, Result<(), UnpackError>) {
    let s = Scene::new();
    let before = tree_hash(&s.canary);
    let r = Unpacker::for_copy(&s.root, Limits::default(), landing)
        .unwrap()
        .apply(&stream[..]);
    assert_eq!(tree_hash(&s.canary), before, "the canary changed");
    (s, r)
}

fn landing(
    top: &str,
    to: Option<&str>,
    owner: Option<(u32, u32)>,
) -> bulkhead_images::unpack::Landing {
    bulkhead_images::unpack::Landing {
        top: top.as_bytes().to_vec(),
        to: to.map(|t| t.as_bytes().to_vec()),
        owner,
    }
}

#[test]
fn m40_copy_stream_entries_stay_under_their_top() {
    // An entry beside the copied tree, or a hard link reaching out of it.
    let (s, r) = land(
        Layer::default()
            .dir("data")
            .file("data/ok", "x")
            .file("other/evil", "x")
            .end(),
        landing("data", Some("data"), None),
    );
    expect_err!(r, UnpackError::OutsideCopy(_));
    assert!(!s.root.join("other").exists());
    let (s, r) = land(
        Layer::default()
            .dir("data")
            .hardlink("data/l", "etc/passwd")
            .end(),
        landing("data", Some("data"), None),
    );
    expect_err!(r, UnpackError::Hardlink { .. });
    assert!(!s.root.join("data/l").exists());
    // The usual walls still hold: `..`, absolute names, symlinked parents.
    for bad in [
        Layer::default().file("data/../x", "x").end(),
        Layer::default().file("/data/x", "x").end(),
        Layer::default()
            .dir("data")
            .symlink("data/up", "/")
            .file("data/up/x", "x")
            .end(),
    ] {
        let (s, r) = land(bad, landing("data", Some("data"), None));
        assert!(r.is_err(), "accepted");
        assert!(!s.root.join("x").exists() && !Path::new("/x").exists());
    }
}

#[test]
fn m41_copy_stream_renamed_owned_and_never_setuid() {
    let stream = Layer::default()
        .dir("src")
        .raw(b"src/tool", EntryType::Regular, b"#!", b"", 0o6755, None)
        .file("src/.wh.kept", "a name, not a whiteout")
        .file("src/.wh..wh..opq", "nor this")
        .end();
    let (s, r) = land(
        stream.clone(),
        landing("src", Some("dst"), Some((4321, 4321))),
    );
    r.unwrap();
    let tool = std::fs::metadata(s.root.join("dst/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755, "setuid and setgid are gone");
    assert_eq!((tool.uid(), tool.gid()), (4321, 4321));
    assert!(s.root.join("dst/.wh.kept").is_file());
    assert!(s.root.join("dst/.wh..wh..opq").is_file());
    // Dropped: the top's children land in the target itself.
    let (s, r) = land(stream, landing("src", None, None));
    r.unwrap();
    assert!(s.root.join("tool").is_file() && !s.root.join("src").exists());
}
