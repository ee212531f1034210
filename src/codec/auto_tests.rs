//! Unit tests of `codec::auto` (included under cfg(test) only).

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
fn the_share_of_a_core_coded_calls_got_scales_the_codecs_speed() {
    let mut p = AutoPolicy::new();
    p.observe_link(1, 117e6);
    p.observe_probe(&probe(Codec::ShuffleZstd, 1.6, 400.0)); // on a whole core: min(187, 200)
    assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd);
    let call = 96u64 << 20;
    let ms = Duration::from_millis;
    // A raw call says nothing about the CPU codecs would get.
    p.observe_call_cpu(ms(400), ms(600));
    p.end_call(call, call, Some(Duration::from_secs(1)));
    assert_eq!(p.cpu_share(), None);
    // A coded call on a host with twice as many busy ranks as cores: half a core.
    p.observe_encode(Codec::ShuffleZstd, (call / 2) as usize, ms(100));
    p.observe_call_cpu(ms(450), ms(450));
    p.end_call(call, call * 3 / 4, Some(ms(900)));
    assert_eq!(p.cpu_share(), Some(0.5));
    assert_eq!(p.choose(1, false, 2), Codec::Raw, "half of 200 MB/s is less than the link");
    p.observe_call_cpu(Duration::ZERO, ms(10));
    p.end_call(call, call, Some(Duration::from_secs(1)));
    assert_eq!(p.cpu_share(), Some(0.5), "a thread that never ran says nothing");
}

/// Probes `codec` three times: ratio `ratio`, encode and decode `enc` and `dec` ns per byte.
fn probe_costs(p: &mut AutoPolicy, codec: Codec, ratio: f64, enc: f64, dec: f64) {
    let raw_bytes = 1 << 20;
    let took = |ns: f64| Duration::from_secs_f64(ns * 1e-9 * raw_bytes as f64);
    for _ in 0..3 {
        let wire_bytes = (raw_bytes as f64 / ratio) as usize;
        p.observe_probe(&Probe { codec, raw_bytes, wire_bytes, encode: took(enc), decode: took(dec) });
    }
}

/// A policy with `rate` on link 1 that measured `base` CPU seconds per wire byte besides
/// the codecs over a raw call, then over a `bf16` call got `share` of a core.
fn measured(rate: f64, base: f64, share: f64) -> AutoPolicy {
    let mut p = AutoPolicy::new();
    p.observe_link(1, rate);
    probe_costs(&mut p, Codec::ShuffleZstd, 1.5, 1.8, 0.9);
    probe_costs(&mut p, Codec::Bf16, 2.0, 0.15, 0.08);
    probe_costs(&mut p, Codec::Bf16Zstd, 2.83, 1.3, 0.42);
    let call = 96u64 << 20;
    p.end_call(call, call, None); // the probes' call (it failed: it says nothing else)
    let secs = Duration::from_secs_f64;
    p.observe_call_cpu(secs(base * call as f64), Duration::ZERO);
    p.end_call(call, call, Some(secs(0.3)));
    let encode = 0.15e-9 * (call / 2) as f64;
    let ran = base * (call / 2) as f64 + encode;
    p.observe_encode(Codec::Bf16, (call / 2) as usize, secs(encode));
    p.observe_call_cpu(secs(ran), secs(ran * (1.0 / share - 1.0)));
    p.end_call(call, call / 2, Some(secs(0.2)));
    p
}

#[test]
fn the_base_cost_is_what_the_thread_ran_besides_the_codecs_per_wire_byte() {
    let p = measured(300e6, 0.72e-9, 0.45);
    let base = p.base_secs_per_byte().expect("measured");
    assert!((base - 0.72e-9).abs() < 1e-15, "{base}");
    let share = p.cpu_share().expect("measured");
    assert!((share - 0.45).abs() < 1e-6, "{share}");
    let mut q = AutoPolicy::new();
    q.observe_encode(Codec::Bf16, 1 << 20, Duration::from_millis(30));
    q.observe_call_cpu(Duration::from_millis(20), Duration::ZERO);
    q.end_call(64 << 20, 32 << 20, Some(Duration::from_millis(50)));
    assert_eq!(q.base_secs_per_byte(), Some(0.0), "codec time beyond what ran: no base cost, not a negative one");
}

#[test]
fn where_the_cpu_limits_a_fast_link_a_codec_that_halves_the_copying_still_pays() {
    // A 10 Gbit/s link that drained 855 MB/s. With four ranks on two cores (a share of
    // 0.45), raw is held to 0.45 / (0.72 ns * 2 links) = 312 MB/s by the CPU moving its
    // bytes, bf16 to 0.45 / ((0.36 + 0.15 + 0.08) ns * 2) = 381 MB/s; zstd costs more
    // CPU than it saves.
    let p = measured(855e6, 0.72e-9, 0.45);
    assert_eq!(p.choose(1, true, 2), Codec::Bf16);
    assert_eq!(p.choose(1, false, 2), Codec::Raw);
    let busy = measured(855e6, 0.72e-9, 0.18); // other work on the host too
    assert_eq!(busy.choose(1, true, 2), Codec::Bf16, "131 MB/s for raw against 152 for bf16");
    // Blind to the cost of moving bytes, raw would look as fast as the link, bf16 CPU-bound
    // at 0.18 / (0.23 ns * 2) = 391 MB/s: raw (the call 20% slower than with bf16).
    let blind = measured(855e6, 0.0, 0.18);
    assert_eq!(blind.choose(1, true, 2), Codec::Raw);
}

#[test]
fn encodes_count_only_for_the_share_of_the_bytes_a_rank_originates() {
    // 1 Gbit/s, two links of about 60 MB/s each: bf16+zstd is held by the CPU, bf16 by
    // the link (120 MB/s). Counting an encode for every byte sent, bf16+zstd would look
    // CPU-bound at 0.45 / ((0.25 + 1.3 + 0.42) ns * 2) = 114 MB/s; but a rank of an
    // all-reduce of 4 encodes only the 2/3 it originates: 146 MB/s.
    let mut p = measured(60e6, 0.72e-9, 0.45);
    assert_eq!(p.choose(1, true, 2), Codec::Bf16, "every byte counted as encoded");
    let call = 96u64 << 20;
    p.observe_segment((call * 2 / 3) as usize);
    p.end_call(call, call, Some(Duration::from_secs(1)));
    assert_eq!(p.choose(1, true, 2), Codec::Bf16Zstd);
    // Calls that never asked (no link known to be slow) do not count as originating nothing.
    p.end_call(call, call, Some(Duration::from_secs(1)));
    assert_eq!(p.choose(1, true, 2), Codec::Bf16Zstd);
}

#[test]
fn a_link_rate_below_what_the_links_carried_is_raised_to_it() {
    // A rate sampled while the peer was descheduled: 39 MB/s on a 10 Gbit/s link. bf16+zstd
    // then looks best, and keeps this rank too busy for the link to fall behind again.
    let mut p = measured(39e6, 0.72e-9, 0.45);
    assert_eq!(p.choose(1, true, 2), Codec::Bf16Zstd);
    let call = 96u64 << 20;
    let secs = |s: f64| Some(Duration::from_secs_f64(s));
    p.observe_link_bytes([Some(500), Some(1000)]);
    p.end_call(call, call / 3, secs(0.3));
    // 60 MB/s carried on link 1, more on link 0: bf16 now looks better on link 1.
    p.observe_link_bytes([Some(500 + 30_000_000), Some(1000 + 18_000_000)]);
    assert!(p.link_rate(1).is_some_and(|r| (r - 60e6).abs() < 1.0), "{:?}", p.link_rate(1));
    assert_eq!(p.choose(1, true, 2), Codec::Bf16);
    // A link that never yielded a sample gets what the links carried as its first rate
    // (before, it was raw: a 1 Gbit/s link sent raw next to bf16+zstd); not a local one.
    assert!(p.link_rate(0).is_some_and(|r| (r - 60e6).abs() < 1.0), "{:?}", p.link_rate(0));
    assert_eq!(p.choose(0, true, 2), Codec::Bf16);
    let mut local = AutoPolicy::new();
    local.set_local(0, true);
    local.observe_link_bytes([Some(0), Some(0)]);
    local.end_call(call, call, Some(Duration::from_secs(1)));
    local.observe_link_bytes([Some(50_000_000), Some(50_000_000)]);
    assert_eq!((local.link_rate(0), local.link_rate(1)), (None, Some(50e6)));
    // Links that share an interface: one carried more because the other carried less.
    // Each is raised only to the least either carried.
    let mut q = measured(58e6, 0.72e-9, 0.45);
    q.observe_link(0, 58e6);
    q.observe_link_bytes([Some(0), Some(0)]);
    q.end_call(call, call / 3, secs(0.4));
    q.observe_link_bytes([Some(35_200_000), Some(16_000_000)]); // 88 and 40 MB/s
    assert_eq!((q.link_rate(0), q.link_rate(1)), (Some(58e6), Some(58e6)));
    q.end_call(call, call / 3, secs(0.4));
    q.observe_link_bytes([Some(35_200_000 + 26_000_000), Some(16_000_000 + 28_000_000)]); // 65, 70
    assert!(q.link_rate(0).is_some_and(|r| (r - 65e6).abs() < 1.0), "{:?}", q.link_rate(0));
    assert!(q.link_rate(1).is_some_and(|r| (r - 65e6).abs() < 1.0), "{:?}", q.link_rate(1));
    // Only the bytes of exactly one measured call say anything.
    let mut r = measured(39e6, 0.72e-9, 0.45);
    let one = |r: &mut AutoPolicy, total: u64| r.observe_link_bytes([None, Some(total)]);
    one(&mut r, 0);
    r.end_call(call, call / 3, secs(0.3));
    r.end_call(call, call / 3, secs(0.3));
    one(&mut r, 36_000_000); // two calls' bytes
    r.end_call(call, call / 3, None);
    one(&mut r, 54_000_000); // a failed call
    r.end_call(call, call / 3, secs(0.3));
    one(&mut r, 1_000_000); // a new connection's counter
    r.end_call(1 << 20, 1 << 19, secs(0.001));
    one(&mut r, 2_000_000); // a small call
    assert_eq!(r.link_rate(1), Some(39e6));
    // A rate above what the link carried stays: the link was not the bottleneck then.
    r.end_call(call, call / 3, secs(0.3));
    one(&mut r, 7_000_000);
    assert_eq!(r.link_rate(1), Some(39e6));
}

/// Ends a call of `call` raw bytes that `codec` (if any) carried all of, in `secs`.
fn call_with(p: &mut AutoPolicy, codec: Option<Codec>, call: u64, secs: f64) {
    if let Some(codec) = codec {
        p.observe_encode(codec, call as usize, Duration::from_millis(1));
    }
    p.end_call(call, call / 2, Some(Duration::from_secs_f64(secs)));
}

#[test]
fn a_codec_whose_calls_are_slower_than_raw_is_vetoed_with_growing_backoff() {
    let mut p = AutoPolicy::new();
    p.observe_link(1, 60e6);
    p.observe_probe(&probe(Codec::ShuffleZstd, 1.3, 1000.0));
    let call = 64u64 << 20;
    let sz = Some(Codec::ShuffleZstd);
    call_with(&mut p, None, call, 1.0); // a raw call: 67 MB/s
    assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "the model says it pays");
    // The codec carries the next calls, which turn out slower: three in a row are evidence.
    for i in 0..VETO_EVIDENCE_CALLS {
        assert!(!p.vetoed(Codec::ShuffleZstd), "vetoed after {i} slow calls");
        call_with(&mut p, sz, call, 1.25);
    }
    assert!(p.vetoed(Codec::ShuffleZstd));
    assert_eq!(p.choose(1, false, 2), Codec::Raw);
    let vetoed_for = |p: &mut AutoPolicy| {
        (0..2000)
            .take_while(|_| {
                let v = p.vetoed(Codec::ShuffleZstd);
                call_with(p, None, call, 1.0);
                v
            })
            .count()
    };
    assert_eq!(vetoed_for(&mut p), 38, "0.25 s more per call, 3 calls: 38 calls keep a retry under 2%");
    assert_eq!(p.choose(1, false, 2), Codec::ShuffleZstd, "tried again after the veto");
    for _ in 0..VETO_EVIDENCE_CALLS {
        call_with(&mut p, sz, call, 1.25);
    }
    assert_eq!(vetoed_for(&mut p), 76, "then twice as long");
    for _ in 0..VETO_EVIDENCE_CALLS {
        call_with(&mut p, sz, call, 5.01);
    }
    assert_eq!(vetoed_for(&mut p), 602, "calls 5x slower than raw: 3 x 4.01 / 0.02 calls");
    // A codec that pays is not vetoed; small and failed calls count for nothing.
    call_with(&mut p, sz, call, 0.8);
    assert!(!p.vetoed(Codec::ShuffleZstd));
    for _ in 0..VETO_EVIDENCE_CALLS {
        call_with(&mut p, sz, 1 << 20, 10.0);
        p.observe_encode(Codec::ShuffleZstd, call as usize, Duration::from_millis(1));
        p.end_call(call, call / 2, None);
    }
    assert!(!p.vetoed(Codec::ShuffleZstd));
}

#[test]
fn one_slow_call_among_fast_ones_vetoes_nothing() {
    // 10 Gbit/s, four ranks on two cores: raw calls took 0.2 s, bf16 calls 0.16 s, and now
    // and then one takes 0.35 s (the host is shared). Measured with a veto after one slow
    // call: bf16 was vetoed for 36 calls and auto+bf16 sent raw, 25% slower.
    let mut p = measured(300e6, 0.72e-9, 0.45);
    let call = 96u64 << 20;
    let bf16 = Some(Codec::Bf16);
    for i in 0..100 {
        let secs = if i % 3 == 1 { 0.35 } else { 0.16 };
        call_with(&mut p, bf16, call, secs);
        assert!(!p.vetoed(Codec::Bf16), "call {i}");
        assert_eq!(p.choose(1, true, 2), Codec::Bf16);
    }
    // Nor does a call barely slower than raw ones (within the margin of GAIN_MIN).
    for _ in 0..10 {
        call_with(&mut p, bf16, call, 0.3 * 1.04);
    }
    assert!(!p.vetoed(Codec::Bf16));
}

#[test]
fn a_call_that_encoded_one_direction_answers_for_the_codec() {
    let mut p = AutoPolicy::new();
    p.observe_link(1, 60e6);
    p.observe_probe(&probe(Codec::ShuffleZstd, 1.3, 1000.0));
    let call = 96u64 << 20; // what an N=4 all-reduce of 64 MiB sends
    let secs = |s: f64| Some(Duration::from_secs_f64(s));
    p.end_call(call, call, secs(1.0));
    // One of two directions compressed: a third of the bytes sent, two times slower.
    for _ in 0..VETO_EVIDENCE_CALLS {
        p.observe_encode(Codec::ShuffleZstd, (call / 3) as usize, Duration::from_millis(100));
        p.end_call(call, call * 8 / 9, secs(2.0));
    }
    assert!(p.vetoed(Codec::ShuffleZstd));
    // A sliver encoded (probing, one segment) still counts as a raw call.
    p.observe_encode(Codec::ShuffleZstd, (call / 10) as usize, Duration::from_millis(10));
    for _ in 0..160 {
        p.end_call(call, call, secs(1.0));
    }
    assert!(!p.vetoed(Codec::ShuffleZstd), "150 calls pay off three 2x slower calls at 2%");
}

#[test]
fn when_the_best_codec_is_vetoed_the_next_best_gets_its_chance() {
    let mut p = AutoPolicy::new();
    p.observe_link(1, 50e6);
    p.observe_probe(&probe(Codec::Bf16, 2.0, 3000.0));
    p.observe_probe(&probe(Codec::Bf16Zstd, 3.2, 430.0));
    let call = 64u64 << 20;
    p.end_call(call, call, Some(Duration::from_secs(1)));
    assert_eq!(p.choose(1, true, 2), Codec::Bf16Zstd, "predicted 160 MB/s against bf16's 100");
    // In use the calls are mixed and slower than raw: the codec that carried most answers.
    for _ in 0..VETO_EVIDENCE_CALLS {
        p.observe_encode(Codec::Bf16Zstd, (call / 2) as usize, Duration::from_millis(80));
        p.observe_encode(Codec::Bf16, (call / 4) as usize, Duration::from_millis(10));
        p.end_call(call, call / 3, Some(Duration::from_millis(1200)));
    }
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
    p.end_call(call, call, Some(Duration::from_millis(150)));
    for _ in 0..VETO_EVIDENCE_CALLS {
        call_with(&mut p, Some(Codec::Bf16), call, 0.2);
    }
    assert_eq!(p.choose(0, true, 1), Codec::Raw);
}

#[test]
fn probes_thin_out_to_the_maximum_interval() {
    let mut p = AutoPolicy::new();
    let at: Vec<u32> = (0..1100u32).filter(|_| p.probe_due()).collect();
    assert_eq!(at, vec![0, 1, 3, 7, 15, 31, 63, 127, 255, 511, 767, 1023]);
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
