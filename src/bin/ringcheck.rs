//! ringcheck: runs every collective, dtype and op on this ring and checks each result
//! exactly against a reference and across ranks. Exit status 0 only if all are right.
//!
//! Run under a launcher: `ringrun -n 4 ringcheck` (or with RINGCC_* set by hand).
//!
//! With a codec (`--codec` or `RINGCC_CODEC`): lossless codecs must give the exact
//! references bit for bit (what raw gives), and a compressing codec must actually have
//! compressed the big all-reduce. Lossy codecs must give the exact references too (every
//! partial result is a small integer, which bf16 and f16 hold), except that an f32 Avg may
//! hold the exact average rounded as the codec rounds; and on non-integer f32 data every
//! rank must hold the same bits, within the codec's rounding bound of the exact sum.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ringcc::codec::{round_in_place, Codec, CodecChoice};
use ringcc::{bf16, f16, Communicator, DataType, Element, ReduceOp};

#[derive(Parser, Debug)]
#[command(version, about = "Check every collective on this ring, exactly")]
struct Args {
    /// Element counts to test.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0usize, 1, 7, 1_000_003])]
    lengths: Vec<usize>,
    /// Size in MiB of an extra f32 all-reduce (0 to skip).
    #[arg(long, default_value_t = 64)]
    big_mib: usize,
    /// Number of async all-reduces in flight at once.
    #[arg(long, default_value_t = 3)]
    in_flight: usize,
    /// Segment size in bytes (small values cover many segments).
    #[arg(long)]
    segment_bytes: Option<usize>,
    /// Ring algorithm: auto, ring or bidir.
    #[arg(long)]
    algo: Option<String>,
    /// Survivor mode: run this many f32 all-reduces, calling again after a failure
    /// interrupts one, and check each result against the members its report names.
    #[arg(long)]
    survive: Option<usize>,
    /// Elements of each survivor-mode all-reduce (small ones take the latency path).
    #[arg(long, default_value_t = 65_536)]
    survive_len: usize,
    /// Pause between survivor-mode calls, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Codec setting (overrides RINGCC_CODEC): raw zstd shuffle+zstd bf16 f16 bf16+zstd auto auto+bf16.
    #[arg(long, value_parser = CodecChoice::parse)]
    codec: Option<CodecChoice>,
    /// zstd level (overrides RINGCC_CODEC_LEVEL).
    #[arg(long, allow_negative_numbers = true)]
    codec_level: Option<i32>,
}

const OPS: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max];

/// Element types with an exact reference: every value the check uses is a small integer
/// (or a power of two for Prod), exact in every type, so any summation order is exact.
trait Exact: Element + PartialEq + std::fmt::Debug {
    fn from_i64(v: i64) -> Self;
    /// The Avg finish exactly as the library's kernel computes it.
    fn avg(sum: Self, n: usize) -> Self;
}

/// Types whose `as` conversion and division are exactly what the kernels do (floats divide,
/// integers truncate).
macro_rules! exact_native {
    ($($t:ty),*) => {$(
        impl Exact for $t {
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn avg(sum: Self, n: usize) -> Self {
                sum / n as $t
            }
        }
    )*};
}
exact_native!(f32, f64, i32, i64, u8);

macro_rules! exact_half {
    ($t:ty) => {
        impl Exact for $t {
            fn from_i64(v: i64) -> Self {
                <$t>::from_f32(v as f32)
            }
            fn avg(sum: Self, n: usize) -> Self {
                <$t>::from_f32(sum.to_f32() / n as f32)
            }
        }
    };
}
exact_half!(f16);
exact_half!(bf16);

fn value(op: ReduceOp, rank: usize, i: usize) -> i64 {
    match op {
        ReduceOp::Prod => 1 + i64::from((i + rank) % 3 == 0),
        _ => ((i * 7 + rank * 3) % 16) as i64,
    }
}

fn reference<T: Exact>(op: ReduceOp, ranks: &[usize], i: usize) -> T {
    let vals = ranks.iter().map(|&r| value(op, r, i));
    let v = match op {
        ReduceOp::Sum | ReduceOp::Avg => vals.sum(),
        ReduceOp::Prod => vals.product(),
        ReduceOp::Min => vals.min().unwrap_or(0),
        ReduceOp::Max => vals.max().unwrap_or(0),
    };
    let t = T::from_i64(v);
    if op == ReduceOp::Avg {
        T::avg(t, ranks.len())
    } else {
        t
    }
}

/// FNV-1a over the bytes: compared across ranks to prove bit-identical results.
fn digest(bytes: &[u8]) -> i64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)) as i64
}

/// True if `got` is `want`, or, with a lossy `codec` and an f32 Avg, `want` rounded as the
/// codec rounds (the owner of each chunk may round its final value before sending it).
fn accepts<T: Exact>(codec: CodecChoice, op: ReduceOp, got: &T, want: T) -> bool {
    if *got == want {
        return true;
    }
    let Some(rounding) = codec.rounding() else { return false };
    let mut rounded = want;
    op == ReduceOp::Avg
        && T::DTYPE == DataType::F32
        && round_in_place(rounding, T::DTYPE, bytemuck::bytes_of_mut(&mut rounded)).is_ok()
        && *got == rounded
}

/// Element `i` of `rank`'s non-integer f32 input: |x| < 1.6, no short binary fraction.
fn inexact_value(rank: usize, i: usize) -> f32 {
    let h = digest(&(rank as u64).wrapping_mul(1_000_003).wrapping_add(i as u64).to_le_bytes()) as u64;
    (((h % 200_001) as f64 - 100_000.0) / 65_537.0) as f32
}

/// Largest relative rounding error of one rounding by `codec`'s wire format (its unit
/// roundoff), and its absolute error below the format's normal range: zero for exact codecs.
fn rounding_error(codec: CodecChoice) -> (f64, f64) {
    match codec.rounding() {
        Some(Codec::F16) => (2f64.powi(-11), 2f64.powi(-25)),
        Some(_) => (2f64.powi(-8), 0.0),
        None => (0.0, 0.0),
    }
}

struct Checker {
    comm: Communicator,
    codec: CodecChoice,
    wrong: usize,
    runs: usize,
}

impl Checker {
    fn fail(&mut self, what: String) {
        self.wrong += 1;
        if self.wrong <= 20 {
            eprintln!("ringcheck: rank {}: {what}", self.comm.rank());
        }
    }

    /// Every rank must hold the same bytes: gather each rank's digest and compare.
    fn same_everywhere(&mut self, what: &str, bytes: &[u8]) -> Result<(), ringcc::Error> {
        let world = self.comm.world_size();
        let mut all = vec![0i64; world];
        self.comm.all_gather(&[digest(bytes)], &mut all)?;
        if all.iter().any(|d| *d != all[0]) {
            self.fail(format!("{what}: ranks hold different bits: {all:x?}"));
        }
        Ok(())
    }

    fn all_reduce<T: Exact>(&mut self, len: usize) -> Result<(), ringcc::Error> {
        let rank = self.comm.rank();
        for op in OPS {
            let mut v: Vec<T> = (0..len).map(|i| T::from_i64(value(op, rank, i))).collect();
            let report = self.comm.all_reduce(&mut v, op)?;
            self.runs += 1;
            let right = |i: usize| accepts(self.codec, op, &v[i], reference::<T>(op, &report.members, i));
            let bad = (0..len).filter(|&i| !right(i)).count();
            if bad > 0 {
                let i = (0..len).find(|&i| !right(i)).unwrap_or(0);
                let want: T = reference(op, &report.members, i);
                self.fail(format!(
                    "all_reduce {} {} len {len}: {bad} wrong, first at {i}: {:?} != {want:?}",
                    T::DTYPE.name(),
                    op.name(),
                    v[i]
                ));
            }
            self.same_everywhere(
                &format!("all_reduce {} {} len {len}", T::DTYPE.name(), op.name()),
                bytemuck::cast_slice(&v),
            )?;
        }
        Ok(())
    }

    /// f32 Sum and Avg of non-integer data: no order sums it exactly, so every rank must
    /// hold the same bits, within f32's summation error plus the codec's rounding (once per
    /// hop and once by the chunk's owner) of the exact result.
    fn inexact(&mut self, len: usize) -> Result<(), ringcc::Error> {
        let rank = self.comm.rank();
        let (unit_roundoff, absolute) = rounding_error(self.codec);
        for op in [ReduceOp::Sum, ReduceOp::Avg] {
            let mut v: Vec<f32> = (0..len).map(|i| inexact_value(rank, i)).collect();
            let report = self.comm.all_reduce(&mut v, op)?;
            self.runs += 1;
            let n = report.members.len() as f64;
            let scale = if op == ReduceOp::Avg { 1.0 / n } else { 1.0 };
            let bad = (0..len)
                .filter(|&i| {
                    let xs = report.members.iter().map(|&r| f64::from(inexact_value(r, i)));
                    let (exact, magnitude) = xs.fold((0.0, 0.0), |(s, m), x| (s + x, m + x.abs()));
                    let bound = n * ((unit_roundoff + 2f64.powi(-23)) * magnitude + absolute) * scale;
                    (f64::from(v[i]) - exact * scale).abs() > bound
                })
                .count();
            if bad > 0 {
                self.fail(format!("all_reduce f32 {} of inexact data len {len}: {bad} beyond the bound", op.name()));
            }
            self.same_everywhere(&format!("inexact all_reduce f32 {} len {len}", op.name()), bytemuck::cast_slice(&v))?;
        }
        Ok(())
    }

    fn others<T: Exact>(&mut self, len: usize) -> Result<(), ringcc::Error> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let name = T::DTYPE.name();
        // reduce_scatter: rank r gets block r of the sum.
        let input: Vec<T> = (0..len * world).map(|i| T::from_i64(value(ReduceOp::Sum, rank, i))).collect();
        let mut out = vec![T::from_i64(0); len];
        let report = self.comm.reduce_scatter(&input, &mut out, ReduceOp::Sum)?;
        self.runs += 1;
        let bad =
            (0..len).filter(|&i| out[i] != reference::<T>(ReduceOp::Sum, &report.members, rank * len + i)).count();
        if bad > 0 {
            self.fail(format!("reduce_scatter {name} len {len}: {bad} wrong"));
        }
        // all_gather: block r of the output is rank r's input.
        let mine: Vec<T> = (0..len).map(|i| T::from_i64(value(ReduceOp::Max, rank, i))).collect();
        let mut all = vec![T::from_i64(0); len * world];
        self.comm.all_gather(&mine, &mut all)?;
        self.runs += 1;
        let bad = (0..len * world)
            .filter(|&j| all[j] != T::from_i64(value(ReduceOp::Max, j / len.max(1), j % len.max(1))))
            .count();
        if bad > 0 {
            self.fail(format!("all_gather {name} len {len}: {bad} wrong"));
        }
        // broadcast from the last rank.
        let root = world - 1;
        let mut b: Vec<T> = (0..len).map(|i| T::from_i64(value(ReduceOp::Min, rank, i))).collect();
        self.comm.broadcast(&mut b, root)?;
        self.runs += 1;
        let bad = (0..len).filter(|&i| b[i] != T::from_i64(value(ReduceOp::Min, root, i))).count();
        if bad > 0 {
            self.fail(format!("broadcast {name} len {len} root {root}: {bad} wrong"));
        }
        Ok(())
    }

    fn every_dtype(&mut self, len: usize) -> Result<(), ringcc::Error> {
        self.all_reduce::<f32>(len)?;
        self.all_reduce::<f64>(len)?;
        self.all_reduce::<f16>(len)?;
        self.all_reduce::<bf16>(len)?;
        self.all_reduce::<i32>(len)?;
        self.all_reduce::<i64>(len)?;
        self.all_reduce::<u8>(len)?;
        self.inexact(len)?;
        let small = len.min(100_003);
        self.others::<f32>(small)?;
        self.others::<bf16>(small)?;
        self.others::<i64>(small)?;
        self.others::<u8>(small)?;
        Ok(())
    }

    fn in_flight(&mut self, n: usize, len: usize) -> Result<(), ringcc::Error> {
        let rank = self.comm.rank();
        let works: Vec<_> = (0..n)
            .map(|k| {
                let v: Vec<f32> = (0..len).map(|i| (value(ReduceOp::Sum, rank, i + k)) as f32).collect();
                self.comm.all_reduce_async(v, ReduceOp::Sum)
            })
            .collect();
        for (k, w) in works.into_iter().enumerate() {
            let (v, report) = w.wait()?;
            self.runs += 1;
            let bad = (0..len).filter(|&i| v[i] != reference::<f32>(ReduceOp::Sum, &report.members, i + k)).count();
            if bad > 0 {
                self.fail(format!("async #{k} of {n} len {len}: {bad} wrong"));
            }
        }
        Ok(())
    }

    fn big(&mut self, mib: usize) -> Result<(Duration, f64), ringcc::Error> {
        let len = mib * (1 << 20) / 4;
        let rank = self.comm.rank();
        let mut v: Vec<f32> = (0..len).map(|i| value(ReduceOp::Sum, rank, i) as f32).collect();
        let t = Instant::now();
        let report = self.comm.all_reduce(&mut v, ReduceOp::Sum)?;
        let took = t.elapsed();
        self.runs += 1;
        let bad = (0..len).filter(|&i| v[i] != reference::<f32>(ReduceOp::Sum, &report.members, i)).count();
        if bad > 0 {
            self.fail(format!("all_reduce f32 {mib} MiB: {bad} wrong"));
        }
        self.same_everywhere("big all_reduce", bytemuck::cast_slice(&v))?;
        let ratio = report.bytes_sent_raw as f64 / report.bytes_sent.max(1) as f64;
        // These values compress: a fixed compressing codec that did not shrink them was not used.
        let compressing = matches!(self.codec, CodecChoice::Fixed(c) if c != Codec::Raw);
        if compressing && ratio <= 1.0 {
            self.fail(format!(
                "big all_reduce: codec {} sent {} bytes, raw {}",
                self.codec.name(),
                report.bytes_sent,
                report.bytes_sent_raw
            ));
        }
        Ok((took, ratio))
    }
}

/// Survivor mode: keeps calling through membership changes; every completed call must be
/// exact over the members it reports.
fn survive(c: &mut Checker, iterations: usize, len: usize, pause: Duration) -> Result<(), ringcc::Error> {
    let rank = c.comm.rank();
    let mut members: Vec<usize> = (0..c.comm.world_size()).collect();
    // A restarted rank joins at a later call: it skips the calls it was not part of.
    let joined_at = c.comm.joined_at();
    let (mut retries, mut done) = (0usize, joined_at.unwrap_or(0) as usize);
    if let Some(k) = joined_at {
        println!("ringcheck: rank {rank}: joined the running job at call #{k}");
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < iterations && Instant::now() < deadline {
        // Sum and Avg alternate: Avg must divide by the members the report names.
        let op = if done % 2 == 0 { ReduceOp::Sum } else { ReduceOp::Avg };
        let mut v: Vec<f32> = (0..len).map(|i| value(op, rank, i + done) as f32).collect();
        match c.comm.all_reduce(&mut v, op) {
            Ok(report) => {
                if !report.joined.is_empty() {
                    println!("ringcheck: rank {rank}: call #{done} admitted {:?}", report.joined);
                }
                if report.members != members {
                    println!("ringcheck: rank {rank}: epoch {} members {:?}", report.epoch, report.members);
                    members = report.members.clone();
                }
                let bad = (0..len).filter(|&i| v[i] != reference::<f32>(op, &report.members, i + done)).count();
                if bad > 0 {
                    c.fail(format!("survive #{done}: {bad} wrong over members {:?}", report.members));
                }
                c.runs += 1;
                done += 1;
            }
            Err(
                e @ (ringcc::Error::PeerClosed { .. }
                | ringcc::Error::Interrupted { .. }
                | ringcc::Error::Protocol { .. }),
            ) => {
                retries += 1;
                eprintln!("ringcheck: rank {rank}: call #{done} failed ({e}); calling again");
                if retries > 100 {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(pause);
    }
    println!("ringcheck: rank {rank}: survived {done} collectives, {retries} retries, members {members:?}");
    Ok(())
}

fn run(args: &Args) -> Result<Checker, ringcc::Error> {
    let mut config = ringcc::Config::from_env()?;
    if let Some(s) = args.segment_bytes {
        config.segment_bytes = s;
    }
    if let Some(a) = &args.algo {
        use ringcc::core::collective::Algorithm;
        config.algorithm = Algorithm::from_name(a)
            .ok_or_else(|| ringcc::Error::Config(format!("--algo {a}: expected one of {}", Algorithm::names())))?;
    }
    if let Some(codec) = args.codec {
        config.codec = codec;
    }
    if let Some(level) = args.codec_level {
        config.codec_level = level;
    }
    let codec = config.codec;
    let comm = Communicator::connect(config)?;
    let mut c = Checker { comm, codec, wrong: 0, runs: 0 };
    if let Some(n) = args.survive {
        survive(&mut c, n, args.survive_len, Duration::from_millis(args.pause_ms))?;
        return Ok(c);
    }
    for &len in &args.lengths {
        c.every_dtype(len)?;
    }
    c.comm.barrier()?;
    c.runs += 1;
    if args.in_flight > 0 {
        c.in_flight(args.in_flight, 10_007)?;
    }
    if args.big_mib > 0 {
        let (took, ratio) = c.big(args.big_mib)?;
        if c.comm.rank() == 0 {
            println!(
                "ringcheck: {} MiB f32 all_reduce in {:.1} ms, codec {} ratio {ratio:.2}",
                args.big_mib,
                took.as_secs_f64() * 1e3,
                codec.name()
            );
        }
    }
    Ok(c)
}

fn main() -> ExitCode {
    ringcc::init_logging();
    let args = Args::parse();
    match run(&args) {
        Ok(c) if c.wrong == 0 => {
            let links = c.comm.local_stats().links;
            let lane = |f: fn(&ringcc::comm::LinkStats) -> u64| links.iter().map(f).sum::<u64>();
            println!(
                "ringcheck: rank {}: bytes sent {}, through lanes: sent {} received {}",
                c.comm.rank(),
                lane(|l| l.bytes_sent),
                lane(|l| l.lane_bytes_sent),
                lane(|l| l.lane_bytes_received)
            );
            println!("ringcheck: rank {} of {}: {} collectives, all exact", c.comm.rank(), c.comm.world_size(), c.runs);
            ExitCode::SUCCESS
        }
        Ok(c) => {
            eprintln!("ringcheck: rank {}: {} of {} collectives WRONG", c.comm.rank(), c.wrong, c.runs);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringcheck: {e}");
            ExitCode::FAILURE
        }
    }
}
