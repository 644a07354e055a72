//! Fuzz entry point for the layer applier (images/fuzz) and its corpus
//! replay (tests/fuzz_corpus.rs).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::unpack::{Limits, Unpacker};

static RUN: AtomicU64 = AtomicU64::new(0);

/// Applies `data` as a layer tarball into a fresh `root/` inside a fresh
/// parent directory, with small limits; whatever happens, nothing may
/// appear in the parent beside `root/`.
pub fn layer_apply(data: &[u8]) {
    let parent = std::env::temp_dir().join(format!(
        "bulkhead-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let root = parent.join("root");
    if std::fs::create_dir_all(&root).is_err() {
        return;
    }
    if let Ok(mut u) = Unpacker::new(
        &root,
        Limits {
            max_bytes: 1 << 20,
            max_entries: 1000,
            min_free: 0,
        },
    ) {
        let _ = u.apply(data);
    }
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&parent);
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("root")],
        "something was written outside the root"
    );
}

/// The JSON documents of an image (manifest, index, config) as a registry
/// or an archive hands them over: parsed, an index's pick, the config's
/// process spec. Nothing may panic; whatever parses must validate or not.
pub fn image_json(data: &[u8]) {
    use crate::store::oci::{ImageConfig, Index, Manifest};
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = serde_json::to_vec(&m);
    }
    if let Ok(i) = serde_json::from_slice::<Index>(data) {
        let _ = i.pick();
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        let _ = c.config.process_spec().validate();
        let _ = c.config.healthcheck();
    }
    // The HEALTHCHECK decoder on any JSON value, as an image's config holds it.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = crate::store::healthcheck::decode(&v);
    }
}
