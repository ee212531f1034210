//! The sans-IO core without sockets: setting up a collective and draining its first
//! transmits, a whole 8-rank all_reduce routed in memory, and the pure schedule functions.
//!
//! Run: `cargo bench --bench schedule`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcc::codec::CodecChoice;
use ringcc::core::collective::{Algorithm, Collective, Link, Spec, Status};
use ringcc::core::schedule::{all_gather_send_chunk, chunk_range, reduce_scatter_send_chunk, segment_count};
use ringcc::wire::header::verify_crc;
use ringcc::wire::{CollKind, Header};
use ringcc::{DataType, ReduceOp};

const WORLD: usize = 8;
const SEGMENT_BYTES: usize = 512 << 10;

fn spec(pos: usize, len_elems: usize) -> Spec {
    Spec {
        coll: CollKind::AllReduce,
        op: ReduceOp::Sum,
        dtype: DataType::F32,
        codec: CodecChoice::default(),
        job: 1,
        epoch: 1,
        seq: 1,
        len_elems,
        world: WORLD,
        pos,
        rank: pos as u32,
        block_of_pos: (0..WORLD).collect(),
        root_pos: 0,
        segment_bytes: SEGMENT_BYTES,
        contributors: WORLD,
        algorithm: Algorithm::Auto,
        progress_timeout: Duration::from_secs(30),
        fin: false,
        payload_crc: [true, true, true],
        partner_links: false,
    }
}

/// `Collective::start` on one rank of 8 for 64 MiB, then every transmit it has ready
/// (one chunk's segments per direction; each poll encodes a header and CRCs its payload).
fn start_and_drain(c: &mut Criterion) {
    let len_elems = (64 << 20) / 4;
    let mut buf = vec![0u8; len_elems * 4];
    let now = Instant::now();
    let mut drained_bytes = 0u64;
    let mut coll = Collective::start(spec(0, len_elems), now, &mut buf);
    while let Some(t) = coll.poll_transmit(&buf) {
        drained_bytes += t.payload.len() as u64;
    }
    let mut g = c.benchmark_group("collective_n8_64MiB");
    g.throughput(Throughput::Bytes(drained_bytes));
    g.bench_function("start_and_drain", |b| {
        b.iter(|| {
            let mut coll = Collective::start(spec(0, len_elems), now, &mut buf);
            let mut n = 0usize;
            while let Some(t) = coll.poll_transmit(&buf) {
                n += t.payload.len();
            }
            n
        })
    });
    g.finish();
}

/// A frame in flight between two in-memory ranks.
struct Frame {
    to: usize,
    link: Link,
    header: [u8; ringcc::wire::HEADER_LEN],
    payload: Vec<u8>,
}

/// Runs one all_reduce over `bufs` (one per rank) with frames routed in memory, checking
/// every CRC as the driver does. Returns the number of frames delivered.
fn ring_all_reduce(bufs: &mut [Vec<u8>], pool: &mut Vec<Vec<u8>>) -> usize {
    let now = Instant::now();
    let len_elems = bufs[0].len() / 4;
    let mut colls: Vec<Collective> =
        bufs.iter_mut().enumerate().map(|(p, b)| Collective::start(spec(p, len_elems), now, b)).collect();
    let mut wire: VecDeque<Frame> = VecDeque::new();
    let mut delivered = 0;
    // Each frame is delivered once; this bounds the loop far above the frames a ring sends.
    for _ in 0..1_000_000 {
        for (p, coll) in colls.iter_mut().enumerate() {
            while let Some(t) = coll.poll_transmit(&bufs[p]) {
                let (to, link) = match t.link {
                    Link::Next => ((p + 1) % WORLD, Link::Prev),
                    Link::Prev => ((p + WORLD - 1) % WORLD, Link::Next),
                    Link::Partner(q) => (q as usize, Link::Partner(p as u32)),
                };
                let mut payload = pool.pop().unwrap_or_default();
                payload.clear();
                payload.extend_from_slice(&bufs[p][t.payload]);
                wire.push_back(Frame { to, link, header: t.header, payload });
            }
        }
        let Some(f) = wire.pop_front() else { break };
        let (h, crc) = Header::decode(&f.header).expect("a header the core encoded");
        verify_crc(&f.header, crc, &f.payload).expect("an intact in-memory frame");
        colls[f.to].handle_frame(now, f.link, &h, &f.payload, &mut bufs[f.to]).expect("frames in schedule order");
        pool.push(f.payload);
        delivered += 1;
    }
    assert!(colls.iter().all(|c| *c.status() == Status::Done), "every rank finished");
    delivered
}

/// A whole 8-rank all_reduce of 8 MiB per rank through the core alone: reductions, CRCs
/// and payload copies, no sockets. All eight ranks run on this one thread, so one rank's
/// core cost is about an eighth of the time; the throughput counts one rank's buffer.
fn in_memory_ring(c: &mut Criterion) {
    let mut bufs = vec![vec![0u8; 8 << 20]; WORLD];
    let mut pool = Vec::new();
    let mut g = c.benchmark_group("ring_n8_8MiB");
    g.throughput(Throughput::Bytes(8 << 20));
    g.bench_function("all_reduce_in_memory", |b| b.iter(|| ring_all_reduce(&mut bufs, &mut pool)));
    g.finish();
}

/// Every (step, chunk, segment) of a 64-rank ring's schedule for 64 MiB of f32.
fn schedule_functions(c: &mut Criterion) {
    let (world, len_elems, seg_elems) = (64usize, (64usize << 20) / 4, SEGMENT_BYTES / 4);
    let mut g = c.benchmark_group("schedule_n64");
    g.throughput(Throughput::Elements((2 * (world - 1) * world) as u64));
    g.bench_function("all_steps", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for pos in 0..world {
                for step in 0..world - 1 {
                    for chunk in [reduce_scatter_send_chunk(pos, world, step), all_gather_send_chunk(pos, world, step)]
                    {
                        let r = chunk_range(std::hint::black_box(len_elems), world, chunk);
                        acc += segment_count(r.len(), seg_elems) + r.start;
                    }
                }
            }
            acc
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = start_and_drain, in_memory_ring, schedule_functions
}
criterion_main!(benches);
