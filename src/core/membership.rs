//! Membership decisions as a sans-IO state machine: who is in the current view, who is
//! suspected, when a rank is declared failed. The coordinator drives it; only it decides,
//! so ranks never disagree about a view (no split brain).
//!
//! Rules:
//! * A member whose coordinator connection closes without a `Leave`, or whose heartbeats
//!   stop for `heartbeat_timeout` (dead or frozen), is evicted.
//! * A member reported *stalled* by a neighbour (alive but stuck past the progress timeout)
//!   is evicted after [`STALL_GRACE`]. A stall propagates down the ring (each rank waits on
//!   the one before it), so the reports of that grace are read together and only the ranks
//!   at the head of a chain are evicted: those reported stalled that did not report a stall
//!   themselves (in a full cycle, where everyone reports, the first one reported).
//! * A member reported for a *closed link* is evicted as soon as the coordinator has its own
//!   evidence (its connection closed, or heartbeats stale). If it still looks alive, the ring
//!   is *re-formed*: a new view with the same members (a link can break in a race while
//!   views change, or in a transient network fault). If the link is reported broken again in
//!   the re-formed view, it is broken for good and the member is evicted `heartbeat_timeout`
//!   after the first report; otherwise the suspicion lapses then.
//! * Every eviction bumps the epoch and installs a new view of the survivors in ring order,
//!   unless fewer than `min_world` remain: then the quorum is lost.
//!
//! * After each new view, every member reports where it stands ([`ResyncReport`]); once all
//!   have, the authority decides how the interrupted call ends ([`decide`]) and every member
//!   gets the same [`MembershipEvent::Decision`].
//!
//! * A rank that (re)starts while the job runs asks to join ([`Membership::handle_join`]);
//!   it is admitted at a call boundary without interrupting anything (`core::joins`), one
//!   join at a time and never while a view change is being resolved. The admitting view
//!   keeps the ring order of the first view.
//!
//! After any `handle_*` call, drain [`Membership::poll_event`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::joins::Joins;

/// How long a reported closed link to a live member waits for evidence of a crash before
/// the ring is re-formed (`Membership::handle_suspect`).
pub const REFORM_GRACE: Duration = Duration::from_millis(200);

/// How long stall reports are collected before the ranks at the head of their chains are
/// evicted (`Membership::handle_suspect`).
pub const STALL_GRACE: Duration = Duration::from_millis(500);

/// A rank id.
pub type Rank = usize;

/// Settings of the membership authority.
#[derive(Debug, Clone, Copy)]
pub struct MembershipConfig {
    /// Silence after which a member is declared failed.
    pub heartbeat_timeout: Duration,
    /// Fewest members with which the job goes on.
    pub min_world: usize,
    /// Joins are admitted only at the application's join points (`Config::join_points`),
    /// not at any call boundary.
    pub join_points: bool,
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
    /// How the interrupted call ends in the view of `epoch` (see [`decide`]).
    Decision {
        /// Epoch of the view.
        epoch: u64,
        /// The interrupted call.
        seq: u64,
        /// Finish it with the held result (true) or redo it over the view (false).
        finish: bool,
        /// The member whose handed-over result ([`ResyncReport::handed`]) the `takers`
        /// finish with; `None` when every member at `seq` finishes with its own.
        source: Option<Rank>,
        /// Members at `seq` that finish with `source`'s result instead of their own (they
        /// lack it); the authority's host sends them its copy before the decision.
        takers: Vec<Rank>,
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
    /// Members of the view of `epoch` must hold before their next call and report it: a
    /// rank asks to join.
    JoinPrepare {
        /// Epoch of the current view.
        epoch: u64,
    },
    /// The join prepared in `epoch` is off (the joiner went away): members stop holding.
    JoinCancel {
        /// Epoch of the `JoinPrepare`.
        epoch: u64,
    },
    /// A view that admits `joined` from call `start_seq` on (members switch at that
    /// boundary; nothing is interrupted, no reports are collected).
    Admitted {
        /// The new epoch.
        epoch: u64,
        /// Members in ring order, the joiner included.
        members: Vec<(Rank, M)>,
        /// The admitted ranks.
        joined: Vec<Rank>,
        /// First call of the new view.
        start_seq: u64,
    },
    /// Every member reached the join point before call `seq` and nobody joins there.
    JoinPointDone {
        /// Epoch of the view.
        epoch: u64,
        /// The call after the join point.
        seq: u64,
    },
}

/// Where a member stands when a new view is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncReport {
    /// Calls it has completed (returned from).
    pub completed: u64,
    /// Whether it holds the whole result of call `completed`.
    pub holds: bool,
    /// Epoch of the attempt of call `completed` it runs (in which its result, if it
    /// `holds` one, was computed).
    pub attempt_epoch: u64,
    /// A result of a call without completion tokens that this member handed to the
    /// authority with its report, and that the authority's host keeps: `(call, epoch of
    /// the attempt that computed it)`. The call is `completed` (it holds the result of its
    /// running call) or `completed - 1` (the copy it retains of the call it returned last).
    pub handed: Option<(u64, u64)>,
}

/// How the call interrupted by a view change ends (see [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The interrupted call: the lowest completed count.
    pub seq: u64,
    /// Finish it with a result (true) or redo it over the new view (false).
    pub finish: bool,
    /// Whose handed-over result the `takers` finish with.
    pub source: Option<Rank>,
    /// Members at `seq` that take `source`'s result.
    pub takers: Vec<Rank>,
}

/// How the call interrupted by a view change ends, from every member's report.
///
/// A rank returns a call once it holds the result, and (calls with completion tokens,
/// `core::fin`) once every member holds it. A call's result needs every member's input,
/// so a rank that returned call `k` knows every member started `k`: completed counts differ
/// by at most one, and call `seq`, the lowest count, is the only one anyone may have
/// returned. In order:
///
/// * some member handed over a result of `seq` (it holds it, or retains it after returning
///   it: every survivor that returned a call without tokens retains it until its next call
///   completes): **finish from it**: the members at `seq` that do not hold that attempt's
///   result take the copy (`takers`), so every survivor ends bit-identical with the ones
///   that returned it; with several copies, the latest attempt, then the lowest rank;
/// * every member at `seq` holds its result from one same attempt: **finish**, each with
///   its own;
/// * someone returned it (a call with tokens: every member held it): **finish**;
/// * otherwise no survivor returned it or can hand it: **redo** over the new view.
///
/// A member one call ahead always redoes its current call (nobody can have returned it).
pub fn decide(reports: &[(Rank, ResyncReport)]) -> Verdict {
    let Some(seq) = reports.iter().map(|(_, r)| r.completed).min() else {
        return Verdict { seq: 0, finish: false, source: None, takers: Vec::new() };
    };
    let behind: Vec<(Rank, ResyncReport)> = reports.iter().filter(|(_, r)| r.completed == seq).copied().collect();
    let handed = reports.iter().filter_map(|(rank, r)| r.handed.filter(|h| h.0 == seq).map(|h| (*rank, h.1)));
    if let Some((source, attempt)) = handed.min_by_key(|&(rank, attempt)| (std::cmp::Reverse(attempt), rank)) {
        let takers =
            behind.iter().filter(|(_, r)| !(r.holds && r.attempt_epoch == attempt)).map(|(rank, _)| *rank).collect();
        return Verdict { seq, finish: true, source: Some(source), takers };
    }
    let first = behind.first().map(|(_, r)| r.attempt_epoch);
    let all_hold = behind.iter().all(|(_, r)| r.holds && Some(r.attempt_epoch) == first);
    let returned = reports.iter().any(|(_, r)| r.completed > seq);
    Verdict { seq, finish: all_hold || returned, source: None, takers: Vec::new() }
}

#[derive(Debug, Clone)]
struct MemberState {
    last_seen: Instant,
    connected: bool,
    left: bool,
    /// Deadline of an unconfirmed closed-link suspicion.
    suspected_until: Option<Instant>,
    /// Epoch of the latest closed-link report against it.
    suspect_epoch: u64,
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
    /// When to re-form the ring for a live member reported for a closed link.
    reform_at: Option<Instant>,
    /// Reports for the current view, when it replaced another (none for the first view).
    reports: Option<BTreeMap<Rank, ResyncReport>>,
    /// Ranks waiting to join, and the join being prepared.
    joins: Joins<M>,
    /// Ring order of the first view: a rank that comes back takes its old place.
    ring_order: Vec<Rank>,
    /// Members at the join point of the current view, with the call after it.
    points: BTreeMap<Rank, u64>,
    /// Stall reports of the current view, reporter to suspect, in arrival order, and when
    /// they are judged.
    stalls: Vec<(Rank, Rank)>,
    stall_at: Option<Instant>,
}

impl<M: Clone> Membership<M> {
    /// Starts with the first view (every member just seen and connected).
    pub fn new(config: MembershipConfig, epoch: u64, members: Vec<(Rank, M)>, now: Instant) -> Membership<M> {
        let state = members
            .iter()
            .map(|(r, _)| {
                (
                    *r,
                    MemberState {
                        last_seen: now,
                        connected: true,
                        left: false,
                        suspected_until: None,
                        suspect_epoch: 0,
                    },
                )
            })
            .collect();
        Membership {
            config,
            epoch,
            state,
            events: VecDeque::new(),
            lost: false,
            reform_at: None,
            reports: None,
            joins: Joins::default(),
            ring_order: members.iter().map(|(r, _)| *r).collect(),
            points: BTreeMap::new(),
            stalls: Vec::new(),
            stall_at: None,
            members,
        }
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
        if let Some(epoch) = self.joins.withdraw(rank) {
            self.events.push_back(MembershipEvent::JoinCancel { epoch });
        }
        let Some(s) = self.state.get_mut(&rank) else { return };
        s.connected = false;
        if !s.left {
            self.evict(rank, "its coordinator connection closed (process died or host lost)".into(), now);
        } else if s.suspected_until.is_some() {
            self.evict(rank, "it left while its neighbours still needed it".into(), now);
        }
    }

    /// A new process registered as `rank` (a restart): the one in the ring, if any, is gone.
    pub fn handle_replaced(&mut self, rank: Rank, now: Instant) {
        if self.state.contains_key(&rank) {
            self.evict(rank, "a new process registered as this rank (restarted)".into(), now);
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
            if !self.stalls.iter().any(|(r, _)| *r == reporter) {
                self.stalls.push((reporter, suspect));
            }
            self.stall_at.get_or_insert(now + STALL_GRACE);
        } else if !s.connected || s.left || stale {
            self.evict(suspect, format!("rank {reporter} lost its link to it and it is gone"), now);
        } else if s.suspected_until.is_some() {
            // Broken again in the re-formed view: evicted at the deadline.
            s.suspect_epoch = s.suspect_epoch.max(epoch);
        } else {
            s.suspected_until = Some(now + self.config.heartbeat_timeout);
            s.suspect_epoch = epoch;
            // A crashed process's sockets all close at once, but its neighbour's report can
            // beat the coordinator's own read of the end of stream: wait a moment, so a crash
            // is one eviction rather than a re-formed view and then an eviction.
            self.reform_at.get_or_insert(now + REFORM_GRACE);
        }
    }

    /// `rank` reports where it stands in the view of `epoch`. Reports for another view are
    /// ignored (the rank reports again when it gets the current one).
    pub fn handle_resync(&mut self, rank: Rank, epoch: u64, report: ResyncReport, now: Instant) {
        if epoch != self.epoch || !self.state.contains_key(&rank) {
            return;
        }
        let Some(reports) = self.reports.as_mut() else { return };
        reports.insert(rank, report);
        self.maybe_decide();
        self.try_start_join(now);
    }

    /// `rank` asks to join the running job (`member`: what the coordinator hands out about
    /// it). It is admitted later, at a call boundary ([`MembershipEvent::Admitted`]).
    ///
    /// # Errors
    /// Why it cannot join: the quorum is lost, or it is still a member (evict it first).
    pub fn handle_join(&mut self, rank: Rank, member: M, now: Instant) -> Result<(), String> {
        if self.lost {
            return Err("the job lost its quorum".into());
        }
        if self.state.contains_key(&rank) {
            return Err(format!("rank {rank} is still a member"));
        }
        self.joins.request(rank, member, now);
        self.try_start_join(now);
        Ok(())
    }

    /// Member `rank` holds before call `next_seq` in the view of `epoch`.
    pub fn handle_join_ack(&mut self, rank: Rank, epoch: u64, next_seq: u64, now: Instant) {
        if epoch != self.epoch || self.lost {
            return;
        }
        let ranks: Vec<Rank> = self.members.iter().map(|(r, _)| *r).collect();
        let Some(a) = self.joins.ack(rank, epoch, next_seq, &ranks) else { return };
        self.admit(a, now);
    }

    /// Member `rank` reached the application's join point before call `seq` in the view of
    /// `epoch`. Once every member has, a ready joiner is admitted there; otherwise every
    /// member is told nobody joins. A point of an older view is dropped (the new view
    /// released the members).
    pub fn handle_join_point(&mut self, rank: Rank, epoch: u64, seq: u64, now: Instant) {
        if !self.config.join_points || epoch != self.epoch || self.lost || !self.state.contains_key(&rank) {
            return;
        }
        self.points.insert(rank, seq);
        if self.members.iter().any(|(r, _)| !self.points.contains_key(r)) {
            return;
        }
        let seq = self.points.values().copied().max().unwrap_or(seq);
        self.points.clear();
        let settled = self.reports.is_none() && self.reform_at.is_none();
        match self.joins.admit_now(seq, now).filter(|_| settled) {
            Some(a) => self.admit(a, now),
            None => self.events.push_back(MembershipEvent::JoinPointDone { epoch, seq }),
        }
    }

    /// Admits `a` from its start call on: a new view with it in its ring place.
    fn admit(&mut self, a: super::joins::Admission<M>, now: Instant) {
        self.points.clear();
        self.epoch += 1;
        self.members.push((a.rank, a.member));
        let order = &self.ring_order;
        self.members.sort_by_key(|(r, _)| order.iter().position(|o| o == r).unwrap_or(usize::MAX));
        self.state.insert(
            a.rank,
            MemberState { last_seen: now, connected: true, left: false, suspected_until: None, suspect_epoch: 0 },
        );
        self.events.push_back(MembershipEvent::Admitted {
            epoch: self.epoch,
            members: self.members.clone(),
            joined: vec![a.rank],
            start_seq: a.start_seq,
        });
        self.try_start_join(now);
    }

    /// Whether `rank` waits to be admitted.
    pub fn is_joining(&self, rank: Rank) -> bool {
        self.joins.is_waiting(rank)
    }

    /// Starts preparing the next join if nothing else is being resolved.
    fn try_start_join(&mut self, now: Instant) {
        if self.config.join_points || self.lost || self.reports.is_some() || self.reform_at.is_some() {
            return;
        }
        if self.joins.start(self.epoch, now) {
            self.events.push_back(MembershipEvent::JoinPrepare { epoch: self.epoch });
        }
    }

    fn maybe_decide(&mut self) {
        let Some(reports) = self.reports.as_ref() else { return };
        if self.lost || self.members.iter().any(|(r, _)| !reports.contains_key(r)) {
            return;
        }
        let all: Vec<(Rank, ResyncReport)> = reports.iter().map(|(r, report)| (*r, *report)).collect();
        let Verdict { seq, finish, source, takers } = decide(&all);
        self.events.push_back(MembershipEvent::Decision { epoch: self.epoch, seq, finish, source, takers });
        self.reports = None;
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
                        .filter(|d| now >= *d && s.suspect_epoch >= self.epoch)
                        .map(|_| (*r, "its ring link broke and stayed broken".into()))
                }
            })
            .collect();
        // Suspicions whose link was not reported broken again since the ring re-formed lapse.
        let epoch = self.epoch;
        for s in self.state.values_mut() {
            if s.suspected_until.is_some_and(|d| now >= d) && s.suspect_epoch < epoch {
                s.suspected_until = None;
            }
        }
        let mut due = due;
        if self.stall_at.is_some_and(|t| now >= t) {
            self.stall_at = None;
            due.extend(self.stall_heads());
        }
        let evicting = !due.is_empty();
        for (r, why) in due {
            self.evict(r, why, now);
        }
        if self.reform_at.is_some_and(|t| now >= t) {
            self.reform_at = None;
            if !evicting && !self.lost {
                self.drop_left();
                self.epoch += 1;
                self.install_view(false);
            }
        }
        self.try_start_join(now);
    }

    /// The ranks to evict for the stall reports collected: the heads of the chains (reported,
    /// not reporting), or in a cycle the first one reported.
    fn stall_heads(&mut self) -> Vec<(Rank, String)> {
        let stalls = std::mem::take(&mut self.stalls);
        let reporters: Vec<Rank> = stalls.iter().map(|(r, _)| *r).collect();
        let why = |reporter: Rank| format!("rank {reporter} saw no progress from it");
        let mut heads: Vec<(Rank, String)> = Vec::new();
        for (reporter, suspect) in &stalls {
            if !reporters.contains(suspect) && !heads.iter().any(|(h, _)| h == suspect) {
                heads.push((*suspect, why(*reporter)));
            }
        }
        if heads.is_empty() {
            heads.extend(stalls.first().map(|(reporter, suspect)| (*suspect, why(*reporter))));
        }
        heads
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
            .chain(self.reform_at)
            .chain(self.stall_at)
            .chain(self.reports.is_none().then(|| self.joins.next_start()).flatten())
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
        self.joins.note_failure(rank);
        self.drop_left();
        self.epoch += 1;
        self.reform_at = None;
        self.events.push_back(MembershipEvent::Evicted { rank, epoch: self.epoch, reason });
        if self.members.len() < self.config.min_world {
            self.lost = true;
            self.events.push_back(MembershipEvent::QuorumLost {
                epoch: self.epoch,
                alive: self.members.len(),
                required: self.config.min_world,
            });
        } else {
            self.install_view(true);
        }
    }

    /// Takes the members that left cleanly out of the next view: they returned their last
    /// call (so every member started it and has all it sent) and will never report or
    /// link again.
    fn drop_left(&mut self) {
        let state = &self.state;
        self.members.retain(|(r, _)| !state.get(r).is_some_and(|s| s.left));
        self.state.retain(|_, s| !s.left);
    }

    /// Announces the current members as the view of the current epoch and starts collecting
    /// the members' resync reports. `clear_suspicions`: after an eviction the ring is
    /// rebuilt, so links broken in the old view are gone (one that breaks again is reported
    /// again); a re-formed view keeps them, to evict a member whose link stays broken.
    fn install_view(&mut self, clear_suspicions: bool) {
        // A join being prepared is retried once this change is resolved; the new view
        // releases the members' hold (and those waiting at a join point).
        self.joins.abort();
        self.points.clear();
        // Stalls of the old view were caused by it; the new one is judged afresh.
        self.stalls.clear();
        self.stall_at = None;
        self.events.push_back(MembershipEvent::ViewInstalled { epoch: self.epoch, members: self.members.clone() });
        self.reports = Some(BTreeMap::new());
        if clear_suspicions {
            for s in self.state.values_mut() {
                s.suspected_until = None;
            }
        }
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
