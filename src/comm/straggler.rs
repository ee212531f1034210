//! Straggler detection: the ranks exchange what they waited for, and the rank the others
//! consistently wait on is named.
//!
//! # What a rank can observe
//!
//! In a ring pipeline every rank forwards at the pace of the slowest one, so inter-arrival
//! times look the same everywhere and a rank cannot tell from its own frames whether its
//! neighbour is slow or only passing on someone else's delay. What differs is *where the
//! waiting is*: when one rank is slow (CPU, memory, a descheduled event loop), its input is
//! always already there when it gets to it, so it is almost never idle, while every other
//! rank idles waiting for frames that come, directly or through the ring, from it. The slow
//! rank waits least. A slow *link* looks different: everybody idles (the whole ring runs at
//! the link's pace), but only the receivers of the slow link wait *in the middle of frames*:
//! the sender wrote the frame long ago (kernel buffers take it), and its bytes trickle in
//! at the link's rate. Frames on a fast link arrive whole once started, however late they
//! start; so "waiting for the rest of a frame already under way" points at the link itself.
//! (Socket writability does not: send buffers of several MiB absorb the backlog.)
//!
//! # The detector
//!
//! Each rank's event loop counts, per collective, the time it was idle and the time it was
//! idle waiting for the rest of a frame, and per link the latter as `recv_transfer` (see
//! [`super::stats`]). [`crate::Communicator::stats`] is a
//! collective: every rank contributes a [`RankWindow`] of what it counted since the previous
//! call (aggregates per link, plus per-collective fractions for the last [`HISTORY_LEN`]
//! collectives), and every rank runs the same deterministic [`judge`] on the same data:
//!
//! * **Slow rank**: the least idle rank `c` is named if the median idle fraction of the
//!   others exceeds its own by at least [`MARGIN`], *and* `c` was the least idle rank in at
//!   least two thirds of the window's recent collectives (at least [`COLLECTIVES_MIN`] of
//!   them): one slow collective is not a straggler. A rank that enters collectives late
//!   (slower compute between them) is named too: the others wait for it inside the call.
//! * **Slow link**: otherwise, a directed link is slow if its receiver waited mid-frame on it
//!   for a fraction of the window at least [`MARGIN`] above the median over the links on the
//!   same side (`prev` or `next` of their receivers: a one-way ring moves data on one side
//!   only, so a ring that just runs at the network's pace names nobody). If
//!   the slow links share one rank (a rank whose own network path is slow slows both its
//!   links), that rank is named, else the sender of the worst link; if, in two thirds of
//!   the recent collectives, the rank waiting most mid-frame was a receiver of a slow link.
//!
//! A window without enough collectives, or with fewer than two ranks, is inconclusive and
//! keeps the previous verdict; a conclusive window without a straggler clears it.

use std::time::Duration;

use super::stats::{fraction, RankSummary};
use crate::Rank;

/// Collectives per rank whose fractions travel with the window.
pub(crate) const HISTORY_LEN: usize = 32;

/// f64 slots per rank in the exchange buffer: the aggregates, then the history pairs.
pub(crate) const WINDOW_SLOTS: usize = HEAD_SLOTS + 2 * HISTORY_LEN;

/// Slots of the aggregates: presence, collectives, active, idle, two peers, two waits,
/// two transfer waits, two blocked times, history length.
const HEAD_SLOTS: usize = 13;

/// Fewest collectives a window must hold, on every rank, to be judged.
pub(crate) const COLLECTIVES_MIN: u64 = 8;

/// Least difference of idle (or mid-frame wait) fraction between the straggler and the others.
pub(crate) const MARGIN: f64 = 0.3;

/// Longest duration accepted from a peer's window, in seconds (about 31 years): anything
/// larger is not a measurement.
const SECS_MAX: f64 = 1e9;

/// One rank's counts over one window (the calls between two `stats()` calls).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RankWindow {
    pub(crate) collectives: u64,
    pub(crate) active: Duration,
    pub(crate) idle: Duration,
    /// `[prev, next]` neighbours.
    pub(crate) peers: [Option<Rank>; 2],
    pub(crate) recv_wait: [Duration; 2],
    pub(crate) recv_transfer: [Duration; 2],
    pub(crate) send_blocked: [Duration; 2],
    /// Per recent collective, oldest first: (idle fraction, mid-frame wait fraction).
    pub(crate) history: Vec<(f64, f64)>,
}

impl RankWindow {
    /// Encodes the window into its [`WINDOW_SLOTS`] slots.
    ///
    /// # Panics
    /// If `out` is not [`WINDOW_SLOTS`] long (caller bug).
    pub(crate) fn write(&self, out: &mut [f64]) {
        assert_eq!(out.len(), WINDOW_SLOTS);
        let peer = |p: Option<Rank>| p.map_or(-1.0, |r| r as f64);
        let head: [f64; HEAD_SLOTS] = [
            1.0,
            self.collectives as f64,
            self.active.as_secs_f64(),
            self.idle.as_secs_f64(),
            peer(self.peers[0]),
            peer(self.peers[1]),
            self.recv_wait[0].as_secs_f64(),
            self.recv_wait[1].as_secs_f64(),
            self.recv_transfer[0].as_secs_f64(),
            self.recv_transfer[1].as_secs_f64(),
            self.send_blocked[0].as_secs_f64(),
            self.send_blocked[1].as_secs_f64(),
            self.history.len().min(HISTORY_LEN) as f64,
        ];
        out.fill(0.0);
        out[..head.len()].copy_from_slice(&head);
        for (j, (idle, rest)) in self.history.iter().take(HISTORY_LEN).enumerate() {
            out[head.len() + 2 * j] = *idle;
            out[head.len() + 2 * j + 1] = *rest;
        }
    }

    /// Decodes a window a rank wrote into its slots; `None` for an empty slot (a rank not
    /// in the view) or one that does not hold a window of a `world`-rank job.
    pub(crate) fn read(slots: &[f64], world: usize) -> Option<RankWindow> {
        if slots.len() != WINDOW_SLOTS || slots[0] != 1.0 {
            return None;
        }
        let secs = |x: f64| (x.is_finite() && (0.0..=SECS_MAX).contains(&x)).then(|| Duration::from_secs_f64(x));
        let count = |x: f64, max: usize| {
            (x.is_finite() && x >= 0.0 && x <= max as f64 && x.fract() == 0.0).then_some(x as usize)
        };
        let peer = |x: f64| if x == -1.0 { Some(None) } else { count(x, world.saturating_sub(1)).map(Some) };
        let fraction = |x: f64| (x.is_finite() && (0.0..=1.0).contains(&x)).then_some(x);
        let len = count(slots[HEAD_SLOTS - 1], HISTORY_LEN)?;
        let mut history = Vec::with_capacity(len);
        for j in 0..len {
            history.push((fraction(slots[HEAD_SLOTS + 2 * j])?, fraction(slots[HEAD_SLOTS + 2 * j + 1])?));
        }
        Some(RankWindow {
            collectives: count(slots[1], 1 << 53)? as u64,
            active: secs(slots[2])?,
            idle: secs(slots[3])?,
            peers: [peer(slots[4])?, peer(slots[5])?],
            recv_wait: [secs(slots[6])?, secs(slots[7])?],
            recv_transfer: [secs(slots[8])?, secs(slots[9])?],
            send_blocked: [secs(slots[10])?, secs(slots[11])?],
            history,
        })
    }

    /// The public summary of this window for `rank`.
    pub(crate) fn summary(&self, rank: Rank) -> RankSummary {
        RankSummary {
            rank,
            collectives: self.collectives,
            active: self.active,
            idle: self.idle,
            peers: self.peers,
            recv_wait: self.recv_wait,
            recv_transfer: self.recv_transfer,
            send_blocked: self.send_blocked,
        }
    }

    fn idle_fraction(&self) -> f64 {
        fraction(self.idle, self.active)
    }
}

/// Why a rank is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StragglerCause {
    /// The rank itself is slow (CPU, memory, its event loop): the others idle waiting for
    /// it while it almost never waits.
    Rank,
    /// A link is slow: `to` waited for frames from `from` that were already under way.
    /// The rank named is the one the slow links share, else `from`.
    Link {
        /// The sending end of the slowest link.
        from: Rank,
        /// The receiving end.
        to: Rank,
    },
}

/// A rank the ring consistently waited on, with the numbers that show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Straggler {
    /// The rank.
    pub rank: Rank,
    /// Whether the rank or its link is slow.
    pub cause: StragglerCause,
    /// Of the recent collectives compared, how many it led (least idle; for a slow link:
    /// how many the rank waiting most mid-frame was a receiver of a slow link).
    pub collectives_led: u32,
    /// Recent collectives compared.
    pub collectives_compared: u32,
    /// The evidence in words, with the fractions.
    pub evidence: String,
}

/// The outcome of judging one window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Judgement {
    /// Too little data: the previous verdict stands.
    Inconclusive,
    /// Enough data, and no rank stands out.
    Nobody,
    /// This rank held the ring back.
    Named(Straggler),
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// In how many of the last collectives (those every rank has) `c` was strictly the least
/// idle rank; and how many there were.
fn least_idle_in(ranks: &[(Rank, RankWindow)], c: Rank) -> (u32, u32) {
    let k = ranks.iter().map(|(_, w)| w.history.len()).min().unwrap_or(0);
    let at = |w: &RankWindow, j: usize| w.history[w.history.len() - k + j].0;
    let Some((_, cw)) = ranks.iter().find(|(r, _)| *r == c) else { return (0, k as u32) };
    let wins = (0..k).filter(|&j| ranks.iter().all(|(r, w)| *r == c || at(cw, j) < at(w, j))).count();
    (wins as u32, k as u32)
}

fn consistent((wins, of): (u32, u32)) -> bool {
    u64::from(of) >= COLLECTIVES_MIN && 3 * wins >= 2 * of
}

fn percent(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// Judges one window of every member's counts (see the module docs). Deterministic: every
/// rank reaches the same judgement from the same windows.
pub(crate) fn judge(ranks: &[(Rank, RankWindow)]) -> Judgement {
    if ranks.len() < 2 || ranks.iter().any(|(_, w)| w.collectives < COLLECTIVES_MIN || w.active.is_zero()) {
        return Judgement::Inconclusive;
    }
    // The least idle rank, lowest rank first among equals.
    let Some((c, cw)) = ranks.iter().min_by(|a, b| a.1.idle_fraction().total_cmp(&b.1.idle_fraction())) else {
        return Judgement::Inconclusive;
    };
    let others: Vec<f64> = ranks.iter().filter(|(r, _)| r != c).map(|(_, w)| w.idle_fraction()).collect();
    let (mine, med) = (cw.idle_fraction(), median(others.clone()));
    if med - mine >= MARGIN {
        let (wins, of) = least_idle_in(ranks, *c);
        if consistent((wins, of)) {
            let lo = others.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = others.iter().copied().fold(0.0, f64::max);
            let evidence = format!(
                "rank {c} was idle {} of its collective time while the other ranks waited {} (median; {}-{}), \
                 and it was the least idle rank in {wins} of the last {of} collectives: the ring waits for it",
                percent(mine),
                percent(med),
                percent(lo),
                percent(hi)
            );
            return Judgement::Named(Straggler {
                rank: *c,
                cause: StragglerCause::Rank,
                collectives_led: wins,
                collectives_compared: of,
                evidence,
            });
        }
    }
    judge_links(ranks)
}

/// A directed link `from -> to`, the fraction of `to`'s window spent waiting mid-frame on
/// it, and the median of that fraction over the links on the same side (`[prev, next]` of
/// their receivers).
type LinkWait = (Rank, Rank, f64, f64);

/// Every directed link some member receives on, with its mid-frame wait fraction and the
/// median over its side. A link is compared with the links of its own side only: a one-way
/// ring moves its data on the links into each rank's `prev` side and nothing but tokens the
/// other way, so a median over both sides would make every data link of a ring that simply
/// runs at the network's pace look slow.
fn link_waits(ranks: &[(Rank, RankWindow)]) -> Vec<LinkWait> {
    let mut out = Vec::new();
    for side in 0..2 {
        let mut links = Vec::new();
        for (to, w) in ranks {
            if let Some(from) = w.peers[side] {
                links.push((from, *to, fraction(w.recv_transfer[side], w.active)));
            }
        }
        let med = median(links.iter().map(|l| l.2).collect());
        out.extend(links.into_iter().map(|(from, to, x)| (from, to, x, med)));
    }
    out
}

/// The rank every link in `links` starts or ends at, if there is exactly one such.
fn shared_end(links: &[LinkWait]) -> Option<Rank> {
    let (from, to, ..) = *links.first()?;
    let common: Vec<Rank> =
        [from, to].into_iter().filter(|&r| links.iter().all(|&(f, t, ..)| f == r || t == r)).collect();
    match common.as_slice() {
        [r] => Some(*r),
        _ => None,
    }
}

/// The slow-link half of [`judge`].
fn judge_links(ranks: &[(Rank, RankWindow)]) -> Judgement {
    let links = link_waits(ranks);
    let mut slow: Vec<LinkWait> = links.iter().copied().filter(|l| l.2 >= MARGIN && l.2 - l.3 >= MARGIN).collect();
    slow.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let Some(&(from, to, _, med)) = slow.first() else { return Judgement::Nobody };
    // Consistency: in most recent collectives, the rank waiting most mid-frame received on
    // a slow link.
    let receivers: Vec<Rank> = slow.iter().map(|l| l.1).collect();
    let k = ranks.iter().map(|(_, w)| w.history.len()).min().unwrap_or(0);
    let at = |w: &RankWindow, j: usize| w.history[w.history.len() - k + j].1;
    let wins = (0..k)
        .filter(|&j| {
            let top = ranks.iter().max_by(|a, b| at(&a.1, j).total_cmp(&at(&b.1, j)).then(b.0.cmp(&a.0)));
            top.is_some_and(|(r, w)| at(w, j) > 0.0 && receivers.contains(r))
        })
        .count();
    let (wins, of) = (wins as u32, k as u32);
    if !consistent((wins, of)) {
        return Judgement::Nobody;
    }
    let rank = shared_end(&slow).unwrap_or(from);
    let listed: Vec<String> =
        slow.iter().map(|(f, t, x, _)| format!("rank {t} waited {} for frames from rank {f}", percent(*x))).collect();
    let evidence = format!(
        "{} already under way (bytes trickling in; other links on that side: {} median), and a receiver of a slow link \
         waited most mid-frame in {wins} of the last {of} collectives: the link{} of rank {rank} {} slow",
        listed.join(", "),
        percent(med),
        if slow.len() > 1 { "s" } else { "" },
        if slow.len() > 1 { "are" } else { "is" },
    );
    Judgement::Named(Straggler {
        rank,
        cause: StragglerCause::Link { from, to },
        collectives_led: wins,
        collectives_compared: of,
        evidence,
    })
}

/// The verdict across windows, and the ranks already warned about.
#[derive(Debug, Default)]
pub(crate) struct Detector {
    verdict: Option<Straggler>,
    warned: Vec<Rank>,
    windows: u64,
    /// The members' summaries of the last window.
    last: Vec<RankSummary>,
}

impl Detector {
    /// Judges a window of every member's counts; logs a warning the first time a rank is
    /// named (once per rank for the life of the communicator).
    pub(crate) fn observe(&mut self, ranks: &[(Rank, RankWindow)]) {
        self.windows += 1;
        self.last = ranks.iter().map(|(r, w)| w.summary(*r)).collect();
        for s in &self.last {
            tracing::debug!(
                target: "ringcc::stats",
                rank = s.rank,
                collectives = s.collectives,
                active_ms = s.active.as_secs_f64() * 1e3,
                idle_percent = 100.0 * s.idle_fraction(),
                "statistics window"
            );
        }
        match judge(ranks) {
            Judgement::Inconclusive => {}
            Judgement::Nobody => self.verdict = None,
            Judgement::Named(s) => {
                if !self.warned.contains(&s.rank) {
                    self.warned.push(s.rank);
                    tracing::warn!(target: "ringcc::stats", straggler = s.rank, cause = ?s.cause, "straggler: {}", s.evidence);
                }
                self.verdict = Some(s);
            }
        }
    }

    /// The current verdict.
    pub(crate) fn verdict(&self) -> Option<Straggler> {
        self.verdict.clone()
    }

    /// Windows observed.
    pub(crate) fn windows(&self) -> u64 {
        self.windows
    }

    /// The members' summaries of the last window.
    pub(crate) fn last(&self) -> Vec<RankSummary> {
        self.last.clone()
    }
}

/// Decodes the summed exchange buffer: the window of every rank whose slot holds one.
pub(crate) fn read_windows(slots: &[f64], world: usize) -> Vec<(Rank, RankWindow)> {
    slots
        .chunks_exact(WINDOW_SLOTS)
        .take(world)
        .enumerate()
        .filter_map(|(r, s)| RankWindow::read(s, world).map(|w| (r, w)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn secs(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// A ring of `n` ranks in rank order over 1 s windows: rank r idles `idle[r]` and waits
    /// mid-frame `transfer[r] = [from prev, from next]`, the same in every collective.
    fn ring(idle: &[f64], transfer: &[[f64; 2]]) -> Vec<(Rank, RankWindow)> {
        let n = idle.len();
        (0..n)
            .map(|r| {
                let t = transfer.get(r).copied().unwrap_or([0.0; 2]);
                let w = RankWindow {
                    collectives: 40,
                    active: ms(1000),
                    idle: secs(idle[r]),
                    peers: [Some((r + n - 1) % n), Some((r + 1) % n)],
                    recv_wait: [secs(idle[r] / 2.0), secs(idle[r] / 2.0)],
                    recv_transfer: [secs(t[0]), secs(t[1])],
                    send_blocked: [ms(0), ms(3)],
                    history: vec![(idle[r], t[0].max(t[1])); HISTORY_LEN],
                };
                (r, w)
            })
            .collect()
    }

    #[test]
    fn windows_round_trip_through_slots() {
        let w = ring(&[0.5, 0.25], &[[0.0, 0.125], [0.25, 0.0]]).remove(1).1;
        let mut slots = vec![0.0; WINDOW_SLOTS * 3];
        w.write(&mut slots[WINDOW_SLOTS..2 * WINDOW_SLOTS]);
        let got = read_windows(&slots, 3);
        assert_eq!(got, vec![(1, w)]);
    }

    #[test]
    fn malformed_slots_are_not_windows() {
        let w = ring(&[0.5, 0.25], &[]).remove(0).1;
        let mut good = vec![0.0; WINDOW_SLOTS];
        w.write(&mut good);
        assert!(RankWindow::read(&good, 2).is_some());
        for (slot, bad) in [(0, 2.0), (1, -1.0), (2, f64::NAN), (3, 1e300), (4, 7.0), (5, 0.5), (12, 99.0), (13, 1.5)] {
            let mut s = good.clone();
            s[slot] = bad;
            assert_eq!(RankWindow::read(&s, 2), None, "slot {slot} = {bad}");
        }
        assert_eq!(RankWindow::read(&good[1..], 2), None);
    }

    #[test]
    fn the_rank_that_never_waits_is_named() {
        let ranks = ring(&[0.8, 0.85, 0.02, 0.9], &[]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause, s.collectives_led, s.collectives_compared), (2, StragglerCause::Rank, 32, 32));
        assert!(
            s.evidence.contains("rank 2 was idle 2%") && s.evidence.contains("85% (median; 80%-90%)"),
            "{}",
            s.evidence
        );
    }

    #[test]
    fn balanced_or_noisy_rings_name_nobody() {
        assert_eq!(judge(&ring(&[0.5, 0.55, 0.45, 0.5], &[[0.05, 0.1]; 4])), Judgement::Nobody);
        // Far apart in aggregate but led only in one collective of two.
        let mut ranks = ring(&[0.8, 0.85, 0.02, 0.9], &[]);
        for (r, w) in &mut ranks {
            for (j, h) in w.history.iter_mut().enumerate() {
                h.0 = if (j + *r) % 2 == 0 { 0.1 } else { 0.9 };
            }
        }
        assert_eq!(judge(&ranks), Judgement::Nobody);
        // Too few collectives, or a single rank: no judgement.
        let mut short = ring(&[0.8, 0.02], &[]);
        short[0].1.collectives = COLLECTIVES_MIN - 1;
        assert_eq!(judge(&short), Judgement::Inconclusive);
        assert_eq!(judge(&ring(&[0.1], &[])[..1]), Judgement::Inconclusive);
    }

    #[test]
    fn frames_trickling_in_from_one_rank_name_that_rank() {
        // Everyone idles; ranks 1 and 3 wait mid-frame for rank 2 (its uplink is slow).
        let ranks = ring(&[0.99; 4], &[[0.0, 0.02], [0.03, 0.8], [0.02, 0.0], [0.75, 0.01]]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause), (2, StragglerCause::Link { from: 2, to: 1 }));
        assert!(s.evidence.contains("rank 1 waited 80% for frames from rank 2, rank 3 waited 75%"), "{}", s.evidence);
        // One slow link only: its sender is named.
        let ranks = ring(&[0.99; 4], &[[0.0, 0.02], [0.03, 0.0], [0.02, 0.0], [0.75, 0.01]]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause), (2, StragglerCause::Link { from: 2, to: 3 }));
        // Both links into rank 0 (its downlink): rank 0 is the shared end.
        let ranks = ring(&[0.99; 4], &[[0.7, 0.72], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause), (0, StragglerCause::Link { from: 1, to: 0 }));
        // A one-way ring running at the network's pace: every data link (into each rank's
        // prev side) trickles alike, the other side carries only tokens. Nobody is slow.
        let ranks = ring(&[0.85; 4], &[[0.83, 0.0], [0.84, 0.0], [0.83, 0.01], [0.84, 0.0]]);
        assert_eq!(judge(&ranks), Judgement::Nobody);
        // The same ring with one data link four times slower than the rest: its sender.
        let ranks = ring(&[0.95; 4], &[[0.2, 0.0], [0.2, 0.0], [0.2, 0.01], [0.9, 0.0]]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause), (2, StragglerCause::Link { from: 2, to: 3 }));
        assert!(s.evidence.contains("other links on that side: 20% median"), "{}", s.evidence);
        // A slow rank is named as a rank even if some frame waits happen.
        let ranks = ring(&[0.7, 0.7, 0.05, 0.7], &[[0.0, 0.0], [0.0, 0.4], [0.0, 0.0], [0.0, 0.0]]);
        let Judgement::Named(s) = judge(&ranks) else { panic!("{:?}", judge(&ranks)) };
        assert_eq!((s.rank, s.cause), (2, StragglerCause::Rank));
    }

    #[test]
    fn the_verdict_lasts_until_a_conclusive_window_clears_it() {
        let mut d = Detector::default();
        let slow = ring(&[0.8, 0.02, 0.9], &[]);
        d.observe(&slow);
        assert_eq!(d.verdict().map(|s| s.rank), Some(1));
        let mut short = slow.clone();
        short[0].1.collectives = 1;
        d.observe(&short);
        assert_eq!(d.verdict().map(|s| s.rank), Some(1));
        d.observe(&ring(&[0.5, 0.5, 0.5], &[]));
        assert_eq!((d.verdict(), d.windows(), d.last().len()), (None, 3, 3));
        d.observe(&slow);
        assert_eq!(d.warned, vec![1], "warned once");
    }
}
