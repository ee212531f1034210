//! `ringbench`: the nccl-tests-style benchmark of ringcc's collectives.
//!
//! Run it under the launcher, which sets `RINGCC_RANK`, `RINGCC_WORLD_SIZE` and
//! `RINGCC_COORDINATOR` for every rank:
//!
//! ```text
//! ringrun -n 4 ringbench -b 4K -e 256M -f 4 -n 20 -w 5 -c 1 [--dtype f32] [--op sum]
//!     [--codec raw|zstd|shuffle+zstd|bf16|f16|bf16+zstd|auto|auto+bf16] [--codec-level N] [--algo auto|ring|bidir] [--coll all_reduce|reduce_scatter|all_gather|broadcast]
//!     [--json FILE] [--segment-bytes N] [--data FILE]
//! ```
//!
//! `--data FILE` fills the buffers from a file of raw little-endian f32 (or f16/bf16 with
//! `--dtype`) values, such as saved gradients (`benches/data/grads.f32`), so codecs are
//! measured on real data; each rank starts at its own offset in the file.
//!
//! Rank 0 prints the table (and writes `--json`); the other ranks print only errors. The
//! exit status is non-zero on any failed collective or any wrong element.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ringcc::bench::data::DataFile;
use ringcc::bench::json::{self, Machine, RunInfo};
use ringcc::bench::memory;
use ringcc::bench::{run, table, Options, Row, Settings};
use ringcc::{Communicator, Config, Stats};

/// Exit status for bad flags (as clap uses).
const EXIT_USAGE: u8 = 2;

/// The environment's configuration with the flags' overrides applied.
fn configure(opts: &Options) -> Result<Config, String> {
    let mut config = Config::from_env().map_err(|e| e.to_string())?;
    config.algorithm = opts.algo;
    if let Some(codec) = opts.codec {
        config.codec = codec;
    }
    if let Some(level) = opts.codec_level {
        config.codec_level = level;
    }
    if let Some(n) = opts.segment_bytes {
        config.segment_bytes =
            usize::try_from(n).map_err(|_| format!("--segment-bytes {n} does not fit this machine"))?;
    }
    Ok(config)
}

fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) must not stop the ranks mid-collective.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn write_json(
    opts: &Options,
    config: &Config,
    rows: &[Row],
    wrong_total: u64,
    avg_busbw: f64,
    stats: Option<&Stats>,
    peak_rss_bytes: Option<u64>,
) -> Result<(), String> {
    let Some(path) = &opts.json else { return Ok(()) };
    let redop = if opts.coll.reduces() { opts.op.name() } else { "none" };
    let info = RunInfo {
        label: opts.label.clone().unwrap_or_else(|| {
            format!("ringcc {} algo {}, {} ranks", opts.coll.name(), opts.algo.name(), config.world_size)
        }),
        collective: opts.coll.name().into(),
        ranks: config.world_size,
        dtype: opts.dtype.name().into(),
        op: redop.into(),
        codec: config.codec.name().into(),
        algorithm: opts.algo.name().into(),
        segment_bytes: config.segment_bytes,
        iters: opts.iters,
        warmup_iters: opts.warmup_iters,
        check: opts.check == 1,
        data: opts.data.as_ref().map(|p| p.display().to_string()),
        git_rev: json::git_revision(),
        date: json::now_utc(),
        machine: Machine::detect(),
        peak_rss_bytes,
    };
    std::fs::write(path, json::render(&info, rows, wrong_total, avg_busbw, stats))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The comment line after the footer: the straggler, or the spread of idle time.
fn straggler_line(s: &Stats) -> String {
    if let Some(g) = &s.straggler {
        return format!("# Straggler            : rank {}: {}", g.rank, g.evidence);
    }
    let idle: Vec<f64> = s.ranks.iter().map(|r| 100.0 * r.idle_fraction()).collect();
    let lo = idle.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = idle.iter().copied().fold(0.0, f64::max);
    if idle.is_empty() {
        "# Straggler            : none".into()
    } else {
        format!("# Straggler            : none (ranks idle {lo:.0}-{hi:.0}% of collective time)")
    }
}

/// The largest peak resident memory over ranks (a collective call every rank makes), or
/// `None` if any rank cannot tell or the exchange fails.
fn peak_rss_over_ranks(comm: &Communicator) -> Option<u64> {
    let own = memory::peak_rss_bytes();
    // [peak, unknown]: the max of each tells the largest peak and whether any rank lacks one.
    let mut v = [own.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)), i64::from(own.is_none())];
    if let Err(e) = comm.all_reduce(&mut v, ringcc::ReduceOp::Max) {
        eprintln!("ringbench: rank {}: exchanging peak memory: {e}", comm.rank());
        return None;
    }
    if v[1] != 0 {
        return None;
    }
    u64::try_from(v[0]).ok()
}

fn main() -> ExitCode {
    ringcc::init_logging();
    let opts = Options::parse();
    let sizes = match opts.validate().and_then(|()| opts.sizes()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringbench: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match configure(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbench: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let data = match &opts.data {
        Some(path) => {
            match DataFile::read(path, opts.dtype, config.codec.rounding().unwrap_or(ringcc::codec::Codec::Raw)) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    eprintln!("ringbench: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        None => None,
    };
    let rank = config.rank;
    let comm = match Communicator::connect(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbench: rank {rank}: cannot join the ring: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lead = rank == 0;
    if lead {
        let redop = if opts.coll.reduces() { opts.op.name() } else { "none" };
        let (coll, dtype) = (opts.coll.name(), opts.dtype.name());
        let (codec, algo) = (config.codec.name(), opts.algo.name());
        print_flush(&table::title(coll, comm.world_size(), dtype, redop, codec, algo, config.segment_bytes));
        if let Some(d) = &data {
            print_flush(&format!(
                "# data: {} ({} {dtype} elements; each rank reads from its own offset, wrapping round)",
                d.name,
                d.len_elems()
            ));
        }
        print_flush(table::HEADER);
    }
    let settings = Settings {
        coll: opts.coll,
        dtype: opts.dtype,
        op: opts.op,
        sizes,
        iters: opts.iters,
        warmup_iters: opts.warmup_iters,
        check: opts.check == 1,
        data,
        rounding: config.codec.rounding(),
    };
    let rows = match run(&comm, &settings, &mut |row| {
        if lead {
            print_flush(&table::format_row(row));
        }
    }) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("ringbench: rank {rank}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every rank holds the same totals: wrong counts were summed over ranks.
    let wrong_total: u64 = rows.iter().filter_map(|r| r.wrong).sum();
    let avg_busbw =
        if rows.is_empty() { 0.0 } else { rows.iter().map(|r| r.busbw_gbs).sum::<f64>() / rows.len() as f64 };
    // Every rank's waiting over the run, and the straggler if one held the ring back.
    let stats = match comm.stats() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("ringbench: rank {rank}: exchanging statistics: {e}");
            None
        }
    };
    // Read after the last timed call (the exchange itself allocates nothing that matters).
    let peak_rss = peak_rss_over_ranks(&comm);
    let mut status = ExitCode::SUCCESS;
    if lead {
        print_flush(&table::footer(wrong_total, avg_busbw));
        if let Some(s) = &stats {
            print_flush(&straggler_line(s));
        }
        let size_max = rows.iter().map(|r| r.size_bytes).max().unwrap_or(0);
        print_flush(&memory::footer_line(peak_rss, size_max));
        if let Err(e) = write_json(&opts, &config, &rows, wrong_total, avg_busbw, stats.as_ref(), peak_rss) {
            eprintln!("ringbench: rank {rank}: {e}");
            status = ExitCode::FAILURE;
        }
    }
    drop(comm);
    if wrong_total > 0 {
        ExitCode::FAILURE
    } else {
        status
    }
}
