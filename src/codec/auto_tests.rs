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
    // A raw call says nothing about the CPU codecs would get.
    p.observe_call_cpu_share(0.4);
    p.end_call(call, Some(Duration::from_secs(1)));
    assert_eq!(p.cpu_share(), None);
    // A coded call on a host with twice as many busy ranks as cores: half a core.
    p.observe_encode(Codec::ShuffleZstd, (call / 2) as usize, Duration::from_millis(100));
    p.observe_call_cpu_share(0.5);
    p.end_call(call, Some(Duration::from_millis(900)));
    assert_eq!(p.cpu_share(), Some(0.5));
    assert_eq!(p.choose(1, false, 2), Codec::Raw, "half of 200 MB/s is less than the link");
    p.observe_call_cpu_share(f64::NAN);
    p.observe_call_cpu_share(1.5);
    p.end_call(call, Some(Duration::from_secs(1)));
    assert_eq!(p.cpu_share(), Some(0.5), "nonsense shares are ignored");
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
