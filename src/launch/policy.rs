//! The failure policy: what the job does when a rank ends, when ringrun is signalled and
//! when time runs out. Pure decisions over the process table; the supervisor acts on them.
//!
//! Two policies: mpirun's (the first rank that fails ends the job), and elastic
//! (`--elastic --min-np K --max-restarts R`: a failed rank is restarted while it has
//! restarts left (the new process rejoins the running ring); otherwise failures are
//! survived while at least K ranks run; the job ends when every remaining rank has ended,
//! successfully if they all did).

use std::time::Duration;

use super::table::{Outcome, ProcessTable};
use crate::Rank;

/// Exit status of ringrun when `--timeout` ends the job (as timeout(1)).
pub(crate) const TIMEOUT_EXIT_CODE: i32 = 124;

/// Exit status of ringrun when it could not start a rank.
pub(crate) const SPAWN_FAILED_EXIT_CODE: i32 = 1;

/// How the job reacts to failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Any rank that exits non-zero or by a signal ends the job (mpirun's default).
    AbortOnFailure,
    /// Failed ranks are restarted up to `max_restarts` times each; failures are survived
    /// while at least `min_np` ranks run.
    Elastic {
        /// `--min-np`.
        min_np: usize,
        /// `--max-restarts`.
        max_restarts: u32,
    },
}

/// What to do after a rank ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Keep supervising the ranks that still run.
    Continue,
    /// Every rank ended successfully.
    Finished,
    /// Start the rank again (its next incarnation).
    Restart(Rank),
    /// Stop the job for this reason.
    Stop(StopReason),
}

/// Why the job is being stopped before every rank finished on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// A rank failed.
    RankFailed {
        /// Which rank.
        rank: Rank,
        /// How it ended.
        outcome: Outcome,
    },
    /// ringrun received this signal; it is forwarded to the ranks.
    Signalled(i32),
    /// `--timeout` ran out.
    TimedOut(Duration),
    /// A rank could not be started.
    SpawnFailed {
        /// Which rank.
        rank: Rank,
    },
}

impl StopReason {
    /// The signal sent first to the ranks that still run.
    pub(crate) fn first_signal(&self) -> i32 {
        match self {
            StopReason::Signalled(s) => *s,
            _ => libc::SIGTERM,
        }
    }

    /// ringrun's exit status for this stop.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            StopReason::RankFailed { outcome, .. } => outcome.exit_code(),
            StopReason::Signalled(s) => 128 + s,
            StopReason::TimedOut(_) => TIMEOUT_EXIT_CODE,
            StopReason::SpawnFailed { .. } => SPAWN_FAILED_EXIT_CODE,
        }
    }
}

impl Policy {
    /// Decides after the end of `rank`'s current incarnation was recorded in `table`.
    pub(crate) fn on_rank_ended(self, table: &ProcessTable, rank: Rank) -> Decision {
        let Some((outcome, _)) = table.slot(rank).and_then(|s| s.ended()) else { return Decision::Continue };
        match self {
            Policy::AbortOnFailure if !outcome.is_success() => Decision::Stop(StopReason::RankFailed { rank, outcome }),
            Policy::AbortOnFailure if table.all_ended() => Decision::Finished,
            Policy::AbortOnFailure => Decision::Continue,
            Policy::Elastic { max_restarts, .. }
                if !outcome.is_success() && table.slot(rank).is_some_and(|s| s.restarts < max_restarts) =>
            {
                Decision::Restart(rank)
            }
            Policy::Elastic { min_np, .. } if !outcome.is_success() && table.running_count() < min_np => {
                Decision::Stop(StopReason::RankFailed { rank, outcome })
            }
            Policy::Elastic { .. } if table.all_ended() => {
                // The survivors decide: the job succeeded if the last ranks all did.
                if outcome.is_success() {
                    Decision::Finished
                } else {
                    Decision::Stop(StopReason::RankFailed { rank, outcome })
                }
            }
            Policy::Elastic { .. } => Decision::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    #[test]
    fn first_failure_stops_the_job_with_its_status() {
        let mut table = ProcessTable::new(&[(0, 0), (0, 1)]);
        let child = Command::new("true").spawn().expect("spawn true");
        table.set_running(1, child, Instant::now());
        assert!(table.set_ended(1, 0, Outcome::Signal(libc::SIGKILL)));
        let d = Policy::AbortOnFailure.on_rank_ended(&table, 1);
        table.reap_ended();
        let Decision::Stop(reason) = d else { panic!("expected a stop, got {d:?}") };
        assert_eq!(reason, StopReason::RankFailed { rank: 1, outcome: Outcome::Signal(libc::SIGKILL) });
        assert_eq!(reason.exit_code(), 137);
        assert_eq!(reason.first_signal(), libc::SIGTERM);
    }

    #[test]
    fn elastic_survives_failures_while_min_np_ranks_run() {
        let mut table = ProcessTable::new(&[(0, 0), (0, 1), (0, 2)]);
        for rank in 0..3 {
            let child = Command::new("true").spawn().expect("spawn true");
            table.set_running(rank, child, Instant::now());
        }
        let elastic = Policy::Elastic { min_np: 2, max_restarts: 0 };
        assert!(table.set_ended(2, 0, Outcome::Signal(libc::SIGKILL)));
        assert_eq!(elastic.on_rank_ended(&table, 2), Decision::Continue, "two ranks still run");
        assert!(table.set_ended(1, 0, Outcome::Code(3)));
        assert_eq!(
            elastic.on_rank_ended(&table, 1),
            Decision::Stop(StopReason::RankFailed { rank: 1, outcome: Outcome::Code(3) }),
            "one rank left, below --min-np"
        );
        table.reap_ended();
    }

    #[test]
    fn a_failed_rank_is_restarted_while_it_has_restarts_left() {
        let mut table = ProcessTable::new(&[(0, 0), (0, 1)]);
        for rank in 0..2 {
            let child = Command::new("true").spawn().expect("spawn true");
            table.set_running(rank, child, Instant::now());
        }
        let elastic = Policy::Elastic { min_np: 2, max_restarts: 1 };
        assert!(table.set_ended(1, 0, Outcome::Signal(libc::SIGKILL)));
        assert_eq!(elastic.on_rank_ended(&table, 1), Decision::Restart(1), "below --min-np, but restarted");
        table.restart(1);
        let child = Command::new("true").spawn().expect("spawn true");
        table.set_running(1, child, Instant::now());
        assert_eq!(table.slot(1).map(|s| (s.incarnation, s.restarts)), Some((1, 1)));
        assert!(!table.set_ended(1, 0, Outcome::Code(0)), "the old incarnation's report is stale");
        assert!(table.set_ended(1, 1, Outcome::Code(2)));
        assert_eq!(
            elastic.on_rank_ended(&table, 1),
            Decision::Stop(StopReason::RankFailed { rank: 1, outcome: Outcome::Code(2) }),
            "no restarts left"
        );
        assert_eq!(table.groups().len(), 3, "the first incarnation's group stays pinned");
        table.reap_ended();
    }

    #[test]
    fn successes_continue_until_every_rank_has_ended() {
        let mut table = ProcessTable::new(&[(0, 0), (0, 1)]);
        for rank in 0..2 {
            let child = Command::new("true").spawn().expect("spawn true");
            table.set_running(rank, child, Instant::now());
        }
        assert!(table.set_ended(0, 0, Outcome::Code(0)));
        assert_eq!(Policy::AbortOnFailure.on_rank_ended(&table, 0), Decision::Continue);
        assert!(table.set_ended(1, 0, Outcome::Code(0)));
        assert_eq!(Policy::AbortOnFailure.on_rank_ended(&table, 1), Decision::Finished);
        table.reap_ended();
    }

    #[test]
    fn signals_and_timeouts_map_to_shell_statuses() {
        assert_eq!(StopReason::Signalled(libc::SIGINT).exit_code(), 130);
        assert_eq!(StopReason::Signalled(libc::SIGINT).first_signal(), libc::SIGINT);
        assert_eq!(StopReason::TimedOut(Duration::from_secs(1)).exit_code(), 124);
    }
}
