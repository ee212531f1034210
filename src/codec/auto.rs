//! `auto`: per segment, the codec the measurements say moves data fastest.
//!
//! The policy is pure: it is fed measurements and answers questions, and never reads a
//! clock. Two kinds of measurement feed it:
//!
//! - the **link rate** of each outgoing link, in wire bytes per second, measured by the
//!   driver only while the link was the bottleneck (the socket refused more bytes), so a
//!   link that always keeps up reports nothing and is treated as fast;
//! - **probes**: now and then (first on the first segment, then every 2, 4, ... up to
//!   [`PROBE_INTERVAL_MAX`] segments) the sender encodes and decodes the first
//!   [`PROBE_BYTES`] of a segment with each candidate codec and reports the ratio and the
//!   time both took. Probes are not sent; they cost well under 1% of the segments;
//! - **costs in use**: the time every real encode and decode of a candidate took. A short
//!   probe runs at a core's full speed; a codec in use shares the core with everything else
//!   on the host (on an oversubscribed host, with the other ranks compressing too).
//!
//! And a check of the outcome: each call's **goodput** (raw bytes sent per second) is kept
//! for calls sent (nearly) raw and, for calls of which at least [`CALL_SHARE_MIN`] was
//! encoded, for the codec that carried most of it; a codec whose calls turn out slower than raw ones, whatever the model
//! predicted (it cannot see, say, that the host's cores are shared by more ranks than it
//! has), is vetoed for 2 calls, then 4, ... up to [`VETO_CALLS_MAX`], and tried again after
//! each veto; meanwhile the next best codec, if any, gets its chance. A veto is at least
//! long enough that retrying a codec as slow as its last call costs under
//! [`RETRY_COST_MAX`] of the time (a codec 4x slower than raw waits 150 calls).
//!
//! A codec's cost is the mean of its last [`COST_SAMPLES`] costs, in use and probed alike,
//! leaving out the largest one: while a codec is in use its segments dominate, so a codec
//! that looked fast but is slow in use is turned off; while it is off, its probes refill
//! the window, so after a few probes it is tried again (a few slow segments every few
//! hundred), and one segment that happened to be descheduled cannot turn it off.
//!
//! With a link rate `L`, a codec of ratio `r` (raw bytes per wire byte) whose encode plus
//! decode costs `c` seconds per raw byte delivers `min(L * r, s / (c * links))` raw bytes
//! per second per link (`links`: outgoing links sharing this rank's core; `s`: the share of
//! a core this rank got while runnable during its coded calls, from the scheduler's run
//! and wait times, 1 until measured; on a host with more busy ranks than cores it is what
//! the timings of single segments and probes cannot see), and raw delivers `L`. A codec is used only if it promises at least [`GAIN_MIN`] times raw's
//! goodput; without a link rate, or without a probe yet, the answer is raw. A link to a peer
//! on the same host has no rate: there the "link" is memory and the peer's CPU, which zstd
//! only loads further, so `auto` sends raw there and costs nothing; `auto+bf16` sends bf16
//! there (casting costs less than the copying it halves), unless its calls turn out slower.

use std::time::Duration;

use super::Codec;

/// Bytes of a segment each probe encodes and decodes (its start, whole elements).
pub const PROBE_BYTES: usize = 64 << 10;

/// Most segments between two probes once the policy has settled.
pub const PROBE_INTERVAL_MAX: u32 = 64;

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

/// Longest veto of a codec whose calls were slower than raw ones, in calls: with
/// [`RETRY_COST_MAX`], retrying a codec up to 21x slower than raw still costs at most 2%.
pub const VETO_CALLS_MAX: u32 = 1024;

/// Largest share of the time a vetoed codec's retries may cost, on average: a codec whose
/// call took `k` times raw's time is vetoed for at least `(k - 1) / RETRY_COST_MAX` calls.
/// Kept under the 3% by which `auto` may trail the best fixed choice. (On a host whose
/// cores the ranks oversubscribe, a zstd codec in use can be 4-7x slower than raw while its
/// short probes promise a gain, so retries must be rare.)
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

impl Estimate {
    /// Encode plus decode seconds per raw byte.
    fn cpu_secs_per_byte(&self) -> Option<f64> {
        Some(self.encode.estimate()? + self.decode.estimate()?)
    }
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
    /// Goodput of recent calls sent mostly with each candidate.
    coded_goodput: [Option<f64>; 3],
    /// Per candidate: calls left in its veto, and the length of its last veto.
    vetoes: [(u32, u32); 3],
    /// Share of a core this rank got while runnable during coded calls (running average).
    cpu_share: Option<f64>,
    /// The share measured over the call now ending, if the driver measured one.
    call_cpu_share: Option<f64>,
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
    }

    /// Records a real encode of `raw_bytes` with `codec` that took `elapsed`.
    pub fn observe_encode(&mut self, codec: Codec, raw_bytes: usize, elapsed: Duration) {
        if let Some(e) = self.estimate_mut(codec).filter(|_| raw_bytes > 0) {
            e.encode.push(elapsed.as_secs_f64() / raw_bytes as f64);
        }
        if let Some(i) = LOSSY_CANDIDATES.iter().position(|c| *c == codec) {
            self.call_encoded[i] += raw_bytes as u64;
        }
    }

    /// Ends a call that sent `raw_bytes` (what it would have sent raw) and took `elapsed`
    /// (`None` if it failed): its goodput is compared with that of earlier calls, and a
    /// codec that carried most of it and made it slower than raw calls is vetoed.
    pub fn end_call(&mut self, raw_bytes: u64, elapsed: Option<Duration>) {
        let encoded = std::mem::take(&mut self.call_encoded);
        let call_cpu_share = self.call_cpu_share.take();
        for v in &mut self.vetoes {
            v.0 = v.0.saturating_sub(1);
        }
        let Some(secs) = elapsed.map(|d| d.as_secs_f64()).filter(|s| *s > 0.0) else { return };
        if raw_bytes < CALL_BYTES_MIN {
            return;
        }
        let goodput = raw_bytes as f64 / secs;
        let share = |bytes: u64| bytes as f64 / raw_bytes as f64;
        if share(encoded.iter().sum()) < CALL_SHARE_MIN {
            self.raw_goodput = average(self.raw_goodput, goodput);
            return;
        }
        if let Some(share) = call_cpu_share {
            self.cpu_share = average(self.cpu_share, share);
        }
        // The codec that carried the most of it answers for the call.
        let Some(i) = (0..encoded.len()).max_by_key(|&i| encoded[i]) else { return };
        self.coded_goodput[i] = average(self.coded_goodput[i], goodput);
        match (self.coded_goodput[i], self.raw_goodput) {
            (Some(coded), Some(raw)) if coded < raw => {
                // Long enough that the next trial, if it is as slow, costs at most
                // RETRY_COST_MAX of the time spent meanwhile; at least twice the last veto.
                let excess = raw / coded - 1.0;
                let paid_off = (excess / RETRY_COST_MAX).ceil().min(f64::from(VETO_CALLS_MAX)) as u32;
                let len = (self.vetoes[i].1 * 2).max(paid_off).clamp(2, VETO_CALLS_MAX);
                self.vetoes[i] = (len, len);
                self.coded_goodput[i] = None;
            }
            _ => self.vetoes[i].1 = 0,
        }
    }

    /// Records the share of a core (0 to 1) this rank's thread got while it was runnable
    /// during the call about to end ([`super::cpu_share`]); call before
    /// [`AutoPolicy::end_call`]. Only calls that were mostly encoded count: they show how
    /// much CPU the codecs really have when every rank on the host compresses, which raw
    /// calls (mostly waiting on the link) cannot. Until one is measured, a whole core.
    pub fn observe_call_cpu_share(&mut self, share: f64) {
        if share.is_finite() && share > 0.0 && share <= 1.0 {
            self.call_cpu_share = Some(share);
        }
    }

    /// The share of a core coded calls got, if measured.
    pub fn cpu_share(&self) -> Option<f64> {
        self.cpu_share
    }

    /// True while `codec` is vetoed (its calls were slower than raw ones).
    pub fn vetoed(&self, codec: Codec) -> bool {
        LOSSY_CANDIDATES.iter().position(|c| *c == codec).is_some_and(|i| self.vetoes[i].0 > 0)
    }

    /// Records a real decode (into `raw_bytes`) of a `codec` payload that took `elapsed`.
    pub fn observe_decode(&mut self, codec: Codec, raw_bytes: usize, elapsed: Duration) {
        if let Some(e) = self.estimate_mut(codec).filter(|_| raw_bytes > 0) {
            e.decode.push(elapsed.as_secs_f64() / raw_bytes as f64);
        }
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
        let mut best = (Codec::Raw, rate * GAIN_MIN);
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

    /// Predicted raw bytes per second of `codec` on a link of `rate` wire bytes per second.
    fn goodput(&self, codec: Codec, rate: f64, links: usize) -> Option<f64> {
        let i = LOSSY_CANDIDATES.iter().position(|c| *c == codec)?;
        let e = self.estimates.get(i)?;
        let cpu_secs = e.cpu_secs_per_byte()? * links.max(1) as f64;
        let share = self.cpu_share.unwrap_or(1.0);
        let cpu_rate = if cpu_secs > 0.0 { share / cpu_secs } else { f64::INFINITY };
        Some((rate * e.ratio?).min(cpu_rate))
    }
}

#[cfg(test)]
#[path = "auto_tests.rs"]
mod tests;
