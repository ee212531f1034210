//! Frame header cost: encode (CRC32C over header and a 512 KiB payload), decode (72 bytes),
//! and the receiver's CRC check of the same payload.
//!
//! Run: `cargo bench --bench wire`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcc::codec::Codec;
use ringcc::wire::header::verify_crc;
use ringcc::wire::{CollKind, FrameKind, Header, Phase};
use ringcc::{DataType, ReduceOp};

/// The default segment size: one frame's payload.
const PAYLOAD_BYTES: usize = 512 << 10;

fn header() -> Header {
    Header {
        kind: FrameKind::Data,
        codec: Codec::Raw,
        phase: Phase::ReduceScatter,
        coll: CollKind::AllReduce,
        op: ReduceOp::Sum,
        dtype: DataType::F32,
        step: 3,
        job: 0x1234_5678,
        epoch: 1,
        seq: 42,
        len_elems: 16 << 20,
        chunk: 5,
        segment: 7,
        payload_len: PAYLOAD_BYTES as u32,
        raw_len: PAYLOAD_BYTES as u32,
        sender: 2,
    }
}

fn wire(c: &mut Criterion) {
    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let h = header();
    let encoded = h.encode(&payload);
    let (_, crc) = Header::decode(&encoded).expect("a header this bench encoded");

    let mut g = c.benchmark_group("wire_512KiB");
    g.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    g.bench_function("encode", |b| b.iter(|| std::hint::black_box(&h).encode(std::hint::black_box(&payload))));
    g.bench_function("verify_crc", |b| {
        b.iter(|| verify_crc(std::hint::black_box(&encoded), crc, std::hint::black_box(&payload)))
    });
    g.finish();

    let mut g = c.benchmark_group("wire_header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| b.iter(|| Header::decode(std::hint::black_box(&encoded))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = wire
}
criterion_main!(benches);
