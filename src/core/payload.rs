//! The codec side of a collective: encoding segments for the wire, checking and decoding
//! what arrives, and the rounding that keeps lossy results bit-identical.
//!
//! The driver owns one [`Codecs`] per communicator (zstd contexts, scratch, the payload
//! buffer pool, `auto`'s measurements) and lends it to each collective it starts
//! ([`super::collective::Collective::start_with`]), taking it back when the call ends, so
//! nothing here is allocated per call or per segment once buffers have grown.
//!
//! Per call, a [`CallCodec`] fixes what this rank may send and accept (from
//! [`CodecChoice::for_call`]) and whether the owner of each chunk rounds its final value.
//! Per segment, the sender picks the codec ([`Codecs::encode_segment`]) and names it in
//! the header; the receiver accepts any codec the call's setting allows
//! ([`CallCodec::check_frame`]) and decodes into exactly the segment its own schedule
//! expects, so a payload cannot make it write more or fewer bytes.

use std::time::Duration;

use super::collective::Link;
use super::{DataType, ReduceOp};
use crate::codec::auto::{Probe, PROBE_BYTES};
use crate::codec::{
    cpu_share, round_in_place, AutoPolicy, BufferPool, Codec, CodecChoice, CodecError, Decoder, Encoder, PooledBytes,
};
use crate::wire::CollKind;

/// What `auto` times encodes and decodes with: a monotonic reading, arbitrary origin. The
/// TCP driver passes the thread's CPU time ([`cpu_share::thread_cpu_clock`]: a codec's
/// cost is CPU, and the share of a core the thread gets is measured apart); the simulator
/// passes none (its time is virtual and encoding takes none of it), so probes measure
/// ratios only and codecs count as free.
pub type Clock = fn() -> Duration;

/// The calling thread's total time on a core and waiting for one
/// ([`crate::codec::cpu_share::thread_sched_times`] in the TCP driver), for `auto`'s CPU
/// model; `None` when the OS does not say.
pub type SchedTimes = fn() -> Option<(Duration, Duration)>;

/// Least time a thread must have been runnable between two calls' ends for the share of a
/// core it got to count: shorter spans are too coarse for the scheduler's accounting.
const SCHED_SPAN_MIN: Duration = Duration::from_millis(5);

/// Encoders, decoders, buffers and measurements a communicator reuses across calls.
#[derive(Debug)]
pub struct Codecs {
    encoder: Encoder,
    decoder: Decoder,
    pool: BufferPool,
    auto: AutoPolicy,
    clock: Option<Clock>,
    /// Probe payload and its decoded copy.
    probe_wire: Vec<u8>,
    probe_back: Vec<u8>,
    /// Where to read the thread's scheduler times, and their reading at the last call's end.
    sched: Option<SchedTimes>,
    sched_last: Option<(Duration, Duration)>,
}

impl Codecs {
    /// Codecs compressing at `zstd_level`, timing `auto`'s probes with `clock`.
    ///
    /// # Errors
    /// [`CodecError::Level`] outside zstd's range; [`CodecError::Zstd`] if zstd cannot
    /// allocate its contexts.
    pub fn new(zstd_level: i32, clock: Option<Clock>) -> Result<Codecs, CodecError> {
        Ok(Codecs {
            encoder: Encoder::new(zstd_level)?,
            decoder: Decoder::new()?,
            pool: BufferPool::new(),
            auto: AutoPolicy::new(),
            clock,
            probe_wire: Vec::new(),
            probe_back: Vec::new(),
            sched: None,
            sched_last: None,
        })
    }

    /// Lets `auto` weigh codecs by the share of a core this rank really gets: `sched` is
    /// read on the thread that runs the collectives at the end of each call.
    pub fn with_sched_times(mut self, sched: SchedTimes) -> Codecs {
        self.sched = Some(sched);
        self
    }

    /// Records the measured rate of the outgoing link `link` in wire bytes per second
    /// (the driver measures it while the link is the bottleneck).
    pub fn observe_link(&mut self, link: Link, bytes_per_sec: f64) {
        if let Some(l) = link_index(link) {
            self.auto.observe_link(l, bytes_per_sec);
        }
    }

    /// Records the bytes the outgoing links `[prev, next]` have accepted so far (counters
    /// of each link's life, `None` where there is no link), read before each call: see
    /// [`AutoPolicy::observe_link_bytes`].
    pub fn observe_link_bytes(&mut self, [prev, next]: [Option<u64>; 2]) {
        self.auto.observe_link_bytes([prev, next]);
    }

    /// Records whether the outgoing link `link` leads to a peer on the same host.
    pub fn set_local(&mut self, link: Link, local: bool) {
        if let Some(l) = link_index(link) {
            self.auto.set_local(l, local);
        }
    }

    /// `auto`'s measurements.
    pub fn auto(&self) -> &AutoPolicy {
        &self.auto
    }

    /// The pool encoded payloads come from (and return to once written).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Encodes the segment `raw` for `link` as `plan` says: `None` means send `raw` as it
    /// is (the `raw` codec, a segment that did not compress, or an encoder failure, which
    /// is always safe to fall back from); otherwise the codec named in the header and the
    /// payload, in a pooled buffer.
    pub fn encode_segment(
        &mut self,
        plan: &CallCodec,
        link: Link,
        dtype: DataType,
        raw: &[u8],
    ) -> Option<(Codec, PooledBytes)> {
        let codec = match plan.choice {
            CodecChoice::Fixed(c) => c,
            CodecChoice::Auto { lossy } => {
                self.auto.observe_segment(raw.len());
                // A link neither known to be slow nor local is fast: raw, nothing to measure.
                let l = link_index(link)?;
                if !self.auto.knows(l) {
                    return None;
                }
                // Probe every candidate the setting allows on slow links, also while this
                // call does not round: that is how a later call learns that rounding pays.
                if self.auto.link_rate(l).is_some() && self.auto.probe_due() {
                    self.probe(lossy, dtype, raw);
                }
                self.auto.choose(l, plan.lossy, plan.links)
            }
        };
        if codec == Codec::Raw {
            return None;
        }
        let mut out = self.pool.take();
        let started = self.clock.map(|now| now());
        let encoded = self.encoder.encode(codec, dtype, raw, out.vec_mut());
        if let (Some(t0), Some(now), CodecChoice::Auto { .. }) = (started, self.clock, plan.choice) {
            self.auto.observe_encode(codec, raw.len(), now().saturating_sub(t0));
        }
        match encoded {
            Ok(Codec::Raw) | Err(_) => None,
            Ok(sent) => Some((sent, out)),
        }
    }

    /// Encodes and decodes the start of `raw` with each candidate codec and feeds the
    /// ratios and times to `auto`.
    fn probe(&mut self, lossy: bool, dtype: DataType, raw: &[u8]) {
        let esize = dtype.size();
        let sample = &raw[..raw.len().min(PROBE_BYTES) / esize * esize];
        if sample.is_empty() {
            return;
        }
        for &codec in AutoPolicy::candidates(lossy) {
            if !codec.supports(dtype) {
                continue;
            }
            let t0 = self.clock.map(|now| now());
            let Ok(sent) = self.encoder.encode(codec, dtype, sample, &mut self.probe_wire) else { continue };
            let t1 = self.clock.map(|now| now());
            self.probe_back.resize(sample.len(), 0);
            if self.decoder.decode(sent, dtype, &self.probe_wire, &mut self.probe_back).is_err() {
                continue;
            }
            let t2 = self.clock.map(|now| now());
            let elapsed = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => Duration::ZERO,
            };
            self.auto.observe_probe(&Probe {
                codec,
                raw_bytes: sample.len(),
                wire_bytes: self.probe_wire.len(),
                encode: elapsed(t0, t1),
                decode: elapsed(t1, t2),
            });
        }
    }

    /// Decodes `payload` (already checked by [`CallCodec::check_frame`]) and reduces it
    /// into `dst`, the segment the schedule expects.
    ///
    /// # Errors
    /// The codec's error if the payload does not decode to exactly `dst.len()` bytes;
    /// `dst` is then unchanged.
    pub fn decode_reduce(
        &mut self,
        codec: Codec,
        dtype: DataType,
        op: ReduceOp,
        payload: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CodecError> {
        let started = self.clock.map(|now| now());
        let decoded = self.decoder.decode_reduce(codec, dtype, op, payload, dst);
        self.observe_decode(codec, dst.len(), started);
        decoded
    }

    /// Decodes `payload` into `dst`, the segment the schedule expects.
    ///
    /// # Errors
    /// The codec's error if the payload does not decode to exactly `dst.len()` bytes.
    pub fn decode(&mut self, codec: Codec, dtype: DataType, payload: &[u8], dst: &mut [u8]) -> Result<(), CodecError> {
        let started = self.clock.map(|now| now());
        let decoded = self.decoder.decode(codec, dtype, payload, dst);
        self.observe_decode(codec, dst.len(), started);
        decoded
    }

    /// Tells `auto` what a real decode of `raw_bytes` cost (what receiving with that codec
    /// costs this rank, which the sender's probes can only estimate).
    fn observe_decode(&mut self, codec: Codec, raw_bytes: usize, started: Option<Duration>) {
        if let (Some(t0), Some(now)) = (started, self.clock) {
            self.auto.observe_decode(codec, raw_bytes, now().saturating_sub(t0));
        }
    }

    /// Tells `auto` a call run as `plan` ended: it sent `raw_bytes` (what it would have
    /// sent raw) as `wire_bytes` in `elapsed`, or failed (`None`).
    pub fn end_call(&mut self, plan: &CallCodec, raw_bytes: u64, wire_bytes: u64, elapsed: Option<Duration>) {
        if let Some(now) = self.sched.and_then(|read| read()) {
            let span = self.sched_last.and_then(|before| cpu_share::sched_between(before, now, SCHED_SPAN_MIN));
            if let Some((ran, waited)) = span {
                self.auto.observe_call_cpu(ran, waited);
            }
            self.sched_last = Some(now);
        }
        if let Some(secs) = elapsed.map(|d| d.as_secs_f64()) {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            let (raw, wire, summary) = (mib(raw_bytes), mib(wire_bytes), self.auto.summary(plan.links, plan.lossy));
            tracing::debug!(target: "ringcc::auto", "call: {raw:.1} MiB as {wire:.1} in {:.1} ms, rounds {}; {summary}", secs * 1e3, plan.lossy);
        }
        self.auto.end_call(raw_bytes, wire_bytes, elapsed);
    }

    /// `raw` (bytes this rank decoded from a frame of `codec`) encoded again with `codec`,
    /// to forward a frame of which no copy was kept. Decoding the result gives back
    /// exactly `raw`: the lossless codecs restore their input, and the casts leave a value
    /// already cast unchanged (`lossy::tests::cast_is_idempotent`). The codec returned is
    /// the one used (as with every encode, one that would not pay falls back); `None`
    /// (send raw: the same values) if it cannot encode.
    pub fn reencode(&mut self, codec: Codec, dtype: DataType, raw: &[u8]) -> Option<(Codec, PooledBytes)> {
        let mut out = self.pool.take();
        self.encoder.encode(codec, dtype, raw, out.vec_mut()).ok().map(|used| (used, out))
    }

    /// A pooled copy of `payload`, kept to forward it unchanged.
    pub fn keep(&self, payload: &[u8]) -> PooledBytes {
        let mut kept = self.pool.take();
        kept.vec_mut().extend_from_slice(payload);
        kept
    }
}

/// What one collective sends and accepts, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCodec {
    /// The setting for this call ([`CodecChoice::for_call`]); `raw` when no codecs were lent.
    pub choice: CodecChoice,
    /// Whether this call may round (a fixed lossy codec, or `auto+bf16` when it pays now).
    pub lossy: bool,
    /// The rounding the owner of a chunk applies to its final value before all-gather,
    /// if any: all_reduce with a lossy codec.
    pub owner_rounds: Option<Codec>,
    /// Outgoing links the call feeds at once (parts).
    pub links: usize,
    /// Whether the call may encode at all: a fixed codec other than raw, or `auto` once
    /// some link is known to be slow.
    pub encodes: bool,
}

impl CallCodec {
    /// Raw frames only.
    pub const RAW: CallCodec = CallCodec {
        choice: CodecChoice::Fixed(Codec::Raw),
        lossy: false,
        owner_rounds: None,
        links: 1,
        encodes: false,
    };

    /// The plan of a call of `coll` over `dtype` configured with `setting`, on `links`
    /// outgoing links; `codecs` is `None` when the driver lent none (then raw only).
    pub fn new(
        setting: CodecChoice,
        coll: CollKind,
        dtype: DataType,
        links: usize,
        codecs: Option<&Codecs>,
    ) -> CallCodec {
        let Some(codecs) = codecs else { return CallCodec::RAW };
        let choice = setting.for_call(coll, dtype);
        let lossy = match choice {
            CodecChoice::Fixed(c) => c.is_lossy(),
            CodecChoice::Auto { lossy } => lossy && codecs.auto.lossy_pays(links),
        };
        let rounding = match choice {
            CodecChoice::Fixed(c) => c,
            CodecChoice::Auto { .. } => Codec::Bf16,
        };
        let owner_rounds = (lossy && coll == CollKind::AllReduce).then_some(rounding);
        let encodes = match choice {
            CodecChoice::Fixed(c) => c != Codec::Raw,
            CodecChoice::Auto { .. } => codecs.auto.may_encode(lossy),
        };
        CallCodec { choice, lossy, owner_rounds, links: links.max(1), encodes }
    }

    /// True if this call may send anything but raw frames.
    pub fn encodes(&self) -> bool {
        self.encodes
    }

    /// Checks a data frame's codec and payload length against the call's setting and the
    /// segment of `raw_len` bytes the schedule expects; `Err` says what is wrong.
    pub fn check_frame(&self, codec: Codec, payload_len: usize, raw_len: usize) -> Result<(), String> {
        // Only the setting, which every rank shares, decides: what `auto` decided on the
        // sending rank (whether to round at all in this call) is its own business.
        if !self.choice.accepts(codec) {
            return Err(format!(
                "a {} frame, which codec setting {} never sends here",
                codec.name(),
                self.choice.name()
            ));
        }
        let max = codec.payload_len_max(raw_len);
        if payload_len > max || (codec == Codec::Raw && payload_len != raw_len) {
            return Err(format!(
                "a {} payload of {payload_len} bytes for a segment of {raw_len} bytes (at most {max})",
                codec.name()
            ));
        }
        Ok(())
    }

    /// Rounds the owner's final segment `dst` as it will be sent, if this call rounds.
    pub fn round_final(&self, dtype: DataType, dst: &mut [u8]) {
        if let Some(codec) = self.owner_rounds {
            // for_call lets lossy codecs through only for f32, whole elements by construction.
            let rounded = round_in_place(codec, dtype, dst);
            debug_assert!(rounded.is_ok(), "{rounded:?}");
        }
    }
}

/// Index of a ring link in `auto`'s per-link arrays; `None` for a partner link (it carries
/// only the latency path's small raw frames: nothing to measure or encode).
fn link_index(link: Link) -> Option<usize> {
    match link {
        Link::Prev => Some(0),
        Link::Next => Some(1),
        Link::Partner(_) => None,
    }
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
