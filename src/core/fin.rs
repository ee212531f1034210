//! Completion tokens: a rank returns from a collective only once every member holds the
//! result, so that after a failure "someone returned" implies "every survivor can finish".
//!
//! When a rank holds the whole result and has handed out every data transmit, it sends a
//! FIN frame both ways round the ring; each FIN is forwarded in its direction of travel,
//! `world / 2` hops clockwise and `(world - 1) / 2` counter-clockwise, so every rank
//! receives exactly one FIN from each other position after at most `world / 2` hops. A
//! rank forwards FINs only once it has sent its own, so on every link all data frames come
//! before all FINs, and FINs arrive in hop order: each received FIN is checked against the
//! one exact (origin, hop) the ring allows next.
//!
//! Recovery (`docs/FAILURES.md`) relies on the invariant: if any rank completed the call,
//! every member held the result.
//!
//! Small all-reduces and barriers ([`tokens_needed`]) run without tokens: a rank returns as
//! soon as it holds the result and keeps a copy until its next call completes, and
//! recovery finishes the call from such a copy for the survivors that lack it. Their
//! invariant is weaker and enough: if any rank completed the call, every member *started*
//! it (its result needs every member's input), so completed counts still differ by at most
//! one.

use std::collections::VecDeque;

use super::collective::Link;
use crate::limits::RESULT_RETAIN_BYTES_MAX;
use crate::wire::CollKind;

/// Whether a call of `coll` over a buffer of `buf_bytes` needs completion tokens under
/// exact retry. All-reduces and barriers up to [`RESULT_RETAIN_BYTES_MAX`] do not: every
/// rank ends with the same bytes, so a survivor's retained copy can finish the call for
/// the others (`net::retain`, `docs/FAILURES.md`). Every rank decides the same from the
/// call's fingerprint.
pub fn tokens_needed(coll: CollKind, buf_bytes: usize) -> bool {
    !(matches!(coll, CollKind::AllReduce | CollKind::Barrier) && buf_bytes <= RESULT_RETAIN_BYTES_MAX)
}

/// Index of a ring link in `[Prev, Next]` arrays; `None` for a partner link (nothing of
/// this kind travels on one).
fn rx_index(link: Link) -> Option<usize> {
    match link {
        Link::Prev => Some(0),
        Link::Next => Some(1),
        Link::Partner(_) => None,
    }
}

/// One rank's completion tokens for one collective.
#[derive(Debug)]
pub(super) struct Fins {
    world: usize,
    pos: usize,
    /// Hops a FIN travels clockwise (received on Prev) and counter-clockwise.
    hops: [u32; 2],
    /// Next hop index expected on `[Prev, Next]`.
    expect: [u32; 2],
    /// Forwards received before this rank sent its own FIN: link, origin, hop.
    held: VecDeque<(Link, u32, u32)>,
    /// FINs to send now.
    ready: VecDeque<(Link, u32, u32)>,
    sent_own: bool,
}

/// A FIN that breaks the ring's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FinMismatch {
    /// What was expected.
    pub want: Option<(u32, u32)>,
    /// What came.
    pub got: (u32, u32),
}

impl Fins {
    /// Tokens for position `pos` of `world`.
    pub(super) fn new(world: usize, pos: usize) -> Fins {
        let hops = [(world / 2) as u32, (world.saturating_sub(1) / 2) as u32];
        Fins { world, pos, hops, expect: [0, 0], held: VecDeque::new(), ready: VecDeque::new(), sent_own: false }
    }

    /// The (origin position, hop) expected next on `link`, if any.
    pub(super) fn expected(&self, link: Link) -> Option<(u32, u32)> {
        let i = rx_index(link)?;
        let hop = self.expect[i];
        if hop >= self.hops[i] {
            return None;
        }
        let (n, h) = (self.world, hop as usize);
        let origin = if i == 0 { (self.pos + 2 * n - 1 - h) % n } else { (self.pos + 1 + h) % n };
        Some((origin as u32, hop))
    }

    /// Accepts a FIN from `origin` at `hop` received on `link`.
    pub(super) fn accept(&mut self, link: Link, origin: u32, hop: u32) -> Result<(), FinMismatch> {
        let want = self.expected(link);
        if want != Some((origin, hop)) {
            return Err(FinMismatch { want, got: (origin, hop) });
        }
        let Some(i) = rx_index(link) else { return Err(FinMismatch { want, got: (origin, hop) }) };
        self.expect[i] += 1;
        if hop + 1 < self.hops[i] {
            let fwd = (link.opposite(), origin, hop + 1);
            if self.sent_own {
                self.ready.push_back(fwd);
            } else {
                self.held.push_back(fwd);
            }
        }
        Ok(())
    }

    /// This rank holds the result: queue its own FIN, then the forwards it held back.
    pub(super) fn send_own(&mut self) {
        if self.sent_own {
            return;
        }
        self.sent_own = true;
        let own = self.pos as u32;
        if self.hops[0] > 0 {
            self.ready.push_back((Link::Next, own, 0));
        }
        if self.hops[1] > 0 {
            self.ready.push_back((Link::Prev, own, 0));
        }
        self.ready.append(&mut self.held);
    }

    /// Next FIN to send: link, origin position, hop.
    pub(super) fn next_send(&mut self) -> Option<(Link, u32, u32)> {
        self.ready.pop_front()
    }

    /// True once this rank sent its own FIN, heard every other position's, and has
    /// nothing left to forward.
    pub(super) fn done(&self) -> bool {
        self.sent_own && self.ready.is_empty() && self.expect == self.hops
    }

    /// True while FINs are still expected on `link`.
    pub(super) fn expects_on(&self, link: Link) -> bool {
        self.expected(link).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the tokens of a whole ring with instant delivery; every rank must finish having
    /// heard every other one exactly once.
    fn run(world: usize, ready_order: &[usize]) {
        let mut fins: Vec<Fins> = (0..world).map(|p| Fins::new(world, p)).collect();
        let mut heard = vec![vec![false; world]; world];
        let mut wire: VecDeque<(usize, Link, u32, u32)> = VecDeque::new();
        for &p in ready_order {
            fins[p].send_own();
            while let Some((link, o, h)) = fins[p].next_send() {
                wire.push_back((p, link, o, h));
            }
            while let Some((from, link, o, h)) = wire.pop_front() {
                let (to, rx) = match link {
                    Link::Next => ((from + 1) % world, Link::Prev),
                    Link::Prev => ((from + world - 1) % world, Link::Next),
                    Link::Partner(_) => panic!("a FIN sent on a partner link"),
                };
                fins[to].accept(rx, o, h).unwrap_or_else(|e| panic!("world {world}: {e:?}"));
                assert!(!heard[to][o as usize], "duplicate FIN");
                heard[to][o as usize] = true;
                while let Some((l, o, h)) = fins[to].next_send() {
                    wire.push_back((to, l, o, h));
                }
            }
        }
        for (p, f) in fins.iter().enumerate() {
            assert!(f.done(), "world {world} pos {p} not done");
            let others = heard[p].iter().enumerate().filter(|&(q, &h)| q != p && h).count();
            assert_eq!(others, world - 1);
        }
    }

    #[test]
    fn every_rank_hears_every_other_once_in_any_ready_order() {
        for world in 1..=9 {
            let order: Vec<usize> = (0..world).collect();
            run(world, &order);
            let rev: Vec<usize> = (0..world).rev().collect();
            run(world, &rev);
            let odd_first: Vec<usize> =
                (0..world).filter(|p| p % 2 == 1).chain((0..world).filter(|p| p % 2 == 0)).collect();
            run(world, &odd_first);
        }
    }

    #[test]
    fn only_small_all_reduces_and_barriers_go_without_tokens() {
        assert!(!tokens_needed(CollKind::AllReduce, 0));
        assert!(!tokens_needed(CollKind::AllReduce, RESULT_RETAIN_BYTES_MAX));
        assert!(tokens_needed(CollKind::AllReduce, RESULT_RETAIN_BYTES_MAX + 1));
        assert!(!tokens_needed(CollKind::Barrier, 0));
        for coll in [CollKind::AllGather, CollKind::ReduceScatter, CollKind::Broadcast] {
            assert!(tokens_needed(coll, 4), "{coll:?}");
        }
    }

    #[test]
    fn a_fin_out_of_order_is_refused() {
        let mut f = Fins::new(5, 2);
        assert_eq!(f.expected(Link::Prev), Some((1, 0)));
        assert!(f.accept(Link::Prev, 0, 1).is_err(), "hop 1 before hop 0");
        assert!(f.accept(Link::Prev, 1, 0).is_ok());
        assert!(f.accept(Link::Prev, 0, 1).is_ok());
        assert!(f.accept(Link::Prev, 4, 2).is_err(), "beyond the clockwise hops");
        assert!(!f.expects_on(Link::Prev));
    }
}
