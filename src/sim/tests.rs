//! Unit tests of the simulator as a whole: exactness, determinism, timing, faults.

use std::time::Duration;

use super::*;
use crate::core::collective::{Algorithm, ProtocolError};
use crate::core::{DataType, ReduceOp};

fn config(world: usize, seed: u64) -> SimConfig {
    SimConfig { segment_bytes: 64, progress_timeout: Duration::from_millis(50), ..SimConfig::new(world, seed) }
}

fn check(sim: &mut Sim, call: Call, seed: u64) -> SimOutcome {
    let world = sim.config().world;
    let inputs = oracle::inputs(&call, world, seed);
    let outcome = sim.run(call, inputs.clone()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(outcome.all_done(), "seed {seed}: {:?}", outcome.statuses);
    assert_eq!(outcome.outputs, oracle::expected(&call, world, &inputs), "seed {seed} {call:?}");
    assert!(sim.send_hazards().is_empty(), "{:?}", sim.send_hazards());
    outcome
}

#[test]
fn every_collective_is_exact_on_a_small_ring() {
    for world in [1, 2, 3, 4] {
        let mut sim = Sim::new(config(world, world as u64));
        check(&mut sim, Call::all_reduce(ReduceOp::Sum, DataType::F32, 103), 1);
        check(&mut sim, Call::reduce_scatter(ReduceOp::Avg, DataType::I32, 37), 2);
        check(&mut sim, Call::all_gather(DataType::Bf16, 29), 3);
        check(&mut sim, Call::broadcast(DataType::U8, 300, world - 1), 4);
        check(&mut sim, Call::barrier(), 5);
    }
}

#[test]
fn same_seed_same_run_and_another_seed_another_schedule() {
    let call = Call::all_reduce(ReduceOp::Max, DataType::F64, 500);
    let run = |seed| {
        let mut c = config(5, seed);
        c.link.jitter = Duration::from_micros(30);
        let mut sim = Sim::new(c);
        let o = check(&mut sim, call, 7);
        (o.finished, o.frames, sim.now())
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3).0, run(4).0);
}

#[test]
fn back_to_back_calls_park_frames_of_later_calls() {
    let mut c = config(8, 11);
    c.start_skew_max = Duration::from_millis(2);
    let mut sim = Sim::new(c);
    let calls = [
        Call::all_reduce(ReduceOp::Sum, DataType::I64, 40),
        Call::broadcast(DataType::F32, 40, 3),
        Call::all_reduce(ReduceOp::Prod, DataType::F16, 77),
        Call::barrier(),
    ];
    let batch: Vec<_> = calls.iter().enumerate().map(|(k, c)| (*c, oracle::inputs(c, 8, k as u64))).collect();
    let outcomes = sim.run_batch(batch.clone()).expect("no hang");
    for ((call, inputs), o) in batch.iter().zip(&outcomes) {
        assert!(o.all_done());
        assert_eq!(o.outputs, oracle::expected(call, 8, inputs));
    }
    assert_eq!(outcomes.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(sim.early_frames() > 0, "skewed starts must park frames of later calls");
    let next = sim.run(Call::barrier(), vec![Vec::new(); 8]).expect("no hang");
    assert_eq!(next.seq, 4);
}

/// One ring, one segment per chunk, no jitter: every step takes exactly one chunk's
/// serialization plus one latency, as the alpha-beta model says.
#[test]
fn unsegmented_ring_matches_the_alpha_beta_model_exactly() {
    // Above `limits::RESULT_RETAIN_BYTES_MAX`, so the call runs with completion tokens.
    let (world, elems) = (4usize, 40_000usize);
    let mut c = SimConfig::new(world, 1);
    c.segment_bytes = 1 << 20;
    c.algorithm = Algorithm::Ring;
    c.start_skew_max = Duration::ZERO;
    c.link = LinkModel {
        latency: Duration::from_micros(10),
        bytes_per_sec: 1_000_000_000,
        jitter: Duration::ZERO,
        shared_egress: false,
    };
    c.fin = false;
    let mut sim = Sim::new(c.clone());
    let o = check(&mut sim, Call::all_reduce(ReduceOp::Sum, DataType::F32, elems), 1);
    let frame_bytes = (elems * 4 / world + crate::wire::HEADER_LEN) as u64;
    let step = Duration::from_nanos(frame_bytes) + Duration::from_micros(10);
    assert_eq!(o.virtual_elapsed, step * (2 * (world as u32 - 1)));
    assert_eq!(o.frames, (world * 2 * (world - 1)) as u64);
    // Completion tokens add world / 2 hops of bare headers and one FIN per ordered pair.
    c.fin = true;
    let mut sim = Sim::new(c.clone());
    let f = check(&mut sim, Call::all_reduce(ReduceOp::Sum, DataType::F32, elems), 1);
    let fin_hop = Duration::from_nanos(crate::wire::HEADER_LEN as u64) + Duration::from_micros(10);
    assert_eq!(f.virtual_elapsed, o.virtual_elapsed + fin_hop * (world as u32 / 2));
    assert_eq!(f.frames, o.frames + (world * (world - 1)) as u64);
    // A small all-reduce goes without tokens: the latency path's n / 2 data hops only.
    let small = Call::all_reduce(ReduceOp::Sum, DataType::F32, 1024);
    let mut sim = Sim::new(SimConfig { algorithm: Algorithm::Direct, ..c.clone() });
    let s = check(&mut sim, small, 1);
    assert_eq!(s.frames, (world * (world - 1)) as u64, "one frame per ordered pair, no FIN");
    let data_hop = Duration::from_nanos((4096 + crate::wire::HEADER_LEN) as u64) + Duration::from_micros(10);
    assert_eq!(s.virtual_elapsed, data_hop * (world as u32 / 2));
}

/// When the call of a fault-free run of `config` is a third done.
fn a_third_in(config: &SimConfig, call: Call) -> Duration {
    let o = Sim::new(config.clone()).run(call, oracle::inputs(&call, config.world, 1)).expect("no hang");
    assert!(o.all_done());
    o.finished.iter().flatten().max().copied().unwrap_or_default() / 3
}

#[test]
fn silent_crash_fails_every_survivor_by_timeout_without_hanging() {
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 4000);
    let at = a_third_in(&config(5, 21), call);
    let mut sim = Sim::new(config(5, 21));
    let victim = sim.ring()[2];
    sim.inject(Fault::Crash { rank: victim, at });
    let o = sim.run(call, oracle::inputs(&call, 5, 1)).expect("no hang");
    assert_eq!(o.statuses[victim], RankStatus::Crashed);
    for (rank, s) in o.statuses.iter().enumerate().filter(|(r, _)| *r != victim) {
        match s {
            RankStatus::Failed(SimError::Protocol(ProtocolError::Stalled { .. } | ProtocolError::Aborted { .. })) => {}
            other => panic!("rank {rank}: {other:?}"),
        }
        assert!(o.finished[rank].is_some_and(|t| t < Duration::from_millis(120)), "rank {rank}: {:?}", o.finished);
    }
}

#[test]
fn killed_neighbours_fail_fast_on_end_of_stream() {
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 4000);
    let at = a_third_in(&config(4, 5), call);
    let mut sim = Sim::new(config(4, 5));
    let victim = sim.ring()[1];
    sim.inject(Fault::Kill { rank: victim, at });
    let o = sim.run(call, oracle::inputs(&call, 4, 1)).expect("no hang");
    let next = sim.ring()[2];
    assert!(matches!(o.statuses[next], RankStatus::Failed(SimError::LinkFailed { .. })), "{:?}", o.statuses);
    assert!(o.finished[next].is_some_and(|t| t < Duration::from_millis(5)), "{:?}", o.finished);
    assert!(o.statuses.iter().all(|s| *s != RankStatus::Done));
}

#[test]
fn short_pause_and_partition_only_delay_a_call() {
    let call = Call::all_reduce(ReduceOp::Avg, DataType::F64, 3000);
    let mut sim = Sim::new(config(4, 8));
    let (a, b) = (sim.ring()[0], sim.ring()[1]);
    sim.inject(Fault::Pause { rank: a, at: Duration::from_micros(100), duration: Duration::from_millis(20) });
    sim.inject(Fault::Partition { from: a, to: b, at: Duration::ZERO, duration: Duration::from_millis(30) });
    let o = check(&mut sim, call, 3);
    assert!(o.virtual_elapsed > Duration::from_millis(30));
}

#[test]
fn long_partition_fails_every_rank_that_needs_the_cut_link() {
    let call = Call::reduce_scatter(ReduceOp::Min, DataType::I32, 999);
    let mut sim = Sim::new(config(6, 4));
    let (a, b) = (sim.ring()[3], sim.ring()[4]);
    sim.inject(Fault::Partition { from: a, to: b, at: Duration::ZERO, duration: Duration::from_secs(5) });
    let inputs = oracle::inputs(&call, 6, 1);
    let o = sim.run(call, inputs.clone()).expect("no hang");
    let want = oracle::expected(&call, 6, &inputs);
    // The owner of the one chunk whose reduction never crosses the cut link legitimately
    // completes; everyone else must fail, and nobody may return wrong data.
    let failed = o.statuses.iter().filter(|s| matches!(s, RankStatus::Failed(_))).count();
    assert!(failed >= 5, "{:?}", o.statuses);
    for (rank, s) in o.statuses.iter().enumerate() {
        assert!(*s != RankStatus::Done || o.outputs[rank] == want[rank], "rank {rank} returned wrong data");
    }
    assert!(o.finished.iter().all(|t| t.is_some_and(|t| t < Duration::from_millis(200))));
    // The partition heals long after; the next call still runs and is exact.
    let mut c = config(6, 4);
    c.progress_timeout = Duration::from_secs(10);
    check(&mut Sim::new(c), call, 2);
}

#[test]
fn shared_buffers_keep_timing_and_drop_outputs() {
    let mut c = SimConfig::new(16, 3);
    c.buffers = BufferMode::Shared;
    let mut sim = Sim::new(c.clone());
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 1 << 16);
    let shared = sim.run(call, Vec::new()).expect("no hang");
    assert!(shared.all_done() && shared.outputs.iter().all(Vec::is_empty));
    c.buffers = BufferMode::PerRank;
    let own = Sim::new(c).run(call, oracle::inputs(&call, 16, 1)).expect("no hang");
    assert_eq!(shared.finished, own.finished);
}

/// Gradient-like f32 inputs that no order sums exactly: one in six is zero (a dead unit),
/// the rest have magnitudes from 2^-10 to 1 with random mantissas and signs (their high
/// byte planes repeat, their low ones do not).
fn gradient_inputs(world: usize, elems: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SimRng::new(seed);
    (0..world)
        .map(|_| {
            (0..elems)
                .flat_map(|_| {
                    if rng.below(6) == 0 {
                        return 0f32.to_le_bytes();
                    }
                    let mantissa = 1.0 + rng.below(1 << 23) as f32 / (1u32 << 23) as f32;
                    let sign = if rng.percent(50) { -1.0 } else { 1.0 };
                    (sign * mantissa * (2f32).powi(-(rng.below(11) as i32))).to_le_bytes()
                })
                .collect()
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn codec_config(world: usize, codec: crate::codec::CodecChoice) -> SimConfig {
    SimConfig { segment_bytes: 4096, codec, ..SimConfig::new(world, 17) }
}

#[test]
fn lossless_codecs_are_bit_identical_to_raw_and_shrink_what_is_sent() {
    use crate::codec::{Codec, CodecChoice};
    for (world, algorithm) in [(2, Algorithm::Ring), (4, Algorithm::Bidir), (5, Algorithm::Ring)] {
        let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 20_000);
        let inputs = gradient_inputs(world, call.len_elems, 3);
        let run = |codec| {
            let config = SimConfig { algorithm, ..codec_config(world, codec) };
            let o = Sim::new(config).run(call, inputs.clone()).expect("no hang");
            assert!(o.all_done(), "{:?}", o.statuses);
            o
        };
        let raw = run(CodecChoice::Fixed(Codec::Raw));
        for codec in [
            CodecChoice::Fixed(Codec::Zstd),
            CodecChoice::Fixed(Codec::ShuffleZstd),
            CodecChoice::Auto { lossy: false },
        ] {
            let o = run(codec);
            assert_eq!(o.outputs, raw.outputs, "{} on {world} ranks", codec.name());
            assert!(o.bytes < raw.bytes, "{}: {} bytes, raw {}", codec.name(), o.bytes, raw.bytes);
        }
    }
}

#[test]
fn lossy_codecs_end_bit_identical_and_within_their_rounding_bound() {
    use crate::codec::{Codec, CodecChoice};
    let world = 5;
    let call = Call::all_reduce(ReduceOp::Avg, DataType::F32, 10_000);
    let inputs = gradient_inputs(world, call.len_elems, 9);
    let xs: Vec<Vec<f32>> = inputs.iter().map(|b| f32s(b)).collect();
    let settings = [
        (CodecChoice::Fixed(Codec::Bf16), 2f64.powi(-8)),
        (CodecChoice::Fixed(Codec::F16), 2f64.powi(-11)),
        (CodecChoice::Fixed(Codec::Bf16Zstd), 2f64.powi(-8)),
        (CodecChoice::Auto { lossy: true }, 2f64.powi(-8)),
    ];
    for (codec, unit_roundoff) in settings {
        let mut sim = Sim::new(SimConfig { algorithm: Algorithm::Bidir, ..codec_config(world, codec) });
        // Two calls: auto+bf16 measures in the first and may round from the second on.
        for call_index in 0..2 {
            let o = sim.run(call, inputs.clone()).expect("no hang");
            assert!(o.all_done(), "{:?}", o.statuses);
            assert!(o.outputs.iter().all(|x| *x == o.outputs[0]), "{}: ranks differ", codec.name());
            let got = f32s(&o.outputs[0]);
            let mut rounded = 0;
            for (i, g) in got.iter().enumerate() {
                let exact: f64 = xs.iter().map(|x| f64::from(x[i])).sum::<f64>() / world as f64;
                let magnitude: f64 = xs.iter().map(|x| f64::from(x[i]).abs()).sum::<f64>() / world as f64;
                // One rounding per hop and one by the owner, each at most half a unit in
                // the last place of a partial sum no larger than the sum of magnitudes,
                // plus f16's absolute error below its normal range.
                let bound = world as f64 * (unit_roundoff * magnitude + 2f64.powi(-25)) * 1.01;
                assert!((f64::from(*g) - exact).abs() <= bound, "{}: element {i}: {g} vs {exact}", codec.name());
                // Errors beyond f32's own summation error come from the codec.
                rounded += usize::from((f64::from(*g) - exact).abs() > 4.0 * world as f64 * 2f64.powi(-24) * magnitude);
            }
            let measuring = codec == CodecChoice::Auto { lossy: true } && call_index == 0;
            assert_eq!(rounded > 0, !measuring, "{} call {call_index}: {rounded} rounded", codec.name());
        }
    }
}

#[test]
fn auto_compresses_only_where_the_link_is_limited() {
    use crate::codec::{Codec, CodecChoice};
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 50_000);
    let inputs = gradient_inputs(4, call.len_elems, 5);
    let bytes = |codec, bytes_per_sec| {
        let mut config = codec_config(4, codec);
        config.link.bytes_per_sec = bytes_per_sec;
        Sim::new(config).run(call, inputs.clone()).expect("no hang").bytes
    };
    let raw = bytes(CodecChoice::Fixed(Codec::Raw), 0);
    assert_eq!(bytes(CodecChoice::Auto { lossy: false }, 0), raw, "unlimited links: nothing to gain");
    assert!(bytes(CodecChoice::Auto { lossy: false }, 125_000_000) < raw);
}
