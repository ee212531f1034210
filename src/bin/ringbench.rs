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
//! Rank 0 prints the table (and writes `--json`); the other ranks print only errors. The
//! exit status is non-zero on any failed collective or any wrong element.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringcc::bench::json::{self, Machine, RunInfo};
use ringcc::bench::{run, table, Options, Row, Settings};
use ringcc::{Communicator, Config};

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

fn write_json(opts: &Options, config: &Config, rows: &[Row], wrong_total: u64, avg_busbw: f64) -> Result<(), String> {
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
        git_rev: json::git_revision(),
        date: json::now_utc(),
        machine: Machine::detect(),
    };
    std::fs::write(path, json::render(&info, rows, wrong_total, avg_busbw))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn main() -> ExitCode {
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
    let data = match opts.data.as_deref().map(|p| ringcc::bench::data::DataFile::read(p, opts.dtype)).transpose() {
        Ok(d) => d.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("ringbench: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
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
        print_flush(table::HEADER);
    }
    let settings = Settings {
        coll: opts.coll,
        dtype: opts.dtype,
        op: opts.op,
        sizes,
        iters: opts.iters,
        warmup_iters: opts.warmup_iters,
        check: opts.check == 1 && data.is_none(),
        rounding: config.codec.rounding(),
        data,
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
    let mut status = ExitCode::SUCCESS;
    if lead {
        print_flush(&table::footer(wrong_total, avg_busbw));
        if let Err(e) = write_json(&opts, &config, &rows, wrong_total, avg_busbw) {
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
