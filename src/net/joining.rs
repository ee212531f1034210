//! Admitting a rank into the running ring, on the members' side (the coordinator's side is
//! `core::joins`): hold before the next call when asked and say which call it is; on the
//! admitting view, finish the calls before its first one in the old view, then switch to
//! the new ring at that boundary. Nothing running is interrupted.

use std::time::Instant;

use crossbeam_channel::Sender;

use super::EventLoop;
use crate::coord::View;
use crate::net::establish::RingBuilder;
use crate::wire::control::Control;
use crate::{Error, Rank};

/// The application waiting at a join point.
#[derive(Debug)]
pub(super) struct JoinWait {
    reply: Sender<Result<Vec<Rank>, Error>>,
    /// The call after the point, once this rank told the coordinator it is there.
    at: Option<u64>,
    /// The ranks admitted there, once known; handed over when the ring of the view that
    /// admits them stands (so the application's next call runs in it).
    answer: Option<Vec<Rank>>,
}

impl EventLoop {
    /// The newest view this rank knows of: installed, being installed, or admitted for a
    /// later boundary.
    fn known_epoch(&self) -> u64 {
        let rebuilding = self.rebuild.as_ref().map(|(b, _)| b.epoch());
        let switching = self.switches.back().map(|(v, _)| v.epoch);
        let pending = self.pending_view.as_ref().map(|v| v.epoch);
        let awaited = self.awaiting.map(|(e, _)| e);
        [Some(self.epoch), rebuilding, switching, pending, awaited].into_iter().flatten().max().unwrap_or(self.epoch)
    }

    /// The coordinator prepares a join in the view of `epoch`: hold before the next call and
    /// tell it which call that is. A request for an older view is stale (the join was put
    /// off by the view change) and ignored.
    pub(super) fn on_join_prepare(&mut self, epoch: u64) {
        if self.terminal.is_some() || epoch != self.known_epoch() {
            tracing::debug!(rank = self.rank, epoch, known = self.known_epoch(), "stale join request ignored");
            return;
        }
        self.hold = Some(epoch);
        let ack = Control::JoinAck { rank: self.rank as u32, epoch, next_seq: self.next_seq };
        if let Some(c) = self.coord.as_mut() {
            c.send(&ack);
        }
        tracing::debug!(rank = self.rank, epoch, next_seq = self.next_seq, "holding for a join");
    }

    /// The join prepared in `epoch` is off.
    pub(super) fn on_join_cancel(&mut self, epoch: u64) {
        if self.hold == Some(epoch) {
            self.hold = None;
        }
    }

    /// A view that admits ranks from call `start_seq` on: calls before it run in the current
    /// view, and the ring switches at that boundary.
    pub(super) fn on_admit(&mut self, view: View, start_seq: u64) {
        self.hold = None;
        if self.next_seq > start_seq {
            self.desync(format!(
                "admitted a rank at call #{start_seq}, but this rank has already started #{}",
                self.next_seq - 1
            ));
            return;
        }
        tracing::info!(rank = self.rank, epoch = view.epoch, start_seq, joined = ?view.joined, "ranks admitted");
        if let Some(w) = self.join_wait.as_mut().filter(|w| w.at == Some(start_seq)) {
            w.answer = Some(view.joined.clone());
        }
        self.switches.push_back((view, start_seq));
    }

    /// No call runs and no view change is being resolved or built.
    fn between_calls(&self) -> bool {
        self.active.is_none() && self.awaiting.is_none() && self.rebuild.is_none()
    }

    /// Whether the next call must wait (held for a join being prepared, or a switch due).
    pub(super) fn join_blocks_start(&self) -> bool {
        let at_point = self.join_wait.as_ref().is_some_and(|w| w.at.is_some());
        at_point || self.hold.is_some() || self.switches.front().is_some_and(|(_, k)| *k <= self.next_seq)
    }

    /// The application reached a join point (`Communicator::admit_joins`): once the calls
    /// queued before it are done, this rank tells the coordinator and holds until it answers.
    pub(super) fn request_join_point(&mut self, reply: Sender<Result<Vec<Rank>, Error>>) {
        if !self.join_points {
            let _ = reply.send(Err(Error::InvalidArgument {
                op: "admit_joins",
                reason: "join points are off: set Config::join_points (RINGCC_JOIN_POINTS=1) on every rank".into(),
            }));
        } else if self.join_wait.is_some() {
            let _ = reply.send(Err(Error::InvalidArgument {
                op: "admit_joins",
                reason: "another thread waits at a join point of this communicator".into(),
            }));
        } else {
            self.join_wait = Some(JoinWait { reply, at: None, answer: None });
        }
    }

    /// Sends the pending join point once nothing runs or waits before it, and hands the
    /// answer over once any view it brought stands.
    pub(super) fn maybe_join_point(&mut self) -> bool {
        let Some(w) = self.join_wait.as_ref() else { return false };
        if let Some(t) = self.terminal.clone() {
            self.answer_join_point(Err(t.error(self.rank)));
            return true;
        }
        let settled = self.between_calls() && self.pending_view.is_none() && self.switches.is_empty();
        if !settled || (w.at.is_none() && !self.queue.is_empty()) {
            return false;
        }
        if let Some(joined) = w.answer.clone() {
            self.answer_join_point(Ok(joined));
            return true;
        }
        if w.at.is_some() {
            return false;
        }
        let point = Control::JoinPoint { rank: self.rank as u32, epoch: self.epoch, seq: self.next_seq };
        match self.coord.as_mut().filter(|c| !c.is_lost()) {
            Some(c) => c.send(&point),
            // No coordinator, no joins: nobody can be admitted.
            None => {
                self.answer_join_point(Ok(Vec::new()));
                return true;
            }
        }
        let next = self.next_seq;
        if let Some(w) = self.join_wait.as_mut() {
            w.at = Some(next);
        }
        true
    }

    /// Nobody joins at the join point before call `seq`.
    pub(super) fn on_join_point_done(&mut self, _epoch: u64, seq: u64) {
        if let Some(w) = self.join_wait.as_mut().filter(|w| w.at == Some(seq)) {
            w.answer.get_or_insert_with(Vec::new);
        }
    }

    /// Answers the application waiting at a join point, if any.
    pub(super) fn answer_join_point(&mut self, answer: Result<Vec<Rank>, Error>) {
        if let Some(w) = self.join_wait.take() {
            let _ = w.reply.send(answer);
        }
    }

    /// At the boundary of an admitting view (no call running, every call before its first
    /// one completed, everything queued on the old links written): start building its ring.
    /// Returns true if it did.
    pub(super) fn maybe_switch(&mut self) -> bool {
        let at_boundary = self.switches.front().is_some_and(|(_, k)| *k == self.next_seq && *k == self.completed);
        let idle = self.between_calls();
        let flushed = self.links.iter().flatten().all(|l| l.closed || l.out.is_empty());
        if !(at_boundary && idle && flushed && self.terminal.is_none()) {
            return false;
        }
        let Some((view, _)) = self.switches.pop_front() else { return false };
        self.joined = view.joined.clone();
        let counts = (self.completed, self.next_seq);
        match RingBuilder::new(view, self.rank, self.incarnation, counts) {
            Ok(b) => self.rebuild = Some((b, Instant::now())),
            Err(e) => self.desync(e.to_string()),
        }
        true
    }

    /// A view replacing a failed one supersedes any join in progress. Ranks admitted by a
    /// switch not made yet are in the new view too: the next call still reports them.
    pub(super) fn forget_joins(&mut self) {
        self.hold = None;
        // A join point the coordinator did not answer: nobody joined there (the next point
        // may admit). One it answered keeps its answer: the new view has those ranks too.
        if let Some(w) = self.join_wait.as_mut().filter(|w| w.at.is_some()) {
            w.answer.get_or_insert_with(Vec::new);
        }
        for (view, _) in self.switches.drain(..) {
            self.joined.extend(view.joined);
        }
    }
}
