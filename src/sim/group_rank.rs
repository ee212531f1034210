//! The rank side of the membership simulation (`sim::group`): a model of what
//! `net::recovery` and `net::joining` do with the coordinator's messages, step for step:
//! suspend and report on a new view, finish or redo on the decision, hold and answer for a
//! join, switch views at the admission boundary, start at it when joining. Small calls
//! (`core::fin::tokens_needed`) return as soon as the rank holds the result; the rank
//! retains it until its next call returns and hands it to the coordinator with its report
//! (`net::retain`); a decision may finish a call with another member's copy.

use std::collections::VecDeque;

use super::group::{ToCoord, ToRank};
use crate::core::membership::ResyncReport;
use crate::Rank;

/// One attempt of a call as a rank runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Att {
    pub(super) seq: u64,
    pub(super) epoch: u64,
    pub(super) members: Vec<Rank>,
    pub(super) holds: bool,
}

/// What a rank model asks the simulated world to do.
#[derive(Debug)]
pub(super) enum Step {
    Send(ToCoord),
    Start(Att),
    /// It moved to the view of this epoch: its links of older views are gone, and the
    /// attempts of those views it was in stop.
    Abandon(u64),
    Returned {
        seq: u64,
        members: Vec<Rank>,
        epoch: u64,
    },
}

/// One process of a rank.
#[derive(Debug)]
pub(super) struct RankModel {
    pub(super) rank: Rank,
    pub(super) incarnation: u64,
    pub(super) alive: bool,
    pub(super) paused: bool,
    epoch: u64,
    members: Vec<Rank>,
    pub(super) completed: u64,
    next_seq: u64,
    pub(super) active: Option<Att>,
    awaiting: Option<u64>,
    pub(super) terminal: Option<String>,
    pub(super) desync: Option<String>,
    hold: bool,
    switches: VecDeque<(u64, Vec<Rank>, u64)>,
    /// A restarted process waiting for the view that admits it.
    pub(super) joining: bool,
    calls: u64,
    /// Messages that arrived while paused, handled on resume.
    pub(super) deferred: Vec<ToRank>,
    /// Per call: true if it runs without completion tokens (a small all-reduce).
    small: Vec<bool>,
    /// The retained result of the last small call returned: (seq, attempt epoch, members).
    retained: Option<(u64, u64, Vec<Rank>)>,
    /// A copy handed over by the coordinator for the view being installed: (epoch, seq,
    /// attempt epoch, members).
    handed: Option<(u64, u64, u64, Vec<Rank>)>,
}

/// What a rank hands the coordinator with its report: (seq, attempt epoch, members).
pub(super) type Offer = (u64, u64, Vec<Rank>);

impl RankModel {
    pub(super) fn new(rank: Rank, world: usize, small: Vec<bool>) -> RankModel {
        RankModel {
            rank,
            incarnation: 0,
            alive: true,
            paused: false,
            epoch: 1,
            members: (0..world).collect(),
            completed: 0,
            next_seq: 0,
            active: None,
            awaiting: None,
            terminal: None,
            desync: None,
            hold: false,
            switches: VecDeque::new(),
            joining: false,
            calls: small.len() as u64,
            deferred: Vec::new(),
            small,
            retained: None,
            handed: None,
        }
    }

    /// The next incarnation of `old`, asking to join.
    pub(super) fn restarted(old: &RankModel) -> RankModel {
        let mut r = RankModel::new(old.rank, 0, old.small.clone());
        r.incarnation = old.incarnation + 1;
        r.joining = true;
        r.epoch = 0;
        r
    }

    /// Whether it still takes part (alive, not evicted, not done).
    pub(super) fn done(&self) -> bool {
        !self.alive || self.terminal.is_some() || self.desync.is_some() || self.completed >= self.calls
    }

    fn known_epoch(&self) -> u64 {
        self.switches.back().map_or(self.epoch, |(e, _, _)| *e).max(self.awaiting.unwrap_or(0))
    }

    fn desync(&mut self, why: String) {
        self.desync.get_or_insert(why);
    }

    /// A message from the coordinator.
    pub(super) fn on_msg(&mut self, msg: ToRank) -> Vec<Step> {
        let mut out = Vec::new();
        match msg {
            ToRank::View { epoch, members, start_seq: None } if epoch > self.known_epoch() && !self.joining => {
                if !members.contains(&self.rank) {
                    self.terminal.get_or_insert(format!("not in the view of epoch {epoch}"));
                    return out;
                }
                self.hold = false;
                self.switches.clear();
                out.push(Step::Abandon(epoch));
                let (holds, attempt_epoch) = self.active.as_ref().map_or((false, self.epoch), |a| (a.holds, a.epoch));
                let report = ResyncReport { completed: self.completed, holds, attempt_epoch, handed: None };
                self.handed = None;
                let offer = match &self.active {
                    Some(a) if a.holds && self.is_small(a.seq) => Some((a.seq, a.epoch, a.members.clone())),
                    _ => self.retained.clone(),
                };
                out.push(Step::Send(ToCoord::Resync { epoch, report, offer }));
                self.awaiting = Some(epoch);
                self.epoch = epoch;
                self.members = members;
            }
            ToRank::View { epoch, members, start_seq: Some(k) } if epoch > self.known_epoch() => {
                if self.joining {
                    self.joining = false;
                    (self.epoch, self.members, self.completed, self.next_seq) = (epoch, members, k, k);
                } else if self.next_seq > k {
                    self.desync(format!("admitted at #{k} after starting #{}", self.next_seq - 1));
                } else {
                    self.hold = false;
                    self.switches.push_back((epoch, members, k));
                }
            }
            ToRank::View { .. } => {}
            ToRank::Decision { epoch, seq, finish } if self.awaiting == Some(epoch) => {
                self.awaiting = None;
                let handed = self.handed.take().filter(|h| h.0 == epoch && h.1 == seq).map(|h| (h.2, h.3));
                self.apply_decision(seq, finish, handed, &mut out);
            }
            ToRank::Decision { .. } => {}
            ToRank::Handed { epoch, seq, attempt_epoch, members } => {
                self.handed = Some((epoch, seq, attempt_epoch, members));
            }
            ToRank::Terminal(why) => {
                self.terminal.get_or_insert(why);
            }
            ToRank::JoinPrepare { epoch } if epoch == self.known_epoch() && self.terminal.is_none() => {
                self.hold = true;
                out.push(Step::Send(ToCoord::JoinAck { epoch, next_seq: self.next_seq }));
            }
            ToRank::JoinPrepare { .. } => {}
            ToRank::JoinCancel => self.hold = false,
        }
        out
    }

    /// Whether call `seq` runs without completion tokens.
    pub(super) fn is_small(&self, seq: u64) -> bool {
        self.small.get(seq as usize).copied().unwrap_or(false)
    }

    /// Returns call `seq` of the attempt of `epoch` over `members`, retaining it if small.
    fn returned(&mut self, seq: u64, epoch: u64, members: Vec<Rank>, out: &mut Vec<Step>) {
        self.retained = self.is_small(seq).then(|| (seq, epoch, members.clone()));
        out.push(Step::Returned { seq, members, epoch });
        self.completed += 1;
    }

    /// As `EventLoop::apply_decision`: `handed` is the copy (attempt epoch, members) the
    /// coordinator sent this rank for the call, if any.
    fn apply_decision(&mut self, seq: u64, finish: bool, handed: Option<(u64, Vec<Rank>)>, out: &mut Vec<Step>) {
        let completed = self.completed;
        match (self.active.take(), handed) {
            (Some(a), Some((epoch, members))) if a.seq == seq && finish => self.returned(seq, epoch, members, out),
            (Some(a), _) if a.seq == seq && a.holds && finish => self.returned(seq, a.epoch, a.members, out),
            (Some(a), _) if (a.seq == seq && !finish) || a.seq == seq + 1 => {
                let redo = Att { seq: a.seq, epoch: self.epoch, members: self.members.clone(), holds: false };
                out.push(Step::Start(redo.clone()));
                self.active = Some(redo);
            }
            (Some(a), _) => {
                self.desync(format!("decision on #{seq} ({finish}) while running #{} ({})", a.seq, a.holds))
            }
            (None, _) if (completed == seq && !finish) || completed == seq + 1 => {}
            (None, _) => self.desync(format!("decision on #{seq} ({finish}) with {completed} completed")),
        }
        self.next_seq = self.completed + u64::from(self.active.is_some());
    }

    /// The application starts its next call when nothing stops it.
    pub(super) fn try_start(&mut self) -> Vec<Step> {
        let mut out = Vec::new();
        if self.done() || self.paused || self.joining || self.active.is_some() || self.awaiting.is_some() {
            return out;
        }
        while let Some((epoch, members, _)) =
            self.switches.front().filter(|(_, _, k)| *k == self.next_seq && *k == self.completed).cloned()
        {
            // At the boundary it returned every earlier call and wrote everything it owed
            // on the old links (`net::joining` waits for that): nothing of theirs breaks.
            self.switches.pop_front();
            (self.epoch, self.members) = (epoch, members);
        }
        let switch_due = self.switches.front().is_some_and(|(_, _, k)| *k <= self.next_seq);
        if self.hold || switch_due || self.next_seq >= self.calls {
            return out;
        }
        let att = Att { seq: self.next_seq, epoch: self.epoch, members: self.members.clone(), holds: false };
        self.next_seq += 1;
        self.active = Some(att.clone());
        out.push(Step::Start(att));
        out
    }

    /// The result of `(seq, epoch)` arrived here (a small call returns it at once).
    pub(super) fn on_hold(&mut self, seq: u64, epoch: u64) -> bool {
        match self.active.as_mut() {
            Some(a) if a.seq == seq && a.epoch == epoch && self.awaiting.is_none() => {
                a.holds = true;
                true
            }
            _ => false,
        }
    }

    /// Every member of `(seq, epoch)` holds its result (a small call: this rank does):
    /// this rank returns it.
    pub(super) fn on_return(&mut self, seq: u64, epoch: u64) -> Vec<Step> {
        let matches = self.active.as_ref().is_some_and(|a| a.seq == seq && a.epoch == epoch && a.holds);
        if !matches || self.awaiting.is_some() {
            return Vec::new();
        }
        let Some(a) = self.active.take() else { return Vec::new() };
        let mut out = Vec::new();
        self.returned(seq, epoch, a.members, &mut out);
        self.next_seq = self.completed;
        out
    }

    /// The view this rank is in and the attempt it runs, for suspicions.
    pub(super) fn view(&self) -> (u64, &[Rank]) {
        (self.epoch, &self.members)
    }
}
