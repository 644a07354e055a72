//! Replays the committed fuzz corpora of the layer applier and the image
//! JSON parsers (images/fuzz/corpus/<target>).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[test]
fn layer_apply_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/layer_apply");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        bulkhead_images::fuzzing::layer_apply(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}

#[test]
fn image_json_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image_json");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        bulkhead_images::fuzzing::image_json(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}
