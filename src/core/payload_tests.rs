//! Unit tests of `core::payload` (included under cfg(test) only).

use super::*;
use crate::core::collective::{Algorithm, Collective, ProtocolError, Spec, Status};
use crate::core::schedule::{next_pos, prev_pos};
use crate::wire::{FrameKind, Header, Phase};
use std::time::Instant;

fn codecs() -> Codecs {
    Codecs::new(1, None).expect("zstd contexts")
}

fn gradient_bytes(elems: usize) -> Vec<u8> {
    (0..elems).flat_map(|i| ((i % 97) as f32 * 1e-3 - 0.03).to_ne_bytes()).collect()
}

#[test]
fn a_plan_without_lent_codecs_is_raw_only() {
    let plan = CallCodec::new(CodecChoice::Fixed(Codec::Zstd), CollKind::AllReduce, DataType::F32, 2, None);
    assert_eq!(plan, CallCodec::RAW);
    assert!(plan.check_frame(Codec::Zstd, 10, 100).is_err());
    assert!(plan.check_frame(Codec::Raw, 100, 100).is_ok());
    assert!(plan.check_frame(Codec::Raw, 99, 100).is_err());
}

#[test]
fn frames_are_held_to_the_setting_and_the_expected_size() {
    let c = codecs();
    let bf16 = CallCodec::new(CodecChoice::Fixed(Codec::Bf16Zstd), CollKind::AllReduce, DataType::F32, 1, Some(&c));
    assert_eq!(bf16.owner_rounds, Some(Codec::Bf16Zstd));
    assert!(bf16.check_frame(Codec::Bf16, 50, 100).is_ok());
    assert!(bf16.check_frame(Codec::Bf16, 51, 100).is_err(), "more than half is no bf16 payload");
    assert!(bf16.check_frame(Codec::Zstd, 10, 100).is_err(), "not what bf16+zstd sends");
    let gather = CallCodec::new(CodecChoice::Fixed(Codec::Bf16), CollKind::AllGather, DataType::F32, 1, Some(&c));
    assert_eq!((gather.choice, gather.owner_rounds), (CodecChoice::Fixed(Codec::Raw), None));
    assert!(gather.check_frame(Codec::Bf16, 50, 100).is_err(), "all_gather is exact");
    let scatter = CallCodec::new(CodecChoice::Fixed(Codec::F16), CollKind::ReduceScatter, DataType::F32, 1, Some(&c));
    assert_eq!((scatter.lossy, scatter.owner_rounds), (true, None), "reduce_scatter has no all-gather");
    let auto = CallCodec::new(CodecChoice::Auto { lossy: true }, CollKind::AllReduce, DataType::F32, 2, Some(&c));
    assert!(!auto.lossy, "auto+bf16 rounds only once it has measured that it pays");
    assert!(auto.check_frame(Codec::Bf16, 50, 100).is_ok(), "a peer that measured otherwise may round");
    assert!(auto.check_frame(Codec::F16, 50, 100).is_err() && auto.check_frame(Codec::ShuffleZstd, 9, 100).is_ok());
}

#[test]
fn fixed_codecs_encode_and_fall_back_to_raw_on_noise() {
    let mut c = codecs();
    let plan = CallCodec::new(CodecChoice::Fixed(Codec::ShuffleZstd), CollKind::AllReduce, DataType::F32, 1, Some(&c));
    let raw = gradient_bytes(4096);
    let (codec, payload) = c.encode_segment(&plan, Link::Next, DataType::F32, &raw).expect("compresses");
    assert_eq!(codec, Codec::ShuffleZstd);
    let mut back = vec![0u8; raw.len()];
    c.decode(codec, DataType::F32, &payload, &mut back).expect("decodes");
    assert_eq!(back, raw);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    assert!(c.encode_segment(&plan, Link::Next, DataType::F32, &noise).is_none(), "sent raw from the buffer");
    drop(payload);
    assert!(c.pool().idle() >= 1, "payloads go back to the pool");
}

#[test]
fn auto_probes_then_compresses_a_slow_link_only() {
    let mut c = codecs();
    let plan = CallCodec::new(CodecChoice::Auto { lossy: false }, CollKind::AllReduce, DataType::F32, 2, Some(&c));
    let raw = gradient_bytes(4096);
    assert!(c.encode_segment(&plan, Link::Next, DataType::F32, &raw).is_none(), "no link rate yet");
    c.observe_link(Link::Next, 100e6);
    let sent = c.encode_segment(&plan, Link::Next, DataType::F32, &raw).map(|(codec, _)| codec);
    assert_eq!(sent, Some(Codec::ShuffleZstd), "a probe without a clock counts the codec as free");
    assert!(c.encode_segment(&plan, Link::Prev, DataType::F32, &raw).is_none());
}

#[test]
fn the_owner_rounds_exactly_as_receivers_decode() {
    let mut c = codecs();
    let plan = CallCodec::new(CodecChoice::Fixed(Codec::Bf16), CollKind::AllReduce, DataType::F32, 1, Some(&c));
    let mut mine = gradient_bytes(1000);
    plan.round_final(DataType::F32, &mut mine);
    let (codec, payload) = c.encode_segment(&plan, Link::Next, DataType::F32, &mine).expect("bf16 always encodes");
    let mut theirs = vec![0u8; mine.len()];
    c.decode(codec, DataType::F32, &payload, &mut theirs).expect("decodes");
    assert_eq!(theirs, mine);
}

/// A call on `world` positions; completion tokens on for the all_reduces of five ranks.
fn spec(coll: CollKind, codec: CodecChoice, world: usize, pos: usize) -> Spec {
    Spec {
        coll,
        op: ReduceOp::Sum,
        dtype: DataType::F32,
        codec,
        job: 1,
        epoch: 1,
        seq: 0,
        len_elems: 3000,
        world,
        pos,
        rank: pos as u32,
        block_of_pos: (0..world).collect(),
        root_pos: 0,
        segment_bytes: 4096,
        contributors: world,
        algorithm: Algorithm::Ring,
        progress_timeout: Duration::from_secs(1),
        fin: world == 5 && coll == CollKind::AllReduce,
        payload_crc: [true, true, true],
        partner_links: false,
    }
}

/// The first frame rank 1 of two sends rank 0 with `codec`, and a fresh rank 0.
fn first_frame(codec: CodecChoice) -> (Header, Vec<u8>, Collective, Vec<u8>) {
    let now = Instant::now();
    let mut sender_buf = gradient_bytes(3000);
    let mut sender =
        Collective::start_with(spec(CollKind::AllReduce, codec, 2, 1), now, &mut sender_buf, Some(Box::new(codecs())));
    let t = sender.poll_transmit(&sender_buf).expect("a frame");
    let (header, _) = Header::decode(&t.header).expect("valid header");
    let payload = t.owned.as_deref().map_or_else(|| sender_buf[t.payload.clone()].to_vec(), <[u8]>::to_vec);
    let mut buf = gradient_bytes(3000);
    let receiver =
        Collective::start_with(spec(CollKind::AllReduce, codec, 2, 0), now, &mut buf, Some(Box::new(codecs())));
    (header, payload, receiver, buf)
}

#[test]
fn hostile_payloads_fail_the_call_and_good_ones_are_reduced() {
    let zstd = CodecChoice::Fixed(Codec::Zstd);
    let (h, payload, mut rx, mut buf) = first_frame(zstd);
    assert_eq!(h.codec, Codec::Zstd);
    assert!((h.payload_len as usize) < h.raw_len as usize);
    assert_eq!(rx.handle_frame(Instant::now(), Link::Prev, &h, &payload, &mut buf), Ok(()));

    let mut bomb = Vec::new();
    Encoder::new(1).and_then(|mut e| e.encode(Codec::Zstd, DataType::F32, &vec![0u8; 1 << 20], &mut bomb)).unwrap();
    let cases: [(Header, Vec<u8>, &str); 4] = [
        (Header { codec: Codec::Bf16, ..h }, payload.clone(), "never sends"),
        (Header { payload_len: h.raw_len + 1, ..h }, vec![0; h.raw_len as usize + 1], "at most"),
        (Header { raw_len: h.raw_len - 4, ..h }, payload.clone(), "expected (phase"),
        (Header { payload_len: bomb.len() as u32, ..h }, bomb, "decoded is 1048576 bytes"),
    ];
    for (header, body, why) in cases {
        let (_, _, mut rx, mut buf) = first_frame(zstd);
        let before = buf.clone();
        let e = rx.handle_frame(Instant::now(), Link::Prev, &header, &body, &mut buf).expect_err(why);
        assert!(e.to_string().contains(why), "{why}: {e}");
        assert!(matches!(rx.status(), Status::Failed(_)));
        if let ProtocolError::Payload { .. } = e {
            assert_eq!(buf, before, "a payload that does not decode leaves the buffer alone");
        }
    }
}

/// A frame as sent: sender position, header, payload.
type Sent = (usize, Header, Vec<u8>);

/// Runs one collective on an in-memory ring of `world` ranks, returning every rank's
/// buffer and every frame sent.
fn run_ring(coll: CollKind, codec: CodecChoice, world: usize) -> (Vec<Vec<u8>>, Vec<Sent>) {
    run_ring_with(coll, codec, world, |_| codecs())
}

/// As [`run_ring`], with each position's codecs from `codecs_of`.
fn run_ring_with(
    coll: CollKind,
    codec: CodecChoice,
    world: usize,
    codecs_of: impl Fn(usize) -> Codecs,
) -> (Vec<Vec<u8>>, Vec<Sent>) {
    let now = Instant::now();
    let mut bufs: Vec<Vec<u8>> = (0..world).map(|p| gradient_bytes(3000 + p)[..12_000].to_vec()).collect();
    let mut ranks: Vec<Collective> = (0..world)
        .map(|p| Collective::start_with(spec(coll, codec, world, p), now, &mut bufs[p], Some(Box::new(codecs_of(p)))))
        .collect();
    let mut sent = Vec::new();
    for _round in 0..10_000 {
        let mut moved = false;
        for p in 0..world {
            while let Some(t) = ranks[p].poll_transmit(&bufs[p]) {
                moved = true;
                let (h, _) = Header::decode(&t.header).expect("valid header");
                let body = t.owned.as_deref().map_or_else(|| bufs[p][t.payload.clone()].to_vec(), <[u8]>::to_vec);
                let (to, link) = match t.link {
                    Link::Next => (next_pos(p, world), Link::Prev),
                    Link::Prev => (prev_pos(p, world), Link::Next),
                    Link::Partner(q) => (q as usize, Link::Partner(p as u32)),
                };
                ranks[to].handle_frame(now, link, &h, &body, &mut bufs[to]).expect("accepted");
                sent.push((p, h, body));
            }
        }
        if !moved {
            break;
        }
    }
    assert!(ranks.iter().all(|r| *r.status() == Status::Done));
    (bufs, sent)
}

#[test]
fn compressed_frames_are_forwarded_as_they_came() {
    for (coll, codec) in [
        (CollKind::AllReduce, CodecChoice::Fixed(Codec::ShuffleZstd)),
        (CollKind::AllReduce, CodecChoice::Fixed(Codec::Bf16Zstd)),
        (CollKind::Broadcast, CodecChoice::Fixed(Codec::Zstd)),
    ] {
        for world in [4, 5] {
            let (bufs, sent) = run_ring(coll, codec, world);
            assert!(bufs.iter().all(|b| *b == bufs[0]), "{}: ranks differ", codec.name());
            let passed_on: Vec<_> = sent
                .iter()
                .filter(|(p, h, _)| match (h.kind, h.phase) {
                    (FrameKind::Data, Phase::Broadcast) => *p != 0, // the root originates, the others pass on
                    (FrameKind::Data, Phase::AllGather) => h.step > 0,
                    _ => false,
                })
                .collect();
            assert!(!passed_on.is_empty());
            for (p, h, body) in passed_on {
                assert_ne!(h.codec, Codec::Raw, "{}: these segments compress", codec.name());
                // What position p received for this segment one step earlier, from its prev.
                let (_, g, original) = sent
                    .iter()
                    .find(|(q, g, _)| {
                        *q == prev_pos(*p, world)
                            && (g.phase, g.chunk, g.segment) == (h.phase, h.chunk, h.segment)
                            && (g.phase == Phase::Broadcast || g.step + 1 == h.step)
                    })
                    .unwrap_or_else(|| panic!("{}: the frame {p} passes on: {h:?}", codec.name()));
                assert_eq!((g.codec, original), (h.codec, body), "{}: re-encoded on the way", codec.name());
            }
        }
    }
}

/// Codecs whose `auto` has measured a slow link both ways and probed every candidate
/// (without a clock, so codecs count as free): `auto+bf16` then rounds.
fn measured() -> Codecs {
    let mut c = codecs();
    c.observe_link(Link::Next, 100e6);
    c.observe_link(Link::Prev, 100e6);
    let plan = CallCodec::new(CodecChoice::Auto { lossy: true }, CollKind::AllReduce, DataType::F32, 1, Some(&c));
    let _ = c.encode_segment(&plan, Link::Next, DataType::F32, &gradient_bytes(4096));
    c
}

#[test]
fn ranks_that_decide_differently_still_end_bit_identical() {
    let auto = CodecChoice::Auto { lossy: true };
    assert!(CallCodec::new(auto, CollKind::AllReduce, DataType::F32, 1, Some(&measured())).lossy);
    for world in [3, 4, 5] {
        // Position 0 knows no slow link (sends raw, does not round); the others round.
        let (bufs, sent) =
            run_ring_with(CollKind::AllReduce, auto, world, |p| if p == 0 { codecs() } else { measured() });
        assert!(bufs.iter().all(|b| *b == bufs[0]), "{world} ranks: results differ");
        assert!(sent.iter().any(|(p, h, _)| *p == 0 && h.phase == Phase::AllGather && h.codec == Codec::Raw));
        assert!(sent.iter().any(|(_, h, _)| h.codec.is_lossy()), "the others sent rounded frames");
    }
}
