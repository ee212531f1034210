//! Figures of a chaos run: counts, detection and recovery percentiles, and throughput
//! while failing against the same calls without failures; printed as Markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use ringcc::core::joins::backoff;

use crate::procs::Signal;
use crate::round::{Fault, Mode, Outcome, Plan};

/// One call of a round, merged over the ranks that completed it.
struct Call {
    /// Members its report names.
    world: usize,
    /// Longest duration over the ranks, microseconds.
    took_us: u64,
    /// Latest return over the ranks.
    end_us: u64,
}

/// Calls of one round by index, over every rank's report.
fn calls(out: &Outcome) -> BTreeMap<usize, Call> {
    let mut by_idx: BTreeMap<usize, Call> = BTreeMap::new();
    for d in out.dones.values().flatten() {
        let c = by_idx.entry(d.idx).or_insert(Call { world: d.members.len(), took_us: 0, end_us: 0 });
        c.took_us = c.took_us.max(d.end_us.saturating_sub(d.start_us));
        c.end_us = c.end_us.max(d.end_us);
    }
    by_idx
}

/// Nearest-rank percentile of `xs` (`None` if empty).
pub fn percentile(xs: &[u64], p: f64) -> Option<u64> {
    let mut v = xs.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len().max(1)) - 1).copied()
}

/// Per world size: (period between consecutive returns, call duration), microseconds.
type Samples = BTreeMap<usize, (Vec<u64>, Vec<u64>)>;

fn samples<'a>(rounds: impl Iterator<Item = &'a Outcome>) -> Samples {
    let mut s = Samples::new();
    for out in rounds {
        let calls = calls(out);
        let mut prev: Option<u64> = None;
        for c in calls.values() {
            let e = s.entry(c.world).or_default();
            if let Some(p) = prev {
                e.0.push(c.end_us.saturating_sub(p));
            }
            e.1.push(c.took_us);
            prev = Some(c.end_us);
        }
    }
    s
}

/// Calls per second of one round from its second return to its last (the first call
/// includes connecting), and what the same calls would take at the baseline's median
/// period per world size.
fn round_rate(out: &Outcome, baseline: &Samples) -> Option<(f64, f64)> {
    let calls = calls(out);
    let ends: Vec<&Call> = calls.values().collect();
    let (first, last) = (ends.first()?, ends.last()?);
    let span_us = last.end_us.checked_sub(first.end_us).filter(|s| *s > 0)?;
    let n = ends.len() - 1;
    let expected_us: u64 =
        ends[1..].iter().filter_map(|c| baseline.get(&c.world).and_then(|b| percentile(&b.0, 50.0))).sum();
    Some((n as f64 * 1e6 / span_us as f64, n as f64 * 1e6 / expected_us.max(1) as f64))
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |u| format!("{:.0}", u as f64 / 1e3))
}

fn median_f(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len().saturating_sub(1) / 2).copied()
}

/// Everything the report needs about the run's settings.
pub struct Context {
    /// Bytes per all-reduce.
    pub bytes: usize,
    /// Heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Progress timeout (a rejoin slower than this one stalled).
    pub progress_timeout: Duration,
    /// The command line, for the header.
    pub command: String,
    /// What the command line means, for the header.
    pub settings: String,
    /// Machine and load, for the header.
    pub machine: String,
}

/// Counts over the rounds of one mode.
struct Counts {
    rounds: usize,
    calls: usize,
    checked: usize,
    wrong: usize,
    hangs: usize,
    errors: usize,
    over_evicted: usize,
    finished: usize,
    redone: usize,
}

fn counts(rounds: &[&(Plan, Outcome)]) -> Counts {
    let outs = || rounds.iter().map(|(_, o)| o);
    Counts {
        rounds: rounds.len(),
        calls: outs().map(|o| calls(o).len()).sum(),
        checked: outs().map(|o| o.dones.values().map(Vec::len).sum::<usize>()).sum(),
        wrong: outs().map(|o| o.dones.values().flatten().filter(|d| d.wrong > 0).count()).sum(),
        hangs: outs().map(|o| o.hangs.len()).sum(),
        errors: outs().map(|o| o.survivor_errors.len()).sum(),
        over_evicted: outs().map(|o| o.over_evicted.len()).sum(),
        finished: outs().map(|o| o.finished).sum(),
        redone: outs().map(|o| o.redone).sum(),
    }
}

/// The report (Markdown) and whether every must-hold figure held (no wrong result, no
/// hang).
pub fn report(ctx: &Context, rounds: &[(Plan, Outcome)]) -> (String, bool) {
    let of = |m: Mode| rounds.iter().filter(|(p, _)| p.mode == m).collect::<Vec<_>>();
    let (base, kill, stop) = (of(Mode::Baseline), of(Mode::Kill), of(Mode::Stop));
    let baseline = samples(base.iter().map(|(_, o)| o));
    let mut s = String::new();
    let _ = writeln!(s, "ringchaos: {}\n{}\n{}\n", ctx.command, ctx.settings, ctx.machine);
    let c = [counts(&base), counts(&kill), counts(&stop)];
    let _ = writeln!(s, "| | no failures | kill -9 | SIGSTOP |\n|---|---:|---:|---:|");
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Counts) -> String| {
        let _ = writeln!(s, "| {name} | {} | {} | {} |", f(&c[0]), f(&c[1]), f(&c[2]));
    };
    row(&mut s, "rounds", &|c| c.rounds.to_string());
    row(&mut s, "all-reduces completed", &|c| c.calls.to_string());
    row(&mut s, "results checked (calls x ranks)", &|c| c.checked.to_string());
    row(&mut s, "wrong results", &|c| c.wrong.to_string());
    row(&mut s, "hangs", &|c| c.hangs.to_string());
    row(&mut s, "errors returned to survivors", &|c| c.errors.to_string());
    row(&mut s, "healthy ranks evicted", &|c| c.over_evicted.to_string());
    row(&mut s, "interrupted calls finished / redone", &|c| format!("{} / {}", c.finished, c.redone));
    fault_rows(&mut s, ctx, &kill, &stop);
    throughput_rows(&mut s, ctx, &baseline, &kill, &stop);
    let ok = c.iter().all(|c| c.wrong == 0 && c.hangs == 0);
    for (p, o) in rounds {
        for line in o.hangs.iter().map(|h| format!("HANG: {h}")).chain(o.problems.iter().cloned()) {
            let _ = writeln!(s, "round {} ({:?}, world {}): {line}", p.round, p.mode, p.world);
        }
        for e in &o.survivor_errors {
            let _ = writeln!(s, "round {} ({:?}, world {}): survivor error: {e}", p.round, p.mode, p.world);
        }
        for (r, why) in &o.over_evicted {
            let _ = writeln!(s, "round {} ({:?}, world {}): healthy rank {r} evicted: {why}", p.round, p.mode, p.world);
        }
    }
    (s, ok)
}

fn fault_rows(s: &mut String, ctx: &Context, kill: &[&(Plan, Outcome)], stop: &[&(Plan, Outcome)]) {
    let faults = |rs: &[&(Plan, Outcome)], f: &dyn Fn(&crate::round::Fault) -> Option<u64>| -> Vec<u64> {
        rs.iter().flat_map(|(_, o)| o.faults.iter().filter_map(f)).collect()
    };
    let pair = |xs: &[u64]| format!("{} / {}", ms(percentile(xs, 50.0)), ms(percentile(xs, 99.0)));
    let (kd, sd) = (faults(kill, &|f| f.detect_us), faults(stop, &|f| f.detect_us));
    let (kr, sr) = (faults(kill, &|f| f.recover_us), faults(stop, &|f| f.recover_us));
    let injected = |rs: &[&(Plan, Outcome)]| rs.iter().map(|(_, o)| o.faults.len()).sum::<usize>();
    let _ = writeln!(s, "| faults injected | - | {} | {} |", injected(kill), injected(stop));
    let overlapped = kill.iter().flat_map(|(_, o)| &o.faults).filter(|f| f.overlapped).count();
    if overlapped > 0 {
        let _ = writeln!(
            s,
            "| faults followed by the next during their recovery (recovery not measured) | - | {overlapped} | - |"
        );
    }
    let _ = writeln!(s, "| detection p50 / p99 (ms), signal to eviction | - | {} | {} |", pair(&kd), pair(&sd));
    let _ = writeln!(
        s,
        "| recovery p50 / p99 (ms), signal to a new-epoch call on every survivor | - | {} | {} |",
        pair(&kr),
        pair(&sr)
    );
    let resumed: Vec<u64> = faults(stop, &|f| f.resume_evicted_us);
    let stops = stop.iter().flat_map(|(_, o)| &o.faults).filter(|f| f.signal == Signal::Stop).count();
    let _ = writeln!(
        s,
        "| resumed rank got `Evicted` (SIGCONT to its error, p50 ms) | - | - | {} of {stops} ({}) |",
        resumed.len(),
        ms(percentile(&resumed, 50.0))
    );
    join_rows(s, ctx, kill, stop);
    let goal = |xs: &[u64], limit: Duration| match percentile(xs, 99.0) {
        Some(p) if p <= limit.as_micros() as u64 => "met",
        Some(_) => "MISSED",
        None => "no samples",
    };
    let stop_goal = ctx.heartbeat_timeout + Duration::from_secs(1);
    let _ = writeln!(s, "\nGoals: recovery after kill -9 under 1 s p99: {} ({} ms); SIGSTOP detected within heartbeat timeout {:?} + 1 s p99: {} ({} ms).", goal(&kr, Duration::from_secs(1)), ms(percentile(&kr, 99.0)), ctx.heartbeat_timeout, goal(&sd, stop_goal), ms(percentile(&sd, 99.0)));
}

/// Restarts and rejoins: how many, how long (kill -9: from the kill, the restart being at
/// once; SIGSTOP: from the restart, after `Evicted`), split by whether the coordinator held
/// the join back (backoff for a rank evicted before in the round).
fn join_rows(s: &mut String, ctx: &Context, kill: &[&(Plan, Outcome)], stop: &[&(Plan, Outcome)]) {
    let all = |rs: &[&(Plan, Outcome)]| rs.iter().flat_map(|(_, o)| &o.faults).cloned().collect::<Vec<Fault>>();
    let (k, st) = (all(kill), all(stop));
    if k.iter().chain(&st).all(|f| f.restart_at_us.is_none()) {
        return;
    }
    let restarts = |fs: &[Fault]| fs.iter().filter(|f| f.restart_at_us.is_some()).count();
    let joins = |fs: &[Fault]| fs.iter().filter(|f| f.rejoined_at_us.is_some()).count();
    let reported = |fs: &[Fault]| fs.iter().filter(|f| f.join_reported).count();
    let _ = writeln!(s, "| victims restarted | - | {} | {} |", restarts(&k), restarts(&st));
    let _ = writeln!(
        s,
        "| joins completed (new incarnation completed a call) / named in a survivor's `Report::joined` | - | {} / {} | {} / {} |",
        joins(&k),
        reported(&k),
        joins(&st),
        reported(&st)
    );
    let took = |fs: &[Fault], first: bool, from_signal: bool| -> Vec<u64> {
        let fs = fs.iter().filter(|f| (f.prior_evictions == 0) == first);
        let since = |f: &Fault| if from_signal { Some(f.signal_us) } else { f.restart_at_us };
        fs.filter_map(|f| Some(f.rejoined_at_us?.saturating_sub(since(f)?))).collect()
    };
    let pair = |xs: &[u64]| format!("{} / {} ({})", ms(percentile(xs, 50.0)), ms(percentile(xs, 99.0)), xs.len());
    let _ = writeln!(
        s,
        "| rejoin p50 / p99 (ms) (samples), first eviction of the rank in the round: kill -9: kill to the new incarnation's first completed call; SIGSTOP: restart (after `Evicted`) to it | - | {} | {} |",
        pair(&took(&k, true, true)),
        pair(&took(&st, true, false))
    );
    let _ = writeln!(
        s,
        "| rejoin p50 / p99 (ms) (samples), ranks evicted before in the round (coordinator backoff 1 s, doubling) | - | {} | {} |",
        pair(&took(&k, false, true)),
        pair(&took(&st, false, false))
    );
    let limit_us = ctx.progress_timeout.as_micros() as u64;
    let stalled = |f: &Fault| match (f.restart_at_us, f.rejoined_at_us) {
        (Some(a), Some(b)) => b.saturating_sub(a) > backoff(f.prior_evictions + 1).as_micros() as u64 + limit_us,
        _ => false,
    };
    let _ = writeln!(
        s,
        "| rejoins slower than backoff + progress timeout {:?} (a stalled first call) | - | {} | {} |",
        ctx.progress_timeout,
        k.iter().filter(|f| stalled(f)).count(),
        st.iter().filter(|f| stalled(f)).count()
    );
    let recovered =
        |fs: &[Fault]| -> Vec<u64> { fs.iter().filter(|f| !stalled(f)).filter_map(|f| f.recover_us).collect() };
    let _ = writeln!(
        s,
        "| recovery p50 / p99 (ms) (samples) of the faults whose rejoin did not stall | - | {} | {} |",
        pair(&recovered(&k)),
        pair(&recovered(&st))
    );
}

fn throughput_rows(
    s: &mut String,
    ctx: &Context,
    baseline: &Samples,
    kill: &[&(Plan, Outcome)],
    stop: &[&(Plan, Outcome)],
) {
    let rates = |rs: &[&(Plan, Outcome)]| {
        let (got, want): (Vec<f64>, Vec<f64>) = rs.iter().filter_map(|(_, o)| round_rate(o, baseline)).unzip();
        (median_f(got), median_f(want))
    };
    let (k, st) = (rates(kill), rates(stop));
    let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    let _ = writeln!(s, "\nThroughput, whole rounds (all-reduces/s, median over rounds): kill -9 {} (the same calls without failures: {}), SIGSTOP {} (without failures: {}).\n", f(k.0), f(k.1), f(st.0), f(st.1));
    let _ = writeln!(s, "| members | no failures: all-reduces/s | busbw (GB/s) | kill -9 rounds: all-reduces/s | busbw (GB/s) | SIGSTOP rounds: all-reduces/s | busbw (GB/s) |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    let (ks, ss) = (samples(kill.iter().map(|(_, o)| o)), samples(stop.iter().map(|(_, o)| o)));
    let worlds: std::collections::BTreeSet<usize> =
        baseline.keys().chain(ks.keys()).chain(ss.keys()).copied().collect();
    for n in worlds.into_iter().rev() {
        let cell = |m: &Samples| match m.get(&n) {
            Some((period, took)) => {
                let rate = percentile(period, 50.0).map_or("-".into(), |p| format!("{:.1}", 1e6 / p.max(1) as f64));
                let busbw = percentile(took, 50.0).map_or("-".into(), |t| {
                    let algbw = ctx.bytes as f64 / (t.max(1) as f64 * 1e3);
                    format!("{:.3}", algbw * 2.0 * (n as f64 - 1.0) / n as f64)
                });
                format!("{rate} | {busbw}")
            }
            None => "- | -".into(),
        };
        let _ = writeln!(s, "| {n} | {} | {} | {} |", cell(baseline), cell(&ks), cell(&ss));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50));
        assert_eq!(percentile(&xs, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
