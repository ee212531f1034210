//! An in-memory network in virtual time that drives the same core as the TCP driver.
//!
//! Every rank runs the real [`Collective`](crate::core::collective::Collective) state machine;
//! `sim` replaces only what `net` does with sockets and the clock. Each rank driver mirrors
//! `net::event_loop` step by step: it builds the `Spec` the way `start_next` does, runs one
//! collective at a time in submission order, decodes each arriving header, checks the CRC,
//! parks a link whose head frame belongs to a collective that has not started here, drops
//! frames of finished collectives, feeds the rest through `handle_frame` or (for all-gather
//! and broadcast payloads, by a seeded coin) straight into the buffer and
//! `handle_frame_in_place`, sends `Abort` frames on every open link when a call fails, and
//! keeps a finished call's buffer until every frame it sent has left.
//!
//! Time is virtual: one base [`Instant`](std::time::Instant) is taken when the simulator is
//! created and every later instant is that base plus a virtual offset. Nothing sleeps. Events
//! (frame arrivals, calls made by the ranks' callers, progress timeouts, faults) are ordered by
//! (time, insertion order), and every random choice comes from one [`SimRng`] stream, so a
//! run is a pure function of [`SimConfig`] (seed included), the calls and the faults.
//!
//! # Network model
//!
//! Position `p`'s `Next` link is one TCP connection to position `p + 1`'s `Prev` link. With
//! [`SimConfig::partner_links`] (the default, as the real driver), `p` also has one
//! connection to each position in `core::doubling::partner_positions(world, p)`, its
//! `Link::Partner(q)` (`Link::Partner(p)` at `q`); only recursive doubling's frames use
//! them. Each direction of each connection is a FIFO channel with latency `alpha`,
//! bandwidth `B` and serialization: a frame of `b` bytes (72-byte header included) sent at
//! `t` leaves at `max(t, channel free)` and arrives `b / B + alpha` (+ seeded jitter) later,
//! never before the frame ahead of it. With [`LinkModel::shared_egress`], all of a rank's
//! outgoing channels share one serializer (one NIC into a switch) instead of being
//! independent links.
//!
//! A transmit's payload is copied when the core hands it out (as a kernel copies on
//! `write`); the real driver instead writes it from the buffer later. [`SimConfig::check_send_hazards`]
//! checks that the bytes did not change before the frame left, which is what makes the two
//! equivalent.
//!
//! # Faults
//!
//! [`Fault`]s are scheduled at virtual times: a silent crash (a host lost: nothing more
//! arrives from it, survivors notice only through the progress timeout), a kill (the kernel
//! closes the sockets: in-flight frames arrive, then end of stream), a pause (SIGSTOP), and
//! one-way partitions and delays of a link (TCP retransmits, so a partition delays frames
//! until it heals; it never loses them).
//!
//! # Example
//!
//! ```
//! use ringcc::sim::{Call, Sim, SimConfig, oracle};
//! use ringcc::{DataType, ReduceOp};
//!
//! let config = SimConfig::new(5, 42);
//! let call = Call::all_reduce(ReduceOp::Sum, DataType::F32, 1000);
//! let inputs = oracle::inputs(&call, 5, 42);
//! let mut sim = Sim::new(config);
//! let outcome = sim.run(call, inputs.clone()).expect("no hang");
//! assert!(outcome.all_done());
//! assert_eq!(outcome.outputs, oracle::expected(&call, 5, &inputs));
//! ```

mod buf;
mod engine;
pub mod group;
mod group_rank;
mod net;
pub mod oracle;
mod rank;
mod rng;

use std::time::Duration;

pub use buf::AlignedBytes;
pub use engine::Sim;
pub use rng::SimRng;

use crate::codec::CodecChoice;
use crate::core::collective::{Algorithm, ProtocolError};
use crate::core::{DataType, ReduceOp};
use crate::wire::CollKind;
use crate::Rank;

/// Link model: latency, bandwidth and jitter of every directed channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkModel {
    /// One-way latency `alpha` added to every frame after serialization.
    pub latency: Duration,
    /// Bandwidth `B` of each channel in bytes per second; 0 means unlimited.
    pub bytes_per_sec: u64,
    /// Extra delay per frame, uniform in `0..=jitter`, drawn from the seed (FIFO order kept).
    pub jitter: Duration,
    /// If true, all of a rank's outgoing channels (`Prev`, `Next` and partner links) share
    /// one serializer (one NIC into a switch); if false, each is an independent full-duplex
    /// link (a physical ring, plus a cable to each partner).
    pub shared_egress: bool,
}

impl Default for LinkModel {
    /// 10 Gbit/s, 20 microseconds, no jitter, independent links.
    fn default() -> LinkModel {
        LinkModel {
            latency: Duration::from_micros(20),
            bytes_per_sec: 1_250_000_000,
            jitter: Duration::ZERO,
            shared_egress: false,
        }
    }
}

/// Where rank buffers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BufferMode {
    /// Each rank has its own buffer: results are real and checked against the inputs.
    #[default]
    PerRank,
    /// All ranks share one scratch buffer (timing only: memory stays at one buffer for any
    /// world size, outputs are empty and meaningless). Frames and CRCs are still real.
    Shared,
}

/// Everything about a simulated job except the calls it runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of ranks (ranks are `0..world`).
    pub world: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The network.
    pub link: LinkModel,
    /// Upper bound of a segment's payload (as `Config::segment_bytes`). Default 512 KiB.
    pub segment_bytes: usize,
    /// Ring algorithm for all_reduce (as `Config::algorithm`). Default `Auto`.
    pub algorithm: Algorithm,
    /// Codec setting (as `Config::codec`). Default `raw`. Encoding takes no virtual time:
    /// `auto` sees each link's modelled bandwidth as its measured rate and counts codecs
    /// as free, so it compresses wherever that shrinks a segment on a limited link.
    pub codec: CodecChoice,
    /// zstd level (as `Config::codec_level`). Default 1.
    pub codec_level: i32,
    /// Progress timeout of every call (as `Config::progress_timeout`). Default 30 s.
    pub progress_timeout: Duration,
    /// Each rank's caller makes each call after a gap uniform in `0..=start_skew_max`
    /// following its previous call's return (blocking calls), so ranks start calls at
    /// different times and frames of later calls get parked. Default 200 microseconds.
    pub start_skew_max: Duration,
    /// Shuffle the ring order of ranks by the seed (exercises `block_of_pos` and roots that
    /// sit anywhere in the ring). Default true.
    pub shuffle_ring: bool,
    /// Percentage of frames with a direct target (`recv_target`) that take the in-place
    /// path; the rest take the scratch path. Default 50.
    pub in_place_percent: u64,
    /// Check that no rank's buffer changes under a frame between the core handing it out
    /// and the frame leaving (what the real driver relies on). Default true; ignored with
    /// [`BufferMode::Shared`].
    pub check_send_hazards: bool,
    /// Where rank buffers live. Default [`BufferMode::PerRank`].
    pub buffers: BufferMode,
    /// A batch that has not settled this long (virtual) after it began is reported as a
    /// hang. Default 1 hour.
    pub batch_deadline: Duration,
    /// A batch that needs more events than this is reported as a hang. Default 100 million.
    pub max_events: u64,
    /// Completion tokens on every call that needs them, as `Config::exact_retry` (small
    /// all-reduces and barriers go without: `core::fin::tokens_needed`). Default true.
    pub fin: bool,
    /// Each rank also has a partner link to every non-neighbour that recursive doubling
    /// pairs it with (`core::doubling::partner_positions`, as the real driver opens them),
    /// and its calls know it (`Spec::partner_links`): doubling then runs in any world, and
    /// `Algorithm::Auto` picks it for small all-reduces where it takes no more hops than
    /// direct. False: ring links only, and doubling only where its partners are ring
    /// neighbours (worlds of up to 4). Default true.
    pub partner_links: bool,
}

impl SimConfig {
    /// Defaults for `world` ranks and `seed` (see each field).
    pub fn new(world: usize, seed: u64) -> SimConfig {
        SimConfig {
            world,
            seed,
            link: LinkModel::default(),
            segment_bytes: 512 << 10,
            algorithm: Algorithm::Auto,
            codec: CodecChoice::default(),
            codec_level: 1,
            progress_timeout: Duration::from_secs(30),
            start_skew_max: Duration::from_micros(200),
            shuffle_ring: true,
            in_place_percent: 50,
            check_send_hazards: true,
            buffers: BufferMode::PerRank,
            batch_deadline: Duration::from_secs(3600),
            max_events: 100_000_000,
            fin: true,
            partner_links: true,
        }
    }
}

/// One collective call, as every rank makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Which collective.
    pub coll: CollKind,
    /// Reduction operator (ignored by all_gather, broadcast, barrier).
    pub op: ReduceOp,
    /// Element type.
    pub dtype: DataType,
    /// Elements of the working buffer: all_reduce, broadcast and reduce_scatter buffers,
    /// the all_gather output. Rank r's share in reduce_scatter and all_gather is block r of
    /// [`crate::core::schedule::chunk_range`] (blocks may differ by one element).
    pub len_elems: usize,
    /// Root rank of a broadcast.
    pub root: Rank,
}

impl Call {
    /// `all_reduce` of `len_elems` elements.
    pub fn all_reduce(op: ReduceOp, dtype: DataType, len_elems: usize) -> Call {
        Call { coll: CollKind::AllReduce, op, dtype, len_elems, root: 0 }
    }

    /// `reduce_scatter` of an input of `len_elems` elements.
    pub fn reduce_scatter(op: ReduceOp, dtype: DataType, len_elems: usize) -> Call {
        Call { coll: CollKind::ReduceScatter, op, dtype, len_elems, root: 0 }
    }

    /// `all_gather` into an output of `len_elems` elements.
    pub fn all_gather(dtype: DataType, len_elems: usize) -> Call {
        Call { coll: CollKind::AllGather, op: ReduceOp::Sum, dtype, len_elems, root: 0 }
    }

    /// `broadcast` of `len_elems` elements from `root`.
    pub fn broadcast(dtype: DataType, len_elems: usize, root: Rank) -> Call {
        Call { coll: CollKind::Broadcast, op: ReduceOp::Sum, dtype, len_elems, root }
    }

    /// `barrier` (as the communicator issues it: zero `u8` elements).
    pub fn barrier() -> Call {
        Call { coll: CollKind::Barrier, op: ReduceOp::Sum, dtype: DataType::U8, len_elems: 0, root: 0 }
    }

    /// Bytes of rank `rank`'s input: its block for all_gather, the whole buffer otherwise.
    pub fn input_bytes(&self, world: usize, rank: Rank) -> usize {
        let elems = match self.coll {
            CollKind::AllGather => crate::core::schedule::chunk_range(self.len_elems, world, rank).len(),
            _ => self.len_elems,
        };
        elems * self.dtype.size()
    }
}

/// Why a call failed on a rank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The core failed the call: stall, abort from a peer, mismatch, unexpected frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A link failed (end of stream, bad header, bad CRC), as `Error::PeerClosed`.
    #[error("link to rank {peer} failed: {reason}")]
    LinkFailed {
        /// The rank at the other end.
        peer: Rank,
        /// What happened.
        reason: String,
    },
}

/// How a call ended on one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankStatus {
    /// Completed; the rank's output is in [`SimOutcome::outputs`].
    Done,
    /// Failed with this error.
    Failed(SimError),
    /// The rank crashed or was killed before finishing the call.
    Crashed,
}

/// A fault injected at a virtual time (offsets from the simulator's creation, as
/// [`Sim::now`] returns). Faults between ranks that share no link (neither ring
/// neighbours nor, with [`SimConfig::partner_links`], partners) do nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The host of `rank` is lost at `at`: it processes nothing more, nothing more arrives
    /// from it (frames in flight are lost) and no end of stream is seen.
    Crash {
        /// The rank.
        rank: Rank,
        /// When.
        at: Duration,
    },
    /// `rank`'s process is killed at `at`: it processes nothing more; frames it already
    /// sent still arrive, then every peer it has a link to (ring neighbours, and partners
    /// with [`SimConfig::partner_links`]) sees end of stream.
    Kill {
        /// The rank.
        rank: Rank,
        /// When.
        at: Duration,
    },
    /// `rank` is stopped (SIGSTOP) from `at` for `duration`: frames to it queue up, it
    /// sends and handles nothing, then it resumes where it was.
    Pause {
        /// The rank.
        rank: Rank,
        /// When.
        at: Duration,
        /// For how long.
        duration: Duration,
    },
    /// Nothing on the link from `from` to `to` arrives during `at..at + duration`; TCP
    /// retransmits, so what would have arrived then arrives when it heals.
    Partition {
        /// Sending rank.
        from: Rank,
        /// Receiving rank.
        to: Rank,
        /// When it starts.
        at: Duration,
        /// How long it lasts.
        duration: Duration,
    },
    /// Frames sent from `from` to `to` during `at..at + duration` take `extra` longer.
    Delay {
        /// Sending rank.
        from: Rank,
        /// Receiving rank.
        to: Rank,
        /// When it starts.
        at: Duration,
        /// How long it lasts.
        duration: Duration,
        /// Added latency.
        extra: Duration,
    },
}

/// The result of one call on every rank.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// The call.
    pub call: Call,
    /// Its sequence number.
    pub seq: u64,
    /// By rank: what the communicator would hand back (reduce_scatter: the rank's block;
    /// all_gather: the whole output; barrier: nothing). Empty unless `Done`, and always
    /// empty with [`BufferMode::Shared`].
    pub outputs: Vec<Vec<u8>>,
    /// By rank: how the call ended.
    pub statuses: Vec<RankStatus>,
    /// By rank: when the rank started the call (None if it never did).
    pub started: Vec<Option<Duration>>,
    /// By rank: when the call returned on the rank (None if it crashed first).
    pub finished: Vec<Option<Duration>>,
    /// From the first rank starting the call to the last rank returning from it.
    pub virtual_elapsed: Duration,
    /// Frames sent for this call by all ranks (aborts included).
    pub frames: u64,
    /// Bytes sent for this call by all ranks, headers included.
    pub bytes: u64,
}

impl SimOutcome {
    /// True if every rank completed the call.
    pub fn all_done(&self) -> bool {
        self.statuses.iter().all(|s| *s == RankStatus::Done)
    }
}

/// The simulator found ranks that will never settle (a hang): a bug in the core or in a
/// fault model, reported instead of looping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("simulation hung at virtual {at:?} after {events} events: {reason}; unsettled: {waiting:?}")]
pub struct HangError {
    /// Virtual time at which the hang was declared.
    pub at: Duration,
    /// Events processed in the batch.
    pub events: u64,
    /// Why the run stopped (deadline, event cap, nothing left to do).
    pub reason: String,
    /// Each unsettled rank and what it waits for.
    pub waiting: Vec<String>,
}

#[cfg(test)]
mod tests;
