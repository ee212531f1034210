//! ringchaos: the chaos benchmark. Ranks over 127.0.0.1 loop on all-reduces, each result
//! checked exactly against a reference over the members its report names, while ranks are
//! killed (`kill -9`) or frozen (`kill -STOP`, then SIGCONT: it must get `Evicted`) at
//! random moments, one at a time. Each victim is restarted with the next incarnation and
//! rejoins the running job (a kill -9 victim at once, a frozen one once it got `Evicted`);
//! its results are checked too, from its first call (`joined_at`) on. Rounds run at every
//! world size from `--world` down to `--min-world`. With `--no-restart`, victims stay out
//! and each round goes down to `--min-world` members. Reports collectives completed, wrong
//! results, hangs, errors on survivors, detection, recovery and rejoin times (p50, p99),
//! joins completed, and throughput while failing against the same calls without failures.
//!
//! Run: `scripts/chaos` (builds, then runs `target/release/ringchaos` with its flags).
//! Not in CI: it takes minutes and its timings depend on the machine's load.

mod capture;
mod procs;
mod rank;
mod round;
mod steps;
mod summary;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ringcc::sim::SimRng;

use round::{Mode, Outcome, Plan, Settings};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Chaos benchmark: all-reduces while ranks are killed and frozen",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Ranks of the largest rounds (4..=64).
    #[arg(long, default_value_t = 8)]
    world: usize,
    /// Ranks of the smallest rounds: rounds run at world sizes from --world down to this one
    /// in turn (with --no-restart: members left when a round stops injecting faults, and
    /// every fault round starts at --world). Also the coordinator's min_world (at most the
    /// round's world size - 1).
    #[arg(long, default_value_t = 4)]
    min_world: usize,
    /// Victims are not restarted (the behaviour before joins): a round goes on until
    /// --min-world members are left.
    #[arg(long)]
    no_restart: bool,
    /// All-reduces (over all kill -9 rounds) after which the kill rounds stop.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// SIGSTOP faults to inject (0: no SIGSTOP rounds).
    #[arg(long, default_value_t = 16)]
    stops: usize,
    /// All-reduces per fault round: faults stop when fewer than 20 are left (with
    /// --no-restart, also when --min-world members are left; the round ends 10 calls
    /// later).
    #[arg(long, default_value_t = 200)]
    round_calls: usize,
    /// All-reduces per baseline round (one round per world size, no faults).
    #[arg(long, default_value_t = 60)]
    baseline_calls: usize,
    /// MiB per all-reduce (f32).
    #[arg(long, default_value_t = 4)]
    mib: usize,
    /// KiB per all-reduce instead of --mib (1..=1024): small calls take the latency path
    /// and run without completion tokens.
    #[arg(long)]
    kib: Option<usize>,
    /// Heartbeat timeout in seconds (coordinator and ranks); the library default is 5.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_timeout: f64,
    /// Progress timeout in seconds (ranks).
    #[arg(long, default_value_t = 10.0)]
    progress_timeout: f64,
    /// Shortest random wait before a fault, in milliseconds (after warm-up or recovery).
    #[arg(long, default_value_t = 200)]
    gap_min_ms: u64,
    /// Longest random wait before a fault, in milliseconds.
    #[arg(long, default_value_t = 1200)]
    gap_max_ms: u64,
    /// Percent of kill -9 faults followed by the next kill during their recovery (within
    /// 10 ms of the eviction): views that follow each other closely (with --no-restart).
    #[arg(long, default_value_t = 0)]
    overlap_percent: u64,
    /// Seed of the fault schedule (victims and waits); random if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// No round starts after this many seconds.
    #[arg(long, default_value_t = 900)]
    time_limit: u64,
    /// Rank logs (`rank<R>.log`, RINGCC_LOG applies) and `faults.csv` go here.
    #[arg(long, default_value = "target/chaos")]
    log_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One rank (started by the driver, with RINGCC_* in the environment).
    Rank {
        /// All-reduces to run.
        #[arg(long)]
        calls: usize,
        /// f32 elements per all-reduce.
        #[arg(long)]
        elems: usize,
    },
}

fn check(args: &Args) -> Result<(), String> {
    let ok = (4..=64).contains(&args.world)
        && (2..=args.world).contains(&args.min_world)
        && (!args.no_restart || args.min_world < args.world)
        && (1..=100_000).contains(&args.calls)
        && args.stops <= 1000
        && (40..=100_000).contains(&args.round_calls)
        && (3..=100_000).contains(&args.baseline_calls)
        && (1..=1024).contains(&args.mib)
        && args.kib.is_none_or(|k| (1..=1024).contains(&k))
        && (0.1..=60.0).contains(&args.heartbeat_timeout)
        && (0.1..=600.0).contains(&args.progress_timeout)
        && args.overlap_percent <= 100
        && (args.no_restart || args.overlap_percent == 0)
        && args.gap_min_ms <= args.gap_max_ms
        && args.gap_max_ms <= 60_000;
    if ok {
        Ok(())
    } else {
        Err("out of range: --world 4..=64, --min-world 2..=world (< world with --no-restart), --round-calls >= 40, --mib 1..=1024, \
             --heartbeat-timeout 0.1..=60, --overlap-percent 0..=100 (with --no-restart), --gap-min-ms <= --gap-max-ms <= 60000"
            .into())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Rank { calls, elems }) = args.cmd {
        ringcc::init_logging();
        return ExitCode::from(rank::run(calls, elems) as u8);
    }
    if let Err(e) = check(&args) {
        eprintln!("ringchaos: {e}");
        return ExitCode::from(2);
    }
    match drive(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ringchaos: {e}");
            ExitCode::from(2)
        }
    }
}

fn drive(args: &Args) -> std::io::Result<bool> {
    let captured = capture::install();
    let program = std::env::current_exe()?;
    std::fs::create_dir_all(&args.log_dir)?;
    for r in 0..args.world {
        let _ = std::fs::remove_file(args.log_dir.join(format!("rank{r}.log")));
    }
    let seed = args.seed.unwrap_or_else(|| procs::now_us() ^ u64::from(std::process::id()));
    let mut rng = SimRng::new(seed);
    let settings = Settings {
        program: &program,
        elems: args.kib.map_or(args.mib << 20, |k| k << 10) / 4,
        heartbeat_timeout: Duration::from_secs_f64(args.heartbeat_timeout),
        progress_timeout: Duration::from_secs_f64(args.progress_timeout),
        log_dir: &args.log_dir,
        warmup_calls: 3,
        gap_ms: (args.gap_min_ms, args.gap_max_ms),
        round_limit: Duration::from_secs(300),
        drain_calls: 10,
        overlap_percent: args.overlap_percent,
        restart: !args.no_restart,
    };
    let rounds = run_rounds(args, &settings, &mut rng, &captured)?;
    write_faults_csv(args, &rounds)?;
    let ctx = summary::Context {
        bytes: settings.elems * 4,
        heartbeat_timeout: settings.heartbeat_timeout,
        progress_timeout: settings.progress_timeout,
        command: command_line(args.seed.is_none(), seed),
        settings: format!(
            "{}, {} KiB f32 all-reduces (Sum and Avg alternating), heartbeat timeout \
             {:?} (heartbeats every 500 ms), progress timeout {:?}, one fault at a time {}-{} ms after the \
             warm-up or the previous {}{}",
            if args.no_restart {
                format!("no restarts: {} ranks down to {} per fault round", args.world, args.min_world)
            } else {
                format!(
                    "victims restarted (next incarnation) and rejoining: rounds of {} calls at {} down to {} ranks in turn",
                    args.round_calls, args.world, args.min_world
                )
            },
            settings.elems * 4 / 1024,
            settings.heartbeat_timeout,
            settings.progress_timeout,
            args.gap_min_ms,
            args.gap_max_ms,
            if args.no_restart { "recovery" } else { "rejoin" },
            if args.overlap_percent > 0 {
                format!(" ({}% of kills followed by the next within 10 ms of the eviction)", args.overlap_percent)
            } else {
                String::new()
            }
        ),
        machine: machine(),
    };
    let (text, ok) = summary::report(&ctx, &rounds);
    println!("{text}");
    Ok(ok)
}

/// Rounds in cycles, so that slow drift of a shared machine's load hits every kind alike:
/// a baseline round, a kill -9 round while kill rounds have run fewer than `--calls`
/// all-reduces, a SIGSTOP round while fewer than `--stops` were injected. World sizes go
/// from `--world` down to `--min-world` in turn (fault rounds with `--no-restart` always
/// start at `--world`). Every world size gets at least one baseline round.
fn run_rounds(
    args: &Args,
    settings: &Settings<'_>,
    rng: &mut SimRng,
    captured: &capture::Captured,
) -> std::io::Result<Vec<(Plan, Outcome)>> {
    let started = Instant::now();
    let time_left = || started.elapsed() < Duration::from_secs(args.time_limit);
    let mut rounds: Vec<(Plan, Outcome)> = Vec::new();
    let mut run = |mode: Mode, world: usize, faults_max: usize, rounds: &mut Vec<(Plan, Outcome)>| {
        let calls = if mode == Mode::Baseline { args.baseline_calls } else { args.round_calls };
        let min_world = if args.no_restart { args.min_world } else { args.min_world.min(world - 1) };
        let plan = Plan { round: rounds.len(), mode, world, min_world, calls, faults_max };
        eprintln!("ringchaos: round {} {mode:?}, {world} ranks", plan.round);
        let out = round::run(&plan, settings, rng, captured)?;
        rounds.push((plan, out));
        std::io::Result::Ok(())
    };
    let kill_calls = |rounds: &[(Plan, Outcome)]| -> usize {
        let kills = rounds.iter().filter(|(p, _)| p.mode == Mode::Kill);
        kills.map(|(_, o)| o.dones.values().flatten().map(|d| d.idx + 1).max().unwrap_or(0)).sum()
    };
    let stops = |rounds: &[(Plan, Outcome)]| -> usize {
        rounds.iter().filter(|(p, _)| p.mode == Mode::Stop).map(|(_, o)| o.faults.len()).sum()
    };
    let sizes = args.world - args.min_world + 1;
    let mut cycle = 0;
    while time_left() {
        let (need_kill, need_stop) = (kill_calls(&rounds) < args.calls, stops(&rounds) < args.stops);
        if !need_kill && !need_stop && cycle >= sizes {
            break;
        }
        let world = args.world - cycle % sizes;
        run(Mode::Baseline, world, 0, &mut rounds)?;
        let fault_world = if args.no_restart { args.world } else { world };
        if need_kill && time_left() {
            run(Mode::Kill, fault_world, usize::MAX, &mut rounds)?;
        }
        if need_stop && time_left() {
            run(Mode::Stop, fault_world, args.stops - stops(&rounds), &mut rounds)?;
        }
        cycle += 1;
    }
    Ok(rounds)
}

/// One line per fault: round, signal, victim, members before, detection, recovery and
/// resume-to-`Evicted` times; with restarts the victim's earlier evictions in the round,
/// new incarnation, and times from the signal to its restart, its admission and its first
/// completed call, and the call it was admitted at. Times in microseconds (empty: not
/// observed).
fn write_faults_csv(args: &Args, rounds: &[(Plan, Outcome)]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(args.log_dir.join("faults.csv"))?;
    writeln!(
        f,
        "round,signal,victim,members,overlapped,detect_us,recover_us,resume_evicted_us,\
         prior_evictions,incarnation,restart_us,admitted_us,rejoin_us,start_seq,join_reported"
    )?;
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for (p, o) in rounds {
        for x in &o.faults {
            let (d, r, e) = (opt(x.detect_us), opt(x.recover_us), opt(x.resume_evicted_us));
            let since = |t: Option<u64>| opt(t.map(|t| t.saturating_sub(x.signal_us)));
            let (restart, rejoin) = (since(x.restart_at_us), since(x.rejoined_at_us));
            let (admitted, start_seq) = (since(x.admitted.map(|a| a.0)), opt(x.admitted.map(|a| a.1)));
            writeln!(
                f,
                "{},{:?},{},{},{},{d},{r},{e},{},{},{restart},{admitted},{rejoin},{start_seq},{}",
                p.round, x.signal, x.victim, x.world, x.overlapped, x.prior_evictions, x.incarnation, x.join_reported
            )?;
        }
    }
    Ok(())
}

/// This run's command line, with the seed it drew if none was given.
fn command_line(drawn: bool, seed: u64) -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if drawn {
        words.push(format!("--seed {seed}"));
    }
    words.join(" ")
}

/// Cores and load average, for the report header.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("machine: {cores} cores, load average {} at the end (shared machine)", load.join(" "))
}
