//! One round: a coordinator in this process, `world` rank processes, and faults injected
//! one at a time (each after the previous one's recovery, at a random moment). With
//! restarts (the default), each victim is restarted with the next incarnation and rejoins
//! (the next fault waits for its first call), until the round's calls run out; without,
//! faults go on until `min_world` ranks are left. Then the ranks finish their calls. The
//! fault schedule is in `steps.rs`.

use std::collections::{BTreeMap, BTreeSet};
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
    /// evicted the victim (within 10 ms, during the recovery) instead of after it (without
    /// restarts only).
    pub overlap_percent: u64,
    /// Victims are restarted (next incarnation) and rejoin: kill -9 victims at once, frozen
    /// ones once they got `Evicted` after SIGCONT.
    pub restart: bool,
}

/// One round to run.
pub struct Plan {
    /// Round number (for logs).
    pub round: usize,
    /// What to inject.
    pub mode: Mode,
    /// Ranks at the start.
    pub world: usize,
    /// The coordinator's `min_world`; without restarts, faults stop when this many members
    /// are left.
    pub min_world: usize,
    /// All-reduces of the round: faults stop when fewer than `2 * drain_calls` are left, and
    /// every rank stops `drain_calls` later (without restarts a rank runs at most this many;
    /// with them, ranks may run longer while the last victim rejoins).
    pub calls: usize,
    /// Most faults to inject in this round.
    pub faults_max: usize,
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
    /// The report's sequence number (must equal `idx`).
    pub seq: u64,
    /// Ranks the report says joined since the previous call.
    pub joined: Vec<usize>,
    /// Incarnation of the process that completed it.
    pub inc: u64,
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
    /// Members other than the victim when it was signalled.
    pub survivors: Vec<usize>,
    /// Times the victim had been evicted before in this round (its rejoin waits for the
    /// coordinator's backoff from the second on).
    pub prior_evictions: u32,
    /// The restarted process's incarnation (restarts only).
    pub incarnation: u64,
    /// When it was started, microseconds since the Unix epoch.
    pub restart_at_us: Option<u64>,
    /// When the coordinator admitted it, and at which call.
    pub admitted: Option<(u64, u64)>,
    /// When it completed its first call (the rejoin).
    pub rejoined_at_us: Option<u64>,
    /// A survivor's report named it in `joined`.
    pub join_reported: bool,
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

/// Where the fault schedule is (see `steps.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Warmup,
    Wait { at_us: u64 },
    AwaitEviction { deadline_us: u64 },
    AwaitRecovery { epoch: u64, deadline_us: u64 },
    AwaitResumed { cont_us: u64 },
    AwaitRejoin { deadline_us: u64 },
    Drain,
}

/// The driver's view of one rank's current process.
#[derive(Default)]
pub(crate) struct RankState {
    /// Incarnation of the current process (older ones' lines only count for their results).
    pub inc: u64,
    /// Its `end` line's kind.
    pub ended: Option<String>,
    /// Its stdout ended.
    pub eof: bool,
    /// It was signalled.
    pub signalled: bool,
    /// Evictions of this rank in this round, expected ones (faults) included.
    pub evictions: u32,
}

pub(crate) struct Round<'a> {
    pub plan: &'a Plan,
    pub settings: &'a Settings<'a>,
    pub rng: &'a mut SimRng,
    pub ranks: Ranks<'a>,
    pub state: Vec<RankState>,
    pub events: Vec<(u64, CoordEvent)>,
    pub out: Outcome,
    pub step: Step,
    last_progress_us: u64,
    /// Evictions of ranks never signalled (sorted out in `reap`).
    evicted: Vec<(usize, String)>,
    /// Victims whose eviction has not been seen yet.
    pub expected: BTreeSet<usize>,
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
            // With restarts the round ends when the driver says so (after the last rejoin).
            if settings.restart { plan.calls * 4 } else { plan.calls }.to_string(),
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
    let ranks = Ranks::spawn(launch, tx)?;
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
        expected: BTreeSet::new(),
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
                Ok((rank, inc, line)) => self.handle_line(rank, inc, line),
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

    /// A line of `rank`'s process of incarnation `inc`. Results of replaced processes
    /// count (and are checked); nothing else of theirs does.
    fn handle_line(&mut self, rank: usize, inc: u64, line: Option<String>) {
        let current = self.state[rank].inc == inc;
        let Some(line) = line else {
            self.state[rank].eof |= current;
            return;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("done") => match parse_done(&words, inc) {
                Some(d) => {
                    if d.wrong > 0 {
                        self.out.problems.push(format!("rank {rank}.{inc}: WRONG result: {line}"));
                    }
                    if d.seq != d.idx as u64 {
                        self.out.problems.push(format!("rank {rank}.{inc}: call {} has seq {}: {line}", d.idx, d.seq));
                    }
                    self.last_progress_us = now_us();
                    self.out.dones.entry(rank).or_default().push(d);
                }
                None => self.out.problems.push(format!("rank {rank}: unreadable line {line:?}")),
            },
            _ if !current => {}
            Some("err") if !self.state[rank].signalled => {
                self.out.survivor_errors.push(format!("rank {rank}.{inc}: {line}"));
            }
            Some("end") => self.state[rank].ended = words.get(1).map(|w| (*w).to_string()),
            _ => {}
        }
    }

    fn handle_event(&mut self, t: u64, e: CoordEvent) {
        match &e {
            CoordEvent::Evicted { rank, .. } if self.expected.remove(rank) => {}
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

    /// Ranks still expected to complete calls: current process not signalled and not ended.
    pub fn running(&self) -> Vec<usize> {
        (0..self.state.len()).filter(|&r| !self.state[r].signalled && self.state[r].ended.is_none()).collect()
    }

    pub fn calls_done(&self, rank: usize) -> usize {
        self.out.dones.get(&rank).map_or(0, Vec::len)
    }

    /// After the last line: every rank that ended `ok` must exit with status 0; evictions of
    /// ranks that did not end `ok` were over-evictions.
    fn reap(&mut self) {
        let dones = &self.out.dones;
        for f in self.out.faults.iter_mut().filter(|f| f.rejoined_at_us.is_some()) {
            let named = |d: &&Done| d.joined.contains(&f.victim) && d.end_us > f.restart_at_us.unwrap_or(0);
            f.join_reported = f.survivors.iter().any(|r| dones.get(r).is_some_and(|ds| ds.iter().any(|d| named(&d))));
        }
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

fn parse_done(words: &[&str], inc: u64) -> Option<Done> {
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let list = |w: &str| w.split(',').map(|m| m.parse().ok()).collect::<Option<Vec<usize>>>();
    let members = list(words.get(5)?)?;
    let joined = match *words.get(8)? {
        "-" => Vec::new(),
        w => list(w)?,
    };
    Some(Done {
        idx: usize::try_from(num(1)?).ok()?,
        epoch: num(2)?,
        start_us: num(3)?,
        end_us: num(4)?,
        members,
        wrong: usize::try_from(num(6)?).ok()?,
        seq: num(7)?,
        joined,
        inc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_lines_parse_and_bad_ones_do_not() {
        let words = |l: &'static str| l.split_whitespace().collect::<Vec<_>>();
        let d = parse_done(&words("done 12 3 100 250 0,2,5 0 12 -"), 1).unwrap();
        assert_eq!((d.idx, d.epoch, d.start_us, d.end_us, d.wrong, d.seq, d.inc), (12, 3, 100, 250, 0, 12, 1));
        assert_eq!(d.members, vec![0, 2, 5]);
        assert!(d.joined.is_empty());
        let d = parse_done(&words("done 7 4 1 2 0,1 0 7 1,3"), 0).unwrap();
        assert_eq!(d.joined, vec![1, 3]);
        for bad in [
            "done 12 3 100 250 0,x 0 12 -",
            "done 12 3 100",
            "done -1 3 100 250 0 0 -1 -",
            "done 12 3 100 250 0 0 12",
            "done 12 3 100 250 0 0 12 x",
        ] {
            assert!(parse_done(&words(bad), 0).is_none(), "{bad}");
        }
    }
}
