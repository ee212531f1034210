//! The supervisor: starts every rank, waits for exits, signals, and the deadline, asks
//! the policy what to do, and stops the job (SIGTERM, grace period, SIGKILL).
//!
//! It runs on the main thread for the whole job: local ranks' death signal is tied to the
//! thread that spawned them. One small thread per rank blocks in `waitid` and reports the
//! exit on a channel without reaping, so process group ids stay reserved until the job
//! ends and signalling a rank's group can never hit an unrelated process.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::output::{self, OutputMode};
use super::plan::Plan;
use super::policy::{Decision, Policy, StopReason};
use super::spawn::{self, RankEnv, Site};
use super::sys;
use super::table::{Outcome, ProcessTable};
use crate::Rank;

/// Longest the supervisor sleeps before looking at received signals and the deadline.
const TICK: Duration = Duration::from_millis(50);

/// Time ranks get between the first signal (SIGTERM or the forwarded one) and SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_secs(3);

/// Time to wait for exits after SIGKILL (a process in uninterruptible sleep may linger).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Time to wait for output threads to drain the pipes after the last rank ended.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Stack size of a thread that waits for one rank, in bytes.
const WAITER_STACK_BYTES: usize = 64 << 10;

/// A rank's incarnation ended.
#[derive(Debug)]
struct Exited {
    rank: Rank,
    incarnation: u64,
    outcome: Result<Outcome, String>,
}

/// One job under supervision.
struct Supervisor<'a> {
    plan: &'a Plan,
    job_id: u64,
    coordinator: String,
    policy: Policy,
    table: ProcessTable,
    exits_tx: Sender<Exited>,
    exits_rx: Receiver<Exited>,
    pumps: Vec<JoinHandle<()>>,
}

/// Runs the job to its end and returns ringrun's exit status. `coordinator` is the
/// `host:port` ranks are told; the coordinator itself is hosted by the caller.
/// `on_timeout` runs when `--timeout` expires, before any rank is signalled (ringrun
/// prints the job's status then, to show where it hung).
///
/// Contract: call from the main thread, after [`sys::install_signal_handlers`].
pub(crate) fn run_job(plan: &Plan, job_id: u64, coordinator: String, on_timeout: &dyn Fn()) -> i32 {
    let (exits_tx, exits_rx) = crossbeam_channel::unbounded();
    let mut sup = Supervisor {
        plan,
        job_id,
        coordinator,
        policy: plan
            .elastic_min
            .map_or(Policy::AbortOnFailure, |min_np| Policy::Elastic { min_np, max_restarts: plan.max_restarts }),
        table: ProcessTable::new(&plan.placement),
        exits_tx,
        exits_rx,
        pumps: Vec::new(),
    };
    let started = Instant::now();
    let code = match sup.start_all() {
        Some(reason) => sup.stop(reason),
        None => sup.supervise(plan.timeout.map(|t| started + t), on_timeout),
    };
    sup.finish();
    code
}

impl Supervisor<'_> {
    /// Starts every rank in order; returns why the job must stop if it cannot go on.
    fn start_all(&mut self) -> Option<StopReason> {
        for rank in 0..self.plan.world_size() {
            if let Err(e) = self.start(rank) {
                say!("cannot start rank {rank}: {e}");
                return Some(StopReason::SpawnFailed { rank });
            }
            if let Some(signal) = sys::take_signal() {
                return Some(StopReason::Signalled(signal));
            }
        }
        None
    }

    /// Starts the current incarnation of `rank` and its waiter and output threads.
    fn start(&mut self, rank: Rank) -> Result<(), String> {
        let slot = self.table.slot(rank).ok_or("no such rank")?;
        let host = self.plan.hosts.get(slot.host).ok_or("no such host")?;
        let env = RankEnv {
            rank,
            world_size: self.plan.world_size(),
            local_rank: slot.local_rank,
            local_size: host.local_size,
            coordinator: self.coordinator.clone(),
            job_id: self.job_id,
            host: host.name.clone(),
            incarnation: slot.incarnation,
        };
        let incarnation = slot.incarnation;
        let (stdout, stderr) = self.plan.output.stdio(rank).map_err(|e| format!("output file: {e}"))?;
        let site = if host.local { Site::Local } else { Site::Remote(&host.name) };
        let shown = match site {
            Site::Local => self.plan.launch.program.display().to_string(),
            Site::Remote(h) => format!("{} {h}", self.plan.launch.rsh.join(" ")),
        };
        let bind = self.plan.machine_slot(slot.host, slot.local_rank);
        let mut child = spawn::start_rank(&self.plan.launch, site, &env, bind, (stdout, stderr))
            .map_err(|e| format!("{shown} on host {}: {e}", host.name))?;
        let pid = child.id();
        let (out, err) = (child.stdout.take(), child.stderr.take());
        self.table.set_running(rank, child, Instant::now());
        if self.plan.output == OutputMode::Tagged {
            let pumps = output::start_tagged_pumps(rank, out, err).map_err(|e| format!("output thread: {e}"))?;
            self.pumps.extend(pumps);
        }
        let tx = self.exits_tx.clone();
        std::thread::Builder::new()
            .name(format!("ringrun-wait-{rank}"))
            .stack_size(WAITER_STACK_BYTES)
            .spawn(move || {
                let outcome = sys::wait_exit_keep_zombie(pid).map_err(|e| e.to_string());
                // The supervisor outlives every waiter unless ringrun is exiting anyway.
                let _ = tx.send(Exited { rank, incarnation, outcome });
            })
            .map_err(|e| format!("waiter thread: {e}"))?;
        Ok(())
    }

    /// Waits for exits, signals and the deadline until the job finishes or must stop.
    fn supervise(&mut self, deadline: Option<Instant>, on_timeout: &dyn Fn()) -> i32 {
        loop {
            if let Some(signal) = sys::take_signal() {
                return self.stop(StopReason::Signalled(signal));
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => {
                    on_timeout();
                    return self.stop(StopReason::TimedOut(self.plan.timeout.unwrap_or_default()));
                }
                Some(d) => TICK.min(d - now),
                None => TICK,
            };
            match self.exits_rx.recv_timeout(wait) {
                Ok(exit) => match self.record(exit) {
                    Some(Decision::Finished) => return 0,
                    Some(Decision::Restart(rank)) => {
                        if let Some(reason) = self.restart(rank) {
                            return self.stop(reason);
                        }
                    }
                    Some(Decision::Stop(reason)) => return self.stop(reason),
                    Some(Decision::Continue) | None => {}
                },
                Err(RecvTimeoutError::Timeout) => {}
                // Unreachable while `self` holds a sender; treat as "nothing to wait for".
                Err(RecvTimeoutError::Disconnected) => return 1,
            }
        }
    }

    /// Records an exit in the table and asks the policy; None for a stale report.
    fn record(&mut self, exit: Exited) -> Option<Decision> {
        let outcome = exit.outcome.unwrap_or_else(|e| {
            say!("cannot wait for rank {}: {e}", exit.rank);
            Outcome::Code(1)
        });
        if !self.table.set_ended(exit.rank, exit.incarnation, outcome) {
            return None;
        }
        let decision = self.policy.on_rank_ended(&self.table, exit.rank);
        if matches!(decision, Decision::Restart(_)) {
            let label = self.table.slot(exit.rank).map_or_else(|| format!("rank {}", exit.rank), |s| s.label());
            say!("{label} {}", outcome.describe());
        }
        if decision == Decision::Continue && !outcome.is_success() {
            let left = self.table.running_count();
            say!("rank {} {}; the job goes on with {left} rank(s) (--elastic)", exit.rank, outcome.describe());
        }
        Some(decision)
    }

    /// Starts the next incarnation of a failed rank; returns why the job must stop if it
    /// cannot be started.
    fn restart(&mut self, rank: Rank) -> Option<StopReason> {
        self.table.restart(rank);
        let (n, max) = (self.table.slot(rank).map_or(0, |s| s.restarts), self.plan.max_restarts);
        say!("restarting rank {rank} (restart {n} of {max}); it rejoins the running ring");
        match self.start(rank) {
            Ok(()) => None,
            Err(e) => {
                say!("cannot restart rank {rank}: {e}");
                Some(StopReason::SpawnFailed { rank })
            }
        }
    }

    /// Says why the job stops, signals every rank's group, waits the grace period, kills
    /// what is left, and returns ringrun's exit status.
    fn stop(&mut self, reason: StopReason) -> i32 {
        say!("{}", self.describe(&reason));
        let first = reason.first_signal();
        self.signal_groups(first);
        let interrupted = self.wait_running(GRACE);
        let left = self.table.running_count();
        if left > 0 {
            let why = if interrupted { "another signal arrived".to_string() } else { format!("{GRACE:?} after") };
            say!("{left} rank(s) still running ({why} {}); sending SIGKILL", sys::signal_name(first));
            self.signal_groups(libc::SIGKILL);
            self.wait_running(KILL_WAIT);
        }
        reason.exit_code()
    }

    /// One line naming what happened, where, and what ringrun does about it.
    fn describe(&self, reason: &StopReason) -> String {
        let running = self.table.running_count();
        match reason {
            StopReason::RankFailed { rank, outcome } => {
                let slot = self.table.slot(*rank);
                let label = slot.map_or_else(|| format!("rank {rank}"), |s| s.label());
                let host = slot.and_then(|s| self.plan.hosts.get(s.host)).map_or("?", |h| h.name.as_str());
                let after = slot.and_then(|s| s.ended()).map_or(String::new(), |(_, t)| format!(" after {t:.1?}"));
                let then = if running > 0 { format!("; stopping the other {running} rank(s)") } else { String::new() };
                format!("{label} on host {host} {}{after}{then}", outcome.describe())
            }
            StopReason::Signalled(s) => {
                format!("received {}; forwarding it to {running} rank(s)", sys::signal_name(*s))
            }
            StopReason::TimedOut(t) => format!("--timeout of {t:?} expired; stopping {running} rank(s)"),
            StopReason::SpawnFailed { .. } => format!("stopping the {running} rank(s) already started"),
        }
    }

    /// Sends `signal` to the process group of every started rank, including ended ones
    /// (their groups may hold processes they left behind).
    fn signal_groups(&self, signal: i32) {
        for pgid in self.table.groups() {
            if let Err(e) = sys::signal_group(pgid, signal) {
                say!("cannot signal process group {pgid}: {e}");
            }
        }
    }

    /// Records exits until no rank runs or `limit` passes; returns true if a signal to
    /// ringrun cut the wait short.
    fn wait_running(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while self.table.running_count() > 0 {
            if sys::take_signal().is_some() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            match self.exits_rx.recv_timeout(TICK.min(end - now)) {
                Ok(exit) => {
                    let _ = self.record(exit);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        false
    }

    /// Ends the job: kills whatever is left in the ranks' groups, reaps the ranks, and
    /// lets the output threads drain (bounded by [`DRAIN_WAIT`]).
    fn finish(&mut self) {
        self.signal_groups(libc::SIGKILL);
        self.table.reap_ended();
        let end = Instant::now() + DRAIN_WAIT;
        while Instant::now() < end && !self.pumps.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for pump in self.pumps.drain(..) {
            if pump.is_finished() {
                let _ = pump.join();
            }
        }
    }
}
