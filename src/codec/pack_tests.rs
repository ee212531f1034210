//! Plane packs: which sections are compressed, zeros left out, and hostile packs.

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
    assert!(enc.encode(cctx, Stream::Shuffle, 4, elems, elems.len(), &mut out).expect("encode"));
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
    let Ok(Unpacked::Sparse { bitmap, dense }) = dec.read(&mut dctx, 4, 4096, &out) else { panic!("sparse pack") };
    let mut back = vec![0xa5; raw.len()];
    expand(4, bitmap, dense, &mut back).expect("expand");
    assert_eq!(back, raw, "-0.0 is kept: only all-zero bytes are left out");

    let dense_raw = gradients(4096, 0);
    let out = pack(&mut PackEncoder::default(), &mut cctx, &dense_raw);
    assert_eq!(out[..2], [0, 0b1000], "no zeros, no bitmap");
    let Ok(Unpacked::Planes(planes)) = dec.read(&mut dctx, 4, 4096, &out) else { panic!("dense pack") };
    crate::codec::planes::unshuffle(4, planes, &mut back);
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
    assert!(!enc.encode(&mut cctx, Stream::Shuffle, 4, &noise, noise.len(), &mut out).expect("encode"));
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
    assert!(expand(4, &[0xff], &[0; 28], &mut [0; 32]).is_err(), "8 present, 7 given");
    assert!(expand(3, &[0], &[], &mut [0; 3]).is_err(), "3-byte elements are never sparse");
}
