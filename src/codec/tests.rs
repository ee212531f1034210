//! Codec contracts: exact round trips, rounding bounds, and hostile payloads.

use proptest::prelude::*;
use zstd::zstd_safe::{self, CCtx, CParameter};

use super::*;
use crate::core::reduce::reduce_into;
use crate::core::ReduceOp;

const ALL_DTYPES: [DataType; 7] =
    [DataType::F32, DataType::F64, DataType::F16, DataType::Bf16, DataType::I32, DataType::I64, DataType::U8];
const LOSSLESS: [Codec; 3] = [Codec::Raw, Codec::Zstd, Codec::ShuffleZstd];
const LOSSY: [Codec; 3] = [Codec::Bf16, Codec::F16, Codec::Bf16Zstd];

/// Deterministic bytes: gradient-like f32s (compressible high planes) or noise.
fn sample_bytes(len: usize, seed: u64, gradient_like: bool) -> Vec<u8> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    if gradient_like {
        let mut v: Vec<u8> = Vec::with_capacity(len + 4);
        while v.len() < len {
            let x = ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2e-3;
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.truncate(len);
        v
    } else {
        (0..len).map(|_| next() as u8).collect()
    }
}

fn round_trip(codec: Codec, dtype: DataType, raw: &[u8]) -> (Codec, Vec<u8>, Vec<u8>) {
    let mut payload = Vec::new();
    let sent = Encoder::new(1).and_then(|mut e| e.encode(codec, dtype, raw, &mut payload)).expect("encode");
    let mut out = vec![0xa5u8; raw.len()];
    Decoder::new().and_then(|mut d| d.decode(sent, dtype, &payload, &mut out)).expect("decode");
    (sent, payload, out)
}

#[test]
fn lossless_codecs_are_exact_for_every_dtype_and_edge_length() {
    for dtype in ALL_DTYPES {
        for elems in [0usize, 1, 3, 1001, 262_144] {
            for gradient_like in [true, false] {
                let raw = sample_bytes(elems * dtype.size(), elems as u64 + 7, gradient_like);
                for codec in LOSSLESS {
                    let (sent, payload, out) = round_trip(codec, dtype, &raw);
                    assert_eq!(out, raw, "{} {} {elems}", codec.name(), dtype.name());
                    assert!(payload.len() <= codec.payload_len_max(raw.len()));
                    assert!(sent == codec || sent == codec.fallback());
                }
            }
        }
    }
}

#[test]
fn compressible_data_is_compressed_and_noise_falls_back() {
    let grads = sample_bytes(1 << 20, 3, true);
    for codec in [Codec::Zstd, Codec::ShuffleZstd, Codec::Bf16Zstd] {
        let (sent, payload, _) = round_trip(codec, DataType::F32, &grads);
        assert_eq!(sent, codec);
        assert!(payload.len() < codec.payload_len_max(grads.len()));
    }
    let noise = sample_bytes(1 << 16, 5, false);
    let (sent, payload, _) = round_trip(Codec::Zstd, DataType::U8, &noise);
    assert_eq!((sent, payload.as_slice()), (Codec::Raw, noise.as_slice()));
    let (sent, _, _) = round_trip(Codec::Bf16Zstd, DataType::F32, &noise);
    assert_eq!(sent, Codec::Bf16);
    let (sent, payload, _) = round_trip(Codec::Zstd, DataType::F32, &[]);
    assert_eq!((sent, payload.len()), (Codec::Raw, 0));
}

#[test]
fn shuffle_helps_gradients() {
    let grads = sample_bytes(1 << 20, 11, true);
    let (_, plain, _) = round_trip(Codec::Zstd, DataType::F32, &grads);
    let (_, shuffled, _) = round_trip(Codec::ShuffleZstd, DataType::F32, &grads);
    assert!(shuffled.len() < plain.len(), "shuffle {} >= plain {}", shuffled.len(), plain.len());
}

#[test]
fn every_zstd_level_in_range_round_trips() {
    let raw = sample_bytes(100_000, 9, true);
    for level in [zstd_safe::min_c_level(), -50, -5, -1, 0, 1, 3, 9] {
        let mut enc = Encoder::new(level).expect("level in range");
        assert_eq!(enc.zstd_level(), level);
        let mut payload = Vec::new();
        let sent = enc.encode(Codec::ShuffleZstd, DataType::F32, &raw, &mut payload).expect("encode");
        let mut out = vec![0u8; raw.len()];
        Decoder::new().expect("decoder").decode(sent, DataType::F32, &payload, &mut out).expect("decode");
        assert_eq!(out, raw, "level {level}");
    }
    let too_high = zstd_safe::max_c_level() + 1;
    assert!(matches!(Encoder::new(too_high), Err(CodecError::Level { level, .. }) if level == too_high));
    let mut enc = Encoder::new(3).expect("level 3");
    assert!(enc.set_zstd_level(i32::MIN).is_err());
    assert_eq!(enc.zstd_level(), 3);
}

#[test]
fn lossy_codecs_take_only_f32() {
    let mut enc = Encoder::new(1).expect("encoder");
    let mut dec = Decoder::new().expect("decoder");
    let mut out = Vec::new();
    for codec in LOSSY {
        for dtype in ALL_DTYPES.into_iter().filter(|d| *d != DataType::F32) {
            let want = CodecError::Unsupported { codec, dtype };
            let mut bytes = vec![0u8; 8 * dtype.size()];
            assert_eq!(enc.encode(codec, dtype, &bytes, &mut out), Err(want.clone()));
            assert_eq!(dec.decode(codec, dtype, &[0; 8], &mut bytes), Err(want.clone()));
            assert_eq!(round_in_place(codec, dtype, &mut bytes), Err(want));
        }
    }
    let partial = CodecError::PartialElement { len_bytes: 6, elem_bytes: 4 };
    assert_eq!(enc.encode(Codec::Zstd, DataType::I32, &[0; 6], &mut out), Err(partial.clone()));
    assert_eq!(dec.decode(Codec::Raw, DataType::F32, &[0; 6], &mut [0; 6]), Err(partial));
}

/// Half a unit in the last place of the 16-bit format at `x` (f64, exact).
/// A frame forwarded without a kept copy is encoded again from what its receiver decoded
/// (`core::payload::Codecs::reencode`); the next rank must decode the very same bits. For
/// the casts that holds on everything an encoder sends: decoding then encoding a cast
/// value gives it back. Checked on every 16-bit pattern, NaNs and infinities included.
#[test]
fn encoding_a_decoded_lossy_payload_again_gives_the_same_values() {
    let patterns: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    let raw_len = patterns.len() * 2;
    let mut dec = Decoder::new().expect("decoder");
    for codec in LOSSY {
        // What an encoder can send: the cast of any f32 (here, of every decoded pattern).
        let cast = if codec == Codec::F16 { Codec::F16 } else { Codec::Bf16 };
        let mut first = vec![0u8; raw_len];
        dec.decode(cast, DataType::F32, &patterns, &mut first).expect("decode patterns");
        let (_, _, held) = round_trip(codec, DataType::F32, &first);
        let (used, _, again) = round_trip(codec, DataType::F32, &held);
        assert!(used.is_lossy(), "{codec:?} fell back to {used:?}");
        let bits =
            |b: &[u8]| b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
        assert!(bits(&held) == bits(&again), "{codec:?}: a second encode changed decoded values");
    }
}

fn half_ulp(codec: Codec, x: f32) -> f64 {
    let exp = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    let (mant_bits, min_exp) = if codec == Codec::F16 { (10, -14) } else { (7, -126) };
    2f64.powi(exp.max(min_exp) - mant_bits - 1)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lossless_round_trip_is_bit_exact(
        codec in prop::sample::select(LOSSLESS.to_vec()),
        dtype in prop::sample::select(ALL_DTYPES.to_vec()),
        elems in 0usize..3000,
        seed: u64,
        gradient_like: bool,
    ) {
        let raw = sample_bytes(elems * dtype.size(), seed, gradient_like);
        let (_, payload, out) = round_trip(codec, dtype, &raw);
        prop_assert_eq!(out, raw);
        prop_assert!(payload.len() <= codec.payload_len_max(elems * dtype.size()));
    }

    #[test]
    fn lossy_round_trip_is_nearest_and_matches_round_in_place(
        codec in prop::sample::select(LOSSY.to_vec()),
        bits in prop::collection::vec(any::<u32>(), 0..600),
        scale in prop::sample::select(vec![1e-3f32, 1.0, 1e3]),
    ) {
        // Half the values: arbitrary bit patterns (NaN, inf, subnormals); half: in range.
        let values: Vec<f32> = bits.iter().enumerate().map(|(i, b)| {
            if i % 2 == 0 { f32::from_bits(*b) } else { (*b as f32 / u32::MAX as f32 - 0.5) * scale }
        }).collect();
        let raw: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        let (_, payload, out) = round_trip(codec, DataType::F32, &raw);
        prop_assert!(payload.len() <= raw.len() / 2);
        let mut rounded = raw.clone();
        round_in_place(codec, DataType::F32, &mut rounded).expect("round");
        prop_assert_eq!(&out, &rounded, "decode(encode(x)) must equal round_in_place(x) bit for bit");
        let mut twice = rounded.clone();
        round_in_place(codec, DataType::F32, &mut twice).expect("round");
        prop_assert_eq!(&twice, &rounded, "round_in_place is idempotent");
        for (x, r) in values.iter().zip(f32s(&out)) {
            // Beyond these, round to nearest goes to infinity.
            let overflow = if codec == Codec::F16 { 65520.0 } else { (2.0 - 2f64.powi(-8)) * 2f64.powi(127) };
            let in_range = x.is_finite() && f64::from(x.abs()) < overflow;
            if in_range {
                let err = (f64::from(*x) - f64::from(r)).abs();
                prop_assert!(err <= half_ulp(codec, *x), "{} {x:e} -> {r:e}", codec.name());
            } else if x.is_nan() {
                prop_assert!(r.is_nan());
            } else {
                prop_assert!(r.is_infinite() && r.is_sign_positive() == x.is_sign_positive());
            }
        }
    }

    #[test]
    fn random_payloads_never_panic_or_write_outside(
        codec in prop::sample::select(ALL_CODECS.to_vec()),
        dtype in prop::sample::select(ALL_DTYPES.to_vec()),
        elems in 0usize..200,
        payload in prop::collection::vec(any::<u8>(), 0..400),
        with_magic: bool,
    ) {
        let mut payload = payload;
        if with_magic && payload.len() >= 4 {
            payload[..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        }
        let raw_len = elems * dtype.size();
        let mut buf = vec![0x5au8; raw_len + 32];
        let result = Decoder::new().expect("decoder").decode(codec, dtype, &payload, &mut buf[16..16 + raw_len]);
        prop_assert!(buf[..16].iter().chain(&buf[16 + raw_len..]).all(|b| *b == 0x5a), "guard bytes changed");
        if result.is_ok() {
            // Only a payload of exactly the right size can decode.
            prop_assert!(!codec.uses_zstd() || codec.supports(dtype));
            if !codec.uses_zstd() {
                prop_assert_eq!(payload.len(), codec.payload_len_max(raw_len));
            }
        }
    }

    #[test]
    fn truncated_or_corrupted_payloads_are_refused_or_exact(
        codec in prop::sample::select(ALL_CODECS.to_vec()),
        elems in 1usize..2000,
        seed: u64,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let raw = sample_bytes(elems * 4, seed, true);
        let mut payload = Vec::new();
        let sent = Encoder::new(1).expect("encoder").encode(codec, DataType::F32, &raw, &mut payload).expect("encode");
        let mut dec = Decoder::new().expect("decoder");
        let mut out = vec![0u8; raw.len()];
        let truncated = &payload[..cut.index(payload.len())];
        prop_assert!(dec.decode(sent, DataType::F32, truncated, &mut out).is_err(), "truncated payload decoded");
        let mut corrupted = payload.clone();
        corrupted[flip.index(payload.len())] ^= mask;
        // A flipped byte inside a zstd block may still decode (the frame CRC32C catches it on
        // the wire); a flipped byte in the frame header must not decode to another size.
        if dec.decode(sent, DataType::F32, &corrupted, &mut out).is_ok() {
            prop_assert_eq!(out.len(), raw.len());
        }
        let mut longer = payload.clone();
        longer.push(0);
        prop_assert!(dec.decode(sent, DataType::F32, &longer, &mut out).is_err(), "payload with a trailing byte decoded");
    }

    #[test]
    fn decode_reduce_equals_decode_then_reduce(
        codec in prop::sample::select(ALL_CODECS.to_vec()),
        op in prop::sample::select(vec![ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max]),
        elems in 0usize..1500,
        seed: u64,
    ) {
        let raw = sample_bytes(elems * 4, seed, true);
        let acc = sample_bytes(elems * 4, seed ^ 0xff, true);
        let mut payload = Vec::new();
        let sent = Encoder::new(-1).expect("encoder").encode(codec, DataType::F32, &raw, &mut payload).expect("encode");
        let mut dec = Decoder::new().expect("decoder");
        let mut decoded = vec![0u8; raw.len()];
        dec.decode(sent, DataType::F32, &payload, &mut decoded).expect("decode");
        let mut want = acc.clone();
        reduce_into(DataType::F32, op, &mut want, &decoded);
        let mut got = acc.clone();
        dec.decode_reduce(sent, DataType::F32, op, &payload, &mut got).expect("decode_reduce");
        prop_assert_eq!(&got, &want);
        let mut untouched = acc.clone();
        prop_assert!(dec.decode_reduce(sent, DataType::F32, op, &payload[..payload.len() / 2], &mut untouched).is_err()
            || payload.is_empty());
        prop_assert_eq!(untouched, acc, "dst changed by a failed decode_reduce");
    }
}

/// A zstd frame of `content` with the content size declared or not.
fn zstd_frame(content: &[u8], declare_size: bool) -> Vec<u8> {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::ContentSizeFlag(declare_size)).expect("flag");
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(content.len()));
    cctx.compress2(&mut out, content).expect("compress");
    out
}

fn decode_f32(codec: Codec, payload: &[u8], raw_len: usize) -> Result<(), CodecError> {
    Decoder::new()?.decode(codec, DataType::F32, payload, &mut vec![0u8; raw_len])
}

#[test]
fn a_frame_larger_than_expected_is_refused_before_decompression() {
    // 1 GiB of zeros would compress to a few tens of KiB; a smaller bomb shows the same check.
    let bomb = zstd_frame(&vec![0u8; 16 << 20], true);
    assert!(bomb.len() < 4096);
    assert_eq!(
        decode_f32(Codec::Zstd, &bomb, 4096),
        Err(CodecError::SizeMismatch { what: "decoded", expected: 4096, got: 16 << 20 })
    );
    // In a plane pack (no bitmap, plane 0 zstd): the plane is 1024 bytes for 1024 elements.
    let mut packed = vec![0, 1];
    packed.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
    packed.extend_from_slice(&bomb);
    for codec in [Codec::ShuffleZstd, Codec::Bf16Zstd] {
        assert_eq!(
            decode_f32(codec, &packed, 4096),
            Err(CodecError::SizeMismatch { what: "decoded", expected: 1024, got: 16 << 20 })
        );
        assert!(matches!(decode_f32(codec, &bomb, 4096), Err(CodecError::Corrupt { .. })), "a bare frame is no pack");
    }
    // Too short is refused the same way.
    let short = zstd_frame(&[0u8; 100], true);
    assert_eq!(
        decode_f32(Codec::Zstd, &short, 104),
        Err(CodecError::SizeMismatch { what: "decoded", expected: 104, got: 100 })
    );
}

#[test]
fn a_frame_that_lies_about_its_size_is_refused() {
    let content = vec![7u8; 1000];
    let mut frame = zstd_frame(&content, true);
    // Frame header descriptor: content-size flag 1 (2-byte field, value - 256), single segment.
    assert_eq!(frame[4] & 0b1110_0111, 0b0110_0000, "unexpected frame header {:#x}", frame[4]);
    assert_eq!(u16::from_le_bytes([frame[5], frame[6]]), 1000 - 256);
    frame[5..7].copy_from_slice(&(500u16 - 256).to_le_bytes());
    assert!(matches!(decode_f32(Codec::Zstd, &frame, 500), Err(CodecError::Corrupt { .. })));
}

#[test]
fn frames_without_size_trailing_frames_and_skippable_frames_are_refused() {
    let content = vec![1u8; 4096];
    let undeclared = zstd_frame(&content, false);
    assert_eq!(
        decode_f32(Codec::Zstd, &undeclared, 4096),
        Err(CodecError::Corrupt { reason: "zstd frame without a content size" })
    );
    let mut two = zstd_frame(&content[..2048], true);
    two.extend(zstd_frame(&content[2048..], true));
    assert_eq!(decode_f32(Codec::Zstd, &two, 4096), Err(CodecError::Corrupt { reason: "bytes after the zstd frame" }));
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
    skippable.extend(zstd_frame(&content, true));
    assert_eq!(decode_f32(Codec::Zstd, &skippable, 4096), Err(CodecError::Corrupt { reason: "not a zstd frame" }));
    assert_eq!(decode_f32(Codec::Zstd, &[], 0), Err(CodecError::Corrupt { reason: "not a zstd frame" }));
}

#[test]
fn uncompressed_payloads_must_have_the_exact_size() {
    assert_eq!(
        decode_f32(Codec::Raw, &[0; 12], 8),
        Err(CodecError::SizeMismatch { what: "payload", expected: 8, got: 12 })
    );
    assert_eq!(
        decode_f32(Codec::Bf16, &[0; 8], 8),
        Err(CodecError::SizeMismatch { what: "payload", expected: 4, got: 8 })
    );
    assert_eq!(decode_f32(Codec::F16, &[0; 4], 8), Ok(()));
}

#[test]
fn error_feedback_keeps_the_sum_of_sent_values_within_one_rounding() {
    for codec in [Codec::Bf16, Codec::F16] {
        let format = lossy::Format::of(codec).expect("lossy");
        let grad = [1.0e-3f32 * (1.0 + 1.0 / 300.0), -2.5e-4, 3.0e-5];
        let mut ef = ErrorFeedback::new(codec);
        let (mut true_sum, mut sent_sum, mut naive_sum) = ([0f64; 3], [0f64; 3], [0f64; 3]);
        for _ in 0..1000 {
            let mut v = grad;
            ef.apply(&mut v);
            let mut sent = v;
            lossy::round_f32(format, &mut sent);
            let mut naive = grad;
            lossy::round_f32(format, &mut naive);
            for i in 0..3 {
                true_sum[i] += f64::from(grad[i]);
                sent_sum[i] += f64::from(sent[i]);
                naive_sum[i] += f64::from(naive[i]);
            }
        }
        for i in 0..3 {
            let with_ef = (sent_sum[i] - true_sum[i]).abs();
            let without = (naive_sum[i] - true_sum[i]).abs();
            // Telescoping: sum(sent) = sum(grad) - last residual (plus f32 addition error).
            assert!(with_ef <= half_ulp(codec, grad[i]) * 1.1, "{} [{i}] {with_ef:e}", codec.name());
            assert!(without > 10.0 * with_ef, "{} [{i}] rounding error did not accumulate", codec.name());
        }
    }
}

#[test]
fn error_feedback_edge_cases() {
    let mut lossless = ErrorFeedback::new(Codec::ShuffleZstd);
    let mut v = [1.0f32 + 1e-7, 2.0];
    lossless.apply(&mut v);
    assert_eq!((v, lossless.residual().len()), ([1.0 + 1e-7, 2.0], 0));

    let mut ef = ErrorFeedback::new(Codec::F16);
    let mut v = [1e6f32, f32::NAN, f32::INFINITY, 1.0 + 1.0 / 4096.0];
    ef.apply(&mut v);
    assert_eq!(ef.residual(), &[0.0, 0.0, 0.0, 1.0 / 4096.0], "non-finite residuals are dropped");
    let mut w = [1.0f32; 4];
    ef.apply(&mut w);
    assert_eq!(w[3], 1.0 + 1.0 / 4096.0);
    let mut shorter = [1.0f32; 2];
    ef.apply(&mut shorter);
    assert_eq!((shorter, ef.residual()), ([1.0, 1.0], &[0.0f32, 0.0][..]), "a new length starts from zero");
    ef.reset();
    assert!(ef.residual().iter().all(|r| *r == 0.0));
}

#[test]
fn codec_ids_and_names_are_stable() {
    for (i, codec) in ALL_CODECS.iter().enumerate() {
        assert_eq!(*codec as u8 as usize, i);
        assert_eq!(Codec::from_u8(i as u8), Ok(*codec));
    }
    assert!(Codec::from_u8(6).is_err());
    let names: Vec<_> = ALL_CODECS.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["raw", "zstd", "shuffle+zstd", "bf16", "f16", "bf16+zstd"]);
}
