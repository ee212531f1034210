//! Recursive doubling for small all-reduces: log2(n) exchange rounds in which partners swap
//! their running values and both reduce them, so after round j every group of 2^(j+1)
//! positions holds the reduction of its inputs. A world that is not a power of two first
//! folds its extra positions in (position 2i sends its input to 2i+1, for i < n - 2^k) and
//! hands them the result at the end: log2(2^k) + 2 rounds.
//!
//! Exactness: partners hold the same two values and both compute `lower op higher` (the
//! value of the group with the lower indices first), so both get the same bits; by
//! induction every position ends with the same bits, and `Avg` divides once, on identical
//! values.
//!
//! Partners: in round j, index v exchanges with `v ^ (2^(j+1) - 1)`, the mirror of v in its
//! group of 2^(j+1), rather than the textbook `v ^ 2^j` (any pairing between the two halves
//! of the group is correct). With the mirror, every partner of a world of 2, 3 or 4 positions
//! is a ring neighbour, so the rounds run on the ring's own two links. In larger worlds the
//! partners that are not ring neighbours (fewer than log2(n) + 2 per position) are reached
//! over partner links ([`partner_positions`], `Link::Partner`), which the driver opens with
//! the ring. Without partner links
//! ([`Spec::partner_links`](super::collective::Spec::partner_links) false) larger worlds
//! take the direct path (`core::direct`) instead ([`Doubling::fits`]).

use std::collections::VecDeque;

use super::collective::Link;
use super::reduce;
use super::{DataType, ReduceOp};

/// Largest all-reduce (bytes per rank) `Algorithm::Auto` sends by recursive doubling in
/// worlds of up to 4 (measured at N=4 on loopback: it beats the ring up to 96 KiB, the ring
/// wins from 128 KiB; docs/BENCHMARKS.md).
pub const DOUBLING_MAX_BYTES: usize = 64 << 10;

/// The same in worlds of 5 and more, where each rank sends its whole buffer log2(n) times
/// against the ring's 2(n-1)/n (measured at N=8 on loopback: doubling 0.68x the ring's time
/// at 16 KiB, level at 32 KiB, 2x at 64 KiB; docs/BENCHMARKS.md).
pub const DOUBLING_MAX_BYTES_LARGE: usize = 32 << 10;

/// One round of this position: whom it sends to and receives from, on which link.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Round number carried in the header: 0 folds in, 1..=log2(2^k) exchange, then one
    /// round hands the result back.
    round: u32,
    /// Link and peer position this step sends on.
    send: Option<(Link, usize)>,
    /// Link and peer position this step receives from.
    recv: Option<(Link, usize)>,
    /// What a received value does: reduced with this rank's (and which is lower), or taking
    /// its place (the result handed back to a folded position).
    take: Take,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// `received op own`: the sender's group has the lower indices.
    ReduceLowerFirst,
    /// `own op received`.
    ReduceOwnFirst,
    /// The received value is the result.
    Replace,
}

/// Rounds, and the link to each partner, of position `pos` in a world of `world`; `None` if
/// some partner is not a ring neighbour and `partners` (partner links) is false.
fn plan(world: usize, pos: usize, partners: bool) -> Option<Vec<Step>> {
    let p2 = 1usize << (usize::BITS - 1 - world.leading_zeros());
    let rem = world - p2;
    let next = (pos + 1) % world;
    let prev = (pos + world - 1) % world;
    // Sending to `q` goes on Next if it follows this position; receiving from `q` comes on
    // Prev if it precedes it (checked first, so that with two positions, where the peer is
    // both, the sender's Next meets the receiver's Prev). Any other peer is reached on its
    // partner link.
    let first_of = |q: usize, order: [(Link, usize); 2]| match order.into_iter().find(|&(_, p)| p == q) {
        Some((l, _)) => Some((l, q)),
        None => partners.then_some((Link::Partner(q as u32), q)),
    };
    let send_link = |q: usize| first_of(q, [(Link::Next, next), (Link::Prev, prev)]);
    let recv_link = |q: usize| first_of(q, [(Link::Prev, prev), (Link::Next, next)]);
    // Index of the positions that take part in the exchange rounds, and back.
    let index_of = |p: usize| (p >= 2 * rem || p % 2 == 1).then(|| if p < 2 * rem { p / 2 } else { p - rem });
    let pos_of = |v: usize| if v < rem { 2 * v + 1 } else { v + rem };
    let rounds = p2.trailing_zeros();
    let mut steps = Vec::new();
    let Some(v) = index_of(pos) else {
        // Folded in: send the input up, get the result back.
        steps.push(Step { round: 0, send: Some(send_link(pos + 1)?), recv: None, take: Take::Replace });
        steps.push(Step { round: rounds + 1, send: None, recv: Some(recv_link(pos + 1)?), take: Take::Replace });
        return Some(steps);
    };
    if pos < 2 * rem {
        let from = recv_link(pos - 1)?;
        steps.push(Step { round: 0, send: None, recv: Some(from), take: Take::ReduceLowerFirst });
    }
    for j in 0..rounds {
        let w = v ^ ((2usize << j) - 1);
        let q = pos_of(w);
        let take = if w < v { Take::ReduceLowerFirst } else { Take::ReduceOwnFirst };
        steps.push(Step { round: j + 1, send: Some(send_link(q)?), recv: Some(recv_link(q)?), take });
    }
    if pos < 2 * rem {
        steps.push(Step { round: rounds + 1, send: Some(send_link(pos - 1)?), recv: None, take: Take::Replace });
    }
    Some(steps)
}

/// The positions that position `pos` of a world of `world` exchanges with in recursive
/// doubling and that are not its ring neighbours, ascending: those it needs a partner link
/// to. Empty for worlds of up to 4 positions.
pub fn partner_positions(world: usize, pos: usize) -> Vec<usize> {
    let mut qs: Vec<usize> = plan(world, pos, true)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| [s.send, s.recv])
        .flatten()
        .filter_map(|(l, q)| matches!(l, Link::Partner(_)).then_some(q))
        .collect();
    qs.sort_unstable();
    qs.dedup();
    qs
}

/// One rank's state in a recursive-doubling all-reduce. The running value is the caller's
/// buffer itself (the result ends there with no final copy); a frame is sent from a copy the
/// driver takes when it polls it, so the buffer is copied aside only when a reduction must
/// change it before a queued send of the older value has been polled.
#[derive(Debug)]
pub(super) struct Doubling {
    bytes: usize,
    pos: usize,
    steps: Vec<Step>,
    /// Index of the step being worked on; `steps.len()` once all are done.
    cur: usize,
    /// This rank's input, kept for a redo.
    input: Vec<u8>,
    /// Values that arrived before their step, step k's at `k * bytes` (sized on first use).
    early: Vec<u8>,
    have: Vec<bool>,
    /// Per link it receives on, index of the next step that receives on it.
    recv_next: Vec<(Link, usize)>,
    /// Sends whose value had to be copied aside before the buffer changed, step k's at
    /// `k * bytes` (sized on first use), and which steps have one.
    aside: Vec<u8>,
    set_aside: Vec<bool>,
    /// Steps whose frame is queued and not yet polled.
    ready: VecDeque<usize>,
    finished: bool,
}

impl Doubling {
    /// True if doubling can run in a world of `world`: with partner links (`partners`) in
    /// any world of 2 or more, without them where every partner is a ring neighbour
    /// (worlds of 2, 3 and 4).
    pub(super) fn fits(world: usize, partners: bool) -> bool {
        // Every position's plan has a link to every partner exactly then (checked against
        // the plans in the tests); called per call, so not computed from them.
        world > 1 && (partners || world <= 4)
    }

    /// Rounds a call takes (the latency it pays, in hops).
    pub(super) fn rounds(world: usize) -> u32 {
        let p2 = 1usize << (usize::BITS - 1 - world.leading_zeros());
        p2.trailing_zeros() + if world > p2 { 2 } else { 0 }
    }

    /// Starts with this rank's input (the caller's buffer, which then holds the running
    /// value); queues its first send.
    ///
    /// # Panics
    /// If the world does not [`Doubling::fits`] with `partners`.
    pub(super) fn start(world: usize, pos: usize, partners: bool, input: &[u8]) -> Doubling {
        let steps = plan(world, pos, partners).expect("recursive doubling needs a link to every partner");
        let n = steps.len();
        let mut d = Doubling {
            bytes: input.len(),
            pos,
            cur: 0,
            input: input.to_vec(),
            early: Vec::new(),
            have: vec![false; n],
            recv_next: Vec::new(),
            aside: Vec::new(),
            set_aside: vec![false; n],
            ready: VecDeque::new(),
            finished: false,
            steps,
        };
        let mut links: Vec<Link> = d.steps.iter().filter_map(|s| s.recv.map(|(l, _)| l)).collect();
        links.sort_by_key(|l| match l {
            Link::Prev => 0,
            Link::Next => 1,
            Link::Partner(q) => 2 + *q as usize,
        });
        links.dedup();
        d.recv_next = links.into_iter().map(|l| (l, d.next_recv_from(l, 0))).collect();
        d.enter_step();
        d
    }

    fn next_recv_from(&self, link: Link, from: usize) -> usize {
        (from..self.steps.len()).find(|&k| self.steps[k].recv.is_some_and(|(l, _)| l == link)).unwrap_or(usize::MAX)
    }

    /// Queues the current step's send (of the buffer as it is now).
    fn enter_step(&mut self) {
        if self.steps.get(self.cur).is_some_and(|s| s.send.is_some()) {
            self.ready.push_back(self.cur);
        }
    }

    /// The (round, sender position) of the next frame expected on `link`, if any.
    pub(super) fn expected(&self, link: Link) -> Option<(u32, usize)> {
        let s = self.steps.get(self.recv_cursor(link)?)?;
        Some((s.round, s.recv?.1))
    }

    /// Bytes per rank.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The link and round of the first value this rank still waits for, if any.
    pub(super) fn waiting(&self) -> Option<(Link, u32)> {
        (self.cur..self.steps.len())
            .filter(|&k| !self.have[k])
            .find_map(|k| self.steps[k].recv.map(|(l, _)| (l, self.steps[k].round)))
    }

    /// Index of the next step that receives on `link`; `None` for a link no step receives
    /// on.
    fn recv_cursor(&self, link: Link) -> Option<usize> {
        self.recv_next.iter().find(|(l, _)| *l == link).map(|&(_, k)| k)
    }

    /// Takes the expected frame's payload (the caller checked it is the expected one and of
    /// `bytes` length): reduced into `buf` (the running value) if its step is the current
    /// one, else kept until it is; then runs every step whose value is in. Once the last
    /// reduction is done `buf` holds the result (divided for `Avg`).
    pub(super) fn accept(&mut self, link: Link, payload: &[u8], ctx: (DataType, ReduceOp, usize), buf: &mut [u8]) {
        let Some(k) = self.recv_cursor(link).filter(|&k| k < self.steps.len()) else { return };
        let after = self.next_recv_from(link, k + 1);
        if let Some(c) = self.recv_next.iter_mut().find(|(l, _)| *l == link) {
            c.1 = after;
        }
        if k == self.cur {
            self.apply(payload, ctx, buf);
        } else {
            let b = self.bytes;
            if self.early.is_empty() {
                self.early = vec![0; self.steps.len() * b];
            }
            self.early[k * b..(k + 1) * b].copy_from_slice(payload);
            self.have[k] = true;
        }
        while self.cur < self.steps.len() {
            if self.steps[self.cur].recv.is_none() {
                self.advance(ctx, buf);
            } else if self.have[self.cur] {
                let (b, k) = (self.bytes, self.cur);
                let early = std::mem::take(&mut self.early);
                self.apply(&early[k * b..(k + 1) * b], ctx, buf);
                self.early = early;
            } else {
                break;
            }
        }
    }

    /// Applies the current step's received value to `buf`, then moves to the next step.
    fn apply(&mut self, got: &[u8], ctx: (DataType, ReduceOp, usize), buf: &mut [u8]) {
        // A queued send still needs the value `buf` holds now: copy it aside first.
        let b = self.bytes;
        for &k in &self.ready {
            if !self.set_aside[k] {
                if self.aside.is_empty() {
                    self.aside = vec![0; self.steps.len() * b];
                }
                self.aside[k * b..(k + 1) * b].copy_from_slice(buf);
                self.set_aside[k] = true;
            }
        }
        let (dtype, op, _) = ctx;
        match self.steps[self.cur].take {
            Take::ReduceOwnFirst => reduce::reduce_into(dtype, op, buf, got),
            Take::ReduceLowerFirst => reduce::reduce_into_rev(dtype, op, buf, got),
            Take::Replace => buf.copy_from_slice(got),
        }
        self.advance(ctx, buf);
    }

    /// Moves past the current step; once no later step receives anything but the result,
    /// the reduction is complete (`Avg` divides then; a folded position's result arrives
    /// already divided).
    fn advance(&mut self, (dtype, op, contributors): (DataType, ReduceOp, usize), buf: &mut [u8]) {
        let took = self.steps[self.cur].recv.map(|_| self.steps[self.cur].take);
        self.cur += 1;
        let reduced = self.steps[self.cur..].iter().all(|s| s.recv.is_none());
        if reduced && !self.finished {
            if op == ReduceOp::Avg && took != Some(Take::Replace) {
                reduce::divide(dtype, buf, contributors);
            }
            self.finished = true;
        }
        self.enter_step();
    }

    /// Next frame to send: link, round, this rank's position (the header's chunk) and its
    /// payload: the value copied aside for it, or `buf` as it is (it has not changed since
    /// the step began).
    pub(super) fn next_send<'a>(&'a mut self, buf: &'a [u8]) -> Option<(Link, u32, usize, &'a [u8])> {
        let k = self.ready.pop_front()?;
        let (link, _) = self.steps[k].send?;
        let b = self.bytes;
        let payload = if self.set_aside[k] { &self.aside[k * b..(k + 1) * b] } else { buf };
        Some((link, self.steps[k].round, self.pos, payload))
    }

    /// This rank's input.
    pub(super) fn input(&self) -> &[u8] {
        &self.input
    }

    /// True once the result is in the caller's buffer.
    pub(super) fn complete(&self) -> bool {
        self.finished
    }

    /// True once the result is in the caller's buffer and nothing is left to send.
    pub(super) fn done(&self) -> bool {
        self.finished && self.cur == self.steps.len() && self.ready.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a whole call among `world` positions in memory, delivering frames in the order
    /// `pick` chooses among those sent, and returns every position's result.
    /// Also returns how many sends had to be copied aside.
    fn run(
        world: usize,
        inputs: &[Vec<f32>],
        op: ReduceOp,
        mut pick: impl FnMut(usize) -> usize,
    ) -> (Vec<Vec<f32>>, usize) {
        let mut outs: Vec<Vec<u8>> = inputs.iter().map(|v| bytemuck::cast_slice(v).to_vec()).collect();
        let mut ranks: Vec<Doubling> = (0..world).map(|p| Doubling::start(world, p, true, &outs[p])).collect();
        // In flight: (to position, arriving link, round, from position, payload).
        let mut wire: Vec<(usize, Link, u32, usize, Vec<u8>)> = Vec::new();
        for _ in 0..1000 {
            for (p, r) in ranks.iter_mut().enumerate() {
                // Polled only now and then, so that sends queued before a reduction
                // must be copied aside.
                if pick(3) == 0 {
                    continue;
                }
                while let Some((link, round, from, payload)) = r.next_send(&outs[p]) {
                    assert_eq!(from, p);
                    let (to, at) = match link {
                        Link::Next => ((p + 1) % world, Link::Prev),
                        Link::Prev => ((p + world - 1) % world, Link::Next),
                        Link::Partner(q) => (q as usize, Link::Partner(p as u32)),
                    };
                    wire.push((to, at, round, p, payload.to_vec()));
                }
            }
            if wire.is_empty() {
                if ranks.iter().all(|r| r.ready.is_empty()) {
                    break;
                }
                continue;
            }
            // Deliver one frame that its receiver expects next on its link (links are FIFO).
            let deliverable: Vec<usize> = (0..wire.len())
                .filter(|&i| {
                    let (to, link, ..) = wire[i];
                    wire[..i].iter().all(|w| (w.0, w.1) != (to, link))
                })
                .collect();
            let (to, link, round, from, payload) = wire.remove(deliverable[pick(deliverable.len())]);
            assert_eq!(ranks[to].expected(link), Some((round, from)), "frame {round} from {from} at {to}");
            let ctx = (DataType::F32, op, world);
            ranks[to].accept(link, &payload, ctx, &mut outs[to]);
        }
        assert!(ranks.iter().all(|r| r.done()), "every position finishes");
        let aside = ranks.iter().map(|r| r.set_aside.iter().filter(|&&a| a).count()).sum();
        (outs.iter().map(|o| bytemuck::cast_slice(o).to_vec()).collect(), aside)
    }

    #[test]
    fn worlds_of_two_three_and_four_fit_larger_ones_need_partner_links() {
        assert!(!Doubling::fits(1, false) && !Doubling::fits(1, true));
        assert!((2..=4).all(|w| Doubling::fits(w, false) && partner_positions(w, 0).is_empty()));
        assert!((5..40).all(|w| !Doubling::fits(w, false) && Doubling::fits(w, true)));
        for world in 1..70 {
            for partners in [false, true] {
                let planned = world > 1 && (0..world).all(|p| plan(world, p, partners).is_some());
                assert_eq!(Doubling::fits(world, partners), planned, "world {world} partners {partners}");
            }
        }
        assert_eq!([2, 3, 4, 5, 8].map(Doubling::rounds), [1, 3, 2, 4, 3]);
    }

    #[test]
    fn partner_links_are_symmetric_few_and_never_to_a_neighbour() {
        for world in 2..=130 {
            let mut links = 0;
            for p in 0..world {
                let qs = partner_positions(world, p);
                let rounds = Doubling::rounds(world) as usize;
                assert!(qs.len() <= rounds, "world {world} position {p}: {qs:?}");
                for &q in &qs {
                    assert!(q < world && q != p && q != (p + 1) % world && q != (p + world - 1) % world);
                    assert!(partner_positions(world, q).contains(&p), "world {world}: {p} -> {q} one-sided");
                }
                links += qs.len();
            }
            // At n = 8 each position has one partner link (its round-2 partner); the
            // mirror pairing keeps the rest on the ring.
            if world == 8 {
                assert_eq!(links, 8);
            }
        }
    }

    #[test]
    fn every_position_ends_with_the_same_bits_in_any_delivery_order() {
        let mut set_aside = 0;
        for world in (2..=12).chain([16, 21]) {
            for seed in 0..20u64 {
                // Values whose sum depends on the order of addition.
                let inputs: Vec<Vec<f32>> = (0..world)
                    .map(|p| {
                        (0..37)
                            .map(|i| ((p * 7919 + i * 104729) as f32).sin() * 10f32.powi((p + i) as i32 % 9 - 4))
                            .collect()
                    })
                    .collect();
                let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut pick = |n: usize| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 33) as usize % n
                };
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
                    let (outs, aside) = run(world, &inputs, op, &mut pick);
                    set_aside += aside;
                    for o in &outs[1..] {
                        let same = o.iter().zip(&outs[0]).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "world {world} seed {seed} {op:?}: positions differ");
                    }
                    for (i, &got) in outs[0].iter().enumerate() {
                        let column = inputs.iter().map(|v| v[i] as f64);
                        let want = match op {
                            ReduceOp::Sum => column.sum::<f64>(),
                            ReduceOp::Avg => column.sum::<f64>() / world as f64,
                            _ => column.fold(f64::MIN, f64::max),
                        };
                        assert!((got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{op:?} element {i}");
                    }
                }
            }
        }
        assert!(set_aside > 0, "no run polled a send late: the copy-aside path went untested");
    }
}
