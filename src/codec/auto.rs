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
//! decode costs `c` seconds per raw byte delivers `min(L * r, 1 / (c * links))` raw bytes
//! per second per link (`links`: outgoing links sharing this rank's core), and raw
//! delivers `L`. A codec is used only if it promises at least [`GAIN_MIN`] times raw's
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
        let cpu_rate = if cpu_secs > 0.0 { 1.0 / cpu_secs } else { f64::INFINITY };
        Some((rate * e.ratio?).min(cpu_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(codec: Codec, ratio: f64, cpu_mb_per_s: f64) -> Probe {
        let raw_bytes = 1 << 20;
        let secs = raw_bytes as f64 / (cpu_mb_per_s * 1e6);
        Probe {
            codec,
            raw_bytes,
            wire_bytes: (raw_bytes as f64 / ratio) as usize,
            encode: Duration::from_secs_f64(secs / 2.0),
            decode: Duration::from_secs_f64(secs / 2.0),
        }
    }

    #[test]
    fn raw_until_both_the_link_and_the_codec_are_measured() {
        let mut p = AutoPolicy::new();
        assert_eq!(p.choose(1, false, 1), Codec::Raw);
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.3, 400.0));
        assert_eq!(p.choose(1, false, 1), Codec::Raw, "no link rate yet");
        p.observe_link(1, 117e6);
        assert_eq!(p.choose(1, false, 1), Codec::ShuffleZstd);
        assert_eq!(p.choose(0, false, 1), Codec::Raw, "the other link is not known to be slow");
    }

    #[test]
    fn a_fast_link_stays_raw_and_a_slow_one_compresses_only_where_it_pays() {
        let mut p = AutoPolicy::new();
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.15, 400.0));
        p.observe_link(0, 3e9); // loopback: the peer reads at memory speed
        p.observe_link(1, 117e6); // 1 Gbit/s
        assert_eq!(p.choose(0, false, 1), Codec::Raw);
        assert_eq!(p.choose(1, false, 1), Codec::ShuffleZstd); // 135 MB/s > 1.05 x 117
        assert_eq!(p.choose(1, false, 4), Codec::Raw, "four links share 400 MB/s of CPU: 100 < 117");
        let mut barely = AutoPolicy::new();
        barely.observe_probe(&probe(Codec::ShuffleZstd, 1.03, 4000.0));
        barely.observe_link(1, 117e6);
        assert_eq!(barely.choose(1, false, 1), Codec::Raw, "3% is within the margin");
    }

    #[test]
    fn lossy_candidates_only_when_allowed_and_the_best_one_wins() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 117e6);
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.15, 400.0));
        p.observe_probe(&probe(Codec::Bf16, 2.0, 3000.0));
        p.observe_probe(&probe(Codec::Bf16Zstd, 2.8, 350.0));
        assert_eq!(p.choose(1, false, 1), Codec::ShuffleZstd);
        assert_eq!(p.choose(1, true, 1), Codec::Bf16Zstd); // min(328, 350) beats min(234, 3000)
        assert!(p.lossy_pays(1));
        for _ in 0..20 {
            p.observe_link(1, 10e9); // faster than any codec's CPU
        }
        assert!(!p.lossy_pays(1), "rate now {:?}", p.link_rate(1));
    }

    #[test]
    fn a_codec_slow_in_use_is_turned_off_then_tried_again_after_probes() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 60e6);
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.2, 220.0)); // a free core: 220 MB/s
        assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "predicted min(72, 110) > 63");
        // In use, four ranks share two cores: a third of the speed.
        for _ in 0..COST_SAMPLES {
            p.observe_encode(Codec::ShuffleZstd, 1 << 19, Duration::from_micros(4500));
            p.observe_decode(Codec::ShuffleZstd, 1 << 19, Duration::from_micros(2600));
        }
        assert_eq!(p.choose(1, false, 2), Codec::Raw, "about 37 MB/s per link in use");
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.2, 220.0));
        assert_eq!(p.choose(1, false, 2), Codec::Raw, "one fast probe does not outweigh the segments");
        for _ in 0..COST_SAMPLES {
            p.observe_probe(&probe(Codec::ShuffleZstd, 1.2, 220.0));
        }
        assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "tried again once probes refilled the window");
    }

    #[test]
    fn one_descheduled_segment_does_not_turn_a_cheap_codec_off() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 50e6);
        p.observe_probe(&probe(Codec::Bf16, 2.0, 3000.0));
        let cheap = Duration::from_micros(150); // 512 KiB at 3.5 GB/s
        for i in 0..30 {
            let took = if i % COST_SAMPLES == 3 { Duration::from_millis(40) } else { cheap };
            p.observe_encode(Codec::Bf16, 1 << 19, took);
            p.observe_decode(Codec::Bf16, 1 << 19, took);
            assert_eq!(p.choose(1, true, 2), Codec::Bf16, "after {i} segments");
        }
    }

    #[test]
    fn a_codec_whose_calls_are_slower_than_raw_is_vetoed_with_growing_backoff() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 60e6);
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.3, 1000.0));
        let call = 64u64 << 20;
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        p.end_call(call, secs(1.0)); // a raw call: 67 MB/s
        assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "the model says it pays");
        // The codec carries the next call, which turns out slower.
        p.observe_encode(Codec::ShuffleZstd, call as usize, Duration::from_millis(100));
        p.end_call(call, secs(1.25));
        assert!(p.vetoed(Codec::ShuffleZstd));
        assert_eq!(p.choose(1, false, 2), Codec::Raw);
        let vetoed_for = |p: &mut AutoPolicy| {
            (0..2000)
                .take_while(|_| {
                    let v = p.vetoed(Codec::ShuffleZstd);
                    p.end_call(call, secs(1.0));
                    v
                })
                .count()
        };
        assert_eq!(vetoed_for(&mut p), 13, "0.25 s more per call: 13 calls keep a retry under 2%");
        assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "tried again after the veto");
        p.observe_encode(Codec::ShuffleZstd, call as usize, Duration::from_millis(100));
        p.end_call(call, secs(1.25));
        assert_eq!(vetoed_for(&mut p), 26, "then twice as long");
        p.observe_encode(Codec::ShuffleZstd, call as usize, Duration::from_millis(100));
        p.end_call(call, secs(5.01));
        assert_eq!(vetoed_for(&mut p), 201, "a call 5x slower than raw: 4.01 / 0.02 calls");
        // A codec that pays is not vetoed; small and failed calls count for nothing.
        p.observe_encode(Codec::ShuffleZstd, call as usize, Duration::from_millis(100));
        p.end_call(call, secs(0.8));
        assert!(!p.vetoed(Codec::ShuffleZstd));
        p.observe_encode(Codec::ShuffleZstd, 1 << 20, Duration::from_millis(1));
        p.end_call(1 << 20, secs(10.0));
        p.end_call(call, None);
        assert!(!p.vetoed(Codec::ShuffleZstd));
    }

    #[test]
    fn a_call_that_encoded_one_direction_answers_for_the_codec() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 60e6);
        p.observe_probe(&probe(Codec::ShuffleZstd, 1.3, 1000.0));
        let call = 96u64 << 20; // what an N=4 all-reduce of 64 MiB sends
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        p.end_call(call, secs(1.0));
        // One of two directions compressed: a third of the bytes sent, two times slower.
        p.observe_encode(Codec::ShuffleZstd, (call / 3) as usize, Duration::from_millis(100));
        p.end_call(call, secs(2.0));
        assert!(p.vetoed(Codec::ShuffleZstd));
        // A sliver encoded (probing, one segment) still counts as a raw call.
        p.observe_encode(Codec::ShuffleZstd, (call / 10) as usize, Duration::from_millis(10));
        for _ in 0..60 {
            p.end_call(call, secs(1.0));
        }
        assert!(!p.vetoed(Codec::ShuffleZstd), "50 calls pay off one 2x slower call at 2%");
    }

    #[test]
    fn when_the_best_codec_is_vetoed_the_next_best_gets_its_chance() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 50e6);
        p.observe_probe(&probe(Codec::Bf16, 2.0, 3000.0));
        p.observe_probe(&probe(Codec::Bf16Zstd, 3.2, 430.0));
        let call = 64u64 << 20;
        p.end_call(call, Some(Duration::from_secs(1)));
        assert_eq!(p.choose(1, true, 2), Codec::Bf16Zstd, "predicted 160 MB/s against bf16's 100");
        // In use the call is mixed and slower than raw: the codec that carried most answers.
        p.observe_encode(Codec::Bf16Zstd, (call / 2) as usize, Duration::from_millis(80));
        p.observe_encode(Codec::Bf16, (call / 4) as usize, Duration::from_millis(10));
        p.end_call(call, Some(Duration::from_millis(1200)));
        assert!(p.vetoed(Codec::Bf16Zstd) && !p.vetoed(Codec::Bf16));
        assert_eq!(p.choose(1, true, 2), Codec::Bf16);
        assert!(p.lossy_pays(2));
    }

    #[test]
    fn local_links_carry_bf16_when_rounding_is_allowed_and_raw_otherwise() {
        let mut p = AutoPolicy::new();
        assert!(!p.knows(0) && !p.may_encode(true));
        p.set_local(0, true);
        p.observe_probe(&probe(Codec::ShuffleZstd, 5.0, 1e6)); // free and very effective
        assert_eq!(p.choose(0, false, 1), Codec::Raw, "zstd never pays between processes of one host");
        assert_eq!(p.choose(0, true, 1), Codec::Bf16);
        assert!(p.lossy_pays(1) && p.may_encode(true) && !p.may_encode(false));
        // bf16 calls slower than raw ones veto it there too.
        let call = 64u64 << 20;
        p.end_call(call, Some(Duration::from_millis(150)));
        p.observe_encode(Codec::Bf16, call as usize, Duration::from_millis(10));
        p.end_call(call, Some(Duration::from_millis(200)));
        assert_eq!(p.choose(0, true, 1), Codec::Raw);
    }

    #[test]
    fn probes_thin_out_to_the_maximum_interval() {
        let mut p = AutoPolicy::new();
        let at: Vec<u32> = (0..300u32).filter(|_| p.probe_due()).collect();
        assert_eq!(at, vec![0, 1, 3, 7, 15, 31, 63, 127, 191, 255]);
    }

    #[test]
    fn samples_without_bytes_or_of_other_codecs_change_nothing() {
        let mut p = AutoPolicy::new();
        p.observe_link(1, 117e6);
        p.observe_probe(&Probe { wire_bytes: 0, ..probe(Codec::ShuffleZstd, 2.0, 400.0) });
        p.observe_probe(&probe(Codec::F16, 2.0, 4000.0));
        p.observe_link(1, f64::NAN);
        assert_eq!(p.choose(1, true, 1), Codec::Raw);
        assert_eq!(p.link_rate(1), Some(117e6));
    }
}
