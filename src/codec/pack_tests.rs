//! Plane packs: which sections are compressed, zeros left out (4-byte and 2-byte elements,
//! bf16 rounded from f32), and hostile packs.

use zstd::zstd_safe::{CCtx, DCtx};

use super::*;
use crate::codec::{Codec, Decoder, Encoder};
use crate::core::{DataType, ReduceOp};

/// f32 gradients with a share of exact zeros (one in `zero_every`), -0.0 among them.
fn gradients(elems: usize, zero_every: usize) -> Vec<u8> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..elems)
        .flat_map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = if zero_every > 0 && i % zero_every == 0 {
                if i % (3 * zero_every) == 0 {
                    -0.0
                } else {
                    0.0
                }
            } else {
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2e-3
            };
            x.to_ne_bytes()
        })
        .collect()
}

fn contexts() -> (CCtx<'static>, DCtx<'static>) {
    (CCtx::try_create().expect("cctx"), DCtx::try_create().expect("dctx"))
}

fn pack(enc: &mut PackEncoder, cctx: &mut CCtx<'static>, elems: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(enc.encode(cctx, Source::Elems { elem_bytes: 4, bytes: elems }, elems.len(), &mut out).expect("encode"));
    out
}

#[test]
fn zeros_are_left_out_and_only_the_exponent_plane_is_compressed() {
    let (mut cctx, mut dctx) = contexts();
    let raw = gradients(4096, 3);
    let out = pack(&mut PackEncoder::default(), &mut cctx, &raw);
    assert_eq!(out[0] & FLAG_BITMAP, FLAG_BITMAP, "a third of the values are zero");
    assert_eq!(out[1], 0b1000, "sign and exponent plane only");
    let mut dec = PackDecoder::default();
    let zeros = (0..4096).filter(|i| i % 3 == 0 && i % 9 != 0).count(); // every ninth is -0.0
    assert_eq!(dec.read(&mut dctx, 4, 4096, &out), Ok((true, 4096 - zeros)));
    let mut back = vec![0xa5; raw.len()];
    dec.decode(&mut dctx, &out, Sink::Elems { elem_bytes: 4, out: &mut back }).expect("decode");
    assert_eq!(back, raw, "-0.0 is kept: only all-zero bytes are left out");

    let dense_raw = gradients(4096, 0);
    let out = pack(&mut PackEncoder::default(), &mut cctx, &dense_raw);
    assert_eq!(out[..2], [0, 0b1000], "no zeros, no bitmap");
    assert_eq!(dec.read(&mut dctx, 4, 4096, &out), Ok((false, 4096)));
    dec.decode(&mut dctx, &out, Sink::Elems { elem_bytes: 4, out: &mut back }).expect("decode");
    assert_eq!(back, dense_raw);
}

#[test]
fn a_plane_that_does_not_compress_is_retried_after_a_while() {
    let (mut cctx, _) = contexts();
    let mut enc = PackEncoder::default();
    let raw = gradients(4096, 0);
    // Plane 3 compresses; 0..=2 are noise and are tried once, then stored raw.
    let out = pack(&mut enc, &mut cctx, &raw);
    assert_eq!(out[1], 0b1000);
    let policy = &enc.policies[Stream::Shuffle as usize];
    assert_eq!(policy.skip[..4], [SECTION_RETRY_SEGMENTS, SECTION_RETRY_SEGMENTS, SECTION_RETRY_SEGMENTS, 0]);
    for _ in 1..SECTION_RETRY_SEGMENTS {
        pack(&mut enc, &mut cctx, &raw);
    }
    assert_eq!(enc.policies[Stream::Shuffle as usize].skip[..3], [1, 1, 1]);
    pack(&mut enc, &mut cctx, &raw);
    assert_eq!(enc.policies[Stream::Shuffle as usize].skip[..3], [SECTION_RETRY_SEGMENTS; 3], "tried again");
    // All planes noise and no zeros: nothing to gain, the caller sends raw.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4096 * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8 | 1 // never a zero element
        })
        .collect();
    let mut out = Vec::new();
    let source = Source::Elems { elem_bytes: 4, bytes: &noise };
    assert!(!enc.encode(&mut cctx, source, noise.len(), &mut out).expect("encode"));
    assert!(out.is_empty());
}

#[test]
fn every_element_size_round_trips_through_the_codecs() {
    let mut enc = Encoder::new(1).expect("encoder");
    let mut dec = Decoder::new().expect("decoder");
    for dtype in [DataType::U8, DataType::F16, DataType::F32, DataType::F64] {
        for zero_every in [0, 2, 5] {
            for elems in [0usize, 1, 7, 8, 9, 1001] {
                let raw = gradients(elems * dtype.size() / 4 + 1, zero_every)[..elems * dtype.size()].to_vec();
                let mut wire = Vec::new();
                let sent = enc.encode(Codec::ShuffleZstd, dtype, &raw, &mut wire).expect("encode");
                let mut back = vec![0x5a; raw.len()];
                dec.decode(sent, dtype, &wire, &mut back).expect("decode");
                assert_eq!(back, raw, "{} x{elems}, zero every {zero_every}", dtype.name());
                if dtype == DataType::F32 {
                    let mut acc: Vec<u8> = gradients(elems, 0);
                    let mut want = acc.clone();
                    crate::core::reduce::reduce_into(dtype, ReduceOp::Sum, &mut want, &raw);
                    dec.decode_reduce(sent, dtype, ReduceOp::Sum, &wire, &mut acc).expect("decode_reduce");
                    assert_eq!(acc, want, "x{elems}: fused sum differs");
                }
            }
        }
    }
}

#[test]
fn hostile_packs_are_typed_errors() {
    let (mut cctx, mut dctx) = contexts();
    let raw = gradients(1001, 3);
    let good = pack(&mut PackEncoder::default(), &mut cctx, &raw);
    let mut dec = PackDecoder::default();
    assert!(dec.read(&mut dctx, 4, 1001, &good).is_ok());
    let corrupt = |reason| Err(CodecError::Corrupt { reason });
    let mut read = |payload: &[u8]| dec.read(&mut dctx, 4, 1001, payload).map(|_| ());
    assert_eq!(read(&[]), corrupt("pack shorter than its header"));
    assert_eq!(read(&[4, 0]), corrupt("unknown pack flags"));
    assert_eq!(read(&[FLAG_BITMAP_ZSTD, 0]), corrupt("unknown pack flags"));
    assert_eq!(read(&[0, 0b1_0000]), corrupt("zstd mask names a plane past the element size"));
    assert_eq!(read(&good[..good.len() - 1]), corrupt("pack section truncated"));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(read(&long), corrupt("bytes after the last pack section"));
    // A raw bitmap with a bit past element 1000 (1001 elements: bits 1..7 of byte 125 unused).
    let mut bits = vec![FLAG_BITMAP, 0];
    bits.extend(std::iter::repeat_n(0u8, 125));
    bits.push(0b10);
    assert_eq!(read(&bits), corrupt("bitmap bits past the last element"));
    // All absent: a valid pack of 1001 zeros with empty planes.
    bits.pop();
    bits.push(0);
    assert_eq!(read(&bits), Ok(()));
    // A plane whose zstd frame holds another size.
    let mut frame = Vec::new();
    crate::codec::encoder::compress(&mut cctx, &[1u8; 10], &mut frame).expect("compress");
    let mut wrong = vec![0, 1];
    wrong.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    wrong.extend_from_slice(&frame);
    assert_eq!(read(&wrong), Err(CodecError::SizeMismatch { what: "decoded", expected: 1001, got: 10 }));
    assert!(zeros::expand(8, &[0xff], &[0; 56], &mut [0; 64]).is_err(), "8 present, 7 given");
    assert!(zeros::expand(8, &[0xff], &[0; 64], &mut [0; 64]).is_ok());
    assert!(zeros::expand(3, &[0], &[], &mut [0; 3]).is_err(), "3-byte elements are never sparse");
}

/// A bf16+zstd stream's pack encoder and decoder.
struct Bf16Stream {
    cctx: CCtx<'static>,
    dctx: DCtx<'static>,
    enc: PackEncoder,
    dec: PackDecoder,
}

impl Bf16Stream {
    fn new() -> Bf16Stream {
        let (cctx, dctx) = contexts();
        Bf16Stream { cctx, dctx, enc: PackEncoder::default(), dec: PackDecoder::default() }
    }

    /// Packs `raw` and checks the decode against `round_in_place` and the fused sum against
    /// decode-then-add. Returns the pack's flags byte, `None` if it would not be smaller.
    fn round_trip(&mut self, raw: &[u8]) -> Option<u8> {
        let mut wire = Vec::new();
        let source = Source::F32ToBf16(raw);
        if !self.enc.encode(&mut self.cctx, source, raw.len() / 2, &mut wire).expect("encode") {
            return None;
        }
        let mut want = raw.to_vec();
        crate::codec::round_in_place(Codec::Bf16Zstd, DataType::F32, &mut want).expect("round");
        let mut back = vec![0x5a; raw.len()];
        self.dec.decode(&mut self.dctx, &wire, Sink::WidenBf16(&mut back)).expect("decode");
        assert_eq!(back, want, "{} elements", raw.len() / 4);
        let mut sum = gradients(raw.len() / 4, 0);
        let mut sum_want = sum.clone();
        crate::core::reduce::reduce_into(DataType::F32, ReduceOp::Sum, &mut sum_want, &want);
        self.dec.decode(&mut self.dctx, &wire, Sink::AddBf16(&mut sum)).expect("decode and add");
        assert_eq!(sum, sum_want, "fused sum of {} elements", raw.len() / 4);
        Some(wire[0])
    }

    fn dense_first(&self) -> bool {
        self.enc.policies[Stream::Bf16 as usize].dense_first
    }
}

#[test]
fn bf16_zeros_are_left_out_when_they_pay_and_the_stream_adapts() {
    let mut s = Bf16Stream::new();
    if !crate::codec::simd::compaction_is_fast() {
        // Without vectorized kernels 2-byte elements stay dense, zeros or not.
        assert_eq!(s.round_trip(&gradients(4096, 3)), Some(0));
        return;
    }
    // One in 3 zero: sparse, in one pass (the stream expects zeros).
    assert_eq!(s.round_trip(&gradients(4096, 3)), Some(FLAG_BITMAP | FLAG_BITMAP_ZSTD));
    assert!(!s.dense_first());
    // One in 10: too few to pay for the bitmap. Whole planes, and the stream now writes
    // whole planes first.
    assert_eq!(s.round_trip(&gradients(4096, 10)), Some(0));
    assert!(s.dense_first());
    assert_eq!(s.round_trip(&gradients(4096, 10)), Some(0));
    // Enough zeros again: compacted after the whole-plane pass counted them.
    assert_eq!(s.round_trip(&gradients(4096, 2)).map(|f| f & FLAG_BITMAP), Some(FLAG_BITMAP));
    assert!(!s.dense_first());
    // No zeros at all: whole planes straight from the compacting pass.
    assert_eq!(s.round_trip(&gradients(4096, 0)), Some(0));
    assert!(!s.dense_first(), "nothing to count next time");
    // Edge lengths, all zero, and values that round to zero (or to -0.0) in bf16.
    for elems in [0usize, 1, 2, 7, 15, 16, 17, 33, 1001] {
        for zero_every in [0, 1, 2, 3] {
            s.round_trip(&gradients(elems, zero_every));
        }
    }
    let tiny: Vec<u8> = (0..999u32).flat_map(|i| f32::from_bits(i % 3 * 0x4000_0000 + i).to_ne_bytes()).collect();
    assert!(s.round_trip(&tiny).is_some());
}

#[test]
fn two_byte_elements_of_shuffle_zstd_leave_zeros_out() {
    let (mut cctx, mut dctx) = contexts();
    // f16 elements: one in 3 zero (the rest small non-zero patterns, some with a zero byte).
    let raw: Vec<u8> =
        (0..3000u16).flat_map(|i| if i % 3 == 0 { 0 } else { 0x3c00 | (i & 0x3ff) }.to_ne_bytes()).collect();
    let mut out = Vec::new();
    let source = Source::Elems { elem_bytes: 2, bytes: &raw };
    assert!(PackEncoder::default().encode(&mut cctx, source, raw.len(), &mut out).expect("encode"));
    let want = if crate::codec::simd::compaction_is_fast() { FLAG_BITMAP } else { 0 };
    assert_eq!(out[0] & FLAG_BITMAP, want);
    let mut back = vec![0xa5; raw.len()];
    PackDecoder::default().decode(&mut dctx, &out, Sink::Elems { elem_bytes: 2, out: &mut back }).expect("decode");
    assert_eq!(back, raw);
}

#[test]
fn hostile_two_byte_packs_are_typed_errors() {
    let (mut cctx, mut dctx) = contexts();
    let raw = gradients(1001, 3);
    let mut good = Vec::new();
    assert!(PackEncoder::default().encode(&mut cctx, Source::F32ToBf16(&raw), raw.len() / 2, &mut good).expect("e"));
    if crate::codec::simd::compaction_is_fast() {
        assert_eq!(good[0], FLAG_BITMAP | FLAG_BITMAP_ZSTD, "zeros left out, bitmap compressed");
    }
    let mut dec = PackDecoder::default();
    let mut out = vec![0u8; raw.len()];
    assert_eq!(dec.decode(&mut dctx, &good, Sink::WidenBf16(&mut out)), Ok(()));
    let corrupt = |reason| Err(CodecError::Corrupt { reason });
    let mut decode = |payload: &[u8]| {
        let mut acc = vec![7u8; raw.len()];
        let result = dec.decode(&mut dctx, payload, Sink::AddBf16(&mut acc));
        if result.is_err() {
            assert!(acc.iter().all(|b| *b == 7), "the sum is untouched on error");
        }
        result
    };
    assert_eq!(decode(&good[..good.len() - 1]), corrupt("pack section truncated"));
    assert_eq!(decode(&[good.as_slice(), &[0]].concat()), corrupt("bytes after the last pack section"));
    assert_eq!(decode(&[0, 0b100]), corrupt("zstd mask names a plane past the element size"));
    // Raw bitmaps (1001 elements: 126 bytes, bits 1..7 of the last unused): every element
    // present but the planes one byte short; a bit past the end; no element present.
    let mut pack = vec![FLAG_BITMAP, 0];
    pack.extend(std::iter::repeat_n(0xffu8, 125));
    pack.push(1);
    pack.extend(std::iter::repeat_n(1u8, 2 * 1001 - 1));
    assert_eq!(decode(&pack), corrupt("pack section truncated"));
    pack[2 + 125] = 0b11;
    assert_eq!(decode(&pack), corrupt("bitmap bits past the last element"));
    let mut empty = vec![FLAG_BITMAP, 0];
    empty.extend(std::iter::repeat_n(0u8, 126));
    assert_eq!(decode(&empty), Ok(()));
}
