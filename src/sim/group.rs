//! A simulation of the membership protocol in virtual time: the real coordinator state
//! machine ([`Membership`], with `decide` and the joins queue) against a model of each rank's
//! recovery (suspend, resync, finish or redo, joins at boundaries), with seeded faults:
//! kills (sockets close at once), silent crashes (a host lost), pauses (SIGSTOP, short or
//! past the heartbeat timeout), one-way delays of a rank's coordinator connection (a
//! partition TCP rides out: nothing is lost, it arrives when it heals), ring links cut
//! between live ranks, and restarts of killed ranks, which rejoin.
//!
//! The data plane is abstract: an attempt of call `s` in epoch `e` over members `M` delivers
//! its result to each member some time after every member of `M` started it. Each member
//! returns a *large* call once every member holds it (the completion tokens of `core::fin`),
//! a *small* one (no tokens, `core::fin::tokens_needed`; the seed picks which calls are
//! small) as soon as it holds it, retaining a copy until its next call returns; it hands the
//! copy (or a held result of its running small call) to the coordinator with its report, and
//! the coordinator (the real `coord::handover::Handovers`) sends it to the members
//! a decision names as takers. Anything that breaks the attempt (a member dies, is paused,
//! or moves to a new view) stops every delivery not yet made. A result is identified by
//! `(M, e)`: its sum is the reduction over exactly `M`.
//!
//! Checks ([`run`]): *safety* (every rank that returned call `s` returned the same attempt,
//! and was a member of it; for a small call, this binds every returner that stayed in the
//! job, that is, returned call `s + 1` too or is still a live member at the end: a rank lost
//! right after returning a small call may have returned an attempt the survivors then redid
//! without it; no rank desynchronised; views of one epoch are one view) and, in liveness
//! mode, where faults stop halfway, *liveness* (every live rank ends with all calls done or a
//! terminal error, within a bounded virtual time).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::group_rank::{Att, Offer, RankModel, Step};
use super::SimRng;
use crate::coord::handover::Handovers;
use crate::core::membership::{Membership, MembershipConfig, MembershipEvent, ResyncReport};
use crate::wire::control::HandedResult;
use crate::Rank;

/// Virtual microseconds.
pub(super) type Us = u64;

const HEARTBEAT_INTERVAL_US: Us = 500_000;
const HEARTBEAT_TIMEOUT_US: Us = 5_000_000;

/// What a seed runs: faults throughout (safety) or only in the first half (liveness too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupMode {
    /// Faults until the end; checks safety.
    Safety,
    /// Faults stop halfway; checks safety and that the group converges in bounded time.
    Liveness,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSummary {
    /// Ranks at the start.
    pub world: usize,
    /// Calls per rank.
    pub calls: u64,
    /// Faults injected.
    pub faults: usize,
    /// Calls returned, over all ranks and incarnations.
    pub returned: usize,
    /// Ranks admitted back after a restart.
    pub joins: usize,
    /// Interrupted calls finished with a copy another member handed over, over all ranks.
    pub handed_over: usize,
    /// Views installed.
    pub views: u64,
}

/// Messages between a rank and the coordinator.
#[derive(Debug, Clone)]
pub(super) enum ToCoord {
    Heartbeat,
    Suspect { suspect: Rank, epoch: u64 },
    Resync { epoch: u64, report: ResyncReport, offer: Option<Offer> },
    JoinAck { epoch: u64, next_seq: u64 },
    Disconnect,
    Join,
}

#[derive(Debug, Clone)]
pub(super) enum ToRank {
    View {
        epoch: u64,
        members: Vec<Rank>,
        start_seq: Option<u64>,
    },
    Decision {
        epoch: u64,
        seq: u64,
        finish: bool,
    },
    /// A copy of call `seq`'s result for the view of `epoch` (`Control::Result`).
    Handed {
        epoch: u64,
        seq: u64,
        attempt_epoch: u64,
        members: Vec<Rank>,
    },
    Terminal(String),
    JoinPrepare {
        epoch: u64,
    },
    JoinCancel,
}

#[derive(Debug, Clone)]
enum Ev {
    Coord { from: Rank, inc: u64, msg: ToCoord },
    Rank { to: Rank, inc: u64, msg: ToRank },
    CoordTick,
    Beat(Rank, u64),
    Hold { rank: Rank, seq: u64, epoch: u64 },
    Return { rank: Rank, seq: u64, epoch: u64 },
    Kill(Rank),
    Crash(Rank),
    Pause(Rank, Us),
    Resume(Rank, u64),
    Delay(Rank, Us),
    Cut(Rank),
    Restart(Rank),
}

/// One return of a call: attempt members, attempt epoch, rank, incarnation.
type Returned = (Vec<Rank>, u64, Rank, u64);

/// One attempt of one call: who started it, who holds its result.
#[derive(Debug, Default)]
struct AttState {
    members: Vec<Rank>,
    started: BTreeSet<Rank>,
    holds: BTreeSet<Rank>,
    broken: bool,
}

struct World {
    now: Us,
    queue: BinaryHeap<std::cmp::Reverse<(Us, u64, usize)>>,
    events: Vec<Option<Ev>>,
    order: u64,
    rng: SimRng,
    base: Instant,
    coord: Membership<()>,
    ranks: Vec<RankModel>,
    attempts: HashMap<(u64, u64), AttState>,
    /// FIFO channels: when each (rank, to coordinator?) channel delivers its last message.
    chan_free: HashMap<(Rank, bool), Us>,
    /// One-way delay of a rank's messages to the coordinator until this time.
    delayed_until: Vec<Us>,
    /// Views seen per epoch (every member must see the same one).
    views: BTreeMap<u64, Vec<Rank>>,
    /// Every call returned: seq -> returns.
    results: BTreeMap<u64, Vec<Returned>>,
    /// Results handed over with the reports, as the coordinator server keeps them.
    handovers: Handovers,
    /// Per call: true if small (no completion tokens).
    small: Vec<bool>,
    joins: usize,
    handed_over: usize,
    coord_tick_at: Option<Us>,
}

impl World {
    fn at(&mut self, t: Us, ev: Ev) {
        self.order += 1;
        self.events.push(Some(ev));
        self.queue.push(std::cmp::Reverse((t, self.order, self.events.len() - 1)));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    /// Sends on a FIFO channel with a small random latency (and the rank's one-way delay).
    fn send_coord(&mut self, from: Rank, msg: ToCoord) {
        let inc = self.ranks[from].incarnation;
        let mut t = self.now + 50 + self.rng.below(2_000);
        if !matches!(msg, ToCoord::Disconnect) {
            t = t.max(self.delayed_until[from]);
        }
        let free = self.chan_free.entry((from, true)).or_insert(0);
        t = t.max(*free + 1);
        *free = t;
        self.at(t, Ev::Coord { from, inc, msg });
    }

    fn send_rank(&mut self, to: Rank, msg: ToRank) {
        let inc = self.ranks[to].incarnation;
        let free = self.chan_free.entry((to, false)).or_insert(0);
        let t = (self.now + 50 + self.rng.below(2_000)).max(*free + 1);
        *free = t;
        self.at(t, Ev::Rank { to, inc, msg });
    }

    /// Marks every attempt `rank` takes part in broken: its data stops flowing (results not
    /// delivered yet never are; completion may still reach some members, by a coin).
    fn break_attempts_of(&mut self, rank: Rank, before_epoch: u64) {
        for ((_, epoch), a) in self.attempts.iter_mut() {
            if *epoch < before_epoch && a.members.contains(&rank) {
                a.broken = true;
            }
        }
    }

    fn coord_events(&mut self) {
        while let Some(e) = self.coord.poll_event() {
            match e {
                MembershipEvent::ViewInstalled { epoch, members } => {
                    let members: Vec<Rank> = members.into_iter().map(|(r, _)| r).collect();
                    self.views.insert(epoch, members.clone());
                    for r in members.clone() {
                        self.send_rank(r, ToRank::View { epoch, members: members.clone(), start_seq: None });
                    }
                }
                MembershipEvent::Admitted { epoch, members, start_seq, .. } => {
                    self.joins += 1;
                    let members: Vec<Rank> = members.into_iter().map(|(r, _)| r).collect();
                    self.views.insert(epoch, members.clone());
                    for r in members.clone() {
                        let msg = ToRank::View { epoch, members: members.clone(), start_seq: Some(start_seq) };
                        self.send_rank(r, msg);
                    }
                }
                MembershipEvent::Decision { epoch, seq, finish, source, takers } => {
                    // As the server: the copy goes to the takers before the decision.
                    if let Some(h) = source.and_then(|s| self.handovers.copy_of(s, epoch)) {
                        for r in takers {
                            self.handed_over += 1;
                            let (attempt_epoch, members) = (h.attempt_epoch, h.members.clone());
                            self.send_rank(r, ToRank::Handed { epoch, seq: h.seq, attempt_epoch, members });
                        }
                    }
                    for (r, _) in self.coord.members().to_vec() {
                        self.send_rank(r, ToRank::Decision { epoch, seq, finish });
                    }
                }
                MembershipEvent::JoinPrepare { epoch } | MembershipEvent::JoinCancel { epoch } => {
                    let cancel = matches!(e, MembershipEvent::JoinCancel { .. });
                    for (r, _) in self.coord.members().to_vec() {
                        let msg = if cancel { ToRank::JoinCancel } else { ToRank::JoinPrepare { epoch } };
                        self.send_rank(r, msg);
                    }
                }
                MembershipEvent::JoinPointDone { .. } => {}
                // As the server: not to a restarted process waiting to join in its place.
                MembershipEvent::Evicted { rank, epoch, reason } if !self.coord.is_joining(rank) => {
                    self.send_rank(rank, ToRank::Terminal(format!("evicted at epoch {epoch}: {reason}")));
                }
                MembershipEvent::Evicted { .. } => {}
                MembershipEvent::QuorumLost { .. } => {
                    for r in 0..self.ranks.len() {
                        self.send_rank(r, ToRank::Terminal("quorum lost".into()));
                    }
                }
            }
        }
        let due = self.coord.poll_timeout().map(|t| t.saturating_duration_since(self.base).as_micros() as Us);
        if let Some(t) = due.filter(|t| self.coord_tick_at.is_none_or(|c| *t < c || c <= self.now)) {
            self.coord_tick_at = Some(t.max(self.now));
            self.at(t.max(self.now), Ev::CoordTick);
        }
    }

    fn at_coordinator(&mut self, from: Rank, msg: ToCoord) {
        let now = self.instant();
        // Any message is a sign of life, as in the server.
        if !matches!(msg, ToCoord::Disconnect | ToCoord::Join) {
            self.coord.handle_heartbeat(from, now);
        }
        match msg {
            ToCoord::Heartbeat => self.coord.handle_heartbeat(from, now),
            ToCoord::Suspect { suspect, epoch } => self.coord.handle_suspect(from, suspect, epoch, false, now),
            ToCoord::Resync { epoch, report, offer } => {
                // As the server: the `Control::Result` before the report is kept first.
                if let Some((seq, attempt_epoch, members)) = offer {
                    let h = HandedResult { rank: from as u32, epoch, seq, attempt_epoch, members, bytes: Vec::new() };
                    self.handovers.offer(from, self.coord.epoch(), h);
                }
                let report = ResyncReport { handed: self.handovers.handed_by(from, epoch), ..report };
                self.coord.handle_resync(from, epoch, report, now)
            }
            ToCoord::JoinAck { epoch, next_seq } => self.coord.handle_join_ack(from, epoch, next_seq, now),
            ToCoord::Disconnect => self.coord.handle_disconnect(from, now),
            ToCoord::Join => {
                self.coord.handle_replaced(from, now);
                if let Err(e) = self.coord.handle_join(from, (), now) {
                    self.send_rank(from, ToRank::Terminal(format!("join refused: {e}")));
                }
            }
        }
        self.coord_events();
    }

    /// Applies what a rank model asked for.
    fn apply(&mut self, rank: Rank, steps: Vec<Step>) {
        for s in steps {
            match s {
                Step::Send(msg) => self.send_coord(rank, msg),
                Step::Start(att) => self.start_attempt(rank, att),
                Step::Abandon(epoch) => self.break_attempts_of(rank, epoch),
                Step::Returned { seq, members, epoch } => {
                    let inc = self.ranks[rank].incarnation;
                    self.results.entry(seq).or_default().push((members, epoch, rank, inc));
                }
            }
        }
    }

    fn start_attempt(&mut self, rank: Rank, att: Att) {
        let a = self.attempts.entry((att.seq, att.epoch)).or_default();
        a.members.clone_from(&att.members);
        a.started.insert(rank);
        let all = a.members.iter().all(|m| a.started.contains(m));
        if all && !a.broken {
            for m in a.members.clone() {
                let t = self.now + 100 + self.rng.below(3_000);
                self.at(t, Ev::Hold { rank: m, seq: att.seq, epoch: att.epoch });
            }
        }
    }
}

impl World {
    fn new(world: usize, small: Vec<bool>, seed: u64) -> World {
        let base = Instant::now();
        let config = MembershipConfig {
            heartbeat_timeout: Duration::from_micros(HEARTBEAT_TIMEOUT_US),
            min_world: 1,
            join_points: false,
        };
        let coord = Membership::new(config, 1, (0..world).map(|r| (r, ())).collect(), base);
        let mut w = World {
            now: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            order: 0,
            rng: SimRng::new(seed),
            base,
            coord,
            ranks: (0..world).map(|r| RankModel::new(r, world, small.clone())).collect(),
            attempts: HashMap::new(),
            chan_free: HashMap::new(),
            delayed_until: vec![0; world],
            views: BTreeMap::new(),
            results: BTreeMap::new(),
            joins: 0,
            handed_over: 0,
            coord_tick_at: None,
            handovers: Handovers::default(),
            small,
        };
        w.views.insert(1, (0..world).collect());
        for r in 0..world {
            let t = w.rng.below(HEARTBEAT_INTERVAL_US);
            w.at(t, Ev::Beat(r, 0));
        }
        w
    }

    /// Hands a message to rank `to` (deferred while it is paused) and lets it go on.
    fn deliver(&mut self, to: Rank, msg: ToRank) {
        let r = &mut self.ranks[to];
        if !r.alive {
            return;
        }
        if r.paused {
            r.deferred.push(msg);
            return;
        }
        let steps = r.on_msg(msg);
        self.apply(to, steps);
        self.kick(to);
    }

    fn kick(&mut self, rank: Rank) {
        let steps = self.ranks[rank].try_start();
        self.apply(rank, steps);
    }

    fn paused_member(&self, seq: u64, epoch: u64) -> Option<Rank> {
        let a = self.attempts.get(&(seq, epoch))?;
        a.members.iter().copied().find(|m| self.ranks[*m].paused)
    }

    /// A rank's end: its sockets close (`kill`: neighbours and coordinator see it at once)
    /// or it goes silent (`crash`: only heartbeats tell).
    fn die(&mut self, rank: Rank, closes: bool) {
        if !self.ranks[rank].alive {
            return;
        }
        self.ranks[rank].alive = false;
        let running: Vec<(u64, u64, Vec<Rank>)> = self
            .ranks
            .iter()
            .filter(|r| r.alive && !r.paused)
            .filter_map(|r| r.active.as_ref().map(|a| (r.rank as u64, a.epoch, a.members.clone())))
            .filter(|(_, _, m)| m.contains(&rank))
            .collect();
        self.break_attempts_of(rank, u64::MAX);
        if closes {
            self.send_coord(rank, ToCoord::Disconnect);
            for (reporter, epoch, _) in running {
                self.send_coord(reporter as Rank, ToCoord::Suspect { suspect: rank, epoch });
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Coord { from, inc, msg } => {
                if inc == self.ranks[from].incarnation || matches!(msg, ToCoord::Disconnect) {
                    self.at_coordinator(from, msg);
                }
            }
            Ev::Rank { to, inc, msg } if inc == self.ranks[to].incarnation => self.deliver(to, msg),
            Ev::Rank { .. } => {}
            Ev::CoordTick => {
                self.coord_tick_at = None;
                let now = self.instant();
                self.coord.handle_timeout(now);
                self.coord_events();
            }
            Ev::Beat(r, inc) if inc == self.ranks[r].incarnation && self.ranks[r].alive => {
                if !self.ranks[r].paused {
                    self.send_coord(r, ToCoord::Heartbeat);
                }
                self.at(self.now + HEARTBEAT_INTERVAL_US, Ev::Beat(r, inc));
            }
            Ev::Beat(..) => {}
            Ev::Hold { rank, seq, epoch } => self.hold(rank, seq, epoch),
            Ev::Return { rank, seq, epoch } => self.ret(rank, seq, epoch),
            Ev::Kill(r) => self.die(r, true),
            Ev::Crash(r) => self.die(r, false),
            Ev::Pause(r, for_us) if self.ranks[r].alive && !self.ranks[r].paused => {
                self.ranks[r].paused = true;
                let inc = self.ranks[r].incarnation;
                self.at(self.now + for_us, Ev::Resume(r, inc));
            }
            Ev::Pause(..) => {}
            Ev::Resume(r, inc) if inc == self.ranks[r].incarnation && self.ranks[r].alive => {
                self.ranks[r].paused = false;
                for msg in std::mem::take(&mut self.ranks[r].deferred) {
                    self.deliver(r, msg);
                }
                self.kick(r);
            }
            Ev::Resume(..) => {}
            Ev::Delay(r, for_us) => self.delayed_until[r] = self.delayed_until[r].max(self.now + for_us),
            Ev::Cut(r) => self.cut(r),
            Ev::Restart(r) if !self.ranks[r].alive => {
                self.ranks[r] = RankModel::restarted(&self.ranks[r]);
                let inc = self.ranks[r].incarnation;
                self.send_coord(r, ToCoord::Join);
                self.at(self.now + HEARTBEAT_INTERVAL_US, Ev::Beat(r, inc));
            }
            Ev::Restart(_) => {}
        }
    }

    fn hold(&mut self, rank: Rank, seq: u64, epoch: u64) {
        if self.attempts.get(&(seq, epoch)).is_none_or(|a| a.broken) || !self.ranks[rank].alive {
            return;
        }
        if self.paused_member(seq, epoch).is_some() {
            return self.at(self.now + 10_000, Ev::Hold { rank, seq, epoch });
        }
        if !self.ranks[rank].on_hold(seq, epoch) {
            return;
        }
        if self.is_small(seq) {
            // No completion tokens: it returns as soon as it holds the result.
            let t = self.now + 50 + self.rng.below(2_000);
            return self.at(t, Ev::Return { rank, seq, epoch });
        }
        let Some(a) = self.attempts.get_mut(&(seq, epoch)) else { return };
        a.holds.insert(rank);
        if a.members.iter().all(|m| a.holds.contains(m)) {
            for m in a.members.clone() {
                let t = self.now + 50 + self.rng.below(2_000);
                self.at(t, Ev::Return { rank: m, seq, epoch });
            }
        }
    }

    fn is_small(&self, seq: u64) -> bool {
        self.small.get(seq as usize).copied().unwrap_or(false)
    }

    fn ret(&mut self, rank: Rank, seq: u64, epoch: u64) {
        if self.is_small(seq) {
            // It holds the result: nothing of the others' can stop it now but a pause.
            if self.ranks[rank].paused {
                return self.at(self.now + 10_000, Ev::Return { rank, seq, epoch });
            }
            let steps = self.ranks[rank].on_return(seq, epoch);
            self.apply(rank, steps);
            return self.kick(rank);
        }
        let broken = self.attempts.get(&(seq, epoch)).is_none_or(|a| a.broken);
        // Completion tokens may still reach some members of a broken attempt: a coin says.
        if !self.ranks[rank].alive || (broken && self.rng.percent(50)) {
            return;
        }
        if !broken && self.paused_member(seq, epoch).is_some() {
            return self.at(self.now + 10_000, Ev::Return { rank, seq, epoch });
        }
        let steps = self.ranks[rank].on_return(seq, epoch);
        self.apply(rank, steps);
        self.kick(rank);
    }

    /// The ring link from `rank` to its next member breaks while both live: both ends report
    /// the other (if a call needs the link).
    fn cut(&mut self, rank: Rank) {
        let r = &self.ranks[rank];
        if !r.alive || r.paused || r.active.is_none() {
            return;
        }
        let (epoch, members) = r.view();
        let Some(pos) = members.iter().position(|m| *m == rank) else { return };
        let next = members[(pos + 1) % members.len()];
        if next == rank || !self.ranks[next].alive {
            return;
        }
        self.break_attempts_of(rank, u64::MAX);
        self.send_coord(rank, ToCoord::Suspect { suspect: next, epoch });
        self.send_coord(next, ToCoord::Suspect { suspect: rank, epoch });
    }

    /// Schedules the seed's faults in `[0, until)`.
    fn plan_faults(&mut self, until: Us) -> usize {
        let world = self.ranks.len();
        let n = 1 + self.rng.below(4) as usize;
        for _ in 0..n {
            let t = self.rng.below(until.max(1));
            let r = self.rng.index(world);
            let ev = match self.rng.below(7) {
                0 | 1 => Ev::Kill(r),
                2 => Ev::Crash(r),
                3 => Ev::Pause(r, 1_000 + self.rng.below(2 * HEARTBEAT_TIMEOUT_US)),
                4 => Ev::Delay(r, 1_000 + self.rng.below(2 * HEARTBEAT_TIMEOUT_US)),
                _ => Ev::Cut(r),
            };
            if matches!(ev, Ev::Kill(_) | Ev::Crash(_)) && self.rng.percent(70) {
                let back = t + 1_000 + self.rng.below(3_000_000);
                self.at(back, Ev::Restart(r));
            }
            self.at(t, ev);
        }
        n
    }

    /// Every returner of a call returned the same attempt, and was a member of it.
    fn check_safety(&self) -> Result<(), String> {
        for r in &self.ranks {
            if let Some(d) = &r.desync {
                return Err(format!("rank {} desynchronised: {d}", r.rank));
            }
        }
        let returned: BTreeSet<(u64, Rank, u64)> =
            self.results.iter().flat_map(|(seq, got)| got.iter().map(|(_, _, r, inc)| (*seq, *r, *inc))).collect();
        for (seq, got) in &self.results {
            // A small call binds the returners that stayed in the job (module docs).
            let stayed = |rank: Rank, inc: u64| {
                let r = &self.ranks[rank];
                let in_view = self.coord.members().iter().any(|(m, _)| *m == rank);
                let member = r.incarnation == inc && r.alive && r.terminal.is_none() && in_view;
                !self.is_small(*seq) || member || returned.contains(&(seq + 1, rank, inc))
            };
            let bound: Vec<&Returned> = got.iter().filter(|g| stayed(g.2, g.3)).collect();
            for (m, _, rank, _) in got {
                if !m.contains(rank) {
                    return Err(format!("call #{seq}: rank {rank} returned an attempt over {m:?} without it"));
                }
            }
            let Some((members, epoch, ..)) = bound.first() else { continue };
            for (m, e, rank, _) in bound.iter().copied() {
                if (m, e) != (members, epoch) {
                    return Err(format!(
                        "call #{seq}: rank {rank} returned the attempt over {m:?} (epoch {e}), another over \
                         {members:?} (epoch {epoch})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs one seeded case: `world` ranks make `calls` all-reduces each while faults strike.
///
/// # Errors
/// The first violated property, naming the seed's facts (replay with the same seed).
pub fn run(seed: u64, mode: GroupMode) -> Result<GroupSummary, String> {
    let mut rng = SimRng::new(seed ^ 0x6709);
    let world = 2 + rng.index(7);
    let calls = 10 + rng.below(40);
    // About half the calls are small (no completion tokens).
    let small: Vec<bool> = (0..calls).map(|_| rng.percent(50)).collect();
    let mut w = World::new(world, small, seed);
    let horizon: Us = 20_000_000;
    let fault_until = if mode == GroupMode::Liveness { horizon / 2 } else { horizon };
    let faults = w.plan_faults(fault_until);
    for r in 0..world {
        w.kick(r);
    }
    // Long enough for the last fault's detection (heartbeat timeout), a join backoff, and
    // every remaining call.
    let limit = fault_until + 6 * HEARTBEAT_TIMEOUT_US + 70_000_000;
    while let Some(std::cmp::Reverse((t, _, i))) = w.queue.pop() {
        if t > limit {
            break;
        }
        w.now = t;
        if let Some(ev) = w.events[i].take() {
            w.handle(ev);
        }
        if w.ranks.iter().all(|r| r.done()) && t > fault_until {
            break;
        }
    }
    w.check_safety().map_err(|e| format!("seed {seed} ({mode:?}, world {world}, {calls} calls): {e}"))?;
    if mode == GroupMode::Liveness {
        if let Some(r) = w.ranks.iter().find(|r| !r.done() && !r.joining) {
            return Err(format!(
                "seed {seed} (liveness, world {world}, {calls} calls): rank {} stuck {:.1} s after the last \
                 fault; coordinator epoch {} members {:?}; ranks {:#?}",
                r.rank,
                (w.now.saturating_sub(fault_until)) as f64 / 1e6,
                w.coord.epoch(),
                w.coord.members().iter().map(|(r, _)| *r).collect::<Vec<_>>(),
                w.ranks
            ));
        }
    }
    Ok(GroupSummary {
        world,
        calls,
        faults,
        returned: w.results.values().map(Vec::len).sum(),
        joins: w.joins,
        handed_over: w.handed_over,
        views: w.coord.epoch(),
    })
}
