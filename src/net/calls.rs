//! Starting a call (the next job from the queue, its spec in the current view, its codecs,
//! the planned fault of `RINGCC_FAULT` when it is due) and finishing it (the reply, the
//! report, aborts to the neighbours).

use std::time::Instant;

use super::{recovery, Active, EventLoop};
use crate::core::collective::{Collective, Link, ProtocolError, Spec, Status};
use crate::core::payload::Codecs;
use crate::core::ReduceOp;
use crate::net::link::{OutFrame, OutPayload};
use crate::net::JobOutcome;
use crate::wire::CollKind;
use crate::Error;

impl EventLoop {
    pub(super) fn start_next(&mut self, now: Instant) -> bool {
        // No call starts while a ring is being built: it would run on the links being replaced.
        if self.queue.is_empty() || self.awaiting.is_some() || self.rebuild.is_some() {
            return false;
        }
        if let Some(t) = &self.terminal {
            let err = t.error(self.rank);
            if let Some(job) = self.queue.pop_front() {
                let _ = job.reply.send(JobOutcome { result: Err(err) });
            }
            return true;
        }
        if self.join_blocks_start() {
            return false;
        }
        if let Some((peer, reason, since, reported)) = self.broken.clone() {
            if !reported {
                // The link broke between collectives: tell the coordinator only now that a
                // collective needs it (a neighbour that exited cleanly is no failure).
                self.suspect(peer, false, &reason);
                self.broken = Some((peer, reason, now, true));
                return true;
            }
            if now < since + self.rebuild_wait() {
                return false;
            }
            if let Some(job) = self.queue.pop_front() {
                let err = Error::PeerClosed { peer, seq: self.next_seq, epoch: self.epoch };
                let _ = job.reply.send(JobOutcome { result: Err(err) });
            }
            return true;
        }
        let Some(mut job) = self.queue.pop_front() else { return false };
        let layout_bound = matches!(job.spec.coll, CollKind::AllGather | CollKind::ReduceScatter | CollKind::Broadcast);
        if layout_bound && job.spec.epoch != self.epoch {
            let err = Error::Interrupted { seq: self.next_seq, epoch: job.spec.epoch, new_epoch: self.epoch };
            let _ = job.reply.send(JobOutcome { result: Err(err) });
            return true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let spec = self.spec_for(&job.spec, seq);
        if job.spec.stats_exchange {
            self.write_window(job.buf.bytes_mut());
        }
        let backed_up = self.exact_retry && recovery::needs_backup(&spec);
        let codecs = self.codecs_for_next();
        let mut coll = Collective::start_with(spec, now, job.buf.bytes_mut(), codecs);
        if backed_up {
            if let Some(unused) = coll.attach_backup(std::mem::take(&mut self.backup), job.buf.bytes().len()) {
                self.backup = unused;
            }
        }
        let error = self.broken.as_ref().map(|(peer, ..)| Error::PeerClosed { peer: *peer, seq, epoch: self.epoch });
        self.active = Some(Active {
            job,
            coll,
            seq,
            started: now,
            error,
            epoch: self.epoch,
            members: self.sorted.clone(),
            backed_up,
            retry_since: None,
            stall_reported: false,
            joined: {
                let members = &self.sorted;
                let mut j = std::mem::take(&mut self.joined);
                j.retain(|r| members.contains(r));
                j
            },
        });
        self.drain_transmits();
        self.unpark();
        self.check_fault(seq, "start", 0);
        true
    }

    /// Injects the planned fault if call `seq` is at the planned point.
    pub(super) fn check_fault(&mut self, seq: u64, phase: &str, step: u32) {
        let Some(plan) = self.fault.take_if(|p| p.due(seq, phase, step)) else { return };
        crate::net::fault::strike(self.rank, &plan);
        // `close`: neighbours see the links end; this rank lives on until it is evicted.
        self.drop_links();
        let now = Instant::now();
        self.broken = Some((self.rank, "ring links closed by RINGCC_FAULT".into(), now, true));
        if let Some(a) = self.active.as_mut() {
            a.error.get_or_insert(Error::PeerClosed { peer: self.rank, seq, epoch: self.epoch });
        }
    }

    /// The spec of call `seq` of `s` in the current view.
    pub(super) fn spec_for(&self, s: &crate::net::JobSpec, seq: u64) -> Spec {
        let world = self.members.len();
        let block_of_pos: Vec<usize> = match s.coll {
            CollKind::AllGather | CollKind::ReduceScatter => {
                self.members.iter().map(|r| self.sorted.binary_search(r).unwrap_or(0)).collect()
            }
            _ => (0..world).collect(),
        };
        let root_pos = self.members.iter().position(|&r| r == s.root).unwrap_or(0);
        Spec {
            coll: s.coll,
            op: if matches!(s.coll, CollKind::AllGather | CollKind::Broadcast | CollKind::Barrier) {
                ReduceOp::Sum
            } else {
                s.op
            },
            dtype: s.dtype,
            codec: self.codec,
            job: self.job,
            epoch: self.epoch,
            seq,
            len_elems: s.len_elems,
            world,
            pos: self.pos,
            rank: self.rank as u32,
            block_of_pos,
            root_pos,
            segment_bytes: self.segment_bytes,
            contributors: world,
            algorithm: self.algorithm,
            progress_timeout: self.progress_timeout,
            fin: self.results.tokens_needed(s),
            // Partner links always cover payloads (their frames are small; both ends
            // apply the same rule, `adopt_ring`).
            payload_crc: [0, 1, 2].map(|i| i == 2 || self.links[i].as_ref().is_none_or(|l| l.payload_crc)),
            // Every ring of 5 or more positions is built with its partner links
            // (`establish`), on every member alike.
            partner_links: true,
        }
    }

    /// The codec state for the next collective, fed with the links' latest drain rates
    /// and whether they stay on this host (codec `auto` weighs compression against them).
    pub(super) fn codecs_for_next(&mut self) -> Option<Box<Codecs>> {
        let mut codecs = self.codecs.take();
        // The ring links only: partner links carry the latency path's small raw frames.
        for (i, link) in [(0, Link::Prev), (1, Link::Next)] {
            let l = &mut self.links[i];
            if let Some(c) = codecs.as_mut() {
                c.set_local(link, l.as_ref().is_some_and(|l| l.rate.same_host()));
            }
            if let (Some(c), Some(rate)) = (codecs.as_mut(), l.as_mut().and_then(|l| l.rate.take_sample())) {
                c.observe_link(link, rate);
            }
        }
        if let Some(c) = codecs.as_mut() {
            c.observe_link_bytes([0, 1].map(|i| self.links[i].as_ref().map(|l| l.bytes_out + l.lanes.bytes_sent)));
        }
        codecs
    }

    /// Finishes the active collective if it is done or failed. Returns true if it did.
    pub(super) fn check_active(&mut self, now: Instant) -> bool {
        if self.awaiting.is_some() {
            return false;
        }
        if self.active.as_ref().is_some_and(|a| a.error.is_none() && *a.coll.status() == Status::Done) {
            // The frames the call's last turn queued (completion tokens forwarded to a
            // neighbour, which waits for them) go to the sockets before the caller wakes:
            // a woken caller may take this core for its next call, and the neighbour would
            // wait a scheduler tick for the forward.
            self.flush_all();
        }
        let Some(a) = self.active.as_mut() else { return false };
        let failed = a.error.is_some() || matches!(a.coll.status(), Status::Failed(_));
        if !failed {
            let flushing = self.links.iter().flatten().any(|l| l.holds_job_bytes());
            if *a.coll.status() == Status::Running || flushing {
                return false;
            }
        }
        if failed && self.wait_for_view(now) {
            return false;
        }
        let Some(a) = self.active.as_mut() else { return false };
        let result: Result<(), Result<Error, ProtocolError>> = match (a.error.take(), a.coll.status()) {
            (Some(e), _) => Err(Ok(e)),
            (None, Status::Failed(pe)) => Err(Err(pe.clone())),
            (None, _) => Ok(()),
        };
        let Some(mut a) = self.active.take() else { return false };
        for l in self.links.iter_mut().flatten() {
            l.release_job(a.job.buf.bytes());
        }
        self.codecs = a.coll.take_codecs().or(self.codecs.take());
        if let Some(b) = a.coll.take_backup() {
            self.backup = b;
        }
        let outcome = match result {
            Ok(()) => {
                let report = recovery::report(&a, now);
                self.results.returned(a.coll.spec(), a.epoch, &a.members, a.job.buf.bytes());
                self.completed += 1;
                self.record_completed(a.coll.spec().coll, a.job.buf.bytes().len(), &report, now - a.started);
                JobOutcome { result: Ok((a.job.buf.into_owner(), report)) }
            }
            Err(e) => {
                self.recorder.collective_failed();
                let spec = a.coll.spec().clone();
                let err = match e {
                    Ok(err) => err,
                    Err(pe) => {
                        if let ProtocolError::Stalled { link, .. } = &pe {
                            if let Some(peer) = self.peer_on(*link) {
                                self.suspect(peer, true, &pe.to_string());
                            }
                        }
                        self.send_abort(&spec, &pe.to_string());
                        Error::Protocol { seq: a.seq, epoch: self.epoch, op: spec.coll.name(), source: pe }
                    }
                };
                if !matches!(err, Error::Protocol { .. }) {
                    self.send_abort(&spec, &err.to_string());
                }
                JobOutcome { result: Err(err) }
            }
        };
        let _ = a.job.reply.send(outcome);
        true
    }

    /// Tells both neighbours (and the partners) this rank abandons collective `spec.seq`, so
    /// they fail fast instead of waiting for the progress timeout.
    pub(super) fn send_abort(&mut self, spec: &Spec, reason: &str) {
        let links: Vec<Link> = (0..self.links.len()).map(|i| self.link_of(i)).collect();
        for (l, link) in self.links.iter_mut().zip(links) {
            if let Some(l) = l.as_mut().filter(|l| !l.closed) {
                let (header, payload) = spec.abort_frame(link, reason);
                l.out.push_back(OutFrame { header, payload: OutPayload::Owned(payload) });
            }
        }
    }
}
