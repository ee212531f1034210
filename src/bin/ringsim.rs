//! ringsim: predicts all_reduce time at scale by running the real core in the simulator.
//!
//! Every rank runs the same `Collective` state machine as over TCP, on an alpha-beta link
//! model in virtual time (one shared buffer, so 512 ranks fit in memory). The table compares
//! the simulated time with the alpha-beta formula for a ring, 2(n-1)(alpha + S/(nB)), and
//! with the same model for the algorithm actually run (`model`): the bidirectional ring
//! moves half the buffer each way, 2(n-1)(alpha + S/(2nB)), unless both directions share
//! one NIC (`--shared-egress`). The latency path's algorithms (small buffers) have their own
//! models: recursive doubling (`rd`) takes log2(n) rounds of one whole-buffer exchange, plus
//! a fold-in and a hand-back round when n is not a power of two, r(alpha + S/B); `direct`
//! sends every input ceil((n-1)/2) hops each way, ceil((n-1)/2) alpha + floor(n/2) S/B.
//!
//! ```text
//! cargo run --release --bin ringsim -- --worlds 8,64,512 --sizes 1M,16M --segments 512K,whole
//! cargo run --release --bin ringsim -- --algos rd,direct --sizes 4K,64K --segments whole
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use ringcc::core::collective::Algorithm;
use ringcc::limits::SEGMENT_BYTES_MAX;
use ringcc::sim::{BufferMode, Call, LinkModel, Sim, SimConfig};
use ringcc::{DataType, ReduceOp};

/// Simulated all_reduce time against the alpha-beta model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// World sizes.
    #[arg(long, value_delimiter = ',', default_value = "8,64,512")]
    worlds: Vec<usize>,
    /// Buffer sizes S in bytes (suffixes K, M, G are powers of 1024).
    #[arg(long, value_delimiter = ',', default_value = "1M,16M", value_parser = parse_bytes)]
    sizes: Vec<usize>,
    /// Segment sizes in bytes, or `whole` for one segment per chunk.
    #[arg(long, value_delimiter = ',', default_value = "512K,whole")]
    segments: Vec<String>,
    /// Algorithms: ring, bidir, rd, direct (the last two for buffers of at most one
    /// segment).
    #[arg(long, value_delimiter = ',', default_value = "ring,bidir")]
    algos: Vec<String>,
    /// One-way link latency alpha in microseconds.
    #[arg(long, default_value_t = 20.0)]
    latency_us: f64,
    /// Link bandwidth B in Gbit/s (each direction of each link).
    #[arg(long, default_value_t = 10.0)]
    gbps: f64,
    /// Random extra delay per frame, up to this many microseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_us: f64,
    /// A rank's two outgoing links share one NIC (switch) instead of being separate links.
    #[arg(long)]
    shared_egress: bool,
    /// Seed of the (jitter) randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let (digits, shift) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 30),
        t => (t, 0),
    };
    let n: usize = digits.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("{s:?} is too large"))
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name).ok_or_else(|| format!("unknown algorithm {name:?} ({})", Algorithm::names()))
}

/// Segment size for `spec`: a byte count, or `whole` = the largest chunk (capped by the
/// protocol's segment limit).
fn segment_bytes(spec: &str, size: usize, world: usize) -> Result<usize, String> {
    if spec == "whole" {
        Ok(size.div_ceil(world).div_ceil(4).saturating_mul(4).clamp(4, SEGMENT_BYTES_MAX))
    } else {
        parse_bytes(spec).map(|b| b.clamp(4, SEGMENT_BYTES_MAX))
    }
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let bytes_per_sec = (args.gbps * 1e9 / 8.0) as u64;
    let link = LinkModel {
        latency: Duration::from_secs_f64(args.latency_us * 1e-6),
        bytes_per_sec,
        jitter: Duration::from_secs_f64(args.jitter_us * 1e-6),
        shared_egress: args.shared_egress,
    };
    println!(
        "# all_reduce f32 sum, alpha = {} us, B = {} Gbit/s{}, formula = 2(n-1)(alpha + S/(nB))",
        args.latency_us,
        args.gbps,
        if args.shared_egress { " per NIC (shared egress)" } else { " per link direction" }
    );
    println!(
        "{:>6} {:>5} {:>6} {:>8} {:>9} {:>11} {:>11} {:>6} {:>11} {:>6} {:>10} {:>7}",
        "algo",
        "N",
        "S",
        "segment",
        "frames",
        "sim_ms",
        "formula_ms",
        "ratio",
        "model_ms",
        "ratio",
        "busbw_GB/s",
        "wall_s"
    );
    for algo in &args.algos {
        let algorithm = algorithm(algo)?;
        for &world in &args.worlds {
            for &size in &args.sizes {
                for seg in &args.segments {
                    let segment_bytes = segment_bytes(seg, size, world)?;
                    row(&args, link, algorithm, algo, world, size, segment_bytes)?;
                }
            }
        }
    }
    Ok(())
}

fn row(
    args: &Args,
    link: LinkModel,
    algorithm: Algorithm,
    algo: &str,
    world: usize,
    size: usize,
    segment_bytes: usize,
) -> Result<(), String> {
    let mut config = SimConfig::new(world, args.seed);
    config.link = link;
    config.algorithm = algorithm;
    config.segment_bytes = segment_bytes;
    config.buffers = BufferMode::Shared;
    config.start_skew_max = Duration::ZERO;
    config.shuffle_ring = false;
    config.progress_timeout = Duration::from_secs(3600);
    // The alpha-beta formula models the data movement; completion tokens add world / 2
    // bare-header hops on top (`ringsim` reports the time without them).
    config.fin = false;
    config.batch_deadline = Duration::from_secs(24 * 3600);
    let wall = Instant::now();
    let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, size / 4);
    let outcome = Sim::new(config).run(call, Vec::new()).map_err(|e| e.to_string())?;
    if !outcome.all_done() {
        return Err(format!("N = {world}, S = {size}: not done: {:?}", outcome.statuses.first()));
    }
    let sim = outcome.virtual_elapsed.as_secs_f64();
    let (n, s, b) = (world as f64, size as f64, link.bytes_per_sec as f64);
    let alpha = link.latency.as_secs_f64();
    let formula = 2.0 * (n - 1.0) * (alpha + s / (n * b));
    let ways = if algorithm == Algorithm::Bidir && !link.shared_egress && world > 2 { 2.0 } else { 1.0 };
    let model = match algorithm {
        Algorithm::Doubling => {
            let p2 = 1usize << (usize::BITS - 1 - world.leading_zeros());
            let rounds = p2.trailing_zeros() as f64 + if world > p2 { 2.0 } else { 0.0 };
            rounds * (alpha + s / b)
        }
        Algorithm::Direct => (world - 1).div_ceil(2) as f64 * alpha + (world / 2) as f64 * s / b,
        _ => 2.0 * (n - 1.0) * (alpha + s / (ways * n * b)),
    };
    let ratio = |x: f64| if x > 0.0 { sim / x } else { 0.0 };
    let busbw = if sim > 0.0 { s / sim * 2.0 * (n - 1.0) / n / 1e9 } else { 0.0 };
    println!(
        "{:>6} {:>5} {:>6} {:>8} {:>9} {:>11.3} {:>11.3} {:>6.3} {:>11.3} {:>6.3} {:>10.3} {:>7.1}",
        algo,
        world,
        human(size),
        human(segment_bytes),
        outcome.frames,
        sim * 1e3,
        formula * 1e3,
        ratio(formula),
        model * 1e3,
        ratio(model),
        busbw,
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}
