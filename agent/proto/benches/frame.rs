//! The agent protocol's frame codec, both directions of the hot path: a
//! 32 KiB stdout chunk (what a chatty workload streams) and a credit frame,
//! encoded and then decoded from a byte stream that arrives in 4 KiB reads.
//!
//! `cargo bench -p bulkhead-agent-proto --bench frame`

use bulkhead_agent_proto::{Fd, Frame, FrameDecoder, StreamId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn codec(c: &mut Criterion) {
    let Some(stdout) = StreamId::new(1, Fd::Stdout) else {
        return;
    };
    let data = Frame::Data {
        stream: stdout,
        bytes: vec![0x5a; 32 * 1024],
    };
    let credit = Frame::Credit {
        stream: stdout,
        bytes: 64 * 1024,
    };
    let mut wire = Vec::new();
    for f in [&data, &credit] {
        if f.encode(&mut wire).is_err() {
            return;
        }
    }
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode 32 KiB data + credit", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            let _ = data.encode(&mut out);
            let _ = credit.encode(&mut out);
            out.len()
        })
    });
    g.bench_function("decode 32 KiB data + credit in 4 KiB reads", |b| {
        b.iter(|| {
            let mut d = FrameDecoder::new();
            let mut frames = 0;
            for chunk in wire.chunks(4096) {
                d.push(chunk);
                while let Ok(Some(_)) = d.next_frame() {
                    frames += 1;
                }
            }
            frames
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
