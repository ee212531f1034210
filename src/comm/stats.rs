//! What [`crate::Communicator::stats`] returns: per-link traffic and waiting, per-collective
//! phase times, every rank's waiting in the last window, and the straggler verdict; and the
//! event loop's side that counts them.
//!
//! Every duration is measured on the rank's event-loop thread, so a neighbour's "wait" is
//! time this rank's loop sat idle (nothing readable, nothing writable) while the running
//! collective still expected a frame from that neighbour. How the ranks compare those waits
//! to name a straggler is in [`super::straggler`] and `docs/ARCHITECTURE.md`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use super::straggler::{RankWindow, Straggler, HISTORY_LEN};
use super::Report;
use crate::wire::CollKind;
use crate::{Epoch, Rank};

/// Which peer a link leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The previous rank in ring order.
    Prev,
    /// The next rank in ring order.
    Next,
    /// A partner of recursive doubling that is not a ring neighbour (worlds of 5 or more;
    /// `docs/ARCHITECTURE.md`, "The ring"). Only small all-reduces use these links.
    Partner,
}

impl Side {
    /// `prev`, `next` or `partner`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Prev => "prev",
            Side::Next => "next",
            Side::Partner => "partner",
        }
    }
}

/// Traffic and waiting on one ring link, counted since the link was connected (a view
/// change reconnects and starts again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    /// Which neighbour.
    pub side: Side,
    /// The neighbour's rank.
    pub peer: Rank,
    /// Bytes sent to the neighbour, frame headers included (through the socket, or the
    /// same-host lane for payloads: see `lane_bytes_sent`).
    pub bytes_sent: u64,
    /// Bytes received from the neighbour, frame headers included (as `bytes_sent`).
    pub bytes_received: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Time this rank waited for the neighbour: its event loop was idle while the running
    /// collective expected a frame on this link.
    pub recv_wait: Duration,
    /// Of `recv_wait`, the time part of a frame had arrived and the rest had not: the link
    /// was delivering it. Large when the link itself is slow; small when the neighbour is
    /// late to send (its frames then arrive whole).
    pub recv_transfer: Duration,
    /// Time this rank could not send to the neighbour: frames were queued and the socket
    /// was full (the neighbour or the link does not keep up), while the loop was idle.
    pub send_blocked: Duration,
    /// Time collectives ran while this link was up.
    pub active: Duration,
    /// Of `bytes_sent`, the payload bytes that went through the same-host lane (shared
    /// memory, `Config::lanes`) instead of the socket.
    pub lane_bytes_sent: u64,
    /// Of `bytes_received`, the payload bytes that came through the same-host lane.
    pub lane_bytes_received: u64,
}

impl LinkStats {
    /// Average send rate while collectives ran, in GB/s (1e9 bytes); 0 before any.
    pub fn send_gbps(&self) -> f64 {
        rate_gbps(self.bytes_sent, self.active)
    }

    /// Average receive rate while collectives ran, in GB/s (1e9 bytes); 0 before any.
    pub fn recv_gbps(&self) -> f64 {
        rate_gbps(self.bytes_received, self.active)
    }
}

fn rate_gbps(bytes: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// Totals over the completed calls of one collective kind. Phase times are those of
/// [`Report`]: the sum over calls; divide by `calls` for a mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectiveStats {
    /// `all_reduce`, `reduce_scatter`, `all_gather`, `broadcast` or `barrier`.
    pub collective: &'static str,
    /// Completed calls (failed ones are not counted).
    pub calls: u64,
    /// Buffer bytes of those calls.
    pub bytes: u64,
    /// Bytes this rank wrote for them, headers included.
    pub bytes_sent: u64,
    /// Sum of [`Report::reduce_scatter`].
    pub reduce_scatter: Duration,
    /// Sum of [`Report::all_gather`].
    pub all_gather: Duration,
    /// Sum of [`Report::queued`].
    pub queued: Duration,
    /// Sum of [`Report::total`].
    pub total: Duration,
    /// Largest [`Report::total`].
    pub slowest: Duration,
}

/// A snapshot of one rank's statistics (see [`crate::Communicator::stats`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// This rank.
    pub rank: Rank,
    /// Epoch of the view when the snapshot was taken.
    pub epoch: Epoch,
    /// The ring links, previous first, then the partner links in the order of their
    /// positions; empty for a single rank.
    pub links: Vec<LinkStats>,
    /// Per collective kind with at least one completed call.
    pub collectives: Vec<CollectiveStats>,
    /// Time collectives ran on the event loop (start to completion, summed).
    pub active: Duration,
    /// Of `active`, the time the event loop was idle: waiting for neighbours.
    pub idle: Duration,
    /// Every member's summary of the last window (the calls between the last two
    /// [`crate::Communicator::stats`] calls), by rank; empty before the first.
    pub ranks: Vec<RankSummary>,
    /// Windows compared so far (calls of [`crate::Communicator::stats`]).
    pub windows: u64,
    /// The rank that consistently held the ring back in the last window, if any.
    pub straggler: Option<Straggler>,
}

/// One rank's waiting over one statistics window, as exchanged between the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankSummary {
    /// The rank.
    pub rank: Rank,
    /// Collectives completed in the window.
    pub collectives: u64,
    /// Time they ran on its event loop.
    pub active: Duration,
    /// Of `active`, time its event loop was idle.
    pub idle: Duration,
    /// Its neighbours `[prev, next]`, if connected.
    pub peers: [Option<Rank>; 2],
    /// Time it waited for each neighbour (see [`LinkStats::recv_wait`]).
    pub recv_wait: [Duration; 2],
    /// Of that, time a frame from it was under way (see [`LinkStats::recv_transfer`]).
    pub recv_transfer: [Duration; 2],
    /// Time it was blocked sending to each neighbour (see [`LinkStats::send_blocked`]).
    pub send_blocked: [Duration; 2],
}

impl RankSummary {
    /// Fraction of the window's collective time this rank sat idle, in 0..=1.
    pub fn idle_fraction(&self) -> f64 {
        fraction(self.idle, self.active)
    }
}

impl Stats {
    /// Multi-line human-readable summary (what `ringbench` and the examples print).
    pub fn render(&self) -> String {
        let mut out = format!(
            "rank {} epoch {}: collectives ran {:.3} s, idle {:.1}%\n",
            self.rank,
            self.epoch,
            self.active.as_secs_f64(),
            100.0 * fraction(self.idle, self.active)
        );
        for l in &self.links {
            let _ = writeln!(
                out,
                "  {} link to rank {}: sent {} B ({:.3} GB/s), received {} B ({:.3} GB/s), waited {:.1} ms for it \
                 ({:.1} ms mid-frame), blocked sending {:.1} ms",
                l.side.name(),
                l.peer,
                l.bytes_sent,
                l.send_gbps(),
                l.bytes_received,
                l.recv_gbps(),
                l.recv_wait.as_secs_f64() * 1e3,
                l.recv_transfer.as_secs_f64() * 1e3,
                l.send_blocked.as_secs_f64() * 1e3
            );
        }
        for c in &self.collectives {
            let per_call = |d: Duration| d.as_secs_f64() * 1e6 / c.calls.max(1) as f64;
            let _ = writeln!(
                out,
                "  {}: {} calls, {} B; per call: reduce-scatter {:.1} us, all-gather {:.1} us, queued {:.1} us, \
                 total {:.1} us (slowest {:.1} us)",
                c.collective,
                c.calls,
                c.bytes,
                per_call(c.reduce_scatter),
                per_call(c.all_gather),
                per_call(c.queued),
                per_call(c.total),
                c.slowest.as_secs_f64() * 1e6
            );
        }
        for r in &self.ranks {
            let _ = writeln!(
                out,
                "  last window, rank {}: {} collectives, {:.3} s, idle {:.1}%",
                r.rank,
                r.collectives,
                r.active.as_secs_f64(),
                100.0 * r.idle_fraction()
            );
        }
        match &self.straggler {
            Some(s) => {
                let _ = writeln!(out, "  straggler: rank {}: {}", s.rank, s.evidence);
            }
            None => {
                let _ = writeln!(out, "  straggler: none named ({} windows compared)", self.windows);
            }
        }
        out
    }
}

/// `part / whole`, 0 for an empty whole.
pub(crate) fn fraction(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        part.as_secs_f64() / whole.as_secs_f64()
    }
}

/// The collective kinds in the order statistics list them.
const KINDS: [CollKind; 5] =
    [CollKind::AllReduce, CollKind::ReduceScatter, CollKind::AllGather, CollKind::Broadcast, CollKind::Barrier];

/// The event loop's counters that do not belong to one link: time, phases, and what was
/// already reported in the last statistics window.
#[derive(Debug)]
pub(crate) struct Recorder {
    collectives: [CollectiveStats; 5],
    active: Duration,
    idle: Duration,
    /// Idle time, and idle time with a frame under way, of the collective running now.
    running: (Duration, Duration),
    /// Per recent collective (oldest first, at most [`HISTORY_LEN`]): the fractions of its
    /// time the loop was idle, and idle waiting for the rest of a frame.
    history: VecDeque<(f64, f64)>,
    /// Totals at the last window, to report differences: (collectives, active, idle).
    last: (u64, Duration, Duration),
    /// Per side: the peer and its [`LinkStats`] at the last window.
    last_links: [Option<LinkStats>; 2],
}

impl Default for Recorder {
    fn default() -> Recorder {
        let zero = |k: CollKind| CollectiveStats {
            collective: k.name(),
            calls: 0,
            bytes: 0,
            bytes_sent: 0,
            reduce_scatter: Duration::ZERO,
            all_gather: Duration::ZERO,
            queued: Duration::ZERO,
            total: Duration::ZERO,
            slowest: Duration::ZERO,
        };
        Recorder {
            collectives: KINDS.map(zero),
            active: Duration::ZERO,
            idle: Duration::ZERO,
            running: (Duration::ZERO, Duration::ZERO),
            history: VecDeque::with_capacity(HISTORY_LEN),
            last: (0, Duration::ZERO, Duration::ZERO),
            last_links: [None, None],
        }
    }
}

impl Recorder {
    /// Idle time of the event loop while a collective ran; `transfer` if it waited for the
    /// rest of a frame already under way.
    pub(crate) fn note_idle(&mut self, idle: Duration, transfer: bool) {
        self.idle += idle;
        self.running.0 += idle;
        if transfer {
            self.running.1 += idle;
        }
    }

    /// The running collective ended without completing: its idle time is not recorded
    /// per collective (it stays in the totals).
    pub(crate) fn collective_failed(&mut self) {
        self.running = (Duration::ZERO, Duration::ZERO);
    }

    /// A collective of `buf_bytes` completed with `report` after running `ran` on the loop.
    pub(crate) fn collective_done(&mut self, coll: CollKind, buf_bytes: usize, report: &Report, ran: Duration) {
        self.active += ran;
        let (idle, transfer) = std::mem::take(&mut self.running);
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back((fraction(idle, ran).min(1.0), fraction(transfer, ran).min(1.0)));
        let Some(i) = KINDS.iter().position(|&k| k == coll) else { return };
        let c = &mut self.collectives[i];
        c.calls += 1;
        c.bytes += buf_bytes as u64;
        c.bytes_sent += report.bytes_sent;
        c.reduce_scatter += report.reduce_scatter;
        c.all_gather += report.all_gather;
        c.queued += report.queued;
        c.total += report.total;
        c.slowest = c.slowest.max(report.total);
        tracing::debug!(
            target: "ringcc::stats",
            seq = report.seq,
            collective = coll.name(),
            bytes = buf_bytes,
            bytes_sent = report.bytes_sent,
            reduce_scatter_us = report.reduce_scatter.as_micros() as u64,
            all_gather_us = report.all_gather.as_micros() as u64,
            queued_us = report.queued.as_micros() as u64,
            total_us = report.total.as_micros() as u64,
            "collective completed"
        );
    }

    /// A snapshot for [`crate::Communicator::stats`] (the straggler verdict is added by
    /// the communicator, which holds the detector).
    pub(crate) fn stats(&self, rank: Rank, epoch: Epoch, links: Vec<LinkStats>) -> Stats {
        Stats {
            rank,
            epoch,
            links,
            collectives: self.collectives.iter().filter(|c| c.calls > 0).copied().collect(),
            active: self.active,
            idle: self.idle,
            ranks: Vec::new(),
            windows: 0,
            straggler: None,
        }
    }

    /// What this rank did since the last window, for the exchange; starts a new window.
    /// `links` are `[prev, next]`.
    pub(crate) fn take_window(&mut self, links: [Option<LinkStats>; 2]) -> RankWindow {
        let calls: u64 = self.collectives.iter().map(|c| c.calls).sum();
        let (last_calls, last_active, last_idle) = self.last;
        let mut w = RankWindow {
            collectives: calls.saturating_sub(last_calls),
            active: self.active.saturating_sub(last_active),
            idle: self.idle.saturating_sub(last_idle),
            ..RankWindow::default()
        };
        for (i, l) in links.iter().enumerate() {
            let Some(l) = l else {
                self.last_links[i] = None;
                continue;
            };
            // A reconnected link counts from zero; so does a link to another peer.
            let before = self.last_links[i].filter(|b| {
                b.peer == l.peer
                    && b.recv_wait <= l.recv_wait
                    && b.recv_transfer <= l.recv_transfer
                    && b.send_blocked <= l.send_blocked
            });
            let zero = Duration::ZERO;
            w.peers[i] = Some(l.peer);
            w.recv_wait[i] = l.recv_wait - before.map_or(zero, |b| b.recv_wait);
            w.recv_transfer[i] = l.recv_transfer - before.map_or(zero, |b| b.recv_transfer);
            w.send_blocked[i] = l.send_blocked - before.map_or(zero, |b| b.send_blocked);
            self.last_links[i] = Some(*l);
        }
        let fresh = usize::try_from(w.collectives).unwrap_or(usize::MAX).min(self.history.len());
        w.history = self.history.iter().skip(self.history.len() - fresh).copied().collect();
        self.last = (calls, self.active, self.idle);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(total_us: u64) -> Report {
        Report {
            epoch: 1,
            members: vec![0, 1],
            joined: Vec::new(),
            seq: 0,
            bytes_sent: 100,
            bytes_sent_raw: 100,
            reduce_scatter: Duration::from_micros(total_us / 2),
            all_gather: Duration::from_micros(total_us / 2),
            queued: Duration::from_micros(1),
            total: Duration::from_micros(total_us),
        }
    }

    fn link(side: Side, peer: Rank, wait_ms: u64, transfer_ms: u64) -> LinkStats {
        LinkStats {
            side,
            peer,
            bytes_sent: 2_000_000,
            bytes_received: 1_000_000,
            frames_received: 3,
            recv_wait: Duration::from_millis(wait_ms),
            recv_transfer: Duration::from_millis(transfer_ms),
            send_blocked: Duration::from_millis(transfer_ms / 2),
            active: Duration::from_millis(2),
            lane_bytes_sent: 0,
            lane_bytes_received: 0,
        }
    }

    #[test]
    fn collectives_add_up_per_kind_and_rates_use_active_time() {
        let mut r = Recorder::default();
        r.collective_done(CollKind::AllReduce, 4096, &report(300), Duration::from_micros(290));
        r.collective_done(CollKind::AllReduce, 4096, &report(500), Duration::from_micros(480));
        r.collective_done(CollKind::Barrier, 0, &report(40), Duration::from_micros(30));
        r.note_idle(Duration::from_micros(100), false);
        let s = r.stats(3, 1, vec![link(Side::Prev, 2, 1, 0)]);
        assert_eq!(s.collectives.len(), 2);
        let ar = &s.collectives[0];
        assert_eq!((ar.collective, ar.calls, ar.bytes, ar.bytes_sent), ("all_reduce", 2, 8192, 200));
        assert_eq!((ar.total, ar.slowest), (Duration::from_micros(800), Duration::from_micros(500)));
        assert_eq!((s.active, s.idle), (Duration::from_micros(800), Duration::from_micros(100)));
        assert_eq!(s.links[0].send_gbps(), 1.0);
        assert_eq!(s.links[0].recv_gbps(), 0.5);
        let text = s.render();
        assert!(text.contains("prev link to rank 2") && text.contains("all_reduce: 2 calls"), "{text}");
    }

    #[test]
    fn windows_report_differences_and_restart_on_a_new_link() {
        let mut r = Recorder::default();
        r.note_idle(Duration::from_millis(4), true);
        r.collective_done(CollKind::AllReduce, 8, &report(10), Duration::from_millis(10));
        let w = r.take_window([Some(link(Side::Prev, 2, 3, 1)), Some(link(Side::Next, 0, 5, 0))]);
        assert_eq!((w.collectives, w.active, w.idle), (1, Duration::from_millis(10), Duration::from_millis(4)));
        assert_eq!((w.peers, w.recv_wait[1]), ([Some(2), Some(0)], Duration::from_millis(5)));
        assert_eq!(w.history, vec![(0.4, 0.4)]);
        r.note_idle(Duration::from_millis(1), false);
        r.collective_failed();
        r.collective_done(CollKind::AllReduce, 8, &report(10), Duration::from_millis(20));
        // Same prev link, further on; the next link was rebuilt to another peer.
        let w = r.take_window([Some(link(Side::Prev, 2, 7, 1)), Some(link(Side::Next, 3, 2, 0))]);
        assert_eq!((w.collectives, w.active, w.idle), (1, Duration::from_millis(20), Duration::from_millis(1)));
        assert_eq!(w.history, vec![(0.0, 0.0)]);
        assert_eq!(w.recv_wait, [Duration::from_millis(4), Duration::from_millis(2)]);
        assert_eq!((w.recv_transfer, w.send_blocked), ([Duration::ZERO; 2], [Duration::ZERO; 2]));
        let w = r.take_window([None, None]);
        assert_eq!((w.collectives, w.peers, w.history.len()), (0, [None, None], 0));
    }
}
