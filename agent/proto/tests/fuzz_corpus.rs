//! Replays the committed fuzz corpora (agent/fuzz/corpus/<target>/) of the
//! frame decoders: every input a fuzzer ever kept must still run without a
//! panic. Long fuzzing runs live in .ci/fuzz.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "empty corpus in {}", dir.display());
}

#[test]
fn frames_to_agent_corpus() {
    replay("frames_to_agent", bulkhead_agent_proto::fuzzing::to_agent);
}

#[test]
fn frames_from_agent_corpus() {
    replay(
        "frames_from_agent",
        bulkhead_agent_proto::fuzzing::from_agent,
    );
}

#[test]
fn the_seeds_decode_into_real_messages() {
    // Guards that the seeds are not dead input: the start seed must decode
    // into a Start message whose process spec validates.
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frames_to_agent/seed-start"),
    )
    .unwrap();
    let mut d = bulkhead_agent_proto::FrameDecoder::new();
    d.push(&data[1..]);
    let Some(bulkhead_agent_proto::Frame::Control(bytes)) = d.next_frame().unwrap() else {
        panic!("no control frame")
    };
    match bulkhead_agent_proto::ToAgent::decode(&bytes).unwrap() {
        bulkhead_agent_proto::ToAgent::Start { spec, .. } => {
            assert_eq!(spec.process.validate(), Ok(()))
        }
        other => panic!("{other:?}"),
    }
}
