//! Overlap of communication with the backward pass: step time with a `Bucketer` (each bucket
//! all-reduced as soon as its layers' gradients exist, while earlier layers are still being
//! computed) against one flat `all_reduce` after the whole backward pass, on synthetic layers.
//!
//! Run: cargo build --release --bin ringrun --example overlap &&
//!      target/release/ringrun -n 4 target/release/examples/overlap
//! Flags: --layers --layer-mib --passes --bucket-mib --steps (see --help).
//! `scripts/bench-overlap` runs it on loopback and on 1 Gbit/s links and reports the ratio.
//!
//! Each step computes the gradients of `--layers` layers, last layer first: `--passes`
//! passes of arithmetic over each layer's gradient buffer (memory traffic and flops in
//! proportion to its size, like a real backward pass). Four kinds of step run in rotation,
//! so drift on a shared machine hits them alike: `compute` (backward only), `all_reduce`
//! (the flat all-reduce only), `flat` (backward, then one all-reduce of every gradient) and
//! `bucketed` (backward with a Bucketer). A step's time is the slowest rank's. Rank 0 prints
//! the median per kind, the ratio flat / bucketed (above 1: overlap pays) and the bound on
//! it, (compute + all_reduce) / max(compute, all_reduce), that perfect overlap would reach.

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ringcc::{Bucketer, Communicator, ReduceOp};

/// Most layers, MiB per layer, passes and steps accepted: every loop stays bounded.
const LAYERS_MAX: usize = 1024;
const LAYER_MIB_MAX: f64 = 256.0;
const PASSES_MAX: usize = 1000;
const STEPS_MAX: usize = 1000;

/// The kinds of step, in the order of their columns.
const KINDS: [&str; 4] = ["compute", "all_reduce", "flat", "bucketed"];

#[derive(Debug, Clone, Parser)]
#[command(about = "Step time with a Bucketer (overlap) against one all_reduce after the backward pass")]
struct Options {
    /// Layers of the synthetic model.
    #[arg(long, default_value_t = 16)]
    layers: usize,
    /// Gradient size of each layer in MiB of f32 (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    layer_mib: f64,
    /// Arithmetic passes over each layer's gradients per backward (compute per step).
    #[arg(long, default_value_t = 8)]
    passes: usize,
    /// Bucket size of the Bucketer in MiB (PyTorch DDP uses 25).
    #[arg(long, default_value_t = 4.0)]
    bucket_mib: f64,
    /// Timed steps of each kind (after one untimed round).
    #[arg(long, default_value_t = 8)]
    steps: usize,
}

impl Options {
    fn validate(&self) -> Result<(), String> {
        let ok = (1..=LAYERS_MAX).contains(&self.layers)
            && (1..=PASSES_MAX).contains(&self.passes)
            && (1..=STEPS_MAX).contains(&self.steps)
            && self.layer_mib > 0.0
            && self.layer_mib <= LAYER_MIB_MAX
            && self.bucket_mib > 0.0;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "need 1..={LAYERS_MAX} layers, 0 < layer-mib <= {LAYER_MIB_MAX}, 1..={PASSES_MAX} passes, \
                 1..={STEPS_MAX} steps and bucket-mib > 0"
            ))
        }
    }

    fn layer_elems(&self) -> usize {
        ((self.layer_mib * f64::from(1u32 << 20)) as usize / 4).max(1)
    }
}

/// The backward pass of one layer: writes its gradients (a function of rank, layer and
/// position, so ranks differ), then `passes - 1` more passes of arithmetic over them.
fn backward_layer(grad: &mut [f32], rank: usize, layer: usize, passes: usize) {
    let base = (rank * 7 + layer * 13) as f32 * 1e-3;
    for (i, g) in grad.iter_mut().enumerate() {
        *g = base + (i % 1024) as f32 * 1e-6;
    }
    for _ in 1..passes {
        for g in grad.iter_mut() {
            *g = g.mul_add(0.999, 1e-7);
        }
    }
    std::hint::black_box(grad);
}

/// Runs one step of `kind` and returns its duration on this rank in seconds.
fn step(comm: &Communicator, opts: &Options, grads: &mut [f32], kind: &str) -> Result<f64, ringcc::Error> {
    let (rank, layer_elems) = (comm.rank(), opts.layer_elems());
    let start = Instant::now();
    match kind {
        "compute" | "flat" => {
            for (layer, g) in grads.chunks_mut(layer_elems).enumerate().rev() {
                backward_layer(g, rank, layer, opts.passes);
            }
            if kind == "flat" {
                comm.all_reduce(grads, ReduceOp::Avg)?;
            }
        }
        "all_reduce" => {
            comm.all_reduce(grads, ReduceOp::Avg)?;
        }
        _ => {
            let bucket_bytes = (opts.bucket_mib * f64::from(1u32 << 20)) as usize;
            let mut bucketer = Bucketer::with_bucket_bytes(comm, ReduceOp::Avg, bucket_bytes);
            for (layer, g) in grads.chunks_mut(layer_elems).enumerate().rev() {
                backward_layer(g, rank, layer, opts.passes);
                bucketer.push(g);
            }
            bucketer.finish()?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run() -> Result<(), Box<dyn Error>> {
    let opts = Options::parse();
    opts.validate()?;
    let comm = Communicator::from_env()?;
    let mut grads = vec![0.0f32; opts.layers * opts.layer_elems()];
    // One untimed round warms the pages, the connections and the allocator.
    for kind in KINDS {
        step(&comm, &opts, &mut grads, kind)?;
    }
    // times[k * steps + s]: step s of kind k; the order of kinds rotates every round.
    let mut times = vec![0.0f64; KINDS.len() * opts.steps];
    for s in 0..opts.steps {
        for j in 0..KINDS.len() {
            let k = (s + j) % KINDS.len();
            times[k * opts.steps + s] = step(&comm, &opts, &mut grads, KINDS[k])?;
        }
    }
    // A step takes as long as its slowest rank.
    comm.all_reduce(&mut times, ReduceOp::Max)?;
    if comm.rank() != 0 {
        return Ok(());
    }
    let ms: Vec<f64> = times.chunks(opts.steps).map(|t| 1e3 * median(t.to_vec())).collect();
    let (compute, reduce, flat, bucketed) = (ms[0], ms[1], ms[2], ms[3]);
    let total_mib = opts.layers as f64 * opts.layer_mib;
    println!(
        "overlap: {} ranks, {} layers x {} MiB = {total_mib} MiB of f32 gradients, {} passes, buckets of {} MiB, \
         {} steps per kind (median of the slowest rank)",
        comm.world_size(),
        opts.layers,
        opts.layer_mib,
        opts.passes,
        opts.bucket_mib,
        opts.steps
    );
    for (kind, t) in KINDS.iter().zip(&ms) {
        println!("  {kind:<10} {t:9.1} ms/step");
    }
    let ratio = flat / bucketed;
    let bound = (compute + reduce) / compute.max(reduce);
    println!(
        "  flat / bucketed = {ratio:.2} (overlap saves {:.0}% of the step); perfect overlap would give {bound:.2}",
        100.0 * (1.0 - bucketed / flat)
    );
    println!(
        "overlap-json {{\"ranks\": {}, \"layers\": {}, \"layer_mib\": {}, \"passes\": {}, \"bucket_mib\": {}, \
         \"steps\": {}, \"compute_ms\": {compute:.3}, \"all_reduce_ms\": {reduce:.3}, \"flat_ms\": {flat:.3}, \
         \"bucketed_ms\": {bucketed:.3}, \"ratio\": {ratio:.4}, \"bound\": {bound:.4}}}",
        comm.world_size(),
        opts.layers,
        opts.layer_mib,
        opts.passes,
        opts.bucket_mib,
        opts.steps
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlap: {e}");
            ExitCode::FAILURE
        }
    }
}
