//! Membership decisions as a sans-IO state machine: who is in the current view, who is
//! suspected, when a rank is declared failed. The coordinator drives it; only it decides,
//! so ranks never disagree about a view (no split brain).
//!
//! Rules:
//! * A member whose coordinator connection closes without a `Leave`, or whose heartbeats
//!   stop for `heartbeat_timeout` (dead or frozen), is evicted.
//! * A member reported *stalled* by a neighbour (alive but stuck past the progress timeout)
//!   is evicted at once.
//! * A member reported for a *closed link* is evicted as soon as the coordinator has its own
//!   evidence (its connection closed, or heartbeats stale); if it still looks alive after
//!   `heartbeat_timeout`, the link is broken for good and it is evicted then.
//! * Every eviction bumps the epoch and installs a new view of the survivors in ring order,
//!   unless fewer than `min_world` remain: then the quorum is lost.
//!
//! After any `handle_*` call, drain [`Membership::poll_event`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A rank id.
pub type Rank = usize;

/// Settings of the membership authority.
#[derive(Debug, Clone, Copy)]
pub struct MembershipConfig {
    /// Silence after which a member is declared failed.
    pub heartbeat_timeout: Duration,
    /// Fewest members with which the job goes on.
    pub min_world: usize,
}

/// What the authority decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent<M> {
    /// A new view: epoch and members in ring order.
    ViewInstalled {
        /// The new epoch.
        epoch: u64,
        /// Members in ring order.
        members: Vec<(Rank, M)>,
    },
    /// A rank was removed.
    Evicted {
        /// The rank.
        rank: Rank,
        /// Epoch of the view without it.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// Too few ranks remain; the job cannot go on.
    QuorumLost {
        /// Epoch at which it happened.
        epoch: u64,
        /// Members left.
        alive: usize,
        /// `min_world`.
        required: usize,
    },
}

#[derive(Debug, Clone)]
struct MemberState {
    last_seen: Instant,
    connected: bool,
    left: bool,
    /// Deadline of an unconfirmed closed-link suspicion.
    suspected_until: Option<Instant>,
}

/// The membership authority of one job.
#[derive(Debug)]
pub struct Membership<M> {
    config: MembershipConfig,
    epoch: u64,
    /// Members in ring order.
    members: Vec<(Rank, M)>,
    state: BTreeMap<Rank, MemberState>,
    events: VecDeque<MembershipEvent<M>>,
    lost: bool,
}

impl<M: Clone> Membership<M> {
    /// Starts with the first view (every member just seen and connected).
    pub fn new(config: MembershipConfig, epoch: u64, members: Vec<(Rank, M)>, now: Instant) -> Membership<M> {
        let state = members
            .iter()
            .map(|(r, _)| (*r, MemberState { last_seen: now, connected: true, left: false, suspected_until: None }))
            .collect();
        Membership { config, epoch, members, state, events: VecDeque::new(), lost: false }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current members in ring order.
    pub fn members(&self) -> &[(Rank, M)] {
        &self.members
    }

    /// True once the quorum is lost (no more views will be installed).
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// A heartbeat (or any message) from `rank`.
    pub fn handle_heartbeat(&mut self, rank: Rank, now: Instant) {
        if let Some(s) = self.state.get_mut(&rank) {
            s.last_seen = now;
        }
    }

    /// `rank` said it is leaving cleanly: its disconnect is not a failure.
    pub fn handle_leave(&mut self, rank: Rank) {
        if let Some(s) = self.state.get_mut(&rank) {
            s.left = true;
        }
    }

    /// The coordinator connection of `rank` closed.
    pub fn handle_disconnect(&mut self, rank: Rank, now: Instant) {
        let Some(s) = self.state.get_mut(&rank) else { return };
        s.connected = false;
        if !s.left {
            self.evict(rank, "its coordinator connection closed (process died or host lost)".into(), now);
        } else if s.suspected_until.is_some() {
            self.evict(rank, "it left while its neighbours still needed it".into(), now);
        }
    }

    /// `reporter` says `suspect` failed it in `epoch`.
    pub fn handle_suspect(&mut self, reporter: Rank, suspect: Rank, epoch: u64, stalled: bool, now: Instant) {
        if epoch < self.epoch || reporter == suspect || !self.state.contains_key(&reporter) {
            return;
        }
        let Some(s) = self.state.get_mut(&suspect) else { return };
        let stale = now.duration_since(s.last_seen) >= self.config.heartbeat_timeout;
        if stalled {
            self.evict(suspect, format!("rank {reporter} saw no progress from it"), now);
        } else if !s.connected || s.left || stale {
            self.evict(suspect, format!("rank {reporter} lost its link to it and it is gone"), now);
        } else if s.suspected_until.is_none() {
            s.suspected_until = Some(now + self.config.heartbeat_timeout);
        }
    }

    /// Applies deadlines: stale heartbeats and unconfirmed suspicions. Calling it early does
    /// nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(Rank, String)> = self
            .state
            .iter()
            .filter_map(|(r, s)| {
                if now.duration_since(s.last_seen) >= self.config.heartbeat_timeout && !s.left {
                    Some((*r, format!("no heartbeat for {:?}", now.duration_since(s.last_seen))))
                } else {
                    s.suspected_until
                        .filter(|d| now >= *d)
                        .map(|_| (*r, "its ring link broke and stayed broken".into()))
                }
            })
            .collect();
        for (r, why) in due {
            self.evict(r, why, now);
        }
    }

    /// Earliest deadline at which [`Membership::handle_timeout`] may act.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.lost {
            return None;
        }
        self.state
            .values()
            .filter(|s| !s.left)
            .map(|s| {
                s.suspected_until.map_or(s.last_seen + self.config.heartbeat_timeout, |d| {
                    d.min(s.last_seen + self.config.heartbeat_timeout)
                })
            })
            .min()
    }

    /// Next decision, if any.
    pub fn poll_event(&mut self) -> Option<MembershipEvent<M>> {
        self.events.pop_front()
    }

    fn evict(&mut self, rank: Rank, reason: String, _now: Instant) {
        if self.lost || self.state.remove(&rank).is_none() {
            return;
        }
        self.members.retain(|(r, _)| *r != rank);
        self.epoch += 1;
        self.events.push_back(MembershipEvent::Evicted { rank, epoch: self.epoch, reason });
        if self.members.len() < self.config.min_world {
            self.lost = true;
            self.events.push_back(MembershipEvent::QuorumLost {
                epoch: self.epoch,
                alive: self.members.len(),
                required: self.config.min_world,
            });
        } else {
            self.events.push_back(MembershipEvent::ViewInstalled { epoch: self.epoch, members: self.members.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: usize, min_world: usize) -> (Membership<()>, Instant) {
        let now = Instant::now();
        let config = MembershipConfig { heartbeat_timeout: Duration::from_secs(3), min_world };
        (Membership::new(config, 1, (0..n).map(|r| (r, ())).collect(), now), now)
    }

    fn ranks(m: &Membership<()>) -> Vec<Rank> {
        m.members().iter().map(|(r, _)| *r).collect()
    }

    #[test]
    fn a_crash_is_one_eviction_and_one_new_view() {
        let (mut m, now) = setup(4, 1);
        m.handle_disconnect(2, now);
        assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 2, epoch: 2, .. })));
        assert_eq!(
            m.poll_event(),
            Some(MembershipEvent::ViewInstalled { epoch: 2, members: vec![(0, ()), (1, ()), (3, ())] })
        );
        assert_eq!(m.poll_event(), None);
        m.handle_suspect(1, 2, 1, false, now);
        assert_eq!(m.poll_event(), None, "a stale suspicion changes nothing");
    }

    #[test]
    fn silence_evicts_after_the_timeout_not_before() {
        let (mut m, now) = setup(3, 1);
        let later = now + Duration::from_secs(2);
        for r in [0, 2] {
            m.handle_heartbeat(r, later);
        }
        m.handle_timeout(later);
        assert_eq!(m.poll_event(), None);
        m.handle_timeout(now + Duration::from_secs(3));
        assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
        assert_eq!(ranks(&m), vec![0, 2]);
    }

    #[test]
    fn a_closed_link_to_a_live_rank_waits_for_evidence() {
        let (mut m, now) = setup(3, 1);
        m.handle_suspect(0, 1, 1, false, now);
        assert_eq!(m.poll_event(), None);
        m.handle_disconnect(1, now + Duration::from_millis(10));
        assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
    }

    #[test]
    fn a_stall_evicts_at_once_and_quorum_is_enforced() {
        let (mut m, now) = setup(2, 2);
        m.handle_suspect(0, 1, 1, true, now);
        assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
        assert!(matches!(m.poll_event(), Some(MembershipEvent::QuorumLost { alive: 1, required: 2, .. })));
        assert!(m.is_lost());
    }

    #[test]
    fn a_clean_leave_is_not_a_failure() {
        let (mut m, now) = setup(3, 1);
        m.handle_leave(2);
        m.handle_disconnect(2, now);
        m.handle_timeout(now + Duration::from_secs(10));
        // Ranks 0 and 1 went silent too and are evicted; rank 2 left cleanly and is not.
        let mut evicted = Vec::new();
        while let Some(e) = m.poll_event() {
            if let MembershipEvent::Evicted { rank, .. } = e {
                evicted.push(rank);
            }
        }
        assert!(!evicted.contains(&2), "{evicted:?}");
    }
}
