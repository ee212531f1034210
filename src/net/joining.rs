//! Admitting a rank into the running ring, on the members' side (the coordinator's side is
//! `core::joins`): hold before the next call when asked and say which call it is; on the
//! admitting view, finish the calls before its first one in the old view, then switch to
//! the new ring at that boundary. Nothing running is interrupted.

use std::time::Instant;

use super::EventLoop;
use crate::coord::View;
use crate::net::establish::RingBuilder;
use crate::wire::control::Control;

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
        self.switches.push_back((view, start_seq));
    }

    /// Whether the next call must wait (held for a join being prepared, or a switch due).
    pub(super) fn join_blocks_start(&self) -> bool {
        self.hold.is_some() || self.switches.front().is_some_and(|(_, k)| *k <= self.next_seq)
    }

    /// At the boundary of an admitting view (no call running, every call before its first
    /// one completed, everything queued on the old links written): start building its ring.
    /// Returns true if it did.
    pub(super) fn maybe_switch(&mut self) -> bool {
        let at_boundary = self.switches.front().is_some_and(|(_, k)| *k == self.next_seq && *k == self.completed);
        let idle = self.active.is_none() && self.awaiting.is_none() && self.rebuild.is_none();
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
        for (view, _) in self.switches.drain(..) {
            self.joined.extend(view.joined);
        }
    }
}
