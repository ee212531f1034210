//! Codec throughput (GB/s of raw f32 bytes) and compression ratio, per codec.
//!
//! Run: `cargo bench --bench codec` (about a minute). Data: the file named by
//! `RINGCC_BENCH_DATA`, else `benches/data/grads.f32` (raw little-endian f32 gradients from
//! the training example, see `benches/data/README.md`) when it exists, else a synthetic
//! stand-in, f32 drawn from N(0, 1e-3) with a fixed seed, labelled as such. Buffers are cut
//! into segments of the default `Config::segment_bytes` (512 KiB) and each segment is
//! encoded on its own, as the ring sends them.
//!
//! Printed before criterion's timings: one summary table with, per codec at zstd level 1,
//! the ratio (raw bytes / payload bytes; bf16/f16 count against the f32 size) and encode,
//! decode and decode+sum throughput in GB/s of raw bytes per core: the median of a few
//! passes timed by the thread's own CPU time (`/proc/thread-self/schedstat`, falling back
//! to wall time), so other processes sharing the cores do not count against it. Then the
//! ratio of the zstd codecs at other levels. `codec/decode_reduce/*` (and the summary's
//! `sum` column) is the reduce-scatter receive (decode and sum into the segment, fused for
//! f32 sums). With `RINGCC_BENCH_SUMMARY_ONLY=1` only the tables are printed (no criterion
//! run), for quick side-by-side comparisons of two builds; `RINGCC_BENCH_CODECS=bf16,...`
//! limits the summary table to those codecs.
//!
//! The `parallel` group encodes the whole buffer segment by segment on one thread and
//! with rayon (one encoder per worker), for 512 KiB and 4 MiB segments: whether spreading
//! compression over cores pays depends on having idle cores, which a host running one
//! rank per core does not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcc::codec::{planes, Codec, Decoder, Encoder, ALL_CODECS};
use ringcc::{DataType, ReduceOp};

/// Segment size in bytes: the default `Config::segment_bytes`.
const SEGMENT_BYTES: usize = 512 << 10;
/// Size of the synthetic buffer in bytes.
const SYNTHETIC_BYTES: usize = 16 << 20;
/// Most bytes of `grads.f32` used (keeps the run short on big dumps).
const FILE_BYTES_MAX: usize = 64 << 20;
/// Standard deviation of the synthetic gradients.
const SYNTHETIC_SIGMA: f64 = 1e-3;
/// zstd level of the main table (a fast level, as the ring would use).
const LEVEL: i32 = 1;
/// Timed passes over the data per codec and direction in the summary table (median kept).
const SUMMARY_PASSES: usize = 5;
/// Wall time each timed pass of the summary table lasts at least, in seconds.
const SUMMARY_PASS_SECS: f64 = 0.2;

/// The benchmark data and its label.
fn data() -> (String, Vec<u8>) {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/grads.f32");
    let path = std::env::var("RINGCC_BENCH_DATA").unwrap_or_else(|_| default.to_string());
    if let Ok(mut bytes) = std::fs::read(&path) {
        bytes.truncate(bytes.len().min(FILE_BYTES_MAX) / 4 * 4);
        if !bytes.is_empty() {
            return (
                format!("real gradients from {path} ({:.1} MiB)", bytes.len() as f64 / f64::from(1u32 << 20)),
                bytes,
            );
        }
    }
    let mut state = 42u64;
    let mut uniform = move || {
        // splitmix64, top 53 bits as a float in (0, 1].
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON
    };
    let mut bytes = Vec::with_capacity(SYNTHETIC_BYTES);
    while bytes.len() < SYNTHETIC_BYTES {
        // Box-Muller: one normal per pair of uniforms.
        let (u, v) = (uniform(), uniform());
        let x = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * SYNTHETIC_SIGMA;
        bytes.extend_from_slice(&(x as f32).to_le_bytes());
    }
    (format!("SYNTHETIC N(0, {SYNTHETIC_SIGMA:e}) f32, seed 42 ({} MiB)", bytes.len() >> 20), bytes)
}

/// Encodes every segment of `raw`; returns each segment's codec and payload.
fn encode_all(encoder: &mut Encoder, codec: Codec, raw: &[u8]) -> Vec<(Codec, Vec<u8>)> {
    raw.chunks(SEGMENT_BYTES)
        .map(|seg| {
            let mut out = Vec::new();
            let sent = encoder.encode(codec, DataType::F32, seg, &mut out).expect("encode");
            (sent, out)
        })
        .collect()
}

/// The calling thread's CPU time (run time on a core) if the OS reports it, else wall time.
fn thread_secs() -> f64 {
    use std::sync::OnceLock;
    static WALL_ZERO: OnceLock<Instant> = OnceLock::new();
    match ringcc::codec::cpu_share::thread_sched_times() {
        Some((run, _wait)) => run.as_secs_f64(),
        None => WALL_ZERO.get_or_init(Instant::now).elapsed().as_secs_f64(),
    }
}

/// Median thread time of [`SUMMARY_PASSES`] passes of `f`, in seconds per call. A pass
/// repeats `f` for about [`SUMMARY_PASS_SECS`] of wall time: the scheduler updates a
/// running thread's CPU time only at its ticks (4 ms at HZ=250), too coarse for one call.
fn median_secs(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-6);
    let reps = (SUMMARY_PASS_SECS / once).ceil().clamp(1.0, 10_000.0) as usize;
    let mut times: Vec<f64> = (0..SUMMARY_PASSES)
        .map(|_| {
            let start = thread_secs();
            for _ in 0..reps {
                f();
            }
            (thread_secs() - start) / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The codecs of the summary table: those named in `RINGCC_BENCH_CODECS` (comma-separated
/// names), else all.
fn summary_codecs() -> Vec<Codec> {
    let names = std::env::var("RINGCC_BENCH_CODECS").unwrap_or_default();
    let chosen: Vec<Codec> = ALL_CODECS.into_iter().filter(|c| names.split(',').any(|n| n == c.name())).collect();
    if chosen.is_empty() {
        ALL_CODECS.to_vec()
    } else {
        chosen
    }
}

/// Per codec at [`LEVEL`]: ratio, encode, decode and decode+sum GB/s of raw bytes per core,
/// segments that fell back to the uncompressed form.
fn print_summary(label: &str, raw: &[u8]) {
    println!("\ncodec benchmark data: {label}; segments of {} KiB", SEGMENT_BYTES >> 10);
    println!("GB/s of raw f32 per core (thread CPU time, median of {SUMMARY_PASSES} passes)");
    println!(
        "{:<14} {:>6} {:>8} {:>12} {:>12} {:>12} {:>10}",
        "codec", "level", "ratio", "encode GB/s", "decode GB/s", "sum GB/s", "fallbacks"
    );
    let mut encoder = Encoder::new(LEVEL).expect("encoder");
    let mut decoder = Decoder::new().expect("decoder");
    let mut out = Vec::with_capacity(SEGMENT_BYTES);
    let mut decoded = vec![0u8; raw.len()];
    for codec in summary_codecs() {
        let segments = encode_all(&mut encoder, codec, raw);
        let payload: usize = segments.iter().map(|(_, p)| p.len()).sum();
        let fallbacks = segments.iter().filter(|(sent, _)| *sent != codec).count();
        let encode = median_secs(|| {
            for seg in raw.chunks(SEGMENT_BYTES) {
                encoder.encode(codec, DataType::F32, black_box(seg), &mut out).expect("encode");
            }
        });
        let decode = median_secs(|| {
            for ((sent, payload), dst) in segments.iter().zip(decoded.chunks_mut(SEGMENT_BYTES)) {
                decoder.decode(*sent, DataType::F32, black_box(payload), dst).expect("decode");
            }
        });
        let sum = median_secs(|| {
            for ((sent, payload), dst) in segments.iter().zip(decoded.chunks_mut(SEGMENT_BYTES)) {
                decoder.decode_reduce(*sent, DataType::F32, ReduceOp::Sum, black_box(payload), dst).expect("sum");
            }
        });
        let gbs = |secs: f64| raw.len() as f64 / secs / 1e9;
        println!(
            "{:<14} {LEVEL:>6} {:>8.3} {:>12.2} {:>12.2} {:>12.2} {fallbacks:>4}/{:<5}",
            codec.name(),
            raw.len() as f64 / payload as f64,
            gbs(encode),
            gbs(decode),
            gbs(sum),
            segments.len()
        );
    }
}

/// The ratio of the zstd codecs at other levels (negative levels are zstd's fastest).
fn print_ratios(raw: &[u8]) {
    println!("\nzstd levels:");
    println!("{:<14} {:>6} {:>8} {:>10}", "codec", "level", "ratio", "fallbacks");
    for level in [-5, -1, 3] {
        let mut encoder = Encoder::new(level).expect("encoder");
        for codec in ALL_CODECS {
            if !codec.uses_zstd() {
                continue;
            }
            let segments = encode_all(&mut encoder, codec, raw);
            let payload: usize = segments.iter().map(|(_, p)| p.len()).sum();
            let fallbacks = segments.iter().filter(|(sent, _)| *sent != codec).count();
            let ratio = raw.len() as f64 / payload as f64;
            println!("{:<14} {level:>6} {ratio:>8.3} {fallbacks:>4}/{:<5}", codec.name(), segments.len());
        }
    }
    println!();
}

fn bench_planes(c: &mut Criterion, raw: &[u8]) {
    let mut group = c.benchmark_group("planes");
    group.throughput(Throughput::BytesDecimal(raw.len() as u64));
    let mut planes_buf = vec![0u8; raw.len()];
    let mut back = vec![0u8; raw.len()];
    // The memory-bandwidth reference: on a shared machine, read the others against it.
    group.bench_function("memcpy", |b| b.iter(|| back.copy_from_slice(black_box(raw))));
    for k in [2usize, 4, 8] {
        group.bench_function(format!("shuffle{k}"), |b| {
            b.iter(|| {
                for (s, d) in raw.chunks(SEGMENT_BYTES).zip(planes_buf.chunks_mut(SEGMENT_BYTES)) {
                    planes::shuffle(k, black_box(s), d);
                }
            })
        });
        group.bench_function(format!("unshuffle{k}"), |b| {
            b.iter(|| {
                for (s, d) in planes_buf.chunks(SEGMENT_BYTES).zip(back.chunks_mut(SEGMENT_BYTES)) {
                    planes::unshuffle(k, black_box(s), d);
                }
            })
        });
    }
    group.finish();
}

fn bench_codecs(c: &mut Criterion, raw: &[u8]) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::BytesDecimal(raw.len() as u64));
    let mut encoder = Encoder::new(LEVEL).expect("encoder");
    let mut decoder = Decoder::new().expect("decoder");
    let mut out = Vec::with_capacity(SEGMENT_BYTES);
    let mut decoded = vec![0u8; raw.len()];
    for codec in ALL_CODECS {
        group.bench_function(format!("encode/{}", codec.name()), |b| {
            b.iter(|| {
                for seg in raw.chunks(SEGMENT_BYTES) {
                    encoder.encode(codec, DataType::F32, black_box(seg), &mut out).expect("encode");
                }
            })
        });
        let segments = encode_all(&mut encoder, codec, raw);
        group.bench_function(format!("decode/{}", codec.name()), |b| {
            b.iter(|| {
                for ((sent, payload), dst) in segments.iter().zip(decoded.chunks_mut(SEGMENT_BYTES)) {
                    decoder.decode(*sent, DataType::F32, black_box(payload), dst).expect("decode");
                }
            })
        });
        // The reduce-scatter receive: decode and sum into the segment (f32 sums fuse both).
        group.bench_function(format!("decode_reduce/{}", codec.name()), |b| {
            b.iter(|| {
                for ((sent, payload), dst) in segments.iter().zip(decoded.chunks_mut(SEGMENT_BYTES)) {
                    decoder
                        .decode_reduce(*sent, DataType::F32, ReduceOp::Sum, black_box(payload), dst)
                        .expect("decode");
                }
            })
        });
    }
    for level in [-5, -1, 3] {
        encoder.set_zstd_level(level).expect("level");
        group.bench_function(format!("encode/shuffle+zstd/level{level}"), |b| {
            b.iter(|| {
                for seg in raw.chunks(SEGMENT_BYTES) {
                    encoder.encode(Codec::ShuffleZstd, DataType::F32, black_box(seg), &mut out).expect("encode");
                }
            })
        });
    }
    group.finish();
}

fn bench_parallel(c: &mut Criterion, raw: &[u8]) {
    use rayon::prelude::*;
    let mut group = c.benchmark_group("parallel");
    group.throughput(Throughput::BytesDecimal(raw.len() as u64));
    for codec in [Codec::ShuffleZstd, Codec::Bf16Zstd] {
        for segment_bytes in [SEGMENT_BYTES, 8 * SEGMENT_BYTES] {
            let name = format!("{}/{}KiB", codec.name(), segment_bytes >> 10);
            let mut encoder = Encoder::new(LEVEL).expect("encoder");
            let mut out = Vec::new();
            group.bench_function(format!("sequential/{name}"), |b| {
                b.iter(|| {
                    for seg in raw.chunks(segment_bytes) {
                        encoder.encode(codec, DataType::F32, black_box(seg), &mut out).expect("encode");
                    }
                })
            });
            group.bench_function(format!("rayon{}/{name}", rayon::current_num_threads()), |b| {
                b.iter(|| {
                    raw.par_chunks(segment_bytes).for_each_init(
                        || (Encoder::new(LEVEL).expect("encoder"), Vec::new()),
                        |(encoder, out), seg| {
                            encoder.encode(codec, DataType::F32, black_box(seg), out).expect("encode");
                        },
                    )
                })
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let (label, raw) = data();
    print_summary(&label, &raw);
    print_ratios(&raw);
    if std::env::var_os("RINGCC_BENCH_SUMMARY_ONLY").is_some_and(|v| v == "1") {
        return;
    }
    bench_planes(c, &raw);
    bench_codecs(c, &raw);
    bench_parallel(c, &raw);
}

criterion_group! {
    name = codec;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    targets = benches
}
criterion_main!(codec);
