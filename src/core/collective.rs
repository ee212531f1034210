//! One collective on one rank, as a state machine that performs no I/O.
//!
//! After `start` and after any `handle_*` call, drain [`Collective::poll_transmit`] until
//! `None`, then read [`Collective::status`] and [`Collective::poll_timeout`]. Time moves only
//! through the caller's `now`; the caller owns the buffer and passes it to every call.
//!
//! A collective is a list of named steps per *part*: a part is a slice of the buffer that
//! travels round the ring in one direction. `all_reduce` with the bidirectional ring has two
//! parts (one clockwise over the first half, one counter-clockwise over the second), using
//! both directions of every full-duplex link. Each part runs ring reduce-scatter then
//! all-gather: each rank sends 2(n-1)/n of the buffer. Frames on a link arrive in the exact
//! order the sender produced them, so every received header is checked against the one
//! frame the schedule says must come next: a gap, a wrong step or a wrong length is a
//! [`ProtocolError`], never a silently wrong sum.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use super::direct::DIRECT_STORE_MAX_BYTES;
use super::fin::Fins;
use super::latency::Latency;
use super::payload::{CallCodec, Codecs};
use super::schedule::{
    all_gather_recv_chunk, all_gather_send_chunk, chunk_range, reduce_scatter_recv_chunk, reduce_scatter_send_chunk,
    segment_count, segment_range,
};
use crate::codec::{Codec, CodecChoice, PooledBytes};
use crate::wire::{CollKind, Phase};

mod backup;
mod receive;
mod send;
mod spec;

use backup::Backup;
pub use send::Outlet;
pub use spec::{Algorithm, Link, ProtocolError, Spec, Status, Transmit};

/// Smallest all-reduce (bytes) for which `Algorithm::Auto` picks the bidirectional ring.
/// Below it, twice the frames cost more latency than the second direction gains.
pub const BIDIR_MIN_BYTES: usize = 256 << 10;

/// A position in a part's schedule: which frame comes next on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    phase: Phase,
    step: u32,
    segment: u32,
}

#[derive(Debug)]
struct Part {
    /// Element range of the buffer this part covers.
    elems: Range<usize>,
    /// Link this part sends on; it receives on the opposite one.
    send_link: Link,
    /// This rank's position in the part's direction of travel.
    pos: usize,
    /// `block_of_pos` in the part's direction.
    block_of_pos: Vec<usize>,
    /// Root position in the part's direction (broadcast).
    root_pos: usize,
    /// The next frame expected, `None` when nothing more will arrive.
    expect: Option<Cursor>,
    /// Frames ready to send, in schedule order.
    ready: VecDeque<Cursor>,
    /// Encoded payloads received to be forwarded as they came (all-gather, broadcast), in
    /// `ready` order, with their codec. `None`: no copy was kept (the call already held
    /// [`FORWARDS_KEPT_BYTES_MAX`]); the frame is encoded again from the buffer.
    forwards: VecDeque<(Cursor, Codec, Option<PooledBytes>)>,
}

/// One collective on one rank.
#[derive(Debug)]
pub struct Collective {
    spec: Spec,
    seg_elems: usize,
    parts: Vec<Part>,
    /// The latency path, instead of `parts`, for small all-reduces and barriers.
    latency: Option<Latency>,
    status: Status,
    last_progress: Instant,
    bytes_sent: u64,
    /// Bytes compression kept off the wire: `bytes_sent` plus this is what raw would send.
    bytes_saved: u64,
    /// Codecs lent by the driver for this call, returned by `take_codecs`.
    codecs: Option<Box<Codecs>>,
    /// What this call sends and accepts.
    plan: CallCodec,
    /// Time the reduce-scatter phase ended (all parts), for the report.
    phase_marks: PhaseMarks,
    /// Completion tokens, when `spec.fin` and the world has more than one member.
    fins: Option<Fins>,
    /// The original input of every range this call overwrote, saved just before the first
    /// write (exact retry; see [`Collective::attach_backup`]).
    backup: Option<Backup>,
    /// Bytes of the copies in `forwards` of every part.
    forwards_kept_bytes: usize,
}

/// Times at which phases ended, measured with the caller's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseMarks {
    /// When the collective started.
    pub started: Option<Instant>,
    /// When the last reduce-scatter frame was reduced.
    pub reduce_scatter_done: Option<Instant>,
    /// When the last frame was received.
    pub finished: Option<Instant>,
}

impl Collective {
    /// Sets up the collective and queues its first transmits.
    ///
    /// The caller has already laid out the buffer (all_gather: its input copied into its
    /// own block). `buf` must be `spec.len_elems * dtype.size()` bytes.
    ///
    /// # Panics
    /// On an inconsistent spec (caller bug): `pos >= world`, a wrong buffer length, a
    /// `block_of_pos` that is not a permutation of `0..world`.
    pub fn start(spec: Spec, now: Instant, buf: &mut [u8]) -> Collective {
        Collective::start_with(spec, now, buf, None)
    }

    /// Like [`Collective::start`], with the driver's codecs lent for the call (take them
    /// back with [`Collective::take_codecs`]). Without codecs the call sends and accepts
    /// only raw frames, whatever `spec.codec` says.
    ///
    /// # Panics
    /// As [`Collective::start`].
    pub fn start_with(spec: Spec, now: Instant, buf: &mut [u8], codecs: Option<Box<Codecs>>) -> Collective {
        assert!(spec.world > 0 && spec.pos < spec.world && spec.root_pos < spec.world);
        assert_eq!(buf.len(), spec.len_elems * spec.dtype.size(), "buffer length");
        assert_eq!(spec.block_of_pos.len(), spec.world);
        let seg_elems = (spec.segment_bytes / spec.dtype.size()).max(1);
        let w = spec.world;
        let big = spec.len_elems * spec.dtype.size() >= BIDIR_MIN_BYTES;
        let bidir = spec.coll == CollKind::AllReduce
            && w > 2
            && spec.len_elems >= 2 * w
            && (spec.algorithm == Algorithm::Bidir || (spec.algorithm == Algorithm::Auto && big));
        let mirror = |p: usize| (w - p) % w;
        let mut parts = Vec::new();
        let bytes = spec.len_elems * spec.dtype.size();
        // Direct gathers every rank's input on each rank; doubling keeps a few copies of one.
        let stores_all = Latency::pick(spec.algorithm, w, spec.partner_links) == Algorithm::Direct;
        let direct_fits = matches!(spec.coll, CollKind::AllReduce | CollKind::Barrier)
            && w > 1
            && bytes <= spec.segment_bytes
            && (!stores_all || bytes.saturating_mul(w) <= DIRECT_STORE_MAX_BYTES);
        let direct = direct_fits
            && (matches!(spec.algorithm, Algorithm::Direct | Algorithm::Doubling)
                || (spec.algorithm == Algorithm::Auto && bytes <= Latency::auto_max_bytes(w, spec.partner_links)));
        if direct {
            // The parts stay empty: the latency path carries the whole call.
        } else if bidir {
            let half = spec.len_elems / 2;
            parts.push(Part::new(0..half, Link::Next, spec.pos, spec.block_of_pos.clone(), spec.root_pos));
            let rev: Vec<usize> = (0..w).map(|q| spec.block_of_pos[mirror(q)]).collect();
            parts.push(Part::new(half..spec.len_elems, Link::Prev, mirror(spec.pos), rev, mirror(spec.root_pos)));
        } else {
            parts.push(Part::new(0..spec.len_elems, Link::Next, spec.pos, spec.block_of_pos.clone(), spec.root_pos));
        }
        // The latency path carries small inputs raw (compression cannot pay at that size).
        let lent = codecs.as_deref().filter(|_| !direct);
        let plan = CallCodec::new(spec.codec, spec.coll, spec.dtype, parts.len(), lent);
        let mut c = Collective {
            seg_elems,
            parts,
            latency: direct.then(|| Latency::start(spec.algorithm, w, spec.pos, spec.partner_links, buf)),
            status: Status::Running,
            last_progress: now,
            bytes_sent: 0,
            bytes_saved: 0,
            codecs,
            plan,
            phase_marks: PhaseMarks { started: Some(now), ..PhaseMarks::default() },
            fins: (spec.fin && w > 1).then(|| Fins::new(w, spec.pos)),
            backup: None,
            forwards_kept_bytes: 0,
            spec,
        };
        for i in 0..c.parts.len() {
            c.init_part(i, buf);
        }
        c.update_status(now);
        c
    }

    fn init_part(&mut self, i: usize, buf: &mut [u8]) {
        let w = self.spec.world;
        let coll = self.spec.coll;
        let seg_elems = self.seg_elems;
        let part = &mut self.parts[i];
        if w == 1 {
            part.expect = None;
            return;
        }
        let (first_recv, first_send) = match coll {
            CollKind::AllReduce | CollKind::Barrier | CollKind::ReduceScatter => {
                (Phase::ReduceScatter, Phase::ReduceScatter)
            }
            CollKind::AllGather => (Phase::AllGather, Phase::AllGather),
            CollKind::Broadcast => (Phase::Broadcast, Phase::Broadcast),
        };
        part.expect = Some(Cursor { phase: first_recv, step: 0, segment: 0 });
        let is_root = part.pos == part.root_pos;
        if coll == CollKind::Broadcast && is_root {
            part.expect = None;
        }
        if coll != CollKind::Broadcast || is_root {
            let chunk_elems = self.send_chunk_elems(i, first_send, 0);
            for s in 0..segment_count(chunk_elems, seg_elems) {
                self.parts[i].ready.push_back(Cursor { phase: first_send, step: 0, segment: s as u32 });
            }
        }
        let _ = buf;
    }

    /// Element range (absolute in the buffer) of the chunk moved at `(phase, step)` by the
    /// sender side (`send = true`) or the receiver side of part `i`.
    fn chunk_elems_range(&self, i: usize, phase: Phase, step: u32, send: bool) -> (usize, Range<usize>) {
        let part = &self.parts[i];
        let w = self.spec.world;
        let (p, s) = (part.pos, step as usize);
        let q = match (phase, send) {
            (Phase::ReduceScatter, true) => reduce_scatter_send_chunk(p, w, s),
            (Phase::ReduceScatter, false) => reduce_scatter_recv_chunk(p, w, s),
            (Phase::AllGather, true) => all_gather_send_chunk(p, w, s),
            (Phase::AllGather, false) => all_gather_recv_chunk(p, w, s),
            // Parts never run the gather phase (the latency path has its own state).
            (Phase::Broadcast | Phase::Gather | Phase::Doubling, _) => return (0, part.elems.clone()),
        };
        let block = part.block_of_pos[q];
        let r = chunk_range(part.elems.len(), w, block);
        (block, part.elems.start + r.start..part.elems.start + r.end)
    }

    fn send_chunk_elems(&self, i: usize, phase: Phase, step: u32) -> usize {
        self.chunk_elems_range(i, phase, step, true).1.len()
    }

    fn expected_bytes(&self, i: usize, cur: Cursor) -> (usize, Range<usize>) {
        let (block, chunk) = self.chunk_elems_range(i, cur.phase, cur.step, false);
        let seg = segment_range(chunk.len(), self.seg_elems, cur.segment as usize);
        let esize = self.spec.dtype.size();
        (block, (chunk.start + seg.start) * esize..(chunk.start + seg.end) * esize)
    }

    /// True once the caller's buffer holds this rank's whole result (it may still have
    /// frames to send, and completion tokens to exchange).
    pub fn holds_result(&self) -> bool {
        self.latency.as_ref().is_none_or(|d| d.complete()) && self.parts.iter().all(|p| p.expect.is_none())
    }

    /// True once every data frame of this rank has been handed out.
    fn data_sent(&self) -> bool {
        self.latency.as_ref().is_none_or(|d| d.done()) && self.parts.iter().all(|p| p.ready.is_empty())
    }

    fn data_expects_on(&self, link: Link) -> bool {
        self.latency.as_ref().is_some_and(|d| d.expects_on(link))
            || self.parts.iter().any(|p| p.send_link.opposite() == link && p.expect.is_some())
    }

    /// Deadline at which [`Collective::handle_timeout`] must be called, if running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.status {
            Status::Running => Some(self.last_progress + self.spec.progress_timeout),
            _ => None,
        }
    }

    /// Fails the collective as stalled if the progress deadline has passed; calling it
    /// early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.status != Status::Running || now < self.last_progress + self.spec.progress_timeout {
            return;
        }
        let (link, phase, step) = self.waiting_on().unwrap_or((Link::Next, "send", 0));
        self.status = Status::Failed(ProtocolError::Stalled {
            seq: self.spec.seq,
            link,
            phase,
            step,
            waited: now - self.last_progress,
        });
    }

    /// Fails the collective with `error` (a driver-level failure such as a closed link).
    pub fn fail(&mut self, error: ProtocolError) {
        if self.status == Status::Running {
            self.status = Status::Failed(error);
        }
    }

    /// Where the collective stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The link and schedule position this rank waits on, for status displays.
    pub fn waiting_on(&self) -> Option<(Link, &'static str, u32)> {
        let direct = self.latency.as_ref().and_then(|d| d.waiting().map(|(l, step)| (l, phase_name(d.phase()), step)));
        let data = direct.or_else(|| {
            self.parts.iter().find_map(|p| p.expect.map(|c| (p.send_link.opposite(), phase_name(c.phase), c.step)))
        });
        data.or_else(|| self.fin_wait().map(|(l, hop)| (l, "fin", hop)))
    }

    fn fin_wait(&self) -> Option<(Link, u32)> {
        let f = self.fins.as_ref()?;
        [Link::Prev, Link::Next].into_iter().find_map(|l| f.expected(l).map(|(_, hop)| (l, hop)))
    }

    /// True while frames are still expected on `link`.
    pub fn expects_on(&self, link: Link) -> bool {
        self.data_expects_on(link) || self.fins.as_ref().is_some_and(|f| f.expects_on(link))
    }

    /// Bytes (headers included) handed out by `poll_transmit` so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// What [`Collective::bytes_sent`] would be had every payload been sent raw (equal to
    /// it without compression; their ratio is the call's compression ratio).
    pub fn bytes_sent_raw(&self) -> u64 {
        self.bytes_sent + self.bytes_saved
    }

    /// True if this call may encode segments when they are polled (the driver then paces
    /// its polling to keep encoding just ahead of the socket).
    pub fn encodes(&self) -> bool {
        self.plan.encodes()
    }

    /// The codecs lent at start, to be lent to the next call. `None` if none were lent or
    /// they were already taken (the call then sends raw from here on).
    pub fn take_codecs(&mut self) -> Option<Box<Codecs>> {
        if let (Some(c), CodecChoice::Auto { .. }) = (self.codecs.as_deref_mut(), self.plan.choice) {
            // `auto` checks its choices against the goodput they gave.
            let marks = self.phase_marks;
            let elapsed = match (&self.status, marks.started, marks.finished) {
                (Status::Done, Some(start), Some(end)) => Some(end.saturating_duration_since(start)),
                _ => None,
            };
            c.end_call(&self.plan, self.bytes_sent + self.bytes_saved, self.bytes_sent, elapsed);
        }
        self.plan = CallCodec::RAW;
        self.codecs.take()
    }

    /// When phases ended, by the caller's clock.
    pub fn phase_marks(&self) -> PhaseMarks {
        self.phase_marks
    }

    /// The spec this collective runs.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn update_status(&mut self, now: Instant) {
        let direct_done = self.latency.as_ref().is_none_or(|d| d.complete());
        let rs_done =
            direct_done && self.parts.iter().all(|p| p.expect.is_none_or(|c| c.phase != Phase::ReduceScatter));
        if rs_done && self.phase_marks.reduce_scatter_done.is_none() {
            self.phase_marks.reduce_scatter_done = Some(now);
        }
        if direct_done && self.parts.iter().all(|p| p.expect.is_none()) && self.phase_marks.finished.is_none() {
            self.phase_marks.finished = Some(now);
        }
        self.update_status_no_time();
    }

    fn update_status_no_time(&mut self) {
        let fins_done = self.fins.as_ref().is_none_or(|f| f.done());
        if self.status == Status::Running && self.holds_result() && self.data_sent() && fins_done {
            self.status = Status::Done;
        }
    }
}

impl Part {
    /// True if the frame at `cur` passes on what this rank received (all-gather after its
    /// first step, broadcast off the root) rather than data of its own.
    fn passes_on(&self, cur: Cursor) -> bool {
        match cur.phase {
            Phase::AllGather => cur.step > 0,
            Phase::Broadcast => self.pos != self.root_pos,
            Phase::ReduceScatter | Phase::Gather | Phase::Doubling => false,
        }
    }

    fn new(elems: Range<usize>, send_link: Link, pos: usize, block_of_pos: Vec<usize>, root_pos: usize) -> Part {
        Part {
            elems,
            send_link,
            pos,
            block_of_pos,
            root_pos,
            expect: None,
            ready: VecDeque::new(),
            forwards: VecDeque::new(),
        }
    }
}

/// Name of a phase for errors and status lines.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::ReduceScatter => "reduce-scatter",
        Phase::AllGather => "all-gather",
        Phase::Broadcast => "broadcast",
        Phase::Gather => "gather",
        Phase::Doubling => "doubling",
    }
}
