//! The latency path for small all-reduces and barriers: one of two algorithms that trade
//! bandwidth for fewer hops, chosen per call (`Collective::start_with`).
//! * [`Direct`]: every input travels both ways round the ring, ceil((n-1)/2) hops, n-1
//!   frames in and out per rank.
//! * [`Doubling`]: recursive doubling, log2(n) rounds (+2 when n is not a power of two), one
//!   frame in and out per round; its partners are ring neighbours for n <= 4, and reached
//!   over partner links in larger worlds (without them larger worlds run `Direct`).
//!
//! Both are exact: every rank computes the same bits (see each module).

use super::collective::{Algorithm, Link};
use super::direct::{Direct, DIRECT_MAX_BYTES};
use super::doubling::{Doubling, DOUBLING_MAX_BYTES, DOUBLING_MAX_BYTES_LARGE};
use super::{DataType, ReduceOp};
use crate::wire::Phase;

/// One rank's state on the latency path.
#[derive(Debug)]
pub(super) enum Latency {
    Direct(Direct),
    Doubling(Doubling),
}

impl Latency {
    /// Starts the algorithm `algorithm` names for a world of `world` (`Auto` and `Doubling`
    /// where its partners are not all ring neighbours fall back as documented on
    /// [`Latency::pick`]).
    pub(super) fn start(algorithm: Algorithm, world: usize, pos: usize, partners: bool, input: &[u8]) -> Latency {
        if Latency::pick(algorithm, world, partners) == Algorithm::Doubling {
            Latency::Doubling(Doubling::start(world, pos, partners, input))
        } else {
            Latency::Direct(Direct::start(world, pos, input))
        }
    }

    /// The latency algorithm a call with `algorithm` runs in a world of `world`, with or
    /// without partner links (`partners`): `Direct` when asked for; recursive doubling when
    /// asked for and it fits (its partners are ring neighbours, or there are partner links);
    /// otherwise (`Auto`, or doubling that does not fit) the one with fewer hops, doubling
    /// on a tie (it moves fewer frames: 2 per rank instead of 3 at n = 4).
    pub(super) fn pick(algorithm: Algorithm, world: usize, partners: bool) -> Algorithm {
        let direct_hops = (world as u32).saturating_sub(1).div_ceil(2);
        match algorithm {
            Algorithm::Direct => Algorithm::Direct,
            _ if Doubling::fits(world, partners)
                && (algorithm == Algorithm::Doubling || Doubling::rounds(world) <= direct_hops) =>
            {
                Algorithm::Doubling
            }
            _ => Algorithm::Direct,
        }
    }

    /// Largest all-reduce (bytes per rank) `Algorithm::Auto` sends on the latency path in a
    /// world of `world`: the limit of the algorithm it would pick.
    pub(super) fn auto_max_bytes(world: usize, partners: bool) -> usize {
        match Latency::pick(Algorithm::Auto, world, partners) {
            Algorithm::Doubling if world <= 4 => DOUBLING_MAX_BYTES,
            Algorithm::Doubling => DOUBLING_MAX_BYTES_LARGE,
            _ => DIRECT_MAX_BYTES,
        }
    }

    /// The phase its frames carry.
    pub(super) fn phase(&self) -> Phase {
        match self {
            Latency::Direct(_) => Phase::Gather,
            Latency::Doubling(_) => Phase::Doubling,
        }
    }

    /// The (step, chunk) fields of the next frame expected on `link`, if any.
    pub(super) fn expected(&self, link: Link) -> Option<(u32, usize)> {
        match self {
            Latency::Direct(d) => d.expected(link),
            Latency::Doubling(d) => d.expected(link),
        }
    }

    /// The link and step of a frame this rank waits for now, if any: for doubling the
    /// first round whose value has not arrived (it may be on a partner link), for the
    /// direct path the first ring link with a frame still to come.
    pub(super) fn waiting(&self) -> Option<(Link, u32)> {
        match self {
            Latency::Direct(d) => {
                [Link::Prev, Link::Next].into_iter().find_map(|l| d.expected(l).map(|(step, _)| (l, step)))
            }
            Latency::Doubling(d) => d.waiting(),
        }
    }

    /// Bytes per rank (every frame's payload length).
    pub(super) fn bytes(&self) -> usize {
        match self {
            Latency::Direct(d) => d.bytes(),
            Latency::Doubling(d) => d.bytes(),
        }
    }

    /// Takes the expected frame's payload (checked by the caller); `out` (the caller's
    /// buffer) holds the result once it is known.
    pub(super) fn accept(&mut self, link: Link, payload: &[u8], ctx: (DataType, ReduceOp, usize), out: &mut [u8]) {
        match self {
            Latency::Direct(d) => {
                d.accept(link, payload);
                if d.complete() {
                    d.finish(ctx.0, ctx.1, out, ctx.2);
                }
            }
            Latency::Doubling(d) => d.accept(link, payload, ctx, out),
        }
    }

    /// Next frame to send: link, step and chunk fields, payload (`buf` is the caller's
    /// buffer, which recursive doubling reduces into).
    pub(super) fn next_send<'a>(&'a mut self, buf: &'a [u8]) -> Option<(Link, u32, usize, &'a [u8])> {
        match self {
            Latency::Direct(d) => {
                let (link, step, origin) = d.next_send()?;
                Some((link, step, origin, d.payload(origin)))
            }
            Latency::Doubling(d) => d.next_send(buf),
        }
    }

    /// This rank's input (kept whole by both algorithms, so a redo needs no backup).
    pub(super) fn input(&self, pos: usize) -> &[u8] {
        match self {
            Latency::Direct(d) => d.payload(pos),
            Latency::Doubling(d) => d.input(),
        }
    }

    /// True once the result is in the caller's buffer.
    pub(super) fn complete(&self) -> bool {
        match self {
            Latency::Direct(d) => d.complete(),
            Latency::Doubling(d) => d.complete(),
        }
    }

    /// True once the result is in the caller's buffer and nothing is left to send.
    pub(super) fn done(&self) -> bool {
        match self {
            Latency::Direct(d) => d.done(),
            Latency::Doubling(d) => d.done(),
        }
    }

    /// True while frames are still expected on `link`.
    pub(super) fn expects_on(&self, link: Link) -> bool {
        self.expected(link).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_doubling_where_it_fits_and_takes_no_more_hops() {
        use Algorithm::{Direct as Dir, Doubling as Dbl};
        let pick = |w| Latency::pick(Algorithm::Auto, w, false);
        assert_eq!([2, 3, 4, 5, 8].map(pick), [Dbl, Dir, Dbl, Dir, Dir]);
        assert_eq!(Latency::pick(Dbl, 3, false), Dbl);
        assert_eq!(Latency::pick(Dbl, 8, false), Dir);
        assert_eq!(Latency::pick(Dir, 4, false), Dir);
        // With partner links: doubling wherever its rounds are no more than direct's hops
        // (n = 5: 4 rounds against 2 hops; n = 8: 3 against 4; n = 64: 6 against 32).
        let pick = |w| Latency::pick(Algorithm::Auto, w, true);
        assert_eq!([2, 3, 4, 5, 7, 8, 9, 10, 16, 64].map(pick), [Dbl, Dir, Dbl, Dir, Dir, Dbl, Dir, Dbl, Dbl, Dbl]);
        assert_eq!(Latency::pick(Dbl, 5, true), Dbl);
        assert_eq!(Latency::pick(Dir, 64, true), Dir);
    }
}
