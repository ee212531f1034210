//! Where the time of a small all-reduce goes, rank by rank.
//!
//! Runs `--iters` all-reduces of `--bytes` f32 bytes (after `--warmup`) and prints, per
//! rank, the medians of: the caller's wall time per call (`wall`), the time the call waited
//! before the event loop started it (`queued`: the hand-off to the loop thread), the time
//! from submission to completion on the loop (`total`), and `wall - total` (the hand-off
//! back to the caller). All times in microseconds.
//!
//! Run: cargo build --release --examples &&
//!      target/release/ringrun -n 4 target/release/examples/latency -- --bytes 4096
use std::time::{Duration, Instant};

use ringcc::{Communicator, ReduceOp};

fn median_us(v: &mut [Duration]) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), ringcc::Error> {
    let args: Vec<String> = std::env::args().collect();
    let bytes = arg(&args, "--bytes", 4096);
    let iters = arg(&args, "--iters", 2000).max(1);
    let warmup = arg(&args, "--warmup", 100);
    let comm = Communicator::from_env()?;
    let mut buf = vec![1.0f32; bytes / 4];
    for _ in 0..warmup {
        comm.all_reduce(&mut buf, ReduceOp::Sum)?;
    }
    comm.barrier()?;
    let (mut wall, mut queued, mut total, mut back) = (vec![], vec![], vec![], vec![]);
    let began = Instant::now();
    for _ in 0..iters {
        buf.iter_mut().for_each(|x| *x = 1.0);
        let t = Instant::now();
        let r = comm.all_reduce(&mut buf, ReduceOp::Sum)?;
        let w = t.elapsed();
        wall.push(w);
        queued.push(r.queued);
        total.push(r.total);
        back.push(w.saturating_sub(r.total));
    }
    let elapsed = began.elapsed();
    let cpu = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime + stime in clock ticks (fields 14 and 15).
    let ticks: u64 = cpu
        .rsplit(')')
        .next()
        .map_or(0, |s| s.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum());
    println!(
        "rank {} bytes {bytes} iters {iters}: wall {:.1} queued {:.1} total {:.1} back {:.1} us (medians); \
         mean {:.1} us/call; cpu {} ticks",
        comm.rank(),
        median_us(&mut wall),
        median_us(&mut queued),
        median_us(&mut total),
        median_us(&mut back),
        elapsed.as_secs_f64() * 1e6 / iters as f64,
        ticks
    );
    Ok(())
}
