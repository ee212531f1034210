//! The fused 2-byte kernels against a plain reference, and the AVX2 copies (when this CPU
//! has AVX2) against the portable ones, bit for bit.

use proptest::prelude::*;

use super::*;

/// What the split writes, computed the plain way: (bitmap, low plane, high plane) of the
/// present elements, from the element values.
fn reference_split(values: &[u16]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut bitmap = vec![0u8; values.len().div_ceil(8)];
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for (i, v) in values.iter().enumerate() {
        if *v != 0 {
            bitmap[i / 8] |= 1 << (i % 8);
            lo.push(v.to_le_bytes()[0]);
            hi.push(v.to_le_bytes()[1]);
        }
    }
    (bitmap, lo, hi)
}

/// f32 bit patterns with exact zeros (both signs), values that round to zero or to -0.0 in
/// bf16, NaNs and infinities, chosen by `kinds` (one byte per element).
fn f32_values(kinds: &[u8], seed: u32) -> Vec<u32> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let noise = seed.wrapping_mul(i as u32 + 1).rotate_left(7) ^ 0x3c00_0000;
            match kind % 10 {
                0..=2 => 0,                        // +0.0
                3 => 0x8000_0000,                  // -0.0
                4 => 0x0000_7fff,                  // a subnormal that rounds to +0 in bf16
                5 => 0x8000_0001,                  // rounds to -0.0: present
                6 => 0x7fc0_0001 | (noise & 0xff), // NaN
                7 => 0xff80_0000,                  // -inf
                _ => noise,
            }
        })
        .collect()
}

/// Runs the dispatching split and the portable one on `src` and checks both against the
/// reference; returns the dispatching one's planes.
fn check_split(source: Source, src: &[u8], values: &[u16]) -> Result<(), TestCaseError> {
    let n = values.len();
    let (bitmap_want, lo_want, hi_want) = reference_split(values);
    for portable in [false, true] {
        let mut bitmap = vec![0xa5u8; n.div_ceil(8)];
        let (mut lo, mut hi) = (vec![0x5au8; n], vec![0x5au8; n]);
        let m = if portable {
            split_portable(source, src, &mut bitmap, &mut lo, &mut hi, 0, 0)
        } else {
            split(source, src, &mut bitmap, &mut lo, &mut hi)
        };
        prop_assert_eq!(m, lo_want.len(), "present count, portable: {}", portable);
        prop_assert_eq!(&bitmap, &bitmap_want, "bitmap, portable: {}", portable);
        prop_assert_eq!(&lo[..m], &lo_want[..], "low plane, portable: {}", portable);
        prop_assert_eq!(&hi[..m], &hi_want[..], "high plane, portable: {}", portable);
    }
    Ok(())
}

/// Runs the dispatching merge and the portable one for every sink and checks them against
/// the plain expansion of `values` (absent elements zero).
fn check_merge(bitmap: &[u8], lo: &[u8], hi: &[u8], values: &[u16], acc: &[f32]) -> Result<(), TestCaseError> {
    let n = values.len();
    let elems_want: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let widened: Vec<f32> = values.iter().map(|v| bf16_bits_to_f32(*v)).collect();
    let wide_want: Vec<u8> = widened.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let sum_want: Vec<f32> = acc.iter().zip(&widened).map(|(a, w)| a + w).collect();
    let acc_bytes: Vec<u8> = acc.iter().flat_map(|a| a.to_ne_bytes()).collect();
    for portable in [false, true] {
        let run = |sink: Sink, out: &mut [u8]| {
            if portable {
                merge_portable(sink, bitmap, lo, hi, out, 0, 0);
                Ok(())
            } else {
                merge(sink, bitmap, lo, hi, out)
            }
        };
        let mut elems = vec![0xa5u8; 2 * n];
        prop_assert_eq!(run(Sink::Bytes2, &mut elems), Ok(()));
        prop_assert_eq!(&elems, &elems_want, "elements, portable: {}", portable);
        let mut wide = vec![0xa5u8; 4 * n];
        prop_assert_eq!(run(Sink::WidenBf16, &mut wide), Ok(()));
        prop_assert_eq!(&wide, &wide_want, "widened, portable: {}", portable);
        let mut sum = acc_bytes.clone();
        prop_assert_eq!(run(Sink::AddBf16, &mut sum), Ok(()));
        for (got, want) in sum.chunks_exact(4).zip(&sum_want) {
            let got = f32::from_ne_bytes([got[0], got[1], got[2], got[3]]);
            // NaN + x may keep either NaN's payload; everything else is bit for bit.
            prop_assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "sum, portable: {portable}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_avx2_kernels_are_what_the_dispatch_runs_here() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let raw = vec![0x3fu8; 4 * 40];
        let mut bitmap = [0u8; 5];
        let (mut lo, mut hi) = ([0u8; 40], [0u8; 40]);
        assert_eq!(simd::split2(Source::F32ToBf16, &raw, &mut bitmap, &mut lo, &mut hi), (32, 32));
        let mut out = vec![0u8; 4 * 40];
        assert_eq!(simd::merge2(Sink::WidenBf16, &bitmap, &lo, &hi, &mut out), (32, 32));
        // 0x3f3f3f3f rounds down to bf16 0x3f3f, which widens to 0x3f3f0000.
        assert!(out[..128].chunks_exact(4).all(|f| f == 0x3f3f_0000u32.to_ne_bytes()));
        // Planes shorter than the bitmap says: the missing bytes read as zero, no panic.
        assert_eq!(simd::merge2(Sink::WidenBf16, &bitmap, &lo[..24], &hi[..24], &mut out), (32, 32));
        assert!(out[24 * 4..32 * 4].iter().all(|b| *b == 0), "bytes past the planes are zero");
        return;
    }
    eprintln!("no AVX2 on this CPU: only the portable kernels are tested");
}

#[test]
fn all_zero_and_no_zero_segments_round_trip() {
    for n in [0usize, 1, 15, 16, 17, 100, 4099] {
        for fill in [0u32, 0x3f80_0000, 0x8000_0000] {
            let values = vec![fill; n];
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
            let (mut bitmap, mut lo, mut hi) = (vec![0; n.div_ceil(8)], vec![0; n], vec![0; n]);
            let m = split_bf16(&raw, &mut bitmap, &mut lo, &mut hi);
            assert_eq!(m, if fill == 0 { 0 } else { n });
            let mut back = vec![0xffu8; 4 * n];
            merge(Sink::WidenBf16, &bitmap, &lo[..m], &hi[..m], &mut back).expect("merge");
            assert_eq!(back, raw, "n = {n}, fill {fill:#x}");
        }
    }
}

#[test]
fn malformed_bitmaps_and_planes_are_errors_and_leave_the_output_alone() {
    let corrupt = Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
    let mut out = [7u8; 4 * 20];
    let planes = [1u8; 21];
    // 20 elements: 3 bitmap bytes, bits 4..8 of the last one unused.
    let cases: [(&[u8], usize); 5] = [
        (&[0xff, 0xff, 0x0f], 19),    // one plane byte short
        (&[0xff, 0xff, 0x0f], 21),    // one too many
        (&[0xff, 0xff], 16),          // bitmap too short
        (&[0xff, 0xff, 0x0f, 0], 20), // bitmap too long
        (&[0xff, 0xff, 0x1f], 21),    // a bit past element 19
    ];
    for (bitmap, m) in cases {
        for sink in [Sink::WidenBf16, Sink::AddBf16] {
            assert_eq!(merge(sink, bitmap, &planes[..m], &planes[..m], &mut out), corrupt, "{bitmap:?}");
        }
        assert_eq!(merge(Sink::Bytes2, bitmap, &planes[..m], &planes[..m], &mut out[..40]), corrupt);
    }
    let planes = &planes[..20];
    assert_eq!(merge(Sink::WidenBf16, &[0xff, 0xff, 0x0f], planes, &planes[..19], &mut out), corrupt, "planes differ");
    assert_eq!(merge(Sink::Bytes2, &[0xff, 0xff, 0x0f], planes, planes, &mut out[..41]), corrupt, "odd output");
    assert_eq!(out, [7u8; 4 * 20], "nothing written");
    assert_eq!(merge(Sink::WidenBf16, &[0xff, 0xff, 0x0f], planes, planes, &mut out), Ok(()));
}

proptest! {
    #[test]
    fn bf16_split_matches_the_reference(kinds in prop::collection::vec(any::<u8>(), 0..300), seed: u32) {
        let bits = f32_values(&kinds, seed);
        let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
        let values: Vec<u16> = bits.iter().map(|b| f32_to_bf16_bits(f32::from_bits(*b))).collect();
        check_split(Source::F32ToBf16, &raw, &values)?;
        // The whole-plane kernel and its zero count.
        let n = values.len();
        let (mut lo, mut hi) = (vec![0u8; n], vec![0u8; n]);
        let zeros = values.iter().filter(|v| **v == 0).count();
        for kernel in [planes_bf16, planes_bf16_portable] {
            prop_assert_eq!(kernel(&raw, &mut lo, &mut hi), zeros);
            let joined: Vec<u16> = lo.iter().zip(&hi).map(|(l, h)| u16::from_le_bytes([*l, *h])).collect();
            prop_assert_eq!(&joined, &values);
        }
    }

    #[test]
    fn bytes2_split_matches_the_reference(kinds in prop::collection::vec(any::<u8>(), 0..300), seed: u16) {
        // Zero in 3 of 8, else a non-zero pattern that may have one zero byte.
        let values: Vec<u16> = kinds
            .iter()
            .map(|k| if k % 8 < 3 { 0 } else { (u16::from(*k) << 8 | u16::from(*k)) ^ seed } )
            .collect();
        let elems: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        check_split(Source::Bytes2, &elems, &values)?;
        let n = values.len();
        let (mut lo, mut hi) = (vec![0u8; n], vec![0u8; n]);
        let zeros = values.iter().filter(|v| **v == 0).count();
        for kernel in [planes_bytes2, planes_bytes2_portable] {
            prop_assert_eq!(kernel(&elems, &mut lo, &mut hi), zeros);
            prop_assert_eq!(lo.iter().zip(&hi).map(|(l, h)| u16::from_le_bytes([*l, *h])).collect::<Vec<_>>(), values.clone());
        }
    }

    #[test]
    fn merge_inverts_split_for_every_sink(kinds in prop::collection::vec(any::<u8>(), 0..300), seed: u32) {
        let bits = f32_values(&kinds, seed);
        let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
        let values: Vec<u16> = bits.iter().map(|b| f32_to_bf16_bits(f32::from_bits(*b))).collect();
        let n = values.len();
        let (mut bitmap, mut lo, mut hi) = (vec![0; n.div_ceil(8)], vec![0; n], vec![0; n]);
        let m = split_bf16(&raw, &mut bitmap, &mut lo, &mut hi);
        let acc: Vec<f32> = (0..n).map(|i| (i as f32 - 50.0) * 0.25).collect();
        check_merge(&bitmap, &lo[..m], &hi[..m], &values, &acc)?;
    }

    #[test]
    fn merge_of_any_consistent_bitmap_and_planes_is_the_plain_expansion(
        bitmap in prop::collection::vec(any::<u8>(), 0..40),
        tail in 0usize..8,
        seed: u64,
    ) {
        // n elements: the bitmap's last byte may be partial; clear its bits past n.
        let mut bitmap = bitmap;
        let n = (bitmap.len() * 8).saturating_sub(tail);
        if let Some(last) = bitmap.last_mut() {
            *last &= 0xff >> tail;
        }
        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        let plane = |salt: u64| -> Vec<u8> { (0..present as u64).map(|i| (seed.wrapping_mul(i + salt) >> 29) as u8).collect() };
        let (lo, hi) = (plane(1), plane(7));
        let mut at = 0;
        let values: Vec<u16> = (0..n)
            .map(|i| {
                if bitmap[i / 8] >> (i % 8) & 1 == 0 {
                    return 0;
                }
                at += 1;
                u16::from_le_bytes([lo[at - 1], hi[at - 1]])
            })
            .collect();
        let acc: Vec<f32> = (0..n).map(|i| i as f32 * -1.5).collect();
        check_merge(&bitmap, &lo, &hi, &values, &acc)?;
    }
}
