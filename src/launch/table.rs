//! The process table: one slot per rank, holding where it runs, which incarnation of it
//! is alive, and how each incarnation ended.
//!
//! The table is plain data (no I/O). The supervisor writes it; the failure policy reads it
//! to decide what happens next. An elastic mode restarts a rank by bumping its
//! `incarnation` and `restarts` and starting it again in the same slot; exits reported
//! for an older incarnation are then recognised as stale.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::Rank;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl Outcome {
    /// Whether this counts as success (exit code 0).
    pub(crate) fn is_success(self) -> bool {
        self == Outcome::Code(0)
    }

    /// The status a shell would report: the code, or 128 + the signal number.
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            Outcome::Code(c) => c,
            Outcome::Signal(s) => 128 + s,
        }
    }

    /// "exit code 3" or "killed by signal SIGKILL".
    pub(crate) fn describe(self) -> String {
        match self {
            Outcome::Code(c) => format!("exited with code {c}"),
            Outcome::Signal(s) => format!("killed by signal {}", super::sys::signal_name(s)),
        }
    }
}

/// Where a rank is in its life.
#[derive(Debug)]
pub(crate) enum RankState {
    /// Not started yet (or, in an elastic mode, waiting to be restarted).
    Pending,
    /// Its current incarnation runs. `child` is kept unreaped until the job ends so that
    /// `pid`, which is also its process group id, cannot be reused while ringrun may still
    /// signal that group.
    Running {
        /// The local process: the rank itself, or the `--rsh` process for a remote rank.
        child: Child,
        /// Its pid and process group id.
        pid: u32,
        /// When it was started.
        started: Instant,
    },
    /// Its current incarnation ended; the zombie is still held in `child`.
    Ended {
        /// The local process, ended but not yet reaped.
        child: Child,
        /// Its pid and process group id.
        pid: u32,
        /// How it ended.
        outcome: Outcome,
        /// How long it ran.
        ran_for: Duration,
    },
}

/// What ringrun knows about one rank.
#[derive(Debug)]
pub(crate) struct RankSlot {
    /// The rank.
    pub(crate) rank: Rank,
    /// Index of its host in the placement's host list.
    pub(crate) host: usize,
    /// Its rank among the ranks of its host.
    pub(crate) local_rank: usize,
    /// Incarnation of the process in this slot; 0 for the first start, +1 per restart.
    pub(crate) incarnation: u64,
    /// How many times this rank has been restarted.
    pub(crate) restarts: u32,
    /// Where it is in its life.
    pub(crate) state: RankState,
}

impl RankSlot {
    /// The pid (= process group id) of its current or last incarnation, if it was started.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.state {
            RankState::Pending => None,
            RankState::Running { pid, .. } | RankState::Ended { pid, .. } => Some(*pid),
        }
    }

    /// How its current incarnation ended and after how long, if it has.
    pub(crate) fn ended(&self) -> Option<(Outcome, Duration)> {
        match &self.state {
            RankState::Ended { outcome, ran_for, .. } => Some((*outcome, *ran_for)),
            _ => None,
        }
    }

    /// "rank 3 (pid 812)", with the incarnation when it was restarted.
    pub(crate) fn label(&self) -> String {
        let mut label = format!("rank {}", self.rank);
        if let Some(pid) = self.pid() {
            label.push_str(&format!(" (pid {pid})"));
        }
        if self.restarts > 0 {
            label.push_str(&format!(" incarnation {} after {} restart(s)", self.incarnation, self.restarts));
        }
        label
    }

    /// Whether its current incarnation is running.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.state, RankState::Running { .. })
    }
}

/// The process table of a job: slot `r` describes rank `r`.
#[derive(Debug)]
pub(crate) struct ProcessTable {
    slots: Vec<RankSlot>,
    /// Ended incarnations of restarted ranks, unreaped (their pids pin their groups).
    retired: Vec<(Child, u32)>,
}

impl ProcessTable {
    /// A table of pending ranks, with `placement[r] = (host index, local rank)`.
    pub(crate) fn new(placement: &[(usize, usize)]) -> ProcessTable {
        let slots = placement
            .iter()
            .enumerate()
            .map(|(rank, &(host, local_rank))| RankSlot {
                rank,
                host,
                local_rank,
                incarnation: 0,
                restarts: 0,
                state: RankState::Pending,
            })
            .collect();
        ProcessTable { slots, retired: Vec::new() }
    }

    /// The slot of `rank`, if it is in the job.
    pub(crate) fn slot(&self, rank: Rank) -> Option<&RankSlot> {
        self.slots.get(rank)
    }

    /// Records that `child` now runs the current incarnation of `rank`.
    pub(crate) fn set_running(&mut self, rank: Rank, child: Child, started: Instant) {
        if let Some(slot) = self.slots.get_mut(rank) {
            let pid = child.id();
            slot.state = RankState::Running { child, pid, started };
        }
    }

    /// Records that `incarnation` of `rank` ended with `outcome`. Returns false (and
    /// changes nothing) for a stale report: an older incarnation, or one not running.
    pub(crate) fn set_ended(&mut self, rank: Rank, incarnation: u64, outcome: Outcome) -> bool {
        let Some(slot) = self.slots.get_mut(rank) else { return false };
        if slot.incarnation != incarnation || !slot.is_running() {
            return false;
        }
        let state = std::mem::replace(&mut slot.state, RankState::Pending);
        slot.state = match state {
            RankState::Running { child, pid, started } => {
                RankState::Ended { child, pid, outcome, ran_for: started.elapsed() }
            }
            other => other,
        };
        true
    }

    /// Makes `rank`'s ended incarnation retired and its slot pending again for the next
    /// incarnation (one more restart).
    pub(crate) fn restart(&mut self, rank: Rank) {
        let Some(slot) = self.slots.get_mut(rank) else { return };
        if let RankState::Ended { child, pid, .. } = std::mem::replace(&mut slot.state, RankState::Pending) {
            self.retired.push((child, pid));
        }
        slot.incarnation += 1;
        slot.restarts += 1;
    }

    /// How many ranks are running.
    pub(crate) fn running_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_running()).count()
    }

    /// Whether every rank was started and has ended.
    pub(crate) fn all_ended(&self) -> bool {
        self.slots.iter().all(|s| matches!(s.state, RankState::Ended { .. }))
    }

    /// Process groups of every started rank, running or ended (an ended rank's group may
    /// still hold processes it left behind).
    pub(crate) fn groups(&self) -> Vec<u32> {
        self.slots.iter().filter_map(RankSlot::pid).chain(self.retired.iter().map(|(_, pid)| *pid)).collect()
    }

    /// Reaps every ended process (their zombies were kept to pin the group ids). Call only
    /// after the last signal to their groups.
    pub(crate) fn reap_ended(&mut self) {
        for slot in &mut self.slots {
            if let RankState::Ended { child, .. } = &mut slot.state {
                // The process has ended, so this returns at once.
                let _ = child.wait();
            }
        }
        for (child, _) in &mut self.retired {
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_shell_statuses_and_describe_themselves() {
        assert_eq!(Outcome::Code(3).exit_code(), 3);
        assert_eq!(Outcome::Signal(9).exit_code(), 137);
        assert_eq!(Outcome::Signal(9).describe(), "killed by signal SIGKILL");
        assert_eq!(Outcome::Code(3).describe(), "exited with code 3");
        assert!(Outcome::Code(0).is_success());
        assert!(!Outcome::Signal(15).is_success());
    }

    #[test]
    fn stale_and_unknown_exit_reports_change_nothing() {
        let mut table = ProcessTable::new(&[(0, 0), (0, 1)]);
        assert!(!table.set_ended(0, 0, Outcome::Code(1)), "not running yet");
        assert!(!table.set_ended(5, 0, Outcome::Code(1)), "no such rank");
        let child = std::process::Command::new("true").spawn().expect("spawn true");
        table.set_running(1, child, Instant::now());
        assert_eq!(table.running_count(), 1);
        assert!(!table.set_ended(1, 1, Outcome::Code(0)), "future incarnation");
        assert!(table.set_ended(1, 0, Outcome::Code(0)));
        assert!(!table.set_ended(1, 0, Outcome::Code(0)), "reported twice");
        assert!(!table.all_ended());
        assert_eq!(table.groups().len(), 1);
        let slot = table.slot(1).expect("slot");
        assert_eq!(slot.ended().map(|(o, _)| o), Some(Outcome::Code(0)));
        assert!(slot.label().starts_with("rank 1 (pid "));
        table.reap_ended();
    }
}
