//! One round: a coordinator in this process, `world` rank processes, and faults injected
//! one at a time (each after the previous one's recovery, at a random moment) until
//! `min_world` ranks are left; then the survivors finish their calls.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ringcc::coord::{Server, ServerOptions};
use ringcc::sim::SimRng;

use crate::capture::{Captured, CoordEvent};
use crate::procs::{now_us, Launch, Line, Ranks, Signal};

/// What a round injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: the throughput reference.
    Baseline,
    /// `kill -9` of a random member.
    Kill,
    /// `kill -STOP` of a random member, SIGCONT once the others recovered.
    Stop,
}

/// Settings shared by every round.
pub struct Settings<'a> {
    /// This binary (ranks run its `rank` subcommand).
    pub program: &'a Path,
    /// Elements (f32) per all-reduce.
    pub elems: usize,
    /// Heartbeat timeout of the coordinator and the ranks.
    pub heartbeat_timeout: Duration,
    /// Progress timeout of the ranks.
    pub progress_timeout: Duration,
    /// Where rank logs go.
    pub log_dir: &'a Path,
    /// Calls every rank completes before the first fault.
    pub warmup_calls: usize,
    /// Random wait, in milliseconds, between a recovery (or the warm-up) and the next fault.
    pub gap_ms: (u64, u64),
    /// Longest a round may take before it counts as a hang.
    pub round_limit: Duration,
    /// Calls the survivors run after the last fault's recovery.
    pub drain_calls: usize,
    /// Percent of kill -9 faults followed by the next one as soon as the coordinator has
    /// evicted the victim (within 10 ms, during the recovery) instead of after it.
    pub overlap_percent: u64,
}

/// One round to run.
pub struct Plan {
    /// Round number (for logs).
    pub round: usize,
    /// What to inject.
    pub mode: Mode,
    /// Ranks at the start.
    pub world: usize,
    /// The coordinator's `min_world`; faults stop when this many members are left.
    pub min_world: usize,
    /// All-reduces each rank runs at most (fault rounds end earlier: `drain_calls` after
    /// the last recovery).
    pub calls: usize,
}

/// One completed call on one rank.
#[derive(Debug, Clone)]
pub struct Done {
    /// Call index.
    pub idx: usize,
    /// Report epoch.
    pub epoch: u64,
    /// When the (last attempt of the) call started, microseconds since the Unix epoch.
    pub start_us: u64,
    /// When it returned.
    pub end_us: u64,
    /// Report members.
    pub members: Vec<usize>,
    /// Elements that differ from the reference.
    pub wrong: usize,
}

/// One injected fault and what it took to get over it.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What was sent.
    pub signal: Signal,
    /// To whom.
    pub victim: usize,
    /// Members just before it.
    pub world: usize,
    /// When.
    pub signal_us: u64,
    /// Signal to the coordinator's eviction of the victim.
    pub detect_us: Option<u64>,
    /// Signal to the first call in the new epoch having returned on every survivor.
    pub recover_us: Option<u64>,
    /// SIGCONT to the resumed victim's `end evicted` (Stop only).
    pub resume_evicted_us: Option<u64>,
    /// The next fault came during this one's recovery (its recovery time is not measured).
    pub overlapped: bool,
}

/// Everything a round observed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Completed calls, by rank (victims included, up to their end).
    pub dones: BTreeMap<usize, Vec<Done>>,
    /// Ranks that were never signalled.
    pub survivors: Vec<usize>,
    /// Faults injected.
    pub faults: Vec<Fault>,
    /// Errors returned to ranks that were never signalled: `rank: line`.
    pub survivor_errors: Vec<String>,
    /// Ranks evicted although never signalled, with the coordinator's reason (a rank that
    /// ended its calls and exited is removed too: that is not counted).
    pub over_evicted: Vec<(usize, String)>,
    /// Waits that ran out (a hang), with what was awaited.
    pub hangs: Vec<String>,
    /// Other broken promises (e.g. a resumed rank that did not get `Evicted`).
    pub problems: Vec<String>,
    /// Interrupted calls finished with their result, and redone (decided before the round
    /// drains).
    pub finished: usize,
    /// See `finished`.
    pub redone: usize,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Warmup,
    Wait { at_us: u64 },
    AwaitEviction { deadline_us: u64 },
    AwaitRecovery { epoch: u64, deadline_us: u64 },
    AwaitResumed { cont_us: u64 },
    Drain,
}

#[derive(Default)]
struct RankState {
    ended: Option<String>,
    eof: bool,
    signalled: bool,
}

struct Round<'a> {
    plan: &'a Plan,
    settings: &'a Settings<'a>,
    rng: &'a mut SimRng,
    ranks: Ranks,
    state: Vec<RankState>,
    events: Vec<(u64, CoordEvent)>,
    out: Outcome,
    step: Step,
    last_progress_us: u64,
    /// Evictions of ranks never signalled (sorted out in `reap`).
    evicted: Vec<(usize, String)>,
}

/// Runs one round to its end (bounded by timeouts on every wait).
///
/// # Errors
/// Failures to start the coordinator or the ranks.
pub fn run(plan: &Plan, settings: &Settings<'_>, rng: &mut SimRng, captured: &Captured) -> std::io::Result<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut options = ServerOptions::new(plan.world, 0xC4A0 + plan.round as u64, Duration::from_secs(30));
    options.heartbeat_timeout = settings.heartbeat_timeout;
    options.min_world = plan.min_world;
    let server = Server::start(listener, options)?;
    captured.drain();
    let (tx, rx) = crossbeam_channel::unbounded();
    let launch = Launch {
        program: settings.program,
        args: vec![
            "rank".into(),
            "--calls".into(),
            plan.calls.to_string(),
            "--elems".into(),
            settings.elems.to_string(),
        ],
        coordinator: server.local_addr().to_string(),
        world: plan.world,
        heartbeat_timeout_s: settings.heartbeat_timeout.as_secs_f64(),
        progress_timeout_s: settings.progress_timeout.as_secs_f64(),
        log_dir: settings.log_dir,
        round: plan.round,
    };
    let ranks = Ranks::spawn(&launch, &tx)?;
    drop(tx);
    let mut round = Round {
        plan,
        settings,
        rng,
        ranks,
        state: (0..plan.world).map(|_| RankState::default()).collect(),
        events: Vec::new(),
        out: Outcome::default(),
        step: Step::Warmup,
        last_progress_us: now_us(),
        evicted: Vec::new(),
    };
    round.drive(&rx, captured);
    round.reap();
    let mut out = round.out;
    out.survivors = (0..plan.world).filter(|r| !round.state[*r].signalled).collect();
    drop(round.ranks);
    drop(server);
    Ok(out)
}

impl Round<'_> {
    /// The longest any rank may go without a completed call before the round is a hang:
    /// a frozen rank is detected within the heartbeat timeout, a stuck one within the
    /// progress timeout, and recovery is expected well within 10 s more.
    fn hang_limit_us(&self) -> u64 {
        let s = self.settings;
        (s.heartbeat_timeout + s.progress_timeout + Duration::from_secs(10)).as_micros() as u64
    }

    fn drive(&mut self, rx: &Receiver<Line>, captured: &Captured) {
        let give_up_us = now_us() + self.settings.round_limit.as_micros() as u64;
        loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok((rank, line)) => self.handle_line(rank, line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for (t, e) in captured.drain() {
                self.handle_event(t, e);
            }
            if self.state.iter().all(|s| s.eof) {
                return;
            }
            let now = now_us();
            if now > give_up_us {
                self.out.hangs.push(format!("round not over after {:?} ({:?})", self.settings.round_limit, self.step));
                return;
            }
            if now.saturating_sub(self.last_progress_us) > self.hang_limit_us() {
                let limit = Duration::from_micros(self.hang_limit_us());
                self.out.hangs.push(format!("no call completed on any rank for {limit:?} ({:?})", self.step));
                return;
            }
            if let Err(hang) = self.advance(now) {
                self.out.hangs.push(hang);
                return;
            }
        }
    }

    fn handle_line(&mut self, rank: usize, line: Option<String>) {
        let Some(line) = line else {
            self.state[rank].eof = true;
            return;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("done") => match parse_done(&words) {
                Some(d) => {
                    if d.wrong > 0 {
                        self.out.problems.push(format!("rank {rank}: WRONG result: {line}"));
                    }
                    self.last_progress_us = now_us();
                    self.out.dones.entry(rank).or_default().push(d);
                }
                None => self.out.problems.push(format!("rank {rank}: unreadable line {line:?}")),
            },
            Some("err") if !self.state[rank].signalled => self.out.survivor_errors.push(format!("rank {rank}: {line}")),
            Some("end") => self.state[rank].ended = words.get(1).map(|w| (*w).to_string()),
            _ => {}
        }
    }

    fn handle_event(&mut self, t: u64, e: CoordEvent) {
        match &e {
            CoordEvent::Evicted { rank, reason, .. } if self.state.get(*rank).is_some_and(|s| !s.signalled) => {
                self.evicted.push((*rank, reason.clone()));
            }
            // Once the round drains, ranks that ran out of calls leave and each departure
            // is a view change with a decision on a call nobody runs: not counted.
            CoordEvent::Decision { .. } if matches!(self.step, Step::Drain) => {}
            CoordEvent::Decision { finish: true, .. } => self.out.finished += 1,
            CoordEvent::Decision { finish: false, .. } => self.out.redone += 1,
            _ => {}
        }
        self.events.push((t, e));
    }

    /// Ranks still expected to complete calls: never signalled and not ended.
    fn running(&self) -> Vec<usize> {
        (0..self.state.len()).filter(|&r| !self.state[r].signalled && self.state[r].ended.is_none()).collect()
    }

    fn calls_done(&self, rank: usize) -> usize {
        self.out.dones.get(&rank).map_or(0, Vec::len)
    }

    fn gap_us(&mut self) -> u64 {
        let (lo, hi) = self.settings.gap_ms;
        (lo + self.rng.below(hi.saturating_sub(lo) + 1)) * 1000
    }

    /// Moves the fault schedule on. `Err` names what a timed-out wait was for.
    fn advance(&mut self, now: u64) -> Result<(), String> {
        match self.step {
            Step::Warmup => {
                let running = self.running();
                if self.plan.mode == Mode::Baseline {
                    self.step = Step::Drain;
                } else if !running.is_empty()
                    && running.iter().all(|&r| self.calls_done(r) >= self.settings.warmup_calls)
                {
                    self.step = Step::Wait { at_us: now + self.gap_us() };
                }
            }
            Step::Wait { at_us } if now >= at_us => self.inject(now)?,
            Step::AwaitEviction { deadline_us } => self.await_eviction(now, deadline_us)?,
            Step::AwaitRecovery { epoch, deadline_us } => self.await_recovery(now, epoch, deadline_us)?,
            Step::AwaitResumed { cont_us } => self.await_resumed(now, cont_us)?,
            Step::Wait { .. } | Step::Drain => {}
        }
        Ok(())
    }

    /// Signals a random running rank, unless faults are over: `min_world` reached, or too
    /// few calls left for a recovery to show.
    fn inject(&mut self, now: u64) -> Result<(), String> {
        let running = self.running();
        let progress = running.iter().map(|&r| self.calls_done(r)).max().unwrap_or(0);
        if running.len() <= self.plan.min_world || progress + 2 * self.settings.drain_calls > self.plan.calls {
            // Every call index seen so far is below `progress`; no rank can be more than a
            // call or two ahead of what the driver has read.
            self.ranks.announce_stop(progress + self.settings.drain_calls);
            self.step = Step::Drain;
            return Ok(());
        }
        let victim = running[self.rng.index(running.len())];
        let signal = if self.plan.mode == Mode::Stop { Signal::Stop } else { Signal::Kill };
        let signal_us = self.ranks.signal(victim, signal).map_err(|e| format!("signalling rank {victim}: {e}"))?;
        self.state[victim].signalled = true;
        let world = running.len();
        let fault = Fault {
            signal,
            victim,
            world,
            signal_us,
            detect_us: None,
            recover_us: None,
            resume_evicted_us: None,
            overlapped: false,
        };
        eprintln!("ringchaos: round {}: {signal:?} rank {victim} of {world} at call {progress}", self.plan.round);
        self.out.faults.push(fault);
        let wait = self.settings.heartbeat_timeout + Duration::from_secs(10);
        self.step = Step::AwaitEviction { deadline_us: now + wait.as_micros() as u64 };
        Ok(())
    }

    fn await_eviction(&mut self, now: u64, deadline_us: u64) -> Result<(), String> {
        let Some(fault) = self.out.faults.last_mut() else { return Err("no fault to wait for".into()) };
        let seen = self.events.iter().find_map(|(t, e)| match e {
            CoordEvent::Evicted { rank, epoch, .. } if *rank == fault.victim && *t >= fault.signal_us => {
                Some((*t, *epoch))
            }
            _ => None,
        });
        if let Some((t, epoch)) = seen {
            fault.detect_us = Some(t.saturating_sub(fault.signal_us));
            let wait = self.settings.heartbeat_timeout + Duration::from_secs(20);
            self.step = Step::AwaitRecovery { epoch, deadline_us: now + wait.as_micros() as u64 };
            let more = self.running().len() > self.plan.min_world;
            if self.plan.mode == Mode::Kill && more && self.rng.percent(self.settings.overlap_percent) {
                if let Some(f) = self.out.faults.last_mut() {
                    f.overlapped = true;
                }
                self.step = Step::Wait { at_us: now + self.rng.below(10_000) };
            }
        } else if now > deadline_us {
            return Err(format!("the coordinator never evicted {:?} rank {}", fault.signal, fault.victim));
        }
        Ok(())
    }

    fn await_recovery(&mut self, now: u64, epoch: u64, deadline_us: u64) -> Result<(), String> {
        let Some(fault) = self.out.faults.last() else { return Err("no fault to wait for".into()) };
        let (victim, signal_us) = (fault.victim, fault.signal_us);
        let survivors: Vec<usize> = (0..self.state.len()).filter(|&r| !self.state[r].signalled).collect();
        let mut latest = Some(0u64);
        for &r in &survivors {
            let first =
                self.out.dones.get(&r).and_then(|d| d.iter().find(|d| d.epoch >= epoch && d.end_us > signal_us));
            match (first, &self.state[r].ended) {
                (Some(d), _) => latest = latest.map(|l| l.max(d.end_us)),
                // Ended without a call in the new epoch (evicted, or out of calls): not counted.
                (None, Some(_)) => {}
                (None, None) => latest = None,
            }
        }
        match latest {
            Some(end_us) => {
                if let Some(f) = self.out.faults.last_mut() {
                    f.recover_us = (end_us > 0).then(|| end_us.saturating_sub(signal_us));
                }
                if self.plan.mode == Mode::Stop {
                    let cont_us = self
                        .ranks
                        .signal(victim, Signal::Cont)
                        .map_err(|e| format!("SIGCONT to rank {victim}: {e}"))?;
                    self.step = Step::AwaitResumed { cont_us };
                } else {
                    self.step = Step::Wait { at_us: now + self.gap_us() };
                }
            }
            None if now > deadline_us => return Err(format!("survivors never completed a call in epoch {epoch}")),
            None => {}
        }
        Ok(())
    }

    fn await_resumed(&mut self, now: u64, cont_us: u64) -> Result<(), String> {
        let Some(fault) = self.out.faults.last_mut() else { return Err("no fault to wait for".into()) };
        let victim = fault.victim;
        match self.state[victim].ended.as_deref() {
            Some("evicted") => fault.resume_evicted_us = Some(now.saturating_sub(cont_us)),
            Some(other) => {
                self.out.problems.push(format!("resumed rank {victim} ended with {other:?}, not evicted"));
            }
            None if now.saturating_sub(cont_us) > 10_000_000 => {
                self.out.problems.push(format!("resumed rank {victim} did not end within 10 s of SIGCONT"));
                let _ = self.ranks.signal(victim, Signal::Kill);
            }
            None => return Ok(()),
        }
        self.step = Step::Wait { at_us: now + self.gap_us() };
        Ok(())
    }

    /// After the last line: every rank that ended `ok` must exit with status 0; evictions of
    /// ranks that did not end `ok` were over-evictions.
    fn reap(&mut self) {
        for (r, reason) in std::mem::take(&mut self.evicted) {
            if self.state[r].ended.as_deref() != Some("ok") {
                self.out.over_evicted.push((r, reason));
            }
        }
        for r in 0..self.state.len() {
            if self.state[r].ended.as_deref() == Some("ok") {
                match self.ranks.wait_exit(r, Duration::from_secs(10)) {
                    Ok(Some(0)) => {}
                    other => self.out.problems.push(format!("rank {r} printed `end ok` but exited {other:?}")),
                }
            } else if !self.state[r].signalled && self.out.hangs.is_empty() {
                let how = self.state[r].ended.clone().unwrap_or_else(|| "no end line".into());
                self.out.problems.push(format!("survivor rank {r} ended: {how}"));
            }
        }
    }
}

fn parse_done(words: &[&str]) -> Option<Done> {
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let members = words.get(5)?.split(',').map(|m| m.parse().ok()).collect::<Option<Vec<usize>>>()?;
    Some(Done {
        idx: usize::try_from(num(1)?).ok()?,
        epoch: num(2)?,
        start_us: num(3)?,
        end_us: num(4)?,
        members,
        wrong: usize::try_from(num(6)?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines_parse_and_bad_ones_do_not() {
        let line = "done 12 3 100 250 0,2,5 0";
        let d = parse_done(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!((d.idx, d.epoch, d.start_us, d.end_us, d.wrong), (12, 3, 100, 250, 0));
        assert_eq!(d.members, vec![0, 2, 5]);
        for bad in ["done 12 3 100 250 0,x 0", "done 12 3 100", "done -1 3 100 250 0 0"] {
            assert!(parse_done(&bad.split_whitespace().collect::<Vec<_>>()).is_none(), "{bad}");
        }
    }
}
