//! The data-parallel training loop: shard, step, average gradients with ringcc, check
//! that every rank holds the same weights.

use std::error::Error;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringcc::{Bucketer, Communicator, ReduceOp, Report};

use crate::data::{self, stream, Dataset, Rng, CLASSES, FEATURES};
use crate::model::{Mlp, Scratch};

/// Most epochs accepted (every loop in the program is bounded by the flags).
const EPOCHS_MAX: usize = 1000;
/// Largest per-rank batch and hidden layer accepted.
const WIDTH_MAX: usize = 4096;

/// Command-line flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Data-parallel MLP training on the 8x8 digits with ringcc")]
pub struct Options {
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Samples per step on each rank; a step's global batch is this times the world size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Hidden units.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Seed of the train/test split, the initial weights and the sample order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Average gradients with a Bucketer of buckets of this many MiB (fractions allowed,
    /// e.g. 0.004 for 4 KiB buckets), launched during the backward pass, instead of one
    /// all_reduce after it.
    #[arg(long, value_name = "MIB")]
    pub bucket_mib: Option<f64>,
    /// Write the averaged gradient buffer of every step to FILE (overwritten), as raw
    /// little-endian f32 in parameter order w1, b1, w2, b2 (rank 0 writes).
    #[arg(long, value_name = "FILE")]
    pub save_grads: Option<PathBuf>,
    /// Stop writing --save-grads before the file would exceed this many MiB (whole steps only).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub save_grads_max_mib: u64,
    /// Save only every STEPS-th step (the first, then every STEPS-th after it), so that a
    /// capped file samples the whole run rather than its first steps.
    #[arg(long, default_value_t = 1, value_name = "STEPS")]
    pub save_grads_every: usize,
    /// Save rank 0's own gradients before they are averaged (the buffer it hands to
    /// all_reduce, which is what the ring sends) instead of the averaged result.
    #[arg(long)]
    pub save_grads_local: bool,
    /// After every epoch, compare the ranks' statistics (`Communicator::stats`) and print
    /// each rank's idle share of collective time and the straggler, if one held the ring back.
    #[arg(long)]
    pub stats: bool,
}

impl Options {
    /// Refuses values outside the bounds that keep a run finite and meaningful.
    fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} {v} is outside 1..={max}"))
            }
        };
        in_range("epochs", self.epochs, EPOCHS_MAX)?;
        in_range("batch", self.batch, WIDTH_MAX)?;
        in_range("hidden", self.hidden, WIDTH_MAX)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("--momentum {} must be in [0, 1)", self.momentum));
        }
        in_range("save-grads-every", self.save_grads_every, EPOCHS_MAX * WIDTH_MAX)?;
        if self.save_grads_local && self.bucket_mib.is_some() {
            // The local gradients are the same either way; capture them without buckets.
            return Err("--save-grads-local cannot be combined with --bucket-mib".into());
        }
        match self.bucket_mib {
            Some(m) if !(m.is_finite() && m > 0.0) => Err(format!("--bucket-mib {m} must be positive")),
            _ => Ok(()),
        }
    }

    /// Bucket size in bytes, if the Bucketer is asked for.
    fn bucket_bytes(&self) -> Option<usize> {
        self.bucket_mib.map(|m| (m * f64::from(1u32 << 20)) as usize)
    }
}

/// What a finished run leaves behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Test accuracy after each epoch, in 0..=1.
    pub accuracy: Vec<f64>,
    /// [`Mlp::weights_hash`] of the final weights (checked equal on every rank).
    pub weights_hash: u64,
    /// Steps whose gradients were written to --save-grads.
    pub saved_steps: usize,
}

/// Appends the gradients of every `every`-th step to the --save-grads file until its cap:
/// the averaged ones, or with `local` the rank's own before averaging.
struct GradSaver {
    file: Option<BufWriter<File>>,
    written_bytes: u64,
    max_bytes: u64,
    steps: usize,
    every: usize,
    local: bool,
    /// Steps offered so far (saved or skipped).
    seen: usize,
}

impl GradSaver {
    fn new(path: Option<&PathBuf>, opts: &Options) -> std::io::Result<GradSaver> {
        let file = path.map(File::create).transpose()?.map(BufWriter::new);
        Ok(GradSaver {
            file,
            written_bytes: 0,
            max_bytes: opts.save_grads_max_mib.saturating_mul(1 << 20),
            steps: 0,
            every: opts.save_grads_every.max(1),
            local: opts.save_grads_local,
            seen: 0,
        })
    }

    /// Offers one step's gradients, `averaged` or not; saves them if this saver wants
    /// that kind and that step. Call it once per step for each kind.
    fn offer(&mut self, grads: &[f32], averaged: bool) -> std::io::Result<()> {
        if averaged == self.local {
            return Ok(());
        }
        let due = self.seen % self.every == 0;
        self.seen += 1;
        if due {
            self.save(grads)?;
        }
        Ok(())
    }

    fn save(&mut self, grads: &[f32]) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let step_bytes = 4 * grads.len() as u64;
        if self.written_bytes + step_bytes > self.max_bytes {
            file.flush()?;
            self.file = None;
            return Ok(());
        }
        for g in grads {
            file.write_all(&g.to_le_bytes())?;
        }
        self.written_bytes += step_bytes;
        self.steps += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<(usize, u64)> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok((self.steps, self.written_bytes))
    }
}

/// Computes this rank's gradients for `indices` and replaces them by their average over
/// the ranks: with one all_reduce after the backward pass, or bucket by bucket during it.
/// Returns the reports and the time this thread spent blocked on communication (all of
/// the all_reduce; only the final wait with buckets, whose reductions overlap the backward).
/// Without buckets the local gradients are offered to `saver` before averaging.
///
/// # Errors
/// The collective's error, or a --save-grads write error.
#[allow(clippy::too_many_arguments)]
fn backward_and_average(
    comm: &Communicator,
    mlp: &Mlp,
    shard: &Dataset,
    indices: &[usize],
    scratch: &mut Scratch,
    grads: &mut [f32],
    bucket_bytes: Option<usize>,
    saver: &mut GradSaver,
) -> Result<(Vec<Report>, Duration), Box<dyn Error>> {
    match bucket_bytes {
        None => {
            mlp.backward(shard, indices, scratch, grads, |_| {});
            saver.offer(grads, false)?;
            let waiting = Instant::now();
            let report = comm.all_reduce(grads, ReduceOp::Avg)?;
            Ok((vec![report], waiting.elapsed()))
        }
        Some(bytes) => {
            let mut bucketer = Bucketer::with_bucket_bytes(comm, ReduceOp::Avg, bytes);
            // `validate` refuses --save-grads-local here: the bucketer borrows the layers.
            mlp.backward(shard, indices, scratch, grads, |g| bucketer.push(g));
            let waiting = Instant::now();
            let reports = bucketer.finish()?;
            Ok((reports, waiting.elapsed()))
        }
    }
}

/// Fails unless every member's weights hash equals this rank's; returns the hash and the
/// number of ranks compared.
fn check_same_weights(comm: &Communicator, mlp: &Mlp) -> Result<(u64, usize), Box<dyn Error>> {
    let hash = mlp.weights_hash();
    let mut all = vec![0i64; comm.members().len()];
    // The hash travels as i64 bits; `as` round-trips them exactly.
    comm.all_gather(&[hash as i64], &mut all)?;
    if all.iter().any(|&h| h as u64 != hash) {
        let listed: Vec<String> = all.iter().map(|&h| format!("{:016x}", h as u64)).collect();
        let listed = listed.join(" ");
        return Err(format!("rank {}: weights differ across ranks; hashes by rank: {listed}", comm.rank()).into());
    }
    Ok((hash, all.len()))
}

/// Hands the training state to the ranks that just joined (`joined`, empty on the joiner's
/// side, which receives): the epoch to start, then weights and momentum, broadcast from the
/// lowest-ranked member that was already there. Every member and the joiners call it at the
/// same point. Returns the epoch.
fn share_state(comm: &Communicator, mlp: &mut Mlp, epoch: usize, joined: &[usize]) -> Result<usize, Box<dyn Error>> {
    let root = comm.members().into_iter().find(|r| !joined.contains(r)).ok_or("no member holds the model")?;
    let mut header = [epoch as i64];
    comm.broadcast(&mut header, root)?;
    for buf in mlp.state_mut() {
        comm.broadcast(buf, root)?;
    }
    usize::try_from(header[0]).map_err(|_| format!("epoch {} from rank {root}", header[0]).into())
}

/// Trains on this rank's shard of `all` with gradients averaged across `comm`; rank 0
/// writes one line per epoch to `out`.
///
/// Every rank must call this with the same data and options: each step is a collective.
///
/// # Errors
/// Invalid options, a failed collective, a --save-grads write error, or weights that
/// differ across ranks after an epoch.
pub fn train(
    comm: &Communicator,
    all: &Dataset,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Outcome, Box<dyn Error>> {
    opts.validate()?;
    let (rank, world) = (comm.rank(), comm.world_size());
    let (train_set, test_set) = data::split(all, opts.seed);
    let shard = data::shard(&train_set, rank, world);
    let mut mlp = Mlp::new(opts.hidden, opts.seed);
    // A restarted rank joins at an epoch's join point and gets the state there; the others
    // start from the same seed, and the broadcast makes the weights equal by construction.
    let mut first_epoch = 1;
    let joining = comm.joined_at().is_some();
    if joining {
        first_epoch = share_state(comm, &mut mlp, 0, &[rank])?;
        writeln!(out, "rank {rank}: rejoined the job at epoch {first_epoch}; received the model")?;
    } else {
        comm.broadcast(&mut mlp.params, 0)?;
    }
    let batch = opts.batch.min(shard.len()).max(1);
    let steps = shard.len().div_ceil(batch);
    let mut log = |line: String| if rank == 0 { writeln!(out, "{line}") } else { Ok(()) };
    log(format!(
        "ranks {world}: MLP {FEATURES}-{h}-{CLASSES}, {} parameters; train {} samples ({} per rank), test {}; \
         batch {batch} per rank, {steps} steps per epoch, gradients averaged by {}",
        mlp.layout.len(),
        train_set.len(),
        shard.len(),
        test_set.len(),
        opts.bucket_bytes().map_or("one all_reduce".into(), |b| format!("a Bucketer of {b}-byte buckets")),
        h = opts.hidden,
    ))?;
    let mut saver = GradSaver::new(opts.save_grads.as_ref().filter(|_| rank == 0), opts)?;
    let mut scratch = Scratch::default();
    let mut grads = vec![0.0f32; mlp.layout.len()];
    let mut accuracy = Vec::with_capacity(opts.epochs);
    let mut weights_hash = 0;
    let started = Instant::now();
    for epoch in first_epoch..=opts.epochs {
        // The join point of this epoch (the joiner already passed it).
        if !(joining && epoch == first_epoch) {
            let joined = comm.admit_joins()?;
            if !joined.is_empty() {
                share_state(comm, &mut mlp, epoch, &joined)?;
                log(format!("epoch {epoch:3}: rank(s) {joined:?} rejoined; sent them the model"))?;
            }
        }
        let mut order: Vec<usize> = (0..shard.len()).collect();
        Rng::new(opts.seed, stream::EPOCH_ORDER + ((epoch as u64) << 16) + rank as u64).shuffle(&mut order);
        let (mut loss_sum, mut comm_wait, mut calls) = (0.0f64, Duration::ZERO, 0usize);
        for indices in order.chunks(batch).take(steps) {
            loss_sum += mlp.forward(&shard, indices, &mut scratch);
            let bucket_bytes = opts.bucket_bytes();
            let (reports, waited) =
                backward_and_average(comm, &mlp, &shard, indices, &mut scratch, &mut grads, bucket_bytes, &mut saver)?;
            comm_wait += waited;
            calls += reports.len();
            saver.offer(&grads, true)?;
            mlp.step(&grads, opts.lr, opts.momentum);
        }
        let mut totals = [loss_sum, shard.len() as f64];
        comm.all_reduce(&mut totals, ReduceOp::Sum)?;
        let correct = mlp.correct(&test_set);
        accuracy.push(correct as f64 / test_set.len().max(1) as f64);
        let compared;
        (weights_hash, compared) = check_same_weights(comm, &mlp)?;
        log(format!(
            "epoch {epoch:3}/{}  loss {:.4}  test acc {:6.2}% ({correct}/{})  weights {weights_hash:016x} same on \
             {compared} ranks  {calls} gradient all_reduces, waited {:.1} ms  {:.2} s",
            opts.epochs,
            totals[0] / totals[1].max(1.0),
            100.0 * accuracy.last().copied().unwrap_or(0.0),
            test_set.len(),
            comm_wait.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64(),
        ))?;
        if opts.stats {
            // A collective like the others: every rank calls it at the same point.
            let stats = comm.stats()?;
            let idle: Vec<String> =
                stats.ranks.iter().map(|r| format!("{}: {:.0}%", r.rank, 100.0 * r.idle_fraction())).collect();
            let straggler = stats.straggler.as_ref().map_or_else(|| "none".into(), |s| s.evidence.clone());
            log(format!("stats: ranks idle (share of collective time) {}; straggler: {straggler}", idle.join(", ")))?;
        }
    }
    let (saved_steps, saved_bytes) = saver.finish()?;
    if let Some(path) = opts.save_grads.as_ref().filter(|_| rank == 0) {
        log(format!(
            "saved {saved_steps} steps (every {}) x {} f32 ({saved_bytes} bytes) of {} gradients to {}",
            opts.save_grads_every,
            grads.len(),
            if opts.save_grads_local { "rank 0's local" } else { "averaged" },
            path.display()
        ))?;
    }
    Ok(Outcome { accuracy, weights_hash, saved_steps })
}
