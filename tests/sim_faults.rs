//! Faults in the simulator: a rank crashes, is killed or stops mid-call. Every other rank
//! must return within bounded virtual time, either with a typed error or with exactly the
//! right data, never hang and never return wrong data as success.
//!
//! Each case is a pure function of its seed; a failure prints the seed, and
//! `RINGCC_SIM_SEED=<seed> cargo test --release --test sim_faults replay_fault_seed -- --ignored --nocapture`
//! replays it; `RINGCC_SIM_FAULT_SEEDS=<count>` runs more seeds than the default 200.
//!
//! Recursive doubling at N=8 runs over partner links (the simulator opens them as the
//! driver does): its seeds (`doubling_case`, from `DOUBLING_SEED_BASE` on) add partitions
//! and delays of a victim's partner link to the crashes, kills and pauses, and the
//! `partner` tests pin down what a kill and a cut do to the ranks at the other end of one.

use std::time::Duration;

use ringcc::core::collective::{Algorithm, ProtocolError};
use ringcc::core::doubling::partner_positions;
use ringcc::sim::{oracle, Call, Fault, RankStatus, Sim, SimConfig, SimError, SimOutcome, SimRng};
use ringcc::{DataType, ReduceOp};

const WORLDS: [usize; 5] = [2, 3, 5, 8, 33];
const SEEDS_PER_WORLD: u64 = 40;
const TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Crash,
    Kill,
    LongPause,
    /// The link between the victim and `peer_pos` is cut one way for `TIMEOUT * 4`.
    Partition,
    /// Frames one way between the victim and `peer_pos` take longer for `TIMEOUT * 4`.
    Delay,
}

#[derive(Debug)]
struct Case {
    config: SimConfig,
    calls: [Call; 2],
    victim_pos: usize,
    /// The other end of a partitioned or delayed link, and whether the victim is its
    /// receiving end.
    peer_pos: usize,
    to_victim: bool,
    /// Frames sent in a delay window take this much longer.
    extra: Duration,
    /// Fraction (per mille) of the fault-free first call after which the fault strikes.
    at_permille: u64,
    kind: Kind,
}

fn case(seed: u64) -> Case {
    let world = WORLDS[(seed % WORLDS.len() as u64) as usize];
    let mut rng = SimRng::new(seed ^ 0xfa17);
    let mut config = SimConfig::new(world, seed);
    config.progress_timeout = TIMEOUT;
    config.segment_bytes = [64, 256, 4096][rng.index(3)];
    config.algorithm = [Algorithm::Ring, Algorithm::Bidir, Algorithm::Direct, Algorithm::Doubling][rng.index(4)];
    config.link.jitter = Duration::from_micros(rng.below(20));
    let len = 200 + rng.index(3000);
    let dtype = [DataType::F32, DataType::I64, DataType::Bf16, DataType::U8][rng.index(4)];
    let op = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max][rng.index(3)];
    let pick = |rng: &mut SimRng| match rng.index(5) {
        0 => Call::reduce_scatter(op, dtype, len),
        1 => Call::all_gather(dtype, len),
        2 => Call::broadcast(dtype, len, rng.index(world)),
        3 => Call::barrier(),
        _ => Call::all_reduce(op, dtype, len),
    };
    let calls = [pick(&mut rng), pick(&mut rng)];
    let kind = [Kind::Crash, Kind::Kill, Kind::LongPause][rng.index(3)];
    let victim_pos = rng.index(world);
    let at_permille = rng.below(1000);
    let (peer_pos, to_victim, extra) = ((victim_pos + 1) % world, false, Duration::ZERO);
    Case { config, calls, victim_pos, peer_pos, to_victim, extra, at_permille, kind }
}

/// Seeds from here on are [`doubling_case`]s.
const DOUBLING_SEED_BASE: u64 = 1 << 32;
const DOUBLING_SEEDS: u64 = 150;

/// Two small all-reduces or barriers at N=8 that run recursive doubling over partner links
/// (asked for, or picked by `Auto`), and one fault: a crash, kill or pause of the victim, or
/// a partition or delay of the link to one of its partners.
fn doubling_case(seed: u64) -> Case {
    let world = 8;
    let mut rng = SimRng::new(seed ^ 0xd0b1);
    let mut config = SimConfig::new(world, seed);
    config.progress_timeout = TIMEOUT;
    config.algorithm = [Algorithm::Doubling, Algorithm::Auto][rng.index(2)];
    config.link.jitter = Duration::from_micros(rng.below(20));
    config.link.shared_egress = rng.percent(50);
    let len = 1 + rng.index(1500);
    let dtype = [DataType::F32, DataType::I64, DataType::Bf16, DataType::U8][rng.index(4)];
    let op = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max][rng.index(3)];
    let pick = |rng: &mut SimRng| if rng.percent(25) { Call::barrier() } else { Call::all_reduce(op, dtype, len) };
    let calls = [pick(&mut rng), pick(&mut rng)];
    let kind = [Kind::Crash, Kind::Kill, Kind::LongPause, Kind::Partition, Kind::Delay][rng.index(5)];
    let victim_pos = rng.index(world);
    let partners = partner_positions(world, victim_pos);
    let peer_pos = partners[rng.index(partners.len())];
    let to_victim = rng.percent(50);
    let extra = [TIMEOUT / 10, TIMEOUT * 2][rng.index(2)];
    Case { config, calls, victim_pos, peer_pos, to_victim, extra, at_permille: rng.below(1000), kind }
}

/// Runs the seed's case; returns how many survivor calls failed.
fn run_seed(seed: u64) -> Result<usize, String> {
    let c = if seed >= DOUBLING_SEED_BASE { doubling_case(seed) } else { case(seed) };
    let world = c.config.world;
    let batch: Vec<(Call, Vec<Vec<u8>>)> =
        c.calls.iter().enumerate().map(|(k, call)| (*call, oracle::inputs(call, world, seed + k as u64))).collect();
    let clean = Sim::new(c.config.clone()).run(batch[0].0, batch[0].1.clone()).map_err(|e| e.to_string())?;
    let clean_end = clean.finished.iter().flatten().max().copied().unwrap_or_default();
    let at = clean_end * c.at_permille as u32 / 1000;
    let mut sim = Sim::new(c.config.clone());
    let victim = sim.ring()[c.victim_pos];
    let peer = sim.ring()[c.peer_pos];
    let (from, to) = if c.to_victim { (peer, victim) } else { (victim, peer) };
    let duration = TIMEOUT * 4;
    sim.inject(match c.kind {
        Kind::Crash => Fault::Crash { rank: victim, at },
        Kind::Kill => Fault::Kill { rank: victim, at },
        Kind::LongPause => Fault::Pause { rank: victim, at, duration },
        Kind::Partition => Fault::Partition { from, to, at, duration },
        Kind::Delay => Fault::Delay { from, to, at, duration, extra: c.extra },
    });
    let outcomes = sim.run_batch(batch.clone()).map_err(|e| format!("hang: {e}"))?;
    let mut failures = 0;
    for ((call, inputs), o) in batch.iter().zip(&outcomes) {
        failures += check_outcome(call, inputs, o, victim, c.kind)?;
    }
    let bound = at + clean_end + TIMEOUT * 8;
    if sim.now() > bound {
        return Err(format!("settled at {:?}, bound {bound:?}", sim.now()));
    }
    Ok(failures)
}

/// Checks one call's outcome; returns how many non-victim ranks failed.
fn check_outcome(call: &Call, inputs: &[Vec<u8>], o: &SimOutcome, victim: usize, kind: Kind) -> Result<usize, String> {
    let want = oracle::expected(call, inputs.len(), inputs);
    let mut failures = 0;
    for (rank, status) in o.statuses.iter().enumerate() {
        match status {
            RankStatus::Done if o.outputs[rank] != want[rank] => {
                return Err(format!("{call:?}: rank {rank} returned wrong data as success"));
            }
            RankStatus::Done => {}
            RankStatus::Crashed if rank == victim && matches!(kind, Kind::Crash | Kind::Kill) => {}
            RankStatus::Crashed => return Err(format!("{call:?}: rank {rank} reported crashed")),
            RankStatus::Failed(e) => {
                let typed = matches!(
                    e,
                    SimError::Protocol(ProtocolError::Stalled { .. } | ProtocolError::Aborted { .. })
                        | SimError::LinkFailed { .. }
                );
                if !typed {
                    return Err(format!("{call:?}: rank {rank} failed with {e:?}"));
                }
                if matches!(e, SimError::LinkFailed { .. }) && kind != Kind::Kill {
                    return Err(format!("{call:?}: rank {rank} saw a link fail without a kill: {e:?}"));
                }
                failures += usize::from(rank != victim);
            }
        }
    }
    Ok(failures)
}

/// Runs every seed of `seeds`: the failures (each with its case, `describe(seed)`, and how
/// to replay it) and the number of survivor failures counted by the seeds that passed.
fn run_seeds(seeds: std::ops::Range<u64>, describe: impl Fn(u64) -> String) -> (Vec<String>, usize) {
    let mut errors = Vec::new();
    let mut survivor_failures = 0;
    for seed in seeds {
        match run_seed(seed) {
            Ok(n) => survivor_failures += n,
            Err(e) => errors.push(format!(
                "seed {seed}: {e}\n  case: {}\n  replay: RINGCC_SIM_SEED={seed} cargo test --release --test sim_faults replay_fault_seed -- --ignored --nocapture",
                describe(seed)
            )),
        }
    }
    (errors, survivor_failures)
}

#[test]
fn survivors_return_a_typed_error_or_exact_data_after_a_fault() {
    let default = WORLDS.len() as u64 * SEEDS_PER_WORLD;
    let seeds = std::env::var("RINGCC_SIM_FAULT_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (errors, survivor_failures) = run_seeds(0..seeds, |seed| format!("{:?}", case(seed)));
    assert!(errors.is_empty(), "{} of {seeds} seeds failed:\n{}", errors.len(), errors.join("\n"));
    // Most faults strike mid-call, and the second call always runs with the fault in place.
    assert!(survivor_failures > seeds as usize, "only {survivor_failures} survivor failures: the faults missed");
}

#[test]
fn survivors_of_a_fault_mid_doubling_over_partner_links_return_a_typed_error_or_exact_data() {
    let seeds = DOUBLING_SEED_BASE..DOUBLING_SEED_BASE + DOUBLING_SEEDS;
    let (errors, survivor_failures) = run_seeds(seeds, |seed| format!("{:?}", doubling_case(seed)));
    assert!(errors.is_empty(), "{} of {DOUBLING_SEEDS} seeds failed:\n{}", errors.len(), errors.join("\n"));
    assert!(
        survivor_failures > DOUBLING_SEEDS as usize,
        "only {survivor_failures} survivor failures: the faults missed"
    );
}

/// Doubling at N=8 with a fresh simulator: the ring and position `pos`'s only partner.
fn doubling_at_eight(seed: u64) -> (Sim, usize) {
    let mut config = SimConfig::new(8, seed);
    config.progress_timeout = TIMEOUT;
    config.algorithm = Algorithm::Doubling;
    let partners = partner_positions(8, 0);
    assert_eq!(partners.len(), 1, "at N=8 each position has one partner that is not a neighbour");
    (Sim::new(config), partners[0])
}

#[test]
fn a_killed_rank_fails_its_partner_at_once_over_the_partner_link() {
    let (mut sim, q) = doubling_at_eight(31);
    let (victim, partner) = (sim.ring()[0], sim.ring()[q]);
    sim.inject(Fault::Kill { rank: victim, at: Duration::ZERO });
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 300);
    let o = sim.run(call, oracle::inputs(&call, 8, 1)).expect("no hang");
    // The partner link's end of stream, not an abort relayed over the ring, ends its call.
    match &o.statuses[partner] {
        RankStatus::Failed(SimError::LinkFailed { peer, .. }) => assert_eq!(*peer, victim),
        other => panic!("partner {partner}: {other:?}"),
    }
    for rank in (0..8).filter(|&r| r != victim) {
        assert!(matches!(o.statuses[rank], RankStatus::Failed(_)), "rank {rank}: {:?}", o.statuses[rank]);
        // Ends of stream and aborts, not the progress timeout.
        assert!(o.finished[rank].is_some_and(|t| t < TIMEOUT / 2), "rank {rank}: {:?}", o.finished[rank]);
    }
}

#[test]
fn a_cut_partner_link_stalls_doubling_and_a_delay_on_it_only_slows_it() {
    let call = Call::all_reduce(ReduceOp::Max, DataType::I64, 200);
    let inputs = oracle::inputs(&call, 8, 2);
    let want = oracle::expected(&call, 8, &inputs);
    let (mut sim, q) = doubling_at_eight(32);
    let (a, b) = (sim.ring()[0], sim.ring()[q]);
    sim.inject(Fault::Partition { from: a, to: b, at: Duration::ZERO, duration: TIMEOUT * 4 });
    let o = sim.run(call, inputs.clone()).expect("no hang");
    assert!(matches!(o.statuses[b], RankStatus::Failed(SimError::Protocol(_))), "{:?}", o.statuses);
    assert!(o
        .statuses
        .iter()
        .any(|s| matches!(s, RankStatus::Failed(SimError::Protocol(ProtocolError::Stalled { .. })))));
    for (rank, s) in o.statuses.iter().enumerate() {
        assert!(*s != RankStatus::Done || o.outputs[rank] == want[rank], "rank {rank} returned wrong data");
        assert!(
            !matches!(s, RankStatus::Failed(SimError::LinkFailed { .. }) | RankStatus::Crashed),
            "rank {rank}: {s:?}"
        );
    }
    let latest = o.finished.iter().flatten().max().copied().unwrap_or_default();
    assert!(latest <= TIMEOUT + Duration::from_millis(5), "last rank returned at {latest:?}");
    // A delay shorter than the progress timeout on the same link only slows the call.
    let (mut sim, _) = doubling_at_eight(32);
    let extra = TIMEOUT / 5;
    sim.inject(Fault::Delay { from: a, to: b, at: Duration::ZERO, duration: TIMEOUT, extra });
    let o = sim.run(call, inputs).expect("no hang");
    assert!(o.all_done(), "{:?}", o.statuses);
    assert_eq!(o.outputs, want);
    assert!(o.virtual_elapsed > extra, "{:?}", o.virtual_elapsed);
}

#[test]
fn a_crashed_neighbour_stalls_the_ring_and_aborts_spread() {
    let mut config = SimConfig::new(8, 77);
    config.progress_timeout = TIMEOUT;
    config.segment_bytes = 64;
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 5000);
    let mut sim = Sim::new(config);
    let victim = sim.ring()[4];
    sim.inject(Fault::Crash { rank: victim, at: Duration::ZERO });
    let o = sim.run(call, oracle::inputs(&call, 8, 1)).expect("no hang");
    let stalled = o
        .statuses
        .iter()
        .filter(|s| matches!(s, RankStatus::Failed(SimError::Protocol(ProtocolError::Stalled { .. }))))
        .count();
    let aborted = o
        .statuses
        .iter()
        .filter(|s| matches!(s, RankStatus::Failed(SimError::Protocol(ProtocolError::Aborted { .. }))))
        .count();
    assert_eq!(stalled + aborted, 7, "{:?}", o.statuses);
    assert!(stalled >= 1);
    let latest = o.finished.iter().flatten().max().copied().unwrap_or_default();
    assert!(latest <= TIMEOUT + Duration::from_millis(5), "last survivor returned at {latest:?}");
    // Aborts reach neighbours that already gave up on the call: dropped as stale, not fed
    // to the next call.
    assert!(sim.stale_frames() > 0);
    let next = sim.run(Call::barrier(), vec![Vec::new(); 8]).expect("no hang");
    assert_eq!(next.statuses.iter().filter(|s| matches!(s, RankStatus::Failed(_))).count(), 7);
}

#[test]
#[ignore = "replays one seed from RINGCC_SIM_SEED"]
fn replay_fault_seed() {
    let seed: u64 = std::env::var("RINGCC_SIM_SEED").expect("set RINGCC_SIM_SEED").parse().expect("a u64 seed");
    if seed >= DOUBLING_SEED_BASE {
        println!("{:#?}", doubling_case(seed));
    } else {
        println!("{:#?}", case(seed));
    }
    match run_seed(seed) {
        Ok(n) => println!("ok: {n} survivor failures"),
        Err(e) => panic!("seed {seed}: {e}"),
    }
}
