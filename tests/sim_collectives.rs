//! Every collective, dtype and op on rings of 1 to 33 ranks in the simulator, with every
//! codec setting: all ranks must end bit-identical and equal to an exact reference.
//!
//! Each case is a pure function of one seed: the low part picks the (collective,
//! algorithm, op, dtype) combination and the world size so that seeds `0..SWEEP` cover every
//! combination on every world; the codec setting is `seed % 8` (so each combination meets
//! a different codec on each world); the rest (length, segment size, root, link model,
//! skew, and the calls run back to back after it) is drawn from the seed.
//!
//! The oracle's inputs keep every partial result an integer that bf16 and f16 hold
//! exactly, so lossy codecs must give the exact result too, except where they round a
//! final value: an f32 all_reduce with Avg may hold the exact average rounded as the
//! codec rounds (each chunk's owner decides, and every rank must then hold its bits). A failure prints the seed;
//! replay one with
//!
//! ```text
//! RINGCC_SIM_SEED=<seed> cargo test --release --test sim_collectives replay_seed -- --ignored --nocapture
//! ```
//!
//! `RINGCC_SIM_EXTRA_SEEDS=20000 cargo test --release --test sim_collectives more_seeds` searches deeper.
//!
//! The simulator gives every rank its partner links (as the driver does), so doubling and
//! `Auto` run recursive doubling over them in worlds above 4; the `doubling_over_partner_links`
//! tests cover every world from 5 to 12, and 16.

use std::time::Duration;

use ringcc::codec::{round_in_place, CodecChoice};
use ringcc::core::collective::Algorithm;
use ringcc::sim::{oracle, Call, LinkModel, Sim, SimConfig, SimOutcome, SimRng};
use ringcc::wire::CollKind;
use ringcc::{DataType, ReduceOp};

const WORLDS: [usize; 7] = [1, 2, 3, 4, 5, 8, 33];
const DTYPES: [DataType; 7] =
    [DataType::F32, DataType::F64, DataType::F16, DataType::Bf16, DataType::I32, DataType::I64, DataType::U8];
const OPS: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max];

/// A collective with the algorithm it asks for.
#[derive(Debug, Clone, Copy)]
struct Combo {
    coll: CollKind,
    algorithm: Algorithm,
    op: ReduceOp,
    dtype: DataType,
}

/// all_reduce x {ring, bidir, direct, rd} x ops x dtypes, reduce_scatter x ops x dtypes,
/// all_gather and broadcast x dtypes, barrier.
fn combos() -> Vec<Combo> {
    let mut v = Vec::new();
    let c = |coll, algorithm, op, dtype| Combo { coll, algorithm, op, dtype };
    for algorithm in [Algorithm::Ring, Algorithm::Bidir, Algorithm::Direct, Algorithm::Doubling] {
        for op in OPS {
            v.extend(DTYPES.map(|d| c(CollKind::AllReduce, algorithm, op, d)));
        }
    }
    for op in OPS {
        v.extend(DTYPES.map(|d| c(CollKind::ReduceScatter, Algorithm::Ring, op, d)));
    }
    v.extend(DTYPES.map(|d| c(CollKind::AllGather, Algorithm::Ring, ReduceOp::Sum, d)));
    v.extend(DTYPES.map(|d| c(CollKind::Broadcast, Algorithm::Ring, ReduceOp::Sum, d)));
    v.push(c(CollKind::Barrier, Algorithm::Ring, ReduceOp::Sum, DataType::U8));
    v
}

/// Seeds `0..SWEEP` run every combination on every world size once.
fn sweep_len() -> u64 {
    (combos().len() * WORLDS.len()) as u64
}

fn length(world: usize, rng: &mut SimRng) -> usize {
    let picks = [0, 1, 2, 3, 7, 13, 97, 1009, world.saturating_sub(1), world + 1, 2 * world, 3 * world + 2];
    if rng.percent(25) {
        rng.index(3000)
    } else {
        picks[rng.index(picks.len())]
    }
}

fn call_of(combo: Combo, world: usize, rng: &mut SimRng) -> Call {
    let len = length(world, rng);
    match combo.coll {
        CollKind::AllReduce => Call::all_reduce(combo.op, combo.dtype, len),
        CollKind::ReduceScatter => Call::reduce_scatter(combo.op, combo.dtype, len),
        CollKind::AllGather => Call::all_gather(combo.dtype, len),
        CollKind::Broadcast => Call::broadcast(combo.dtype, len, rng.index(world)),
        CollKind::Barrier => Call::barrier(),
    }
}

/// Everything a seed decides.
#[derive(Debug)]
struct Case {
    config: SimConfig,
    calls: Vec<Call>,
}

fn case(seed: u64) -> Case {
    let all = combos();
    let combo = all[(seed % all.len() as u64) as usize];
    let world = WORLDS[((seed / all.len() as u64) % WORLDS.len() as u64) as usize];
    let mut rng = SimRng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut config = SimConfig::new(world, seed);
    config.algorithm = combo.algorithm;
    config.segment_bytes = [64, 64, 64, 96, 200, 1000, 1 << 16][rng.index(7)];
    config.start_skew_max = Duration::from_micros(rng.below(500));
    config.link = LinkModel {
        latency: Duration::from_micros(1 + rng.below(50)),
        bytes_per_sec: [100_000_000, 1_250_000_000, 0][rng.index(3)],
        jitter: Duration::from_micros(rng.below(3) * 20),
        shared_egress: rng.percent(30),
    };
    let mut calls = vec![call_of(combo, world, &mut rng)];
    for _ in 0..rng.below(3) {
        calls.push(call_of(all[rng.index(all.len())], world, &mut rng));
    }
    config.codec = CodecChoice::ALL[(seed % CodecChoice::ALL.len() as u64) as usize];
    config.codec_level = [1, -5, 3][rng.index(3)];
    Case { config, calls }
}

/// Runs the case of `seed`; `Err` says what went wrong.
fn run_seed(seed: u64) -> Result<Vec<SimOutcome>, String> {
    run_case(case(seed), seed)
}

/// Runs `calls` (inputs drawn from `seed`) and checks every output against the reference
/// (up to the codec's allowed rounding), ranks bit-identical, and no send hazards.
fn run_case(Case { config, calls }: Case, seed: u64) -> Result<Vec<SimOutcome>, String> {
    let world = config.world;
    let codec = config.codec;
    let batch: Vec<(Call, Vec<Vec<u8>>)> =
        calls.iter().enumerate().map(|(k, c)| (*c, oracle::inputs(c, world, seed + k as u64))).collect();
    let mut sim = Sim::new(config);
    let outcomes = sim.run_batch(batch.clone()).map_err(|e| e.to_string())?;
    for ((call, inputs), o) in batch.iter().zip(&outcomes) {
        if !o.all_done() {
            return Err(format!("{call:?}: not done everywhere: {:?}", o.statuses));
        }
        let want = oracle::expected(call, world, inputs);
        for (rank, (got, want)) in o.outputs.iter().zip(&want).enumerate() {
            if got != want && !rounded_as_allowed(codec, call, got, want) {
                let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
                return Err(format!(
                    "{call:?} (seq {}): rank {rank} differs from the reference from byte {at} (of {}; ring {:?})",
                    o.seq,
                    want.len(),
                    sim.ring()
                ));
            }
        }
        if o.outputs.iter().any(|x| *x != o.outputs[0]) && call.coll != CollKind::ReduceScatter {
            return Err(format!("{call:?}: ranks differ"));
        }
    }
    let hazards = sim.send_hazards();
    if !hazards.is_empty() {
        return Err(format!("send hazards: {hazards:?}"));
    }
    Ok(outcomes)
}

/// True if `got` differs from the exact `want` only where `codec` may round a final value:
/// each f32 element of an Avg all_reduce is the exact value or that value rounded.
fn rounded_as_allowed(codec: CodecChoice, call: &Call, got: &[u8], want: &[u8]) -> bool {
    let Some(rounding) = codec.rounding() else { return false };
    if call.coll != CollKind::AllReduce || call.dtype != DataType::F32 || call.op != ReduceOp::Avg {
        return false;
    }
    let mut rounded = want.to_vec();
    if round_in_place(rounding, DataType::F32, &mut rounded).is_err() || got.len() != want.len() {
        return false;
    }
    got.chunks(4).zip(want.chunks(4)).zip(rounded.chunks(4)).all(|((g, w), r)| g == w || g == r)
}

/// Runs `seeds`, reporting every failing seed with its case and the replay command.
fn sweep(seeds: impl Iterator<Item = u64>) {
    let mut failures = Vec::new();
    let mut runs = 0;
    for seed in seeds {
        runs += 1;
        if let Err(e) = run_seed(seed) {
            failures.push(format!(
                "seed {seed}: {e}\n  case: {:?}\n  replay: RINGCC_SIM_SEED={seed} cargo test --release --test sim_collectives replay_seed -- --ignored --nocapture",
                case(seed).calls
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {runs} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

fn world_sweep(world: usize) {
    let n = combos().len() as u64;
    let w = WORLDS.iter().position(|&x| x == world).unwrap_or(0) as u64;
    sweep((0..n).map(|c| w * n + c));
}

#[test]
fn every_combination_is_exact_alone() {
    world_sweep(1);
}

#[test]
fn every_combination_is_exact_on_two_ranks() {
    world_sweep(2);
}

#[test]
fn every_combination_is_exact_on_three_ranks() {
    world_sweep(3);
}

#[test]
fn every_combination_is_exact_on_five_ranks() {
    world_sweep(5);
}

#[test]
fn every_combination_is_exact_on_eight_ranks() {
    world_sweep(8);
}

#[test]
fn every_combination_is_exact_on_thirty_three_ranks() {
    world_sweep(33);
}

/// A second pass with other lengths, segment sizes, links and follow-up calls;
/// `RINGCC_SIM_EXTRA_SEEDS` sets how many (default 240) for a deeper search.
#[test]
fn more_seeds_are_exact() {
    let extra = std::env::var("RINGCC_SIM_EXTRA_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(240);
    let base = sweep_len();
    sweep(base..base + extra);
}

/// Worlds where some of recursive doubling's partners are not ring neighbours, so it runs
/// over partner links.
const PARTNER_WORLDS: [usize; 9] = [5, 6, 7, 8, 9, 10, 11, 12, 16];

/// Rounds of recursive doubling in `world`: log2 of the largest power of two in it, plus
/// one round in and one out for the positions folded in.
fn doubling_rounds(world: usize) -> u32 {
    let p2 = 1usize << world.ilog2();
    world.ilog2() + if world > p2 { 2 } else { 0 }
}

/// Frames of one recursive-doubling call: one per exchanging position per round, one per
/// folded position in and one back.
fn doubling_frames(world: usize) -> u64 {
    let p2 = 1usize << world.ilog2();
    (p2 * world.ilog2() as usize + 2 * (world - p2)) as u64
}

/// Frames of one call that `algorithm` sends on the latency path with partner links:
/// doubling where it is asked for or (`Auto`) takes no more rounds than direct's hops,
/// direct's one frame per ordered pair otherwise.
fn latency_frames(algorithm: Algorithm, world: usize) -> u64 {
    let direct_hops = (world as u32 - 1).div_ceil(2);
    if algorithm == Algorithm::Doubling || doubling_rounds(world) <= direct_hops {
        doubling_frames(world)
    } else {
        (world * (world - 1)) as u64
    }
}

/// Small all-reduces and a barrier, back to back, with `algorithm` on `world` ranks over
/// partner links: exact, bit-identical, no send hazards, and exactly the frames of the
/// algorithm that should have run (so a run that fell back to the ring links shows).
fn partner_case(world: usize, algorithm: Algorithm, seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed ^ 0x9a27);
    let mut config = SimConfig::new(world, seed);
    config.algorithm = algorithm;
    config.start_skew_max = Duration::from_micros(rng.below(500));
    config.link = LinkModel {
        latency: Duration::from_micros(1 + rng.below(50)),
        bytes_per_sec: [100_000_000, 1_250_000_000, 0][rng.index(3)],
        jitter: Duration::from_micros(rng.below(3) * 20),
        shared_egress: rng.percent(50),
    };
    let mut calls: Vec<Call> = (0..3)
        .map(|_| {
            let len = [1, 7, 97, 1009, 2 * world + 1][rng.index(5)];
            Call::all_reduce(OPS[rng.index(OPS.len())], DTYPES[rng.index(DTYPES.len())], len)
        })
        .collect();
    calls.push(Call::barrier());
    let outcomes = run_case(Case { config, calls: calls.clone() }, seed)?;
    let want = latency_frames(algorithm, world);
    for (call, o) in calls.iter().zip(&outcomes) {
        if o.frames != want {
            return Err(format!("{call:?}: {} frames, the latency path sends {want}", o.frames));
        }
    }
    Ok(())
}

#[test]
fn doubling_over_partner_links_is_exact_on_five_to_sixteen_ranks() {
    let mut failures = Vec::new();
    for (w, world) in PARTNER_WORLDS.into_iter().enumerate() {
        for (a, algorithm) in [Algorithm::Doubling, Algorithm::Auto].into_iter().enumerate() {
            for k in 0..4 {
                let seed = 1000 + (w * 8 + a * 4 + k) as u64;
                if let Err(e) = partner_case(world, algorithm, seed) {
                    failures.push(format!("world {world}, {algorithm:?}, seed {seed}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// On an idle network without jitter, every round of doubling is at most one hop: partners
/// send to each other at once, over their own link (where the world is not a power of two,
/// the exchanges of positions nobody folds into overlap the fold-in round, so a call may
/// take fewer hops than rounds).
#[test]
fn doubling_over_partner_links_takes_at_most_one_hop_per_round() {
    for world in [8, 12, 16] {
        let mut config = SimConfig::new(world, 5);
        config.algorithm = Algorithm::Doubling;
        config.start_skew_max = Duration::ZERO;
        config.link = LinkModel {
            latency: Duration::from_micros(10),
            bytes_per_sec: 1_000_000_000,
            jitter: Duration::ZERO,
            shared_egress: false,
        };
        let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 232);
        let inputs = oracle::inputs(&call, world, 3);
        let o = Sim::new(config.clone()).run(call, inputs.clone()).expect("no hang");
        assert!(o.all_done(), "{:?}", o.statuses);
        assert_eq!(o.outputs, oracle::expected(&call, world, &inputs));
        // 928 + 72 bytes at 1 GB/s: 1 us on the wire, then 10 us of latency.
        let hop = Duration::from_micros(11);
        let rounds = doubling_rounds(world);
        if world.is_power_of_two() {
            assert_eq!(o.virtual_elapsed, hop * rounds, "world {world}");
        } else {
            let hops = o.virtual_elapsed.as_nanos() / hop.as_nanos();
            assert_eq!(o.virtual_elapsed, hop * hops as u32, "world {world}: whole hops");
            assert!((rounds - 1..=rounds).contains(&(hops as u32)), "world {world}: {hops} hops, {rounds} rounds");
        }
        // Without partner links the same request runs direct over the ring links: more
        // hops, a frame per ordered pair.
        config.partner_links = false;
        let d = Sim::new(config).run(call, inputs.clone()).expect("no hang");
        assert!(d.all_done(), "{:?}", d.statuses);
        assert_eq!(d.outputs, o.outputs);
        assert_eq!(d.frames, (world * (world - 1)) as u64);
        assert!(d.virtual_elapsed > o.virtual_elapsed, "world {world}: {:?}", d.virtual_elapsed);
    }
}

#[test]
fn a_seed_replays_identically() {
    let times = |seed| run_seed(seed).map(|v| v.iter().map(|o| (o.finished.clone(), o.frames)).collect::<Vec<_>>());
    let seed = 4 * combos().len() as u64 + 17; // 8 ranks, bidir all_reduce
    assert_eq!(times(seed), times(seed));
}

#[test]
fn the_sweep_covers_every_combination_on_every_world() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..sweep_len() {
        let c = case(seed);
        let first = c.calls[0];
        let algo = c.config.algorithm;
        seen.insert((c.config.world, first.coll as u8, algo.name(), first.op as u8, first.dtype as u8));
    }
    assert_eq!(seen.len(), combos().len() * WORLDS.len());
}

/// Replays the seed in `RINGCC_SIM_SEED`, printing the case.
#[test]
#[ignore = "replays one seed from RINGCC_SIM_SEED"]
fn replay_seed() {
    let seed: u64 = std::env::var("RINGCC_SIM_SEED").expect("set RINGCC_SIM_SEED").parse().expect("a u64 seed");
    let c = case(seed);
    println!(
        "seed {seed}: world {}, ring algorithm {:?}, segment {} B, codec {} level {}",
        c.config.world,
        c.config.algorithm,
        c.config.segment_bytes,
        c.config.codec.name(),
        c.config.codec_level
    );
    println!("link {:?}, skew {:?}", c.config.link, c.config.start_skew_max);
    for call in &c.calls {
        println!("  {call:?}");
    }
    match run_seed(seed) {
        Ok(outcomes) => {
            for o in outcomes {
                println!("  seq {}: {:?} virtual, {} frames, {} bytes", o.seq, o.virtual_elapsed, o.frames, o.bytes);
            }
        }
        Err(e) => panic!("seed {seed}: {e}"),
    }
}
