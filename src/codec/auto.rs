//! `auto`: per segment, the codec the measurements say moves data fastest.
//!
//! The policy is pure: it is fed measurements and answers questions, and never reads a
//! clock. These measurements feed it:
//!
//! - the **link rate** of each outgoing link, in wire bytes per second, measured by the
//!   driver only while the link was the bottleneck (the socket refused more bytes), so a
//!   link that always keeps up reports nothing. Before each call the driver also reports
//!   the bytes each link accepted: what the links carried in the last call is a rate they
//!   sustained, which raises a rate estimate below it and is the first estimate of a link
//!   without samples ([`AutoPolicy::observe_link_bytes`]); a link with neither (no call
//!   measured yet) is treated as fast;
//! - **probes**: now and then (first on the first segment, then every 2, 4, ... up to
//!   [`PROBE_INTERVAL_MAX`] segments) the sender encodes and decodes the first
//!   [`PROBE_BYTES`] of a segment with each candidate codec and reports the ratio and the
//!   CPU time both took. Probes are not sent; they cost about 0.25% of a call's time;
//! - **costs in use**: the CPU time every real encode and decode of a candidate took;
//! - the **CPU of each call**: how long this rank's thread ran, and waited for a core
//!   while runnable, from the scheduler. What it ran besides the codecs, per wire byte
//!   sent, is the **base cost** `b` of moving bytes (system calls, the kernel's copies,
//!   reduction of raw segments); the share of a core it got while runnable during coded
//!   calls is `s` (1 until measured): on a host with more busy ranks than cores (four on
//!   two: about half), what the timings of single segments and probes cannot see. And the
//!   share `e` of the raw bytes a call sends that this rank originates and so may encode
//!   (the rest it forwards as it came: 2/3 for an all-reduce of 4 ranks; 1 until measured).
//!
//! Costs are CPU time, not wall time, because the share of a core is measured apart:
//! with wall-clock timings, a segment during which the thread was descheduled counted
//! several times its cost (a large minority of segments when ranks outnumber cores), and
//! the share then discounted the same wait again. Measured at 10 Gbit/s, four ranks on two
//! cores: `bf16`'s estimate jumped from 0.15 to 3.5 ns per byte, `auto+bf16` sent whole
//! calls raw, 20% slower than `bf16`; and at 1 Gbit/s `bf16+zstd` looked 2-7 times dearer
//! than it was, so `auto+bf16` mixed in `bf16` and trailed fixed `bf16+zstd` by 5%.
//!
//! A codec's cost is the mean of its last [`COST_SAMPLES`] costs, in use and probed alike,
//! leaving out the largest one: while a codec is in use its segments dominate, so a codec
//! that looked fast but is slow in use (caches, memory bandwidth shared with other ranks)
//! is turned off; while it is off, its probes refill the window, so after a few probes it
//! is tried again, and one odd segment cannot turn it off.
//!
//! **Model.** On a link of rate `L`, a codec of ratio `r` (raw bytes per wire byte) whose
//! encode and decode cost `enc` and `dec` CPU seconds per raw byte delivers
//! `min(L * r, s / ((b / r + e * enc + dec) * links))` raw bytes per second, and raw
//! delivers `min(L, s / (b * links))` (`links`: outgoing links this rank feeds at once; per
//! raw byte sent, a rank moves `1 / r` wire bytes, encodes what it originates and decodes
//! as much as it receives). So where the CPU, not the link, limits a call (a fast link,
//! or ranks outnumbering cores), a codec that saves more CPU on moving bytes than it costs
//! (`bf16` halves what the kernel copies) still pays, and zstd does not. A codec is used
//! only if it promises at least [`GAIN_MIN`] times raw's goodput; without a link rate, or
//! without a probe yet, the answer is raw. A link to a peer on the same host has no rate:
//! there the "link" is memory and the peer's CPU, which zstd only loads further, so `auto`
//! sends raw there and costs nothing; `auto+bf16` sends bf16 there (casting costs less
//! than the copying it halves), unless its calls turn out slower.
//!
//! **Check of the outcome.** Each call's **goodput** (raw bytes sent per second) is kept
//! for calls sent (nearly) raw and, for calls of which at least [`CALL_SHARE_MIN`] was
//! encoded, compared with raw's for the codec that carried most of it. A codec that carried
//! [`VETO_EVIDENCE_CALLS`] calls in a row each slower than raw calls by more than
//! [`GAIN_MIN`], whatever the model predicted, is vetoed for 2 calls, then 4, ... up to
//! [`VETO_CALLS_MAX`], and tried again after each veto; meanwhile the next best codec, if
//! any, gets its chance. A veto is at least long enough that retrying a codec as slow as
//! its last calls costs under [`RETRY_COST_MAX`] of the time (a codec 2x slower than raw
//! waits 150 calls). One call is not enough evidence: a call's time varies by tens of
//! percent on a shared host, and the raw calls it is compared with may be old.
//!
//! Every rank decides for itself, per segment, and names the codec in each frame header,
//! so ranks need not agree; but a ring goes at the pace of its slowest link, which is why
//! the measurements above are made robust rather than quick: one rank that falls back to
//! raw, or stays on a heavy codec, slows every rank's call. What per-rank decisions cannot
//! see: where other work loads a host's cores unevenly, each rank predicts with its own
//! share of a core while the ring goes at the pace of the rank with the least, so near the
//! point where `bf16+zstd` (CPU-bound) and `bf16` (link-bound) promise the same, the model
//! is optimistic for the CPU-bound codec (measured at 1 Gbit/s with a foreign busy process:
//! `bf16+zstd` calls reached 0.7-0.8 of the goodput predicted, and `auto+bf16` mixing both
//! trailed fixed `bf16` by 5-9%; on a quiet host it matches or beats the best fixed codec).
//! With `RINGCC_LOG=ringcc::auto=debug` each rank logs, per call, what it measured,
//! predicted and sent ([`AutoPolicy::summary`]).

use std::time::Duration;

use super::Codec;

/// Bytes of a segment each probe encodes and decodes (its start, whole elements).
pub const PROBE_BYTES: usize = 64 << 10;

/// Most segments between two probes once the policy has settled: one probe per 128 MiB
/// sent in 512 KiB segments. Probes of all three candidates cost about 0.25 ms of CPU;
/// at one per 64 segments they cost `auto+bf16` about 1% against fixed `bf16` at
/// 10 Gbit/s (measured, alternating launches), more than the 3% budget can spare. Codecs
/// in use are measured by their own segments; probes only keep the others' ratios and
/// costs current, which change slowly.
pub const PROBE_INTERVAL_MAX: u32 = 256;

/// How much more goodput than raw a codec must promise before it is used: the margin
/// covers measurement noise, so a codec that barely pays is not switched on and off.
pub const GAIN_MIN: f64 = 1.05;

/// Weight of a new sample in the running estimates of ratio and link rate (exponential
/// moving average).
const WEIGHT_NEW: f64 = 0.25;

/// Recent costs kept per codec and direction (encode, decode).
pub const COST_SAMPLES: usize = 8;

/// Calls smaller than this (raw bytes sent) say nothing about goodput: latency dominates.
pub const CALL_BYTES_MIN: u64 = 4 << 20;

/// Calls in a row a codec must carry, each slower than raw calls by more than [`GAIN_MIN`],
/// before it is vetoed. One call says little: the time of a single call varies by tens of
/// percent on a busy host, and the raw calls it is compared with may be from a while ago
/// (measured: with a veto after one call, a single slow call among fast `bf16` calls
/// turned `auto+bf16` raw for 36 calls at 10 Gbit/s, while `bf16` beat raw by 25%).
pub const VETO_EVIDENCE_CALLS: u32 = 3;

/// Fewest bytes a link must have carried in a call for their rate to count.
const LINK_BYTES_MIN: u64 = 1 << 20;

/// Longest veto of a codec whose calls were slower than raw ones, in calls: with
/// [`RETRY_COST_MAX`] and [`VETO_EVIDENCE_CALLS`], retrying a codec up to 7.8x slower than
/// raw still costs at most 2%.
pub const VETO_CALLS_MAX: u32 = 1024;

/// Largest share of the time a vetoed codec's retries may cost, on average: a codec whose
/// calls took `k` times raw's time is vetoed for at least
/// `VETO_EVIDENCE_CALLS * (k - 1) / RETRY_COST_MAX` calls. Kept under the 3% by which
/// `auto` may trail the best fixed choice.
pub const RETRY_COST_MAX: f64 = 0.02;

/// Fraction of a call's raw bytes that must have been encoded for the call to count as a
/// coded call (answered for by the codec that carried most of them); below, it counts as
/// a raw call.
///
/// A rank encodes at most S of the 2(N-1)/N S raw bytes of an all-reduce of S bytes (it
/// forwards the rest as it came): 2/3 at N=4. With the buffer split over two directions and
/// only one link measured slow, it encodes half of that, 1/3: such calls must still answer
/// for the codec, or a codec that slows them down would never be vetoed (measured: `auto`
/// at 0.84-0.85x raw on 1 Gbit/s links with a threshold of 1/2).
pub const CALL_SHARE_MIN: f64 = 0.25;

/// The codecs auto considers besides raw: lossless, and lossy when allowed.
const LOSSLESS_CANDIDATES: [Codec; 1] = [Codec::ShuffleZstd];
const LOSSY_CANDIDATES: [Codec; 3] = [Codec::ShuffleZstd, Codec::Bf16, Codec::Bf16Zstd];

/// What one probe of one codec measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// The codec probed.
    pub codec: Codec,
    /// Raw bytes encoded.
    pub raw_bytes: usize,
    /// Bytes the payload took (after any fallback).
    pub wire_bytes: usize,
    /// Time the encode took (zero where no clock is given, as in the simulator).
    pub encode: Duration,
    /// Time the decode took.
    pub decode: Duration,
}

/// Running estimates for one codec; costs are seconds per raw byte.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Estimate {
    /// Raw bytes per wire byte, from probes.
    ratio: Option<f64>,
    /// Recent encode and decode costs, probed and in use.
    encode: Recent,
    decode: Recent,
}

/// The most recent [`COST_SAMPLES`] costs of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Recent {
    samples: [f64; COST_SAMPLES],
    len: usize,
    next: usize,
}

impl Recent {
    fn push(&mut self, x: f64) {
        self.samples[self.next] = x;
        self.next = (self.next + 1) % COST_SAMPLES;
        self.len = (self.len + 1).min(COST_SAMPLES);
    }

    /// Mean of the recent samples without the largest (once there are three or more), or
    /// `None` before the first.
    fn estimate(&self) -> Option<f64> {
        let v = self.samples.get(..self.len).filter(|v| !v.is_empty())?;
        let dropped = if v.len() >= 3 { v.iter().copied().fold(f64::MIN, f64::max) } else { 0.0 };
        Some((v.iter().sum::<f64>() - dropped) / (v.len() - usize::from(v.len() >= 3)) as f64)
    }
}

/// How the calls one candidate carried compared with raw calls.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Verdict {
    /// Calls it carried in a row that were clearly slower than raw ones (by [`GAIN_MIN`]).
    slow_calls: u32,
    /// Their mean goodput (running average).
    slow_goodput: Option<f64>,
    /// Calls left in its veto.
    veto_calls: u32,
    /// Length of its last veto (0 once a call it carried was not slower than raw).
    veto_len: u32,
}

/// Folds `sample` into a running average.
fn average(old: Option<f64>, sample: f64) -> Option<f64> {
    Some(match old {
        Some(old) => old + WEIGHT_NEW * (sample - old),
        None => sample,
    })
}

/// The state of `auto` on one rank: estimates per candidate codec and per link.
#[derive(Debug, Clone, Default)]
pub struct AutoPolicy {
    /// By position in [`LOSSY_CANDIDATES`].
    estimates: [Estimate; 3],
    /// Wire bytes per second of each outgoing link, by the driver's link index.
    link_bytes_per_sec: [Option<f64>; 2],
    /// Outgoing links to a peer on the same host.
    local: [bool; 2],
    /// Segments left before the next probe.
    until_probe: u32,
    /// Segments between probes now (doubles up to [`PROBE_INTERVAL_MAX`]).
    probe_interval: u32,
    /// Raw bytes this rank encoded in the running call, per candidate.
    call_encoded: [u64; 3],
    /// Goodput (raw bytes per second) of recent calls sent raw.
    raw_goodput: Option<f64>,
    /// Per candidate: how its calls compare with raw ones, and its veto.
    verdicts: [Verdict; 3],
    /// Share of a core this rank got while runnable during coded calls (running average).
    cpu_share: Option<f64>,
    /// CPU seconds per wire byte sent that are not codec work (running average).
    base_secs_per_byte: Option<f64>,
    /// CPU seconds the codecs took (encodes, decodes, probes) in the running call.
    call_codec_secs: f64,
    /// Raw bytes of the segments this rank originated (rather than forwarded) in the
    /// running call, and their share of the raw bytes calls send (running average).
    call_originated: u64,
    encode_share: Option<f64>,
    /// Seconds this rank's thread ran and waited for a core over the call now ending, if
    /// the driver measured them.
    call_sched: Option<(f64, f64)>,
    /// Calls ended so far, and the duration of the last one if it counts (large, done).
    calls_ended: u64,
    last_call_secs: Option<f64>,
    /// Per link: its byte counter at the last reading, and `calls_ended` then.
    link_bytes_out: [Option<(u64, u64)>; 2],
}

impl AutoPolicy {
    /// A policy with no measurements: it answers raw and probes the first segment.
    pub fn new() -> AutoPolicy {
        AutoPolicy::default()
    }

    /// The candidates probed and chosen from, besides raw.
    pub fn candidates(lossy: bool) -> &'static [Codec] {
        if lossy {
            &LOSSY_CANDIDATES
        } else {
            &LOSSLESS_CANDIDATES
        }
    }

    /// Records the measured rate of outgoing link `link` (0 or 1) in wire bytes per second.
    /// Rates that are not finite and positive are ignored.
    pub fn observe_link(&mut self, link: usize, bytes_per_sec: f64) {
        if let Some(slot) = self.link_bytes_per_sec.get_mut(link) {
            if bytes_per_sec.is_finite() && bytes_per_sec > 0.0 {
                *slot = Some(match *slot {
                    Some(old) => old + WEIGHT_NEW * (bytes_per_sec - old),
                    None => bytes_per_sec,
                });
            }
        }
    }

    /// Records the total bytes each outgoing link has accepted so far (by link index; a
    /// counter that only grows while the link lives, `None` for no link), read by the
    /// driver before each call. If exactly one call ended since the last reading and took
    /// long enough to count, the bytes each link carried over its time are a rate that link
    /// sustained; the least of them over the links that carried enough is a rate each of
    /// those links sustained even where they share one network interface. A rate estimate
    /// below it is raised to it, and a link to another host without one gets it as its
    /// first.
    ///
    /// Rate samples come only from times a link could not keep up, so a low sample (a peer
    /// descheduled for a while) would otherwise stand for good once a heavy codec slows
    /// this rank below the link: the link never falls behind again, and the codec the low
    /// rate calls for is chosen for ever (measured: one of eight links of a 10 Gbit/s ring
    /// stuck at 39 MB/s on `bf16+zstd`, an eighth of the bytes at half speed). And a link
    /// can go without any sample (measured: one link of a 1 Gbit/s ring for a whole run),
    /// which left it raw, or treated as infinitely fast, on `bf16` next to `bf16+zstd`.
    /// Raising each link to what it alone carried would overrate links that share an
    /// interface: one carries more while the other carries less.
    pub fn observe_link_bytes(&mut self, totals: [Option<u64>; 2]) {
        let secs = self.last_call_secs;
        let mut carried = [None; 2];
        for (l, total) in totals.into_iter().enumerate() {
            let before = std::mem::replace(&mut self.link_bytes_out[l], total.map(|t| (t, self.calls_ended)));
            if let (Some(total), Some((bytes, calls)), Some(secs)) = (total, before, secs) {
                let sent = total.checked_sub(bytes).filter(|b| *b >= LINK_BYTES_MIN && calls + 1 == self.calls_ended);
                carried[l] = sent.map(|b| b as f64 / secs);
            }
        }
        let Some(floor) = carried.iter().flatten().copied().reduce(f64::min) else { return };
        for l in (0..carried.len()).filter(|&l| carried[l].is_some() && !self.local[l]) {
            let rate = &mut self.link_bytes_per_sec[l];
            *rate = Some(rate.map_or(floor, |r| r.max(floor)));
        }
    }

    /// Records whether outgoing link `link` leads to a peer on the same host (the driver
    /// says so before each call: neighbours change with the view).
    pub fn set_local(&mut self, link: usize, local: bool) {
        if let Some(l) = self.local.get_mut(link) {
            *l = local;
        }
    }

    /// True if `link` is known to be slow (has a rate) or local: only then may a segment
    /// on it be anything but raw, and only then is probing worth its cost (slow links).
    pub fn knows(&self, link: usize) -> bool {
        self.link_rate(link).is_some() || self.local.get(link).copied().unwrap_or(false)
    }

    /// True if a call may encode anything: some link is known to be slow, or is local and
    /// the call may round.
    pub fn may_encode(&self, lossy: bool) -> bool {
        (0..self.local.len()).any(|l| self.link_rate(l).is_some() || (lossy && self.local[l]))
    }

    /// The current rate estimate of link `link`.
    pub fn link_rate(&self, link: usize) -> Option<f64> {
        self.link_bytes_per_sec.get(link).copied().flatten()
    }

    /// Folds in one probe. Probes of codecs auto does not consider, or of nothing, are ignored.
    pub fn observe_probe(&mut self, probe: &Probe) {
        let Some(e) = self.estimate_mut(probe.codec) else { return };
        if probe.raw_bytes == 0 || probe.wire_bytes == 0 {
            return;
        }
        let per_byte = |d: Duration| d.as_secs_f64() / probe.raw_bytes as f64;
        e.ratio = average(e.ratio, probe.raw_bytes as f64 / probe.wire_bytes as f64);
        e.encode.push(per_byte(probe.encode));
        e.decode.push(per_byte(probe.decode));
        self.call_codec_secs += (probe.encode + probe.decode).as_secs_f64();
    }

    /// Counts a segment of `raw_bytes` this rank originates in an `auto` call (one it may
    /// encode, rather than forward as it came), whatever is chosen for it.
    pub fn observe_segment(&mut self, raw_bytes: usize) {
        self.call_originated += raw_bytes as u64;
    }

    /// Records a real encode of `raw_bytes` with `codec` that took `elapsed`.
    pub fn observe_encode(&mut self, codec: Codec, raw_bytes: usize, elapsed: Duration) {
        if let Some(e) = self.estimate_mut(codec).filter(|_| raw_bytes > 0) {
            e.encode.push(elapsed.as_secs_f64() / raw_bytes as f64);
        }
        self.call_codec_secs += elapsed.as_secs_f64();
        if let Some(i) = LOSSY_CANDIDATES.iter().position(|c| *c == codec) {
            self.call_encoded[i] += raw_bytes as u64;
        }
    }

    /// Ends a call that sent `raw_bytes` (what it would have sent raw) as `wire_bytes` and
    /// took `elapsed` (`None` if it failed): the CPU it took besides the codecs gives the
    /// base cost of moving bytes; its goodput is compared with that of raw calls, and a
    /// codec that carried most of [`VETO_EVIDENCE_CALLS`] calls in a row, each clearly
    /// slower than raw calls, is vetoed.
    pub fn end_call(&mut self, raw_bytes: u64, wire_bytes: u64, elapsed: Option<Duration>) {
        let encoded = std::mem::take(&mut self.call_encoded);
        let codec_secs = std::mem::take(&mut self.call_codec_secs);
        let originated = std::mem::take(&mut self.call_originated);
        let sched = self.call_sched.take();
        for v in &mut self.verdicts {
            v.veto_calls = v.veto_calls.saturating_sub(1);
        }
        self.calls_ended += 1;
        self.last_call_secs = None;
        let Some(secs) = elapsed.map(|d| d.as_secs_f64()).filter(|s| *s > 0.0) else { return };
        if raw_bytes < CALL_BYTES_MIN || wire_bytes == 0 {
            return;
        }
        self.last_call_secs = Some(secs);
        let share = |bytes: u64| (bytes as f64 / raw_bytes as f64).min(1.0);
        if originated > 0 {
            // Zero where the call sent raw without asking (no link known to be slow).
            self.encode_share = average(self.encode_share, share(originated));
        }
        if let Some((ran, _)) = sched {
            let base = (ran - codec_secs).max(0.0) / wire_bytes as f64;
            self.base_secs_per_byte = average(self.base_secs_per_byte, base);
        }
        let goodput = raw_bytes as f64 / secs;
        if share(encoded.iter().sum()) < CALL_SHARE_MIN {
            self.raw_goodput = average(self.raw_goodput, goodput);
            return;
        }
        if let Some((ran, waited)) = sched.filter(|(ran, _)| *ran > 0.0) {
            self.cpu_share = average(self.cpu_share, ran / (ran + waited));
        }
        // The codec that carried the most of it answers for the call.
        let Some(i) = (0..encoded.len()).max_by_key(|&i| encoded[i]) else { return };
        let Some(raw) = self.raw_goodput else { return };
        let v = &mut self.verdicts[i];
        if goodput * GAIN_MIN >= raw {
            // Not clearly slower: any run of slow calls is broken, and the backoff forgotten.
            *v = Verdict { veto_calls: v.veto_calls, ..Verdict::default() };
            return;
        }
        v.slow_calls += 1;
        v.slow_goodput = average(v.slow_goodput, goodput);
        if v.slow_calls < VETO_EVIDENCE_CALLS {
            return;
        }
        // Long enough that the next trial, if its calls are as slow, costs at most
        // RETRY_COST_MAX of the time spent meanwhile; at least twice the last veto.
        let excess = raw / v.slow_goodput.unwrap_or(goodput) - 1.0;
        let paid_off = (f64::from(VETO_EVIDENCE_CALLS) * excess / RETRY_COST_MAX).ceil();
        let len = (v.veto_len * 2).max(paid_off.min(f64::from(VETO_CALLS_MAX)) as u32).clamp(2, VETO_CALLS_MAX);
        *v = Verdict { veto_calls: len, veto_len: len, ..Verdict::default() };
    }

    /// Records how long this rank's thread ran, and waited for a core while runnable,
    /// since the last call ended ([`super::cpu_share`]); call before
    /// [`AutoPolicy::end_call`]. What it ran besides the codecs is the base cost of moving
    /// bytes (syscalls, the kernel's copies, reduction), measured on every call. The share
    /// of a core it got counts only on calls that were mostly encoded: they show how much
    /// CPU the codecs really have when every rank on the host compresses, which raw calls
    /// (mostly waiting on the link) cannot. Until one is measured, a whole core.
    pub fn observe_call_cpu(&mut self, ran: Duration, waited: Duration) {
        let (ran, waited) = (ran.as_secs_f64(), waited.as_secs_f64());
        if ran > 0.0 {
            self.call_sched = Some((ran, waited));
        }
    }

    /// The share of a core coded calls got, if measured.
    pub fn cpu_share(&self) -> Option<f64> {
        self.cpu_share
    }

    /// CPU seconds per wire byte sent that calls take besides codec work, if measured.
    pub fn base_secs_per_byte(&self) -> Option<f64> {
        self.base_secs_per_byte
    }

    /// True while `codec` is vetoed (its calls were slower than raw ones).
    pub fn vetoed(&self, codec: Codec) -> bool {
        LOSSY_CANDIDATES.iter().position(|c| *c == codec).is_some_and(|i| self.verdicts[i].veto_calls > 0)
    }

    /// Records a real decode (into `raw_bytes`) of a `codec` payload that took `elapsed`.
    pub fn observe_decode(&mut self, codec: Codec, raw_bytes: usize, elapsed: Duration) {
        if let Some(e) = self.estimate_mut(codec).filter(|_| raw_bytes > 0) {
            e.decode.push(elapsed.as_secs_f64() / raw_bytes as f64);
        }
        self.call_codec_secs += elapsed.as_secs_f64();
    }

    fn estimate_mut(&mut self, codec: Codec) -> Option<&mut Estimate> {
        let i = LOSSY_CANDIDATES.iter().position(|c| *c == codec)?;
        self.estimates.get_mut(i)
    }

    /// Counts one segment about to be encoded and says whether to probe it first.
    pub fn probe_due(&mut self) -> bool {
        if self.until_probe > 0 {
            self.until_probe -= 1;
            return false;
        }
        self.probe_interval = (self.probe_interval * 2).clamp(1, PROBE_INTERVAL_MAX);
        self.until_probe = self.probe_interval - 1;
        true
    }

    /// The codec for the next segment on outgoing link `link`: the candidate (lossy ones
    /// only if `lossy`) with the most predicted goodput, if it beats raw by [`GAIN_MIN`];
    /// raw otherwise. `links` is the number of outgoing links this rank's core feeds at once.
    pub fn choose(&self, link: usize, lossy: bool, links: usize) -> Codec {
        if self.local.get(link).copied().unwrap_or(false) {
            return if lossy && !self.vetoed(Codec::Bf16) { Codec::Bf16 } else { Codec::Raw };
        }
        let Some(rate) = self.link_rate(link) else { return Codec::Raw };
        let mut best = (Codec::Raw, self.raw_goodput_predicted(rate, links) * GAIN_MIN);
        for &codec in AutoPolicy::candidates(lossy).iter().filter(|c| !self.vetoed(**c)) {
            if let Some(g) = self.goodput(codec, rate, links) {
                if g > best.1 {
                    best = (codec, g);
                }
            }
        }
        best.0
    }

    /// True if, on some link with a known rate, a lossy codec is the best choice: `auto+bf16`
    /// asks this once per collective to decide whether the call rounds at all.
    pub fn lossy_pays(&self, links: usize) -> bool {
        (0..self.link_bytes_per_sec.len()).any(|l| self.choose(l, true, links).is_lossy())
    }

    /// What the policy measured and would choose for a call of `links` outgoing links
    /// that may round if `lossy`, and what the running call encoded: one line for the log
    /// (`RINGCC_LOG=ringcc::auto=debug`), read before [`AutoPolicy::end_call`].
    pub fn summary(&self, links: usize, lossy: bool) -> Summary<'_> {
        Summary { policy: self, links, lossy }
    }

    /// Predicted raw bytes per second of raw sending on a link of `rate` wire bytes per
    /// second: the link's rate, unless the CPU moving the bytes is slower.
    fn raw_goodput_predicted(&self, rate: f64, links: usize) -> f64 {
        rate.min(self.cpu_rate(self.base_secs_per_byte.unwrap_or(0.0), links))
    }

    /// Predicted raw bytes per second of `codec` on a link of `rate` wire bytes per second.
    fn goodput(&self, codec: Codec, rate: f64, links: usize) -> Option<f64> {
        let i = LOSSY_CANDIDATES.iter().position(|c| *c == codec)?;
        let e = self.estimates.get(i)?;
        let ratio = e.ratio?;
        // Per raw byte sent: the base cost of its wire bytes, an encode of the share this
        // rank originates, and a decode of as much received.
        let encode = e.encode.estimate()? * self.encode_share.unwrap_or(1.0);
        let cpu = self.base_secs_per_byte.unwrap_or(0.0) / ratio + encode + e.decode.estimate()?;
        Some((rate * ratio).min(self.cpu_rate(cpu, links)))
    }

    /// Raw bytes per second per link that `links` links sharing this rank's share of a core
    /// sustain when each raw byte costs `secs_per_byte` of CPU.
    fn cpu_rate(&self, secs_per_byte: f64, links: usize) -> f64 {
        let cpu_secs = secs_per_byte * links.max(1) as f64;
        if cpu_secs > 0.0 {
            self.cpu_share.unwrap_or(1.0) / cpu_secs
        } else {
            f64::INFINITY
        }
    }
}

/// [`AutoPolicy::summary`]: rates and predicted goodputs in MB/s, CPU costs in ns per byte.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    policy: &'a AutoPolicy,
    links: usize,
    lossy: bool,
}

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, links, lossy) = (self.policy, self.links, self.lossy);
        let mb = |x: f64| x / 1e6;
        match p.cpu_share {
            Some(s) => write!(f, "core share {s:.2}")?,
            None => write!(f, "core share -")?,
        }
        match p.base_secs_per_byte {
            Some(b) => write!(f, ", base {:.2}", b * 1e9)?,
            None => write!(f, ", base -")?,
        }
        match p.encode_share {
            Some(e) => write!(f, ", encodes {e:.2}")?,
            None => write!(f, ", encodes -")?,
        }
        for (i, codec) in LOSSY_CANDIDATES.iter().enumerate() {
            let e = &p.estimates[i];
            if let (Some(r), Some(enc), Some(dec)) = (e.ratio, e.encode.estimate(), e.decode.estimate()) {
                write!(f, ", {} x{r:.2} {:.2}+{:.2}", codec.name(), enc * 1e9, dec * 1e9)?;
            }
            if p.call_encoded[i] > 0 {
                write!(f, " (sent {:.1} MiB)", p.call_encoded[i] as f64 / f64::from(1 << 20))?;
            }
            if p.vetoed(*codec) {
                write!(f, " (vetoed {} calls)", p.verdicts[i].veto_calls)?;
            }
        }
        for link in 0..p.local.len() {
            write!(f, "; link {link}: ")?;
            match p.link_rate(link) {
                _ if p.local[link] => write!(f, "local")?,
                Some(rate) => {
                    write!(f, "{:.0}, raw {:.0}", mb(rate), mb(p.raw_goodput_predicted(rate, links)))?;
                    for &codec in AutoPolicy::candidates(lossy) {
                        if let Some(g) = p.goodput(codec, rate, links) {
                            write!(f, ", {} {:.0}", codec.name(), mb(g))?;
                        }
                    }
                }
                None => write!(f, "fast")?,
            }
            write!(f, " -> {}", p.choose(link, lossy, links).name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "auto_tests.rs"]
mod tests;
