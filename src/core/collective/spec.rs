//! What a collective is (its `Spec`), the links it runs on, what it sends (`Transmit`),
//! and how it ends (`Status`, `ProtocolError`).

use std::ops::Range;
use std::time::Duration;

use crate::codec::{Codec, CodecChoice, CodecError, PooledBytes};
use crate::core::{DataType, ReduceOp};
use crate::wire::{CollKind, FrameKind, Header, Phase, HEADER_LEN};

/// A connection of a ring position: one of its two ring links, or a partner link to a
/// non-neighbour that recursive doubling exchanges with (worlds of 5 and more,
/// `core::doubling::partner_positions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// The connection to the previous position in the ring.
    Prev,
    /// The connection to the next position in the ring.
    Next,
    /// The partner link to the position this names (not a ring neighbour). The same link
    /// is `Partner(the other end's position)` at each end.
    Partner(u32),
}

impl Link {
    /// 0 for `Prev`, 1 for `Next`, 2 for every partner link: the index of per-link arrays
    /// such as [`Spec::payload_crc`].
    pub fn index(self) -> usize {
        match self {
            Link::Prev => 0,
            Link::Next => 1,
            Link::Partner(_) => 2,
        }
    }

    /// The other ring link; a partner link is its own opposite (frames to and from a
    /// partner travel on the one link).
    pub fn opposite(self) -> Link {
        match self {
            Link::Prev => Link::Next,
            Link::Next => Link::Prev,
            Link::Partner(q) => Link::Partner(q),
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
    /// Latency path: recursive doubling (`core::doubling`), log2(n) rounds; for small
    /// buffers only, and only where its partners are ring neighbours (worlds of 2 to 4;
    /// larger ones run `Direct`).
    Doubling,
}

impl Algorithm {
    /// Every algorithm, in the order names are listed to users.
    pub const ALL: [Algorithm; 5] =
        [Algorithm::Auto, Algorithm::Ring, Algorithm::Bidir, Algorithm::Direct, Algorithm::Doubling];

    /// The algorithm named `name` (case-insensitive), as [`Algorithm::name`] spells it.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| name.eq_ignore_ascii_case(a.name()))
    }

    /// The accepted names, comma-separated, for error messages.
    pub fn names() -> String {
        Algorithm::ALL.map(Algorithm::name).join(", ")
    }

    /// Name as accepted by `ringbench --algo` and `RINGCC_ALGO`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Auto => "auto",
            Algorithm::Ring => "ring",
            Algorithm::Bidir => "bidir",
            Algorithm::Direct => "direct",
            Algorithm::Doubling => "rd",
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
    /// Per outgoing link (indexed by [`Link::index`]; index 2 for every partner link):
    /// whether the CRC32C in a frame's header covers its payload too, or the header alone
    /// (`Config::checksum`: links within one host leave payloads out by default). The
    /// receiving end of the link applies the same rule, so both must be given the same value
    /// for it.
    pub payload_crc: [bool; 3],
    /// The driver has a partner link to every non-neighbour that recursive doubling pairs
    /// this position with (`core::doubling::partner_positions`), so doubling runs in worlds
    /// of any size; without them it runs only where every partner is a ring neighbour (2 to
    /// 4 positions). Every member of a view must be given the same value.
    pub partner_links: bool,
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
    pub(super) fn wire_op(&self) -> ReduceOp {
        if matches!(self.coll, CollKind::AllGather | CollKind::Broadcast) {
            ReduceOp::Sum
        } else {
            self.op
        }
    }

    /// Encodes the header of one raw frame of this call for `link` at `(step, chunk,
    /// segment)` (CRC over it, and over `payload` if the link checks payloads).
    pub(super) fn encode_header(
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
    pub(super) fn encode_coded_header(
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
