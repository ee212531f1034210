//! Recovery after a membership change: suspend the running call, report where this rank
//! stands, rebuild the ring over the new view, then finish or redo the call as the
//! coordinator decides (`core::membership::decide`; the contract is in `docs/FAILURES.md`).

use std::time::Instant;

use super::{Active, EventLoop, Terminal};
use crate::core::collective::{Collective, ProtocolError, Spec, Status};
use crate::limits::REBUILD_ATTEMPT_MAX;
use crate::net::establish::RingBuilder;
use crate::net::JobOutcome;
use crate::wire::control::{Control, HandedResult};
use crate::wire::CollKind;
use crate::{Error, Report};

/// Whether a call must save the input it overwrites so that it can be redone (the
/// collective saves each segment just before its first write). All-gather and
/// reduce-scatter are not redone (their layout depends on the membership).
pub(super) fn needs_backup(spec: &Spec) -> bool {
    // A broadcast root never writes its buffer; other ranks' buffers are overwritten anyway.
    spec.coll == CollKind::AllReduce
}

/// The report of a completed attempt: members and epoch are those it ran in.
pub(super) fn report(a: &Active, now: Instant) -> Report {
    let marks = a.coll.phase_marks();
    let rs_end = marks.reduce_scatter_done.unwrap_or(a.started);
    Report {
        epoch: a.epoch,
        members: a.members.clone(),
        joined: a.joined.clone(),
        seq: a.seq,
        bytes_sent: a.coll.bytes_sent(),
        bytes_sent_raw: a.coll.bytes_sent_raw(),
        reduce_scatter: rs_end.saturating_duration_since(a.started),
        all_gather: now.saturating_duration_since(rs_end),
        queued: a.started.saturating_duration_since(a.job.submitted),
        total: now.saturating_duration_since(a.job.submitted),
    }
}

impl EventLoop {
    /// With exact retry, a call failed by a lost peer or a stall is not returned: it waits
    /// for the coordinator's new view, then is finished or redone. True while it waits
    /// (at most the rebuild wait; then it fails with its error).
    pub(super) fn wait_for_view(&mut self, now: Instant) -> bool {
        if !self.exact_retry {
            return false;
        }
        let Some(a) = self.active.as_mut() else { return false };
        let stalled = match a.coll.status() {
            Status::Failed(ProtocolError::Stalled { link, .. }) if a.error.is_none() => Some(*link),
            _ => None,
        };
        let lost_peer = matches!(a.error, Some(Error::PeerClosed { .. } | Error::Interrupted { .. }));
        if stalled.is_none() && !lost_peer {
            return false;
        }
        let since = *a.retry_since.get_or_insert(now);
        if let Some(link) = stalled.filter(|_| !a.stall_reported) {
            a.stall_reported = true;
            let reason = match a.coll.status() {
                Status::Failed(pe) => pe.to_string(),
                _ => String::new(),
            };
            if let Some(peer) = self.peer_on(link) {
                tracing::warn!(rank = self.rank, peer, links = %self.link_states(), "stalled: {reason}");
                self.suspect(peer, true, &reason);
            }
        }
        now < since + self.rebuild_wait()
    }

    /// Each link's state, for the log line of a stall: what it reads, whether the socket
    /// holds unread bytes, what waits to be written.
    pub(super) fn link_states(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.links.iter().enumerate() {
            let Some(l) = l.as_ref() else { continue };
            let waiting = l.stream.peek(&mut [0u8; 1]).map_or_else(|e| e.kind().to_string(), |n| n.to_string());
            out.push_str(&format!(
                "[{} peer {}: rx {:?}, readable {}, writable {}, closed {}, unread {waiting}, out {} frames, in {} B, sent {} B] ",
                match i {
                    0 => "prev",
                    1 => "next",
                    _ => "partner",
                },
                l.peer,
                l.rx,
                l.readable,
                l.writable,
                l.closed,
                l.out.len(),
                l.bytes_in,
                l.bytes_out
            ));
        }
        out
    }

    /// Installs a view from the coordinator as soon as it arrives: the running call (whose
    /// frames in flight belong to the old view) is suspended, this rank reports where it
    /// stands, and connects to its new neighbours. The call resumes on the decision.
    pub(super) fn maybe_install_view(&mut self) -> bool {
        let Some(view) = self.pending_view.take() else { return false };
        self.forget_joins();
        let started = self.next_seq;
        if let Some(plan) = self.fault.take_if(|p| started > 0 && p.due_in_recovery(started - 1)) {
            crate::net::fault::strike(self.rank, &plan);
        }
        if !view.members.iter().any(|m| m.rank == self.rank) {
            self.terminal.get_or_insert(Terminal::Evicted { epoch: view.epoch, reason: "not in the new view".into() });
            return true;
        }
        let epoch = view.epoch;
        let (holds, attempt_epoch) = match &self.active {
            Some(a) => (a.coll.holds_result(), a.epoch),
            None => (false, self.epoch),
        };
        self.results.new_view();
        // A result this rank holds or retains goes first, so the coordinator has it when
        // the report completes its decision (`retain`).
        let running = self
            .active
            .as_ref()
            .filter(|a| a.coll.holds_result())
            .map(|a| (a.coll.spec(), a.epoch, &a.members[..], a.job.buf.bytes()));
        let offer = self.results.offer(self.rank, epoch, running);
        let resync = Control::Resync { rank: self.rank as u32, epoch, completed: self.completed, holds, attempt_epoch };
        if let Some(c) = self.coord.as_mut() {
            if let Some(h) = offer {
                c.send(&Control::Result(h));
            }
            c.send(&resync);
        }
        self.awaiting = Some((epoch, Instant::now()));
        let counts = (self.completed, self.next_seq);
        match RingBuilder::new(view, self.rank, self.incarnation, counts) {
            Ok(b) => self.rebuild = Some((b, Instant::now())),
            Err(e) => self.desync(e.to_string()),
        }
        true
    }

    /// Connects to the new neighbours of the view being installed. An attempt that fails
    /// (a neighbour still busy with an older view, say) is retried from the loop, so the
    /// coordinator is heard and heartbeats flow between attempts, until the heartbeat
    /// timeout has passed since the view arrived; then the neighbour is reported.
    pub(super) fn try_rebuild(&mut self) -> bool {
        let Some((mut builder, first)) = self.rebuild.take() else { return false };
        // Several views can arrive in quick succession: connect only in the newest.
        self.read_coordinator(Instant::now());
        if self.pending_view.is_some() {
            return true; // superseded by a newer view
        }
        let epoch = builder.epoch();
        // The loop sends no heartbeats while it connects: stay well inside their timeout.
        let limit = REBUILD_ATTEMPT_MAX.min(self.heartbeat_timeout / 4);
        match builder.attempt(&self.listener, limit, &self.secret) {
            Ok(ring) => {
                // Calls are sequential and returned only once every member started them (the
                // result needs every input): the survivors' completed counts differ by at most one.
                let completed = self.completed;
                if let Some(theirs) = ring.counts.iter().flatten().find(|c| c.0.abs_diff(completed) > 1) {
                    self.desync(format!("a new neighbour completed {} calls, this rank {completed}", theirs.0));
                }
                if let Err(e) = self.adopt_ring(ring) {
                    self.broken = Some((self.rank, format!("registering new links: {e}"), Instant::now(), true));
                }
                tracing::info!(rank = self.rank, epoch, members = ?self.members, "ring rebuilt");
            }
            Err(e) if first.elapsed() < self.heartbeat_timeout => {
                tracing::debug!(rank = self.rank, epoch, "ring rebuild attempt failed, retrying: {e}");
                self.rebuild = Some((builder, first));
                return false; // let the loop hear the coordinator before the next attempt
            }
            Err(e) => {
                tracing::warn!(rank = self.rank, epoch, "ring rebuild failed: {e}");
                let peer = match &e {
                    Error::Io { peer, .. } => Some(*peer),
                    Error::Authentication { peer, .. } => *peer,
                    _ => None,
                };
                if let Some(p) = peer {
                    self.suspect(p, false, &e.to_string());
                }
                // Links of the old view must not carry anything more.
                self.drop_links();
                self.epoch = epoch;
                self.broken = Some((peer.unwrap_or(self.rank), e.to_string(), Instant::now(), true));
            }
        }
        true
    }

    /// Applies the coordinator's decision for the view this rank installed, or gives up
    /// waiting for one after the rebuild wait. Returns true if anything changed.
    pub(super) fn apply_decision(&mut self, now: Instant) -> bool {
        let Some((awaited, since)) = self.awaiting else {
            self.decision = None;
            return false;
        };
        if self.rebuild.is_some() {
            return false; // the decision applies once the new ring stands
        }
        let Some((epoch, seq, finish)) = self.decision.take_if(|d| d.0 == awaited) else {
            if now >= since + self.rebuild_wait() {
                self.awaiting = None;
                let detail = format!("no decision from the coordinator on the view of epoch {awaited}");
                self.desync(detail);
                return true;
            }
            return false;
        };
        self.awaiting = None;
        let completed = self.completed;
        let handed = self.results.take_handed(epoch, seq);
        let fits = |a: &Active, h: &HandedResult| h.bytes.len() == a.job.buf.bytes().len() && h.seq == a.seq;
        match self.active.as_ref().map(|a| (a.seq, a.coll.holds_result(), handed.as_ref().is_some_and(|h| fits(a, h))))
        {
            Some((s, holds, taken)) if s == seq && finish && (holds || taken) => self.finish_active(now, handed),
            Some((s, ..)) if (s == seq && !finish) || s == seq + 1 => self.redo_active(now),
            Some((s, holds, _)) => {
                self.desync(format!("decision on #{seq} (finish: {finish}) while running #{s} (holds result: {holds})"))
            }
            None if (completed == seq && !finish) || completed == seq + 1 => {}
            None => self.desync(format!("decision on #{seq} (finish: {finish}) with {completed} calls completed")),
        }
        self.next_seq = self.completed + u64::from(self.active.is_some());
        tracing::debug!(rank = self.rank, epoch, seq, finish, "decision applied");
        true
    }

    /// Returns the active call with the result it holds, or with the copy `handed` over
    /// from another member (its report then names that copy's attempt).
    fn finish_active(&mut self, now: Instant, handed: Option<HandedResult>) {
        let Some(mut a) = self.active.take() else { return };
        a.error = None;
        for l in self.links.iter_mut().flatten() {
            l.release_job(a.job.buf.bytes());
        }
        self.codecs = a.coll.take_codecs().or(self.codecs.take());
        if let Some(b) = a.coll.take_backup() {
            self.backup = b;
        }
        let source = handed.as_ref().map(|h| h.rank);
        if let Some(h) = handed {
            a.job.buf.bytes_mut().copy_from_slice(&h.bytes);
            (a.epoch, a.members) = (h.attempt_epoch, h.members);
        }
        let report = report(&a, now);
        self.results.returned(a.coll.spec(), a.epoch, &a.members, a.job.buf.bytes());
        self.record_completed(a.coll.spec().coll, a.job.buf.bytes().len(), &report, now - a.started);
        self.completed += 1;
        match source {
            Some(from) => tracing::info!(
                rank = self.rank,
                seq = a.seq,
                epoch = a.epoch,
                from,
                "interrupted call finished with a result handed over"
            ),
            None => tracing::info!(
                rank = self.rank,
                seq = a.seq,
                epoch = a.epoch,
                "interrupted call finished with its result"
            ),
        }
        let _ = a.job.reply.send(JobOutcome { result: Ok((a.job.buf.into_owner(), report)) });
    }

    /// Redoes the active call from its backup over the current view, or fails it with
    /// `Error::Interrupted` if it cannot be redone.
    fn redo_active(&mut self, now: Instant) {
        let Some(a) = self.active.as_ref() else { return };
        let spec = self.spec_for(&a.job.spec, a.seq);
        let root_alive = self.members.contains(&a.job.spec.root);
        let redoable = self.exact_retry
            && match spec.coll {
                CollKind::AllReduce | CollKind::Barrier => true,
                CollKind::Broadcast => root_alive,
                CollKind::AllGather | CollKind::ReduceScatter => false,
            };
        if !redoable {
            let Some(mut a) = self.active.take() else { return };
            for l in self.links.iter_mut().flatten() {
                l.release_job(a.job.buf.bytes());
            }
            self.codecs = a.coll.take_codecs().or(self.codecs.take());
            if let Some(b) = a.coll.take_backup() {
                self.backup = b;
            }
            let err = Error::Interrupted { seq: a.seq, epoch: a.epoch, new_epoch: self.epoch };
            let _ = a.job.reply.send(JobOutcome { result: Err(err) });
            return;
        }
        let (epoch, members) = (self.epoch, self.sorted.clone());
        let Some(a) = self.active.as_mut() else { return };
        if a.backed_up && !a.coll.restore_input(a.job.buf.bytes_mut()) {
            tracing::error!(rank = self.rank, seq = a.seq, "no backup of the input to redo the call from");
        }
        let backup = a.coll.take_backup();
        tracing::info!(rank = self.rank, seq = a.seq, epoch, "redoing the interrupted call over the survivors");
        let codecs = a.coll.take_codecs().or(self.codecs.take());
        a.coll = Collective::start_with(spec, now, a.job.buf.bytes_mut(), codecs);
        if let Some(b) = backup {
            let len = a.job.buf.bytes().len();
            if let Some(unused) = a.coll.attach_backup(b, len) {
                self.backup = unused;
            }
        }
        a.error = self.broken.as_ref().map(|(peer, ..)| Error::PeerClosed { peer: *peer, seq: a.seq, epoch });
        a.epoch = epoch;
        a.members = members;
        a.started = now;
        a.retry_since = None;
        a.stall_reported = false;
        self.drain_transmits();
        self.unpark();
    }

    /// This rank can no longer pair its calls with the others'.
    pub(super) fn desync(&mut self, detail: String) {
        tracing::error!(rank = self.rank, %detail, "desynchronized");
        self.terminal.get_or_insert(Terminal::Desynchronized { completed: self.completed, detail });
        let t = self.terminal.clone();
        if let (Some(a), Some(t)) = (self.active.as_mut(), t) {
            // Not a retryable error: check_active returns it at once.
            a.error = Some(t.error(self.rank));
        }
    }

    /// Closes and forgets both ring links.
    pub(super) fn drop_links(&mut self) {
        for l in self.links.iter_mut().flatten() {
            let _ = self.poll.registry().deregister(&mut l.stream);
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
        }
        self.links = vec![None, None];
        self.partner_pos.clear();
    }
}
