//! Joins of ranks into a running job, as seen by the membership authority
//! (`core::membership`): requests wait in a queue (with a growing backoff for a rank that
//! keeps failing), one join at a time is prepared, and it is admitted at the first call no
//! member has started.
//!
//! Preparing a join: every member of the current view is asked to hold before its next call
//! and to say which call that is (`next_seq`, the calls it has started). Calls are sequential
//! and a call returns only once every member holds its result, so the members' answers differ
//! by at most one; the joiner is admitted at the largest, `K`. Members behind finish call
//! `K - 1` in the old view; everybody then switches to the new view at the boundary before
//! `K`, and the joiner starts at `K`. Nothing running is interrupted.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::limits::{JOIN_BACKOFF_BASE, JOIN_BACKOFF_MAX};
use crate::Rank;

/// A rank waiting to be admitted.
#[derive(Debug, Clone)]
struct Request<M> {
    rank: Rank,
    member: M,
    not_before: Instant,
}

/// The join being prepared: the members' answers so far.
#[derive(Debug, Clone)]
struct Preparing<M> {
    request: Request<M>,
    /// Epoch of the view whose members were asked to hold.
    epoch: u64,
    acks: BTreeMap<Rank, u64>,
}

/// A join ready to be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<M> {
    /// The joining rank.
    pub rank: Rank,
    /// What the coordinator knows of it (address, host).
    pub member: M,
    /// The first call it takes part in.
    pub start_seq: u64,
}

/// Join requests and the join in preparation.
#[derive(Debug)]
pub struct Joins<M> {
    queue: VecDeque<Request<M>>,
    preparing: Option<Preparing<M>>,
    /// Evictions of each rank so far (the backoff grows with them).
    failures: BTreeMap<Rank, u32>,
}

impl<M> Default for Joins<M> {
    fn default() -> Self {
        Joins { queue: VecDeque::new(), preparing: None, failures: BTreeMap::new() }
    }
}

/// How long a rank evicted `failures` times waits before it is admitted again: at once after
/// its first failure, then [`JOIN_BACKOFF_BASE`] doubling up to [`JOIN_BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => JOIN_BACKOFF_BASE.saturating_mul(1 << (n - 2).min(16)).min(JOIN_BACKOFF_MAX),
    }
}

impl<M: Clone> Joins<M> {
    /// `rank` asks to join; a second request from the same rank replaces the first.
    pub fn request(&mut self, rank: Rank, member: M, now: Instant) {
        self.queue.retain(|r| r.rank != rank);
        let not_before = now + backoff(self.failures.get(&rank).copied().unwrap_or(0));
        self.queue.push_back(Request { rank, member, not_before });
    }

    /// `rank` was evicted (its next join waits longer).
    pub fn note_failure(&mut self, rank: Rank) {
        *self.failures.entry(rank).or_insert(0) += 1;
    }

    /// Whether a join is being prepared.
    pub fn preparing(&self) -> bool {
        self.preparing.is_some()
    }

    /// Starts preparing the first request whose backoff has passed, in the view of `epoch`.
    /// Returns true if one started (the members must be asked to hold).
    pub fn start(&mut self, epoch: u64, now: Instant) -> bool {
        if self.preparing.is_some() {
            return false;
        }
        let Some(i) = self.queue.iter().position(|r| r.not_before <= now) else { return false };
        let Some(request) = self.queue.remove(i) else { return false };
        self.preparing = Some(Preparing { request, epoch, acks: BTreeMap::new() });
        true
    }

    /// Earliest time a queued request may start (when none is being prepared).
    pub fn next_start(&self) -> Option<Instant> {
        if self.preparing.is_some() {
            return None;
        }
        self.queue.iter().map(|r| r.not_before).min()
    }

    /// Member `rank` holds before call `next_seq` in the view of `epoch`. Once every one of
    /// `members` has answered, the join is ready.
    pub fn ack(&mut self, rank: Rank, epoch: u64, next_seq: u64, members: &[Rank]) -> Option<Admission<M>> {
        let p = self.preparing.as_mut().filter(|p| p.epoch == epoch && members.contains(&rank))?;
        p.acks.insert(rank, next_seq);
        if members.iter().any(|m| !p.acks.contains_key(m)) {
            return None;
        }
        let start_seq = p.acks.values().copied().max().unwrap_or(0);
        let p = self.preparing.take()?;
        Some(Admission { rank: p.request.rank, member: p.request.member, start_seq })
    }

    /// Takes the first request whose backoff has passed, to admit it now (join points: the
    /// members already hold at the boundary before `start_seq`).
    pub fn admit_now(&mut self, start_seq: u64, now: Instant) -> Option<Admission<M>> {
        if self.preparing.is_some() {
            return None;
        }
        let i = self.queue.iter().position(|r| r.not_before <= now)?;
        let r = self.queue.remove(i)?;
        Some(Admission { rank: r.rank, member: r.member, start_seq })
    }

    /// The view changed under the join being prepared: it goes back to the front of the
    /// queue (the new view releases the members' hold). Returns true if one was abandoned.
    pub fn abort(&mut self) -> bool {
        match self.preparing.take() {
            Some(p) => {
                self.queue.push_front(p.request);
                true
            }
            None => false,
        }
    }

    /// `rank` went away before it was admitted. Returns the epoch of the join prepared for
    /// it, if one was (the members must be released).
    pub fn withdraw(&mut self, rank: Rank) -> Option<u64> {
        self.queue.retain(|r| r.rank != rank);
        let epoch = self.preparing.as_ref().filter(|p| p.request.rank == rank).map(|p| p.epoch)?;
        self.preparing = None;
        Some(epoch)
    }

    /// Whether `rank` waits to be admitted.
    pub fn is_waiting(&self, rank: Rank) -> bool {
        self.queue.iter().any(|r| r.rank == rank) || self.preparing.as_ref().is_some_and(|p| p.request.rank == rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_joiner_starts_at_the_first_call_no_member_started() {
        let now = Instant::now();
        let mut j: Joins<()> = Joins::default();
        j.request(3, (), now);
        assert!(j.start(5, now));
        assert!(!j.start(5, now), "one join at a time");
        assert_eq!(j.ack(0, 5, 41, &[0, 1, 2]), None);
        assert_eq!(j.ack(1, 4, 42, &[0, 1, 2]), None, "an answer for another view does not count");
        assert_eq!(j.ack(1, 5, 42, &[0, 1, 2]), None);
        assert_eq!(j.ack(2, 5, 41, &[0, 1, 2]), Some(Admission { rank: 3, member: (), start_seq: 42 }));
        assert!(!j.preparing());
    }

    #[test]
    fn an_aborted_join_is_retried_first_and_a_withdrawn_one_releases_the_members() {
        let now = Instant::now();
        let mut j: Joins<()> = Joins::default();
        j.request(3, (), now);
        j.request(4, (), now);
        assert!(j.start(1, now));
        assert!(j.abort());
        assert!(j.start(2, now));
        assert_eq!(j.withdraw(4), None, "rank 4 is only queued");
        assert_eq!(j.withdraw(3), Some(2));
        assert!(!j.is_waiting(3) && !j.is_waiting(4));
        assert!(!j.start(3, now));
    }

    #[test]
    fn a_rank_that_keeps_failing_waits_longer_each_time() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), JOIN_BACKOFF_BASE);
        assert_eq!(backoff(4), JOIN_BACKOFF_BASE * 4);
        assert_eq!(backoff(60), JOIN_BACKOFF_MAX);
        let now = Instant::now();
        let mut j: Joins<()> = Joins::default();
        j.note_failure(7);
        j.note_failure(7);
        j.request(7, (), now);
        assert!(!j.start(1, now));
        assert_eq!(j.next_start(), Some(now + JOIN_BACKOFF_BASE));
        assert!(j.start(1, now + JOIN_BACKOFF_BASE));
    }
}
