//! Replays the committed fuzz corpora of the layer applier and the image
//! JSON parsers (images/fuzz/corpus/<target>).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}

#[test]
fn layer_apply_corpus() {
    replay("layer_apply", bulkhead_images::fuzzing::layer_apply);
}

#[test]
fn image_json_corpus() {
    replay("image_json", bulkhead_images::fuzzing::image_json);
}
