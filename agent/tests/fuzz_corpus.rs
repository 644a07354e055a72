//! Replays the committed passwd/group fuzz corpus (agent/fuzz/corpus/passwd_files).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[test]
fn passwd_files_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/passwd_files");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        bulkhead_agent::fuzzing::passwd_files(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}
