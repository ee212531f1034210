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
use std::time::{Duration, Instant};

use super::direct::{Direct, DIRECT_MAX_BYTES, DIRECT_STORE_MAX_BYTES};
use super::fin::Fins;
use super::payload::{CallCodec, Codecs};
use super::reduce;
use super::schedule::{
    all_gather_recv_chunk, all_gather_send_chunk, chunk_range, reduce_scatter_recv_chunk, reduce_scatter_send_chunk,
    segment_count, segment_range,
};
use super::{DataType, ReduceOp};
use crate::codec::{Codec, CodecChoice, CodecError, PooledBytes};
use crate::wire::{CollKind, FrameKind, Header, Phase, HEADER_LEN};

/// Smallest all-reduce (bytes) for which `Algorithm::Auto` picks the bidirectional ring.
/// Below it, twice the frames cost more latency than the second direction gains.
pub const BIDIR_MIN_BYTES: usize = 256 << 10;

/// One of the two links of a ring position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// The connection to the previous position in the ring.
    Prev,
    /// The connection to the next position in the ring.
    Next,
}

impl Link {
    /// 0 for `Prev`, 1 for `Next`: the index of per-link arrays such as [`Spec::payload_crc`].
    pub fn index(self) -> usize {
        match self {
            Link::Prev => 0,
            Link::Next => 1,
        }
    }

    /// The other link.
    pub fn opposite(self) -> Link {
        match self {
            Link::Prev => Link::Next,
            Link::Next => Link::Prev,
        }
    }
}

/// Which ring algorithm to run for `all_reduce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Pick by size (bidirectional ring for worlds of three or more).
    #[default]
    Auto,
    /// One ring, clockwise.
    Ring,
    /// Half the buffer clockwise, half counter-clockwise.
    Bidir,
    /// Latency path: whole inputs both ways round the ring, reduced locally
    /// (`core::direct`); for small buffers only.
    Direct,
}

impl Algorithm {
    /// Name as accepted by `ringbench --algo` and `RINGCC_ALGO`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Auto => "auto",
            Algorithm::Ring => "ring",
            Algorithm::Bidir => "bidir",
            Algorithm::Direct => "direct",
        }
    }
}

/// Everything a rank needs to know to run one collective. All ranks in the call must
/// agree on every field except `pos` and `rank` (the fingerprint fields are checked on
/// every frame).
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which collective.
    pub coll: CollKind,
    /// Reduction operator (ignored by all_gather and broadcast; sent as Sum).
    pub op: ReduceOp,
    /// Element type.
    pub dtype: DataType,
    /// Codec setting (`Config::codec`): which codecs this rank may send and accept. The
    /// codec of each frame is the sender's choice, named in its header.
    pub codec: CodecChoice,
    /// Job id carried in headers.
    pub job: u64,
    /// Membership epoch of the view this call runs in.
    pub epoch: u64,
    /// Sequence number of the call on the communicator.
    pub seq: u64,
    /// Elements in the working buffer (all_gather: the output; reduce_scatter: the input).
    pub len_elems: usize,
    /// Positions in the ring (members of the view).
    pub world: usize,
    /// This rank's position in the ring.
    pub pos: usize,
    /// This rank's id, carried in headers for diagnostics.
    pub rank: u32,
    /// Buffer block owned by each position: `block_of_pos[p]` is the chunk index position
    /// `p` ends up owning. For all_gather and reduce_scatter it is the rank order of the
    /// member at `p`, so outputs land in rank order whatever the ring order.
    pub block_of_pos: Vec<usize>,
    /// Root position for broadcast.
    pub root_pos: usize,
    /// Upper bound of a segment's payload in bytes.
    pub segment_bytes: usize,
    /// Divisor for `ReduceOp::Avg`: the number of contributors.
    pub contributors: usize,
    /// Ring algorithm for all_reduce.
    pub algorithm: Algorithm,
    /// Longest time without any received frame before the call fails as stalled.
    pub progress_timeout: Duration,
    /// Completion tokens (`core::fin`): finish only once every member holds the result,
    /// which exact retry after a failure relies on. Costs `world / 2` tiny hops per call.
    pub fin: bool,
    /// Per outgoing link (indexed by [`Link::index`]): whether the CRC32C in a frame's
    /// header covers its payload too, or the header alone (`Config::checksum`: links within
    /// one host leave payloads out by default). The receiving end of the link applies the
    /// same rule, so both must be given the same value for it.
    pub payload_crc: [bool; 2],
}

impl Spec {
    /// The abort frame this rank sends the neighbour on `link` when it abandons this call:
    /// header and payload (the reason, cut at `limits::ABORT_REASON_MAX` bytes on a char
    /// boundary).
    pub fn abort_frame(&self, link: Link, reason: &str) -> ([u8; HEADER_LEN], Vec<u8>) {
        let mut end = reason.len().min(crate::limits::ABORT_REASON_MAX);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let payload = reason.as_bytes()[..end].to_vec();
        let header = self.encode_header(link, FrameKind::Abort, Phase::ReduceScatter, (0, 0, 0), &payload);
        (header, payload)
    }

    /// The op carried in headers: collectives without a reduction carry Sum, so the
    /// fingerprint does not depend on an argument they ignore.
    fn wire_op(&self) -> ReduceOp {
        if matches!(self.coll, CollKind::AllGather | CollKind::Broadcast) {
            ReduceOp::Sum
        } else {
            self.op
        }
    }

    /// Encodes the header of one raw frame of this call for `link` at `(step, chunk,
    /// segment)` (CRC over it, and over `payload` if the link checks payloads).
    fn encode_header(
        &self,
        link: Link,
        kind: FrameKind,
        phase: Phase,
        at: (u32, u32, u32),
        payload: &[u8],
    ) -> [u8; HEADER_LEN] {
        self.encode_coded_header(link, kind, phase, at, (Codec::Raw, payload.len()), payload)
    }

    /// Encodes the header of a frame for `link` whose `payload` is the `codec` encoding of
    /// `raw_len` bytes at `(step, chunk, segment)`.
    fn encode_coded_header(
        &self,
        link: Link,
        kind: FrameKind,
        phase: Phase,
        (step, chunk, segment): (u32, u32, u32),
        (codec, raw_len): (Codec, usize),
        payload: &[u8],
    ) -> [u8; HEADER_LEN] {
        let header = Header {
            kind,
            codec,
            phase,
            coll: self.coll,
            op: self.wire_op(),
            dtype: self.dtype,
            step,
            job: self.job,
            epoch: self.epoch,
            seq: self.seq,
            len_elems: self.len_elems as u64,
            chunk,
            segment,
            payload_len: payload.len() as u32,
            raw_len: raw_len as u32,
            sender: self.rank,
        };
        if self.payload_crc[link.index()] {
            header.encode(payload)
        } else {
            header.encode_header_only()
        }
    }
}

/// Well-formed frames that break the protocol: a mismatch between ranks, a gap, a stall.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Ranks called different collectives, or with different arguments.
    #[error("rank {peer} called {field} = {remote}, this rank {field} = {local} (collective #{seq})")]
    Mismatch {
        /// Which argument differs (`collective`, `op`, `dtype`, `length`, `codec`).
        field: &'static str,
        /// This rank's value, rendered.
        local: String,
        /// The peer's value, rendered.
        remote: String,
        /// The peer's rank.
        peer: u32,
        /// Sequence number of the call.
        seq: u64,
    },
    /// A frame arrived that is not the one the schedule says comes next.
    #[error("unexpected frame from rank {peer}: {detail}")]
    Unexpected {
        /// The sender.
        peer: u32,
        /// What was expected and what came.
        detail: String,
    },
    /// A payload that the codec its header names cannot decode into the segment the
    /// schedule expects (corrupt, or of another size).
    #[error("rank {peer} sent a {codec} payload that does not decode: {source}")]
    Payload {
        /// The sender.
        peer: u32,
        /// The codec named in the header.
        codec: &'static str,
        /// What the decoder found.
        #[source]
        source: CodecError,
    },
    /// No frame arrived for longer than the progress timeout.
    #[error(
        "no progress for {waited:?} in collective #{seq} ({phase}, step {step}): waiting for the {link:?} neighbour"
    )]
    Stalled {
        /// Sequence number of the call.
        seq: u64,
        /// Which link the collective was waiting on.
        link: Link,
        /// Phase name.
        phase: &'static str,
        /// Step within the phase.
        step: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// A peer abandoned the call and said why.
    #[error("rank {peer} aborted collective #{seq}: {reason}")]
    Aborted {
        /// The rank that aborted.
        peer: u32,
        /// Sequence number of the call.
        seq: u64,
        /// Its reason.
        reason: String,
    },
}

/// Where a collective stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Frames are still expected or transmits still to be polled.
    Running,
    /// Every frame has been received and every transmit polled; once the driver has
    /// written all polled transmits, the buffer holds the result.
    Done,
    /// The call failed on this rank.
    Failed(ProtocolError),
}

/// A frame to send: its encoded header and the byte range of the caller's buffer that
/// follows it as payload, or the payload's own bytes. The driver writes `header` then
/// `owned` if present, else `buf[payload]`, and must not hand the buffer back to the user
/// before every transmit has been written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Link to send on.
    pub link: Link,
    /// Encoded header (CRC included).
    pub header: [u8; HEADER_LEN],
    /// Byte range of the caller's buffer to send after the header.
    pub payload: Range<usize>,
    /// Bytes to send instead of `payload` when they are not in the caller's buffer: an
    /// encoded segment, a compressed frame forwarded as it came, or the latency path
    /// forwarding another rank's input. Pooled buffers go back to their pool when dropped,
    /// so the driver drops each as soon as it is written.
    pub owned: Option<PooledBytes>,
}

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
    /// `ready` order, with their codec.
    forwards: VecDeque<(Cursor, Codec, PooledBytes)>,
}

/// One collective on one rank.
#[derive(Debug)]
pub struct Collective {
    spec: Spec,
    seg_elems: usize,
    parts: Vec<Part>,
    /// The latency path, instead of `parts`, for small all-reduces and barriers.
    direct: Option<Direct>,
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
}

/// The input bytes a call overwrote, saved segment by segment just before each first write
/// (when the bytes are in cache anyway), so that a redo can restore the input.
#[derive(Debug)]
struct Backup {
    /// Same length as the buffer; only saved segments hold meaningful bytes.
    bytes: Vec<u8>,
    /// Per part and per block: segments saved so far. Segments of a chunk are written in
    /// order, and a chunk written in reduce-scatter is not saved again in all-gather.
    saved: Vec<Vec<u32>>,
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
        let direct_fits = matches!(spec.coll, CollKind::AllReduce | CollKind::Barrier)
            && w > 1
            && bytes <= spec.segment_bytes
            && bytes.saturating_mul(w) <= DIRECT_STORE_MAX_BYTES;
        let direct = direct_fits
            && (spec.algorithm == Algorithm::Direct
                || (spec.algorithm == Algorithm::Auto && bytes <= DIRECT_MAX_BYTES));
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
            direct: direct.then(|| Direct::start(w, spec.pos, buf)),
            status: Status::Running,
            last_progress: now,
            bytes_sent: 0,
            bytes_saved: 0,
            codecs,
            plan,
            phase_marks: PhaseMarks { started: Some(now), ..PhaseMarks::default() },
            fins: (spec.fin && w > 1).then(|| Fins::new(w, spec.pos)),
            backup: None,
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
            (Phase::Broadcast | Phase::Gather, _) => return (0, part.elems.clone()),
        };
        let block = part.block_of_pos[q];
        let r = chunk_range(part.elems.len(), w, block);
        (block, part.elems.start + r.start..part.elems.start + r.end)
    }

    fn send_chunk_elems(&self, i: usize, phase: Phase, step: u32) -> usize {
        self.chunk_elems_range(i, phase, step, true).1.len()
    }

    /// Feeds one received data frame (CRC already verified by the caller) from `link`.
    ///
    /// Frames of another sequence number or epoch must be routed elsewhere by the caller;
    /// this checks everything else against the schedule.
    ///
    /// # Errors
    /// A [`ProtocolError`] if the frame is not the one expected next; the collective is
    /// then failed and stays failed.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        payload: &[u8],
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        self.handle(now, link, header, Some(payload), buf)
    }

    /// Where the payload of `header` may be read straight into the caller's buffer:
    /// `Some(byte range)` for the expected all-gather or broadcast frame, whose payload is
    /// copied unchanged. After reading it there (and checking its CRC), call
    /// [`Collective::handle_frame_in_place`]. `None` means: read it elsewhere and call
    /// [`Collective::handle_frame`].
    pub fn recv_target(&self, link: Link, h: &Header) -> Option<Range<usize>> {
        if h.kind != FrameKind::Data || self.status != Status::Running || self.check_fingerprint(h).is_err() {
            return None;
        }
        let i = self.parts.iter().position(|p| p.send_link.opposite() == link)?;
        let cur = self.parts[i].expect?;
        if !matches!(cur.phase, Phase::AllGather | Phase::Broadcast) || h.codec != Codec::Raw {
            return None;
        }
        let (block, bytes) = self.expected_bytes(i, cur);
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.payload_len as usize, h.raw_len as usize);
        (got == (cur.phase, cur.step, block, cur.segment, bytes.len(), bytes.len())).then_some(bytes)
    }

    /// Gives the collective a buffer (its capacity is reused) in which to save the input
    /// bytes it overwrites, just before it overwrites them, so that
    /// [`Collective::restore_input`] can put the input back for a redo. Call it right after
    /// `start`. The latency path keeps every input anyway and needs none.
    pub fn attach_backup(&mut self, mut bytes: Vec<u8>, buf_len: usize) {
        if self.direct.is_some() || self.parts.is_empty() {
            return;
        }
        bytes.resize(buf_len, 0);
        let saved = self.parts.iter().map(|_| vec![0; self.spec.world]).collect();
        self.backup = Some(Backup { bytes, saved });
    }

    /// Takes back the buffer given to [`Collective::attach_backup`].
    pub fn take_backup(&mut self) -> Option<Vec<u8>> {
        self.backup.take().map(|b| b.bytes)
    }

    /// Must be called before the payload of `h` is read into the range
    /// [`Collective::recv_target`] returned for it: saves the input bytes there first.
    pub fn before_in_place(&mut self, link: Link, h: &Header, buf: &[u8]) {
        if self.backup.is_none() {
            return;
        }
        let Some(i) = self.parts.iter().position(|p| p.send_link.opposite() == link) else { return };
        let Some(cur) = self.parts[i].expect else { return };
        let (block, bytes) = self.expected_bytes(i, cur);
        if h.segment == cur.segment {
            self.save_input(i, block, cur.segment, bytes, buf);
        }
    }

    fn save_input(&mut self, i: usize, block: usize, segment: u32, bytes: Range<usize>, buf: &[u8]) {
        let Some(b) = self.backup.as_mut() else { return };
        let Some(done) = b.saved.get_mut(i).and_then(|p| p.get_mut(block)) else { return };
        if segment >= *done && bytes.end <= buf.len() && bytes.end <= b.bytes.len() {
            b.bytes[bytes.clone()].copy_from_slice(&buf[bytes]);
            *done = segment + 1;
        }
    }

    /// Puts this rank's input back into `buf`, wherever this call overwrote it. Returns
    /// false if it cannot (a call that wrote its buffer without a backup attached).
    pub fn restore_input(&self, buf: &mut [u8]) -> bool {
        if let Some(d) = &self.direct {
            let input = d.payload(self.spec.pos);
            if input.len() == buf.len() {
                buf.copy_from_slice(input);
            }
            return input.len() == buf.len();
        }
        let Some(b) = &self.backup else { return self.parts.is_empty() };
        let esize = self.spec.dtype.size();
        let w = self.spec.world;
        for (i, part) in self.parts.iter().enumerate() {
            for (block, &done) in b.saved[i].iter().enumerate() {
                let r = chunk_range(part.elems.len(), w, block);
                for seg in 0..done as usize {
                    let e = segment_range(r.len(), self.seg_elems, seg);
                    let start = (part.elems.start + r.start + e.start) * esize;
                    let end = (part.elems.start + r.start + e.end) * esize;
                    buf[start..end].copy_from_slice(&b.bytes[start..end]);
                }
            }
        }
        true
    }

    /// Like [`Collective::handle_frame`] for a payload already read into the range
    /// [`Collective::recv_target`] returned for this header.
    ///
    /// # Errors
    /// As [`Collective::handle_frame`].
    pub fn handle_frame_in_place(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        self.handle(now, link, header, None, buf)
    }

    fn expected_bytes(&self, i: usize, cur: Cursor) -> (usize, Range<usize>) {
        let (block, chunk) = self.chunk_elems_range(i, cur.phase, cur.step, false);
        let seg = segment_range(chunk.len(), self.seg_elems, cur.segment as usize);
        let esize = self.spec.dtype.size();
        (block, (chunk.start + seg.start) * esize..(chunk.start + seg.end) * esize)
    }

    fn handle(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if let Status::Failed(e) = &self.status {
            return Err(e.clone());
        }
        let result = self.apply_frame(link, header, payload, buf);
        match result {
            Ok(()) => {
                self.last_progress = now;
                self.update_status(now);
                Ok(())
            }
            Err(e) => {
                self.status = Status::Failed(e.clone());
                Err(e)
            }
        }
    }

    fn apply_frame(
        &mut self,
        link: Link,
        h: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if h.kind == FrameKind::Abort {
            return Err(ProtocolError::Aborted {
                peer: h.sender,
                seq: h.seq,
                reason: String::from_utf8_lossy(payload.unwrap_or_default()).into_owned(),
            });
        }
        self.check_fingerprint(h)?;
        if h.kind == FrameKind::Fin {
            return self.apply_fin(link, h);
        }
        if self.direct.is_some() {
            return self.apply_direct(link, h, payload, buf);
        }
        let i = self
            .parts
            .iter()
            .position(|p| p.send_link.opposite() == link)
            .ok_or_else(|| self.unexpected(h, "a frame on a link this collective does not receive on".into()))?;
        let Some(cur) = self.parts[i].expect else {
            return Err(self.unexpected(h, "no more frames".into()));
        };
        let (block, bytes) = self.expected_bytes(i, cur);
        let chunk_len = self.chunk_elems_range(i, cur.phase, cur.step, false).1.len();
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.raw_len as usize);
        let want = (cur.phase, cur.step, block, cur.segment, bytes.len());
        if got != want {
            return Err(
                self.unexpected(h, format!("expected (phase, step, chunk, segment, bytes) = {want:?}, got {got:?}"))
            );
        }
        if let Err(detail) = self.plan.check_frame(h.codec, h.payload_len as usize, bytes.len()) {
            return Err(self.unexpected(h, detail));
        }
        self.save_input(i, block, cur.segment, bytes.clone(), buf);
        let dst = &mut buf[bytes];
        let w = self.spec.world as u32;
        let last_rs = cur.phase == Phase::ReduceScatter && cur.step + 2 == w;
        match (cur.phase, payload) {
            (Phase::ReduceScatter, Some(payload)) => {
                self.take_payload(h, true, payload, dst)?;
                if last_rs && self.spec.op == ReduceOp::Avg {
                    reduce::divide(self.spec.dtype, dst, self.spec.contributors);
                }
                if last_rs {
                    self.plan.round_final(self.spec.dtype, dst);
                }
            }
            (Phase::ReduceScatter, None) => {
                return Err(self.unexpected(h, "reduce-scatter payload delivered in place".into()));
            }
            (_, Some(payload)) => self.take_payload(h, false, payload, dst)?,
            (_, None) => {}
        }
        // What this receipt makes sendable, and what comes next on this link.
        let forward = match (cur.phase, self.spec.coll) {
            (Phase::ReduceScatter, CollKind::ReduceScatter) if last_rs => None,
            (Phase::ReduceScatter, _) if last_rs => {
                Some(Cursor { phase: Phase::AllGather, step: 0, segment: cur.segment })
            }
            (Phase::ReduceScatter, _) => Some(Cursor { step: cur.step + 1, ..cur }),
            (Phase::AllGather, _) if cur.step + 2 < w => Some(Cursor { step: cur.step + 1, ..cur }),
            (Phase::AllGather, _) => None,
            (Phase::Gather, _) => None,
            (Phase::Broadcast, _) => {
                let part = &self.parts[i];
                (crate::core::schedule::next_pos(part.pos, self.spec.world) != part.root_pos).then_some(cur)
            }
        };
        if let Some(f) = forward {
            // A frame that is only passed on is forwarded as it came: never re-encoded.
            if let (Phase::AllGather | Phase::Broadcast, Some(p), Some(c)) = (cur.phase, payload, &self.codecs) {
                if h.codec != Codec::Raw {
                    self.parts[i].forwards.push_back((f, h.codec, c.keep(p)));
                }
            }
            self.parts[i].ready.push_back(f);
        }
        let nsegs = segment_count(chunk_len, self.seg_elems) as u32;
        let next = if cur.segment + 1 < nsegs {
            Some(Cursor { segment: cur.segment + 1, ..cur })
        } else {
            match (cur.phase, self.spec.coll) {
                (Phase::ReduceScatter, CollKind::ReduceScatter) if last_rs => None,
                (Phase::ReduceScatter, _) if last_rs => Some(Cursor { phase: Phase::AllGather, step: 0, segment: 0 }),
                (Phase::ReduceScatter, _) | (Phase::AllGather, _) if cur.step + 2 < w => {
                    Some(Cursor { step: cur.step + 1, segment: 0, ..cur })
                }
                _ => None,
            }
        };
        self.parts[i].expect = next;
        Ok(())
    }

    /// Reduces (`reduces`) or copies a checked payload into `dst`, the segment the schedule
    /// expects: raw payloads straight from the frame, encoded ones through the lent codecs.
    fn take_payload(&mut self, h: &Header, reduces: bool, payload: &[u8], dst: &mut [u8]) -> Result<(), ProtocolError> {
        let (dtype, op) = (self.spec.dtype, self.spec.op);
        let decoded = match (h.codec, self.codecs.as_deref_mut()) {
            (Codec::Raw, _) if reduces => {
                reduce::reduce_into(dtype, op, dst, payload);
                Ok(())
            }
            (Codec::Raw, _) => {
                dst.copy_from_slice(payload);
                Ok(())
            }
            (codec, Some(c)) if reduces => c.decode_reduce(codec, dtype, op, payload, dst),
            (codec, Some(c)) => c.decode(codec, dtype, payload, dst),
            // `check_frame` accepts only raw frames when no codecs were lent.
            (codec, None) => Err(CodecError::Unsupported { codec, dtype }),
        };
        decoded.map_err(|source| ProtocolError::Payload { peer: h.sender, codec: h.codec.name(), source })
    }

    fn apply_fin(&mut self, link: Link, h: &Header) -> Result<(), ProtocolError> {
        let data_pending = self.data_expects_on(link);
        let Some(fins) = self.fins.as_mut().filter(|_| !data_pending && h.payload_len == 0) else {
            let why = if data_pending { "a FIN before the data it follows" } else { "an unexpected FIN" };
            return Err(ProtocolError::Unexpected { peer: h.sender, detail: why.into() });
        };
        fins.accept(link, h.chunk, h.step).map_err(|m| ProtocolError::Unexpected {
            peer: h.sender,
            detail: format!("expected FIN (origin, hop) = {:?}, got {:?}", m.want, m.got),
        })
    }

    fn apply_direct(
        &mut self,
        link: Link,
        h: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        let Some(d) = self.direct.as_mut() else { return Ok(()) };
        let Some((step, origin)) = d.expected(link) else {
            return Err(ProtocolError::Unexpected { peer: h.sender, detail: format!("no more frames on {link:?}") });
        };
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.payload_len as usize, h.raw_len as usize, h.codec);
        let want = (Phase::Gather, step, origin, 0, d.bytes(), d.bytes(), Codec::Raw);
        let Some(payload) = payload.filter(|_| got == want) else {
            return Err(ProtocolError::Unexpected {
                peer: h.sender,
                detail: format!("expected (phase, step, chunk, segment, bytes, raw, codec) = {want:?}, got {got:?}"),
            });
        };
        d.accept(link, payload);
        if d.complete() {
            d.finish(self.spec.dtype, self.spec.op, buf, self.spec.contributors);
        }
        Ok(())
    }

    fn poll_direct(&mut self, buf: &[u8]) -> Option<Transmit> {
        let d = self.direct.as_mut()?;
        let (link, step, origin) = d.next_send()?;
        let s = &self.spec;
        // Every payload is sent from the gathered copy, never from the caller's buffer:
        // the result overwrites that buffer as soon as the last input arrives, possibly
        // before this rank's own input has left (the simulator's hazard check found it).
        let _ = buf;
        let bytes: &[u8] = d.payload(origin);
        let header = s.encode_header(link, FrameKind::Data, Phase::Gather, (step, origin as u32, 0), bytes);
        self.bytes_sent += (HEADER_LEN + bytes.len()) as u64;
        let owned = match &self.codecs {
            Some(c) => c.keep(bytes),
            None => PooledBytes::from(bytes.to_vec()),
        };
        let t = Transmit { link, header, payload: 0..0, owned: Some(owned) };
        self.update_status_no_time();
        Some(t)
    }

    /// Compares the frame's fingerprint with this call's; strings are built only for a
    /// mismatch (this runs for every frame).
    fn check_fingerprint(&self, h: &Header) -> Result<(), ProtocolError> {
        let s = &self.spec;
        let op = s.wire_op();
        let mismatch = |field: &'static str, local: String, remote: String| {
            Err(ProtocolError::Mismatch { field, local, remote, peer: h.sender, seq: s.seq })
        };
        if h.coll != s.coll {
            return mismatch("collective", s.coll.name().into(), h.coll.name().into());
        }
        if h.dtype != s.dtype {
            return mismatch("dtype", s.dtype.name().into(), h.dtype.name().into());
        }
        if h.len_elems != s.len_elems as u64 {
            return mismatch("length", s.len_elems.to_string(), h.len_elems.to_string());
        }
        if h.op != op {
            return mismatch("op", op.name().into(), h.op.name().into());
        }
        Ok(())
    }

    fn unexpected(&self, h: &Header, detail: String) -> ProtocolError {
        ProtocolError::Unexpected { peer: h.sender, detail }
    }

    /// Next frame to send, if any. `buf` must be the buffer passed to every other call.
    ///
    /// A segment is encoded (with the call's codec) when it is polled, so a driver that
    /// polls only as its socket drains (see [`Collective::poll_transmit_where`]) encodes
    /// segment k while segment k-1 is being written.
    pub fn poll_transmit(&mut self, buf: &[u8]) -> Option<Transmit> {
        self.poll_transmit_where(buf, |_| true)
    }

    /// Like [`Collective::poll_transmit`], but only a frame for a link `may_send` accepts:
    /// the driver paces encoding by refusing links whose write queue is already deep.
    pub fn poll_transmit_where(&mut self, buf: &[u8], may_send: impl Fn(Link) -> bool) -> Option<Transmit> {
        if matches!(self.status, Status::Failed(_)) {
            return None;
        }
        // Latency-path frames and FINs are small and never encoded: nothing to pace. A FIN
        // goes only after every data frame, so pacing cannot put one ahead of data.
        let data = if self.direct.is_some() { self.poll_direct(buf) } else { self.poll_parts(buf, &may_send) };
        data.or_else(|| self.poll_fin())
    }

    fn poll_parts(&mut self, buf: &[u8], may_send: &impl Fn(Link) -> bool) -> Option<Transmit> {
        let i =
            (0..self.parts.len()).find(|&i| !self.parts[i].ready.is_empty() && may_send(self.parts[i].send_link))?;
        let cur = self.parts[i].ready.pop_front()?;
        let (block, chunk) = self.chunk_elems_range(i, cur.phase, cur.step, true);
        let seg = segment_range(chunk.len(), self.seg_elems, cur.segment as usize);
        let esize = self.spec.dtype.size();
        let payload = (chunk.start + seg.start) * esize..(chunk.start + seg.end) * esize;
        let link = self.parts[i].send_link;
        let raw = &buf[payload.clone()];
        let encoded = if self.parts[i].passes_on(cur) {
            // Forwarded exactly as it came: its kept payload if it came encoded, else raw
            // from the buffer. Encoding it again could round what this rank already holds
            // (a lossy codec where the owner sent raw) and its copies would then differ.
            let kept = self.parts[i].forwards.front().is_some_and(|(c, ..)| *c == cur);
            kept.then(|| self.parts[i].forwards.pop_front().map(|(_, codec, bytes)| (codec, bytes))).flatten()
        } else {
            match self.codecs.as_deref_mut() {
                Some(c) if self.plan.encodes() => c.encode_segment(&self.plan, link, self.spec.dtype, raw),
                _ => None,
            }
        };
        let (codec, wire) = match &encoded {
            Some((codec, bytes)) => (*codec, &bytes[..]),
            None => (Codec::Raw, raw),
        };
        let at = (cur.step, block as u32, cur.segment);
        let header = self.spec.encode_coded_header(link, FrameKind::Data, cur.phase, at, (codec, raw.len()), wire);
        self.bytes_sent += (HEADER_LEN + wire.len()) as u64;
        self.bytes_saved += raw.len().saturating_sub(wire.len()) as u64;
        let t = match encoded {
            Some((_, bytes)) => Transmit { link, header, payload: 0..0, owned: Some(bytes) },
            None => Transmit { link, header, payload, owned: None },
        };
        if self.parts.iter().all(|p| p.ready.is_empty()) {
            self.update_status_no_time();
        }
        Some(t)
    }

    /// The next completion token, once this rank holds the result and sent all its data.
    fn poll_fin(&mut self) -> Option<Transmit> {
        if !self.holds_result() || !self.data_sent() {
            return None;
        }
        let fins = self.fins.as_mut()?;
        fins.send_own();
        let (link, origin, hop) = fins.next_send()?;
        let header = self.spec.encode_header(link, FrameKind::Fin, Phase::AllGather, (hop, origin, 0), &[]);
        self.bytes_sent += HEADER_LEN as u64;
        let t = Transmit { link, header, payload: 0..0, owned: None };
        self.update_status_no_time();
        Some(t)
    }

    /// True once the caller's buffer holds this rank's whole result (it may still have
    /// frames to send, and completion tokens to exchange).
    pub fn holds_result(&self) -> bool {
        self.direct.as_ref().is_none_or(|d| d.complete()) && self.parts.iter().all(|p| p.expect.is_none())
    }

    /// True once every data frame of this rank has been handed out.
    fn data_sent(&self) -> bool {
        self.direct.as_ref().is_none_or(|d| d.done()) && self.parts.iter().all(|p| p.ready.is_empty())
    }

    fn data_expects_on(&self, link: Link) -> bool {
        self.direct.as_ref().is_some_and(|d| d.expects_on(link))
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
        let direct = self.direct.as_ref().and_then(|d| {
            [Link::Prev, Link::Next]
                .into_iter()
                .find_map(|l| d.expected(l).map(|(step, _)| (l, phase_name(Phase::Gather), step)))
        });
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
        let direct_done = self.direct.as_ref().is_none_or(|d| d.complete());
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
            Phase::ReduceScatter | Phase::Gather => false,
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
    }
}
