//! A training step's collectives, timed: one gradient all-reduce of `--mib` MiB of f32 and
//! a one-float loss all-reduce, `--steps` times (after `--warmup`). Rank 0 prints the
//! median and p90 step time in milliseconds, and every rank checks its sums exactly.
//!
//! Training loops interleave large and tiny calls like this; it is what showed that
//! exact retry's backup buffer was reallocated after every small call (docs/BENCHMARKS.md,
//! "The backup buffer across small calls").
//!
//! Run: cargo build --release --examples &&
//!      target/release/ringrun -n 4 target/release/examples/step -- --mib 16
use std::time::Instant;

use ringcc::{Communicator, ReduceOp};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib = arg(&args, "--mib", 16).max(1);
    let steps = arg(&args, "--steps", 40).max(1);
    let warmup = arg(&args, "--warmup", 5);
    let comm = Communicator::from_env()?;
    let mut grads = vec![0f32; mib << 18];
    let mut times = Vec::with_capacity(steps);
    for step in 0..warmup + steps {
        grads.iter_mut().enumerate().for_each(|(i, g)| *g = (i % 7) as f32);
        let mut loss = [1.0f32];
        let t = Instant::now();
        let report = comm.all_reduce(&mut grads, ReduceOp::Sum)?;
        comm.all_reduce(&mut loss, ReduceOp::Sum)?;
        if step >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let n = report.members.len() as f32;
        if loss[0] != n || grads.iter().enumerate().any(|(i, &g)| g != (i % 7) as f32 * n) {
            return Err(format!("rank {}: step {step} sums are wrong", comm.rank()).into());
        }
    }
    times.sort_by(f64::total_cmp);
    if comm.rank() == 0 {
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!("{mib} MiB + 1 float per step, {steps} steps: p50 {:.2} ms, p90 {:.2} ms", at(0.5), at(0.9));
    }
    Ok(())
}
