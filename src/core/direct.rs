//! The latency path for small all-reduces: every rank's whole buffer travels both ways round
//! the ring (half the ranks clockwise, half counter-clockwise), so after ceil((n-1)/2) hops
//! every rank holds all n inputs; each then reduces them itself in position order. The same
//! inputs in the same order give the same bits on every rank. A ring all-reduce needs 2(n-1)
//! hops; this needs about n/2, at the price of receiving (n-1) times the buffer, which is why
//! it is used only for small buffers (`DIRECT_MAX_BYTES`).

use std::collections::VecDeque;

use super::collective::Link;
use super::reduce;
use super::{DataType, ReduceOp};

/// Largest all-reduce (bytes per rank) `Algorithm::Auto` sends on the latency path.
pub const DIRECT_MAX_BYTES: usize = 16 << 10;

/// Largest total of all ranks' buffers (bytes) the latency path gathers on one rank.
pub const DIRECT_STORE_MAX_BYTES: usize = 4 << 20;

/// Index of a ring link in `[Prev, Next]` arrays; `None` for a partner link (nothing of
/// this kind travels on one).
fn rx_index(link: Link) -> Option<usize> {
    match link {
        Link::Prev => Some(0),
        Link::Next => Some(1),
        Link::Partner(_) => None,
    }
}

/// One rank's state on the latency path.
#[derive(Debug)]
pub(super) struct Direct {
    bytes: usize,
    world: usize,
    pos: usize,
    /// Every position's input, position p at `p * bytes`.
    store: Vec<u8>,
    have: Vec<bool>,
    missing: usize,
    /// Hops clockwise (sent on Next, received on Prev) and counter-clockwise.
    hops: [u32; 2],
    /// Next step expected on `[Prev, Next]`.
    expect: [u32; 2],
    /// Frames to send: link, step, origin position.
    ready: VecDeque<(Link, u32, usize)>,
    finished: bool,
}

impl Direct {
    /// Starts with this rank's input; queues its first sends.
    pub(super) fn start(world: usize, pos: usize, input: &[u8]) -> Direct {
        let bytes = input.len();
        let mut store = vec![0u8; bytes * world];
        store[pos * bytes..(pos + 1) * bytes].copy_from_slice(input);
        let mut have = vec![false; world];
        have[pos] = true;
        let hops = [(world / 2) as u32, ((world - 1) / 2) as u32];
        let mut ready = VecDeque::new();
        if hops[0] > 0 {
            ready.push_back((Link::Next, 0, pos));
        }
        if hops[1] > 0 {
            ready.push_back((Link::Prev, 0, pos));
        }
        Direct { bytes, world, pos, store, have, missing: world - 1, hops, expect: [0, 0], ready, finished: false }
    }

    /// The (step, origin position) of the next frame expected on `link`, if any.
    pub(super) fn expected(&self, link: Link) -> Option<(u32, usize)> {
        let i = rx_index(link)?;
        let step = self.expect[i];
        if step >= self.hops[i] {
            return None;
        }
        let (n, s) = (self.world, step as usize);
        let origin = if i == 0 { (self.pos + 2 * n - 1 - s) % n } else { (self.pos + 1 + s) % n };
        Some((step, origin))
    }

    /// Bytes per rank.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores the expected frame's payload (the caller checked it is the expected one and
    /// of `bytes` length) and queues its forward.
    pub(super) fn accept(&mut self, link: Link, payload: &[u8]) {
        let (Some((step, origin)), Some(i)) = (self.expected(link), rx_index(link)) else { return };
        self.store[origin * self.bytes..(origin + 1) * self.bytes].copy_from_slice(payload);
        if !self.have[origin] {
            self.have[origin] = true;
            self.missing -= 1;
        }
        self.expect[i] += 1;
        if step + 1 < self.hops[i] {
            self.ready.push_back((link.opposite(), step + 1, origin));
        }
    }

    /// Next frame to send: link, step, origin position.
    pub(super) fn next_send(&mut self) -> Option<(Link, u32, usize)> {
        self.ready.pop_front()
    }

    /// Position `origin`'s input.
    pub(super) fn payload(&self, origin: usize) -> &[u8] {
        &self.store[origin * self.bytes..(origin + 1) * self.bytes]
    }

    /// True once every input has arrived.
    pub(super) fn complete(&self) -> bool {
        self.missing == 0
    }

    /// True once the result is in the caller's buffer and nothing is left to send.
    pub(super) fn done(&self) -> bool {
        self.finished && self.ready.is_empty()
    }

    /// Reduces the n inputs in position order into `out` (every rank computes the same
    /// bits), then divides for `Avg`.
    pub(super) fn finish(&mut self, dtype: DataType, op: ReduceOp, out: &mut [u8], contributors: usize) {
        out.copy_from_slice(self.payload(0));
        for p in 1..self.world {
            let (b, s) = (self.bytes, &self.store);
            reduce::reduce_into(dtype, op, out, &s[p * b..(p + 1) * b]);
        }
        if op == ReduceOp::Avg {
            reduce::divide(dtype, out, contributors);
        }
        self.finished = true;
    }
}
