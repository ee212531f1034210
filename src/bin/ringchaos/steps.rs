//! The fault schedule of a round: wait a random gap, signal a random member, then wait for
//! the coordinator's eviction, the survivors' first call in the new view, (SIGSTOP) the
//! resumed victim's `Evicted`, and (with restarts) the restarted victim's first call, before
//! the next fault. Every wait has a deadline; a missed one is a hang.

use std::time::Duration;

use ringcc::core::joins::backoff;

use crate::capture::CoordEvent;
use crate::procs::Signal;
use crate::round::{Fault, Mode, RankState, Round, Step};

impl Round<'_> {
    fn gap_us(&mut self) -> u64 {
        let (lo, hi) = self.settings.gap_ms;
        (lo + self.rng.below(hi.saturating_sub(lo) + 1)) * 1000
    }

    /// Calls started so far (one past the highest call index any rank completed).
    fn progress(&self) -> usize {
        self.out.dones.values().flatten().map(|d| d.idx + 1).max().unwrap_or(0)
    }

    /// Moves the fault schedule on. `Err` names what a timed-out wait was for.
    pub(crate) fn advance(&mut self, now: u64) -> Result<(), String> {
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
            Step::AwaitRejoin { deadline_us } => self.await_rejoin(now, deadline_us)?,
            Step::Wait { .. } | Step::Drain => {}
        }
        Ok(())
    }

    /// Signals a random running rank, unless faults are over: the round's fault budget
    /// spent, `min_world` members left (without restarts, the end of a round; with them,
    /// only after a rank was lost otherwise, e.g. a healthy rank evicted: one more fault
    /// would be a quorum loss of the driver's making), or too few calls left for a recovery
    /// to show. A kill -9 victim is restarted at once when restarts are on.
    fn inject(&mut self, now: u64) -> Result<(), String> {
        let running = self.running();
        let progress = self.progress();
        if running.len() <= self.plan.min_world
            || self.out.faults.len() >= self.plan.faults_max
            || progress + 2 * self.settings.drain_calls > self.plan.calls
        {
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
        self.expected.insert(victim);
        let prior_evictions = self.state[victim].evictions;
        self.state[victim].evictions += 1;
        let fault = Fault {
            signal,
            victim,
            world: running.len(),
            signal_us,
            detect_us: None,
            recover_us: None,
            resume_evicted_us: None,
            overlapped: false,
            survivors: running.iter().copied().filter(|&r| r != victim).collect(),
            prior_evictions,
            incarnation: self.state[victim].inc + 1,
            restart_at_us: None,
            admitted: None,
            rejoined_at_us: None,
            join_reported: false,
        };
        eprintln!(
            "ringchaos: round {}: {signal:?} rank {victim} of {} at call {progress}",
            self.plan.round,
            running.len()
        );
        self.out.faults.push(fault);
        if signal == Signal::Kill && self.settings.restart {
            self.restart_victim()?;
        }
        let wait = self.settings.heartbeat_timeout + Duration::from_secs(10);
        self.step = Step::AwaitEviction { deadline_us: now + wait.as_micros() as u64 };
        Ok(())
    }

    /// Starts the last fault's victim again with the next incarnation; from now on its
    /// lines are the new process's.
    fn restart_victim(&mut self) -> Result<(), String> {
        let Some(fault) = self.out.faults.last_mut() else { return Err("no fault to restart for".into()) };
        let (victim, inc) = (fault.victim, fault.incarnation);
        let at = self.ranks.restart(victim, inc).map_err(|e| format!("restarting rank {victim}: {e}"))?;
        fault.restart_at_us = Some(at);
        let evictions = self.state[victim].evictions;
        self.state[victim] = RankState { inc, evictions, ..RankState::default() };
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
            let may_overlap = self.plan.mode == Mode::Kill && !self.settings.restart && more;
            if may_overlap && self.rng.percent(self.settings.overlap_percent) {
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
        let mut latest = Some(0u64);
        for &r in &fault.survivors {
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
                    self.after_recovery(now);
                }
            }
            None if now > deadline_us => return Err(format!("survivors never completed a call in epoch {epoch}")),
            None => {}
        }
        Ok(())
    }

    /// The last fault's victim is out and its rank recovered: wait for its rejoin (with
    /// restarts) or for the next fault.
    fn after_recovery(&mut self, now: u64) {
        let restarted = self.out.faults.last().and_then(|f| f.restart_at_us.map(|_| f.prior_evictions));
        match restarted {
            Some(prior) => {
                // The coordinator holds a join back by its backoff after the second eviction.
                let wait = backoff(prior + 1) + self.settings.heartbeat_timeout + Duration::from_secs(20);
                self.step = Step::AwaitRejoin { deadline_us: now + wait.as_micros() as u64 };
            }
            None => self.step = Step::Wait { at_us: now + self.gap_us() },
        }
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
        if self.settings.restart {
            self.restart_victim()?;
        }
        self.after_recovery(now);
        Ok(())
    }

    /// Waits for the restarted victim's first completed call (or its end: a joiner admitted
    /// after the round's last call has nothing to run).
    fn await_rejoin(&mut self, now: u64, deadline_us: u64) -> Result<(), String> {
        let Some(fault) = self.out.faults.last() else { return Err("no fault to wait for".into()) };
        let (victim, inc, since) = (fault.victim, fault.incarnation, fault.restart_at_us.unwrap_or(0));
        let first = self.out.dones.get(&victim).and_then(|ds| ds.iter().find(|d| d.inc == inc)).map(|d| d.end_us);
        let admitted = self.events.iter().find_map(|(t, e)| match e {
            CoordEvent::Admitted { start_seq, joined, .. } if joined.contains(&victim) && *t >= since => {
                Some((*t, *start_seq))
            }
            _ => None,
        });
        let ended = self.state[victim].ended.clone();
        match (first, ended) {
            (Some(end_us), _) => {
                if let Some(f) = self.out.faults.last_mut() {
                    f.rejoined_at_us = Some(end_us);
                    f.admitted = admitted;
                }
            }
            (None, Some(how)) if how == "ok" => {}
            (None, Some(how)) => {
                self.out.problems.push(format!("restarted rank {victim}.{inc} ended {how} before its first call"));
            }
            (None, None) if now > deadline_us => {
                return Err(format!("restarted rank {victim}.{inc} never completed a call (admitted: {admitted:?})"));
            }
            (None, None) => return Ok(()),
        }
        self.step = Step::Wait { at_us: now + self.gap_us() };
        Ok(())
    }
}
