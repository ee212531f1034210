//! f32 to bf16/f16 and back: round to nearest, ties to even; widening is exact.
//!
//! Byte slices may sit at any alignment (payloads inside receive buffers), so the kernels
//! read and write through `chunks_exact` and `from_ne_bytes`, which compile to plain loads.
//! f16 goes through `half`'s slice conversion in stack blocks (it uses the F16C
//! instructions when the CPU has them, detected at run time).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd::avx2_dispatch;
use super::Codec;

/// Elements converted per stack block in the f16 kernels.
const BLOCK_ELEMS: usize = 256;

/// The 16-bit float format of a lossy codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// bfloat16: f32's exponent, 7 mantissa bits.
    Bf16,
    /// IEEE binary16: 5 exponent bits, 10 mantissa bits.
    F16,
}

impl Format {
    /// The format `codec` rounds to, or `None` for a lossless codec.
    pub(crate) fn of(codec: Codec) -> Option<Format> {
        match codec {
            Codec::Bf16 | Codec::Bf16Zstd => Some(Format::Bf16),
            Codec::F16 => Some(Format::F16),
            Codec::Raw | Codec::Zstd | Codec::ShuffleZstd => None,
        }
    }
}

/// bf16 bits of `x`, round to nearest even. NaN stays NaN (quiet bit set, high payload
/// kept), like `half::bf16::from_f32`; written without branches so loops vectorize.
#[inline]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    // Adding 0x7fff plus the lowest kept bit rounds half to even; the largest finite f32
    // rounds up to infinity, as it should. NaN would round to infinity or wrap, so it is
    // selected separately.
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) | 0x0040) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

/// The f32 with the same value as the bf16 `bits` (exact).
#[inline]
pub(crate) fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[inline]
fn read_f32(c: &[u8]) -> f32 {
    f32::from_ne_bytes([c[0], c[1], c[2], c[3]])
}

avx2_dispatch! {
    /// `out[i]` = bf16 of f32 `raw[i]`, little-endian. `out.len() * 2 == raw.len()`.
    pub(crate) fn encode_bf16 / encode_bf16_portable(raw: &[u8], out: &mut [u8]) {
        assert_eq!(raw.len(), out.len() * 2, "bf16 encode lengths");
        for (r, o) in raw.chunks_exact(4).zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&f32_to_bf16_bits(read_f32(r)).to_le_bytes());
        }
    }
}

/// Widens little-endian bf16 `payload` into f32 `out`. `payload.len() * 2 == out.len()`.
pub(crate) fn decode_bf16(payload: &[u8], out: &mut [u8]) {
    assert_eq!(payload.len() * 2, out.len(), "bf16 decode lengths");
    for (p, o) in payload.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&bf16_bits_to_f32(u16::from_le_bytes([p[0], p[1]])).to_ne_bytes());
    }
}

/// Widens the two byte planes of little-endian bf16 (`planes[..n]` low bytes, `planes[n..]`
/// high bytes: [`super::planes::shuffle`] of the bf16 stream) into f32 `out`.
pub(crate) fn decode_bf16_planes(planes: &[u8], out: &mut [u8]) {
    assert_eq!(planes.len() * 2, out.len(), "bf16 plane decode lengths");
    let (lo, hi) = planes.split_at(planes.len() / 2);
    for ((o, l), h) in out.chunks_exact_mut(4).zip(lo).zip(hi) {
        o.copy_from_slice(&bf16_bits_to_f32(u16::from_le_bytes([*l, *h])).to_ne_bytes());
    }
}

avx2_dispatch! {
    /// `acc[i] = acc[i] + widen(payload[i])`: the bf16 `payload` (little-endian) decoded and
    /// summed into the f32 `acc` (host order) in one pass, the same f32 addition as
    /// `reduce_into` with `Sum`. `payload.len() * 2 == acc.len()`.
    pub(crate) fn add_bf16 / add_bf16_portable(payload: &[u8], acc: &mut [u8]) {
        assert_eq!(payload.len() * 2, acc.len(), "bf16 add lengths");
        for (p, a) in payload.chunks_exact(2).zip(acc.chunks_exact_mut(4)) {
            let sum = read_f32(a) + bf16_bits_to_f32(u16::from_le_bytes([p[0], p[1]]));
            a.copy_from_slice(&sum.to_ne_bytes());
        }
    }
}

avx2_dispatch! {
    /// [`add_bf16`] from the two byte planes that [`decode_bf16_planes`] reads.
    /// `planes.len() * 2 == acc.len()`.
    pub(crate) fn add_bf16_planes / add_bf16_planes_portable(planes: &[u8], acc: &mut [u8]) {
        assert_eq!(planes.len() * 2, acc.len(), "bf16 plane add lengths");
        let (lo, hi) = planes.split_at(planes.len() / 2);
        for ((a, l), h) in acc.chunks_exact_mut(4).zip(lo).zip(hi) {
            let sum = read_f32(a) + bf16_bits_to_f32(u16::from_le_bytes([*l, *h]));
            a.copy_from_slice(&sum.to_ne_bytes());
        }
    }
}

/// `out[i]` = f16 of f32 `raw[i]`, little-endian. `out.len() * 2 == raw.len()`.
pub(crate) fn encode_f16(raw: &[u8], out: &mut [u8]) {
    assert_eq!(raw.len(), out.len() * 2, "f16 encode lengths");
    let mut wide = [0f32; BLOCK_ELEMS];
    let mut narrow = [f16::ZERO; BLOCK_ELEMS];
    for (rb, ob) in raw.chunks(BLOCK_ELEMS * 4).zip(out.chunks_mut(BLOCK_ELEMS * 2)) {
        let n = ob.len() / 2;
        for (w, r) in wide.iter_mut().zip(rb.chunks_exact(4)) {
            *w = read_f32(r);
        }
        narrow[..n].convert_from_f32_slice(&wide[..n]);
        for (o, h) in ob.chunks_exact_mut(2).zip(&narrow[..n]) {
            o.copy_from_slice(&h.to_bits().to_le_bytes());
        }
    }
}

/// Widens little-endian f16 `payload` into f32 `out`. `payload.len() * 2 == out.len()`.
pub(crate) fn decode_f16(payload: &[u8], out: &mut [u8]) {
    assert_eq!(payload.len() * 2, out.len(), "f16 decode lengths");
    let mut wide = [0f32; BLOCK_ELEMS];
    let mut narrow = [f16::ZERO; BLOCK_ELEMS];
    for (pb, ob) in payload.chunks(BLOCK_ELEMS * 2).zip(out.chunks_mut(BLOCK_ELEMS * 4)) {
        let n = pb.len() / 2;
        for (h, p) in narrow.iter_mut().zip(pb.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([p[0], p[1]]));
        }
        narrow[..n].convert_to_f32_slice(&mut wide[..n]);
        for (o, w) in ob.chunks_exact_mut(4).zip(&wide[..n]) {
            o.copy_from_slice(&w.to_ne_bytes());
        }
    }
}

/// Rounds every f32 in `values` through `format` and back.
pub(crate) fn round_f32(format: Format, values: &mut [f32]) {
    match format {
        Format::Bf16 => values.iter_mut().for_each(|v| *v = bf16_bits_to_f32(f32_to_bf16_bits(*v))),
        Format::F16 => {
            let mut narrow = [f16::ZERO; BLOCK_ELEMS];
            for block in values.chunks_mut(BLOCK_ELEMS) {
                let n = block.len();
                narrow[..n].convert_from_f32_slice(block);
                narrow[..n].convert_to_f32_slice(block);
            }
        }
    }
}

/// Rounds every f32 in `bytes` (host order, any alignment) through `format` and back.
pub(crate) fn round_bytes(format: Format, bytes: &mut [u8]) {
    let mut wide = [0f32; BLOCK_ELEMS];
    for block in bytes.chunks_mut(BLOCK_ELEMS * 4) {
        let n = block.len() / 4;
        for (w, b) in wide.iter_mut().zip(block.chunks_exact(4)) {
            *w = read_f32(b);
        }
        round_f32(format, &mut wide[..n]);
        for (b, w) in block.chunks_exact_mut(4).zip(&wide[..n]) {
            b.copy_from_slice(&w.to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use proptest::prelude::*;

    type Kernel = fn(&[u8], &mut [u8]);

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(f32_to_bf16_bits(1.0 + 2f32.powi(-8)), bf16::from_f32(1.0).to_bits());
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: ties go to 1 + 2^-6.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), bf16::from_f32(1.0 + 2f32.powi(-6)).to_bits());
        assert_eq!(f32_to_bf16_bits(f32::MAX), bf16::INFINITY.to_bits());
        assert_eq!(f32_to_bf16_bits(-0.0), 0x8000);
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::NAN)).is_nan());
    }

    proptest! {
        #[test]
        fn bf16_matches_half_crate_for_every_bit_pattern(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits());
        }

        #[test]
        fn bf16_kernels_match_scalar_and_each_other(bits in proptest::collection::vec(any::<u32>(), 0..300)) {
            let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
            let want: Vec<u8> = bits.iter().flat_map(|b| f32_to_bf16_bits(f32::from_bits(*b)).to_le_bytes()).collect();
            let mut wire = vec![0u8; raw.len() / 2];
            encode_bf16(&raw, &mut wire);
            prop_assert_eq!(&wire, &want);
            encode_bf16_portable(&raw, &mut wire);
            prop_assert_eq!(&wire, &want);
            let mut planes = vec![0u8; raw.len() / 2];
            crate::codec::planes::shuffle(2, &wire, &mut planes);
            let n = bits.len();
            let planes_want: Vec<u8> = want.iter().step_by(2).chain(want.iter().skip(1).step_by(2)).copied().collect();
            prop_assert_eq!(&planes, &planes_want);
            let (mut a, mut b) = (vec![0u8; 4 * n], vec![0u8; 4 * n]);
            decode_bf16(&wire, &mut a);
            decode_bf16_planes(&planes, &mut b);
            prop_assert_eq!(&a, &b);
            let mut rounded = raw.clone();
            round_bytes(Format::Bf16, &mut rounded);
            prop_assert_eq!(&a, &rounded);
        }

        #[test]
        fn fused_bf16_adds_equal_decode_then_add(bits in proptest::collection::vec(any::<u32>(), 0..300), seed: u32) {
            let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
            let acc: Vec<u8> = (0..bits.len() as u32)
                .flat_map(|i| (f32::from_bits(i.wrapping_mul(seed) >> 2) - 1.0).to_ne_bytes())
                .collect();
            let (mut wire, mut planes) = (vec![0u8; raw.len() / 2], vec![0u8; raw.len() / 2]);
            encode_bf16(&raw, &mut wire);
            crate::codec::planes::shuffle(2, &wire, &mut planes);
            let mut decoded = vec![0u8; raw.len()];
            decode_bf16(&wire, &mut decoded);
            let want: Vec<u8> = acc
                .chunks_exact(4)
                .zip(decoded.chunks_exact(4))
                .flat_map(|(a, d)| (read_f32(a) + read_f32(d)).to_ne_bytes())
                .collect();
            let kernels: [(Kernel, &[u8]); 4] = [
                (add_bf16, &wire),
                (add_bf16_portable, &wire),
                (add_bf16_planes, &planes),
                (add_bf16_planes_portable, &planes),
            ];
            for (kernel, payload) in kernels {
                let mut got = acc.clone();
                kernel(payload, &mut got);
                // Compare as values: NaN + NaN may keep either payload.
                for (g, w) in got.chunks_exact(4).zip(want.chunks_exact(4)) {
                    let (g, w) = (read_f32(g), read_f32(w));
                    prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
                }
            }
        }

        #[test]
        fn f16_block_kernels_match_scalar(values in proptest::collection::vec(any::<u32>(), 0..700)) {
            let raw: Vec<u8> = values.iter().flat_map(|b| b.to_ne_bytes()).collect();
            let mut wire = vec![0u8; raw.len() / 2];
            encode_f16(&raw, &mut wire);
            for (w, b) in wire.chunks_exact(2).zip(&values) {
                let want = f16::from_f32(f32::from_bits(*b)).to_bits();
                let got = u16::from_le_bytes([w[0], w[1]]);
                // NaN payloads may differ between hardware and software conversion; NaN-ness may not.
                prop_assert!(got == want || (f16::from_bits(got).is_nan() && f16::from_bits(want).is_nan()));
            }
            let mut back = vec![0u8; raw.len()];
            decode_f16(&wire, &mut back);
            let mut rounded = raw.clone();
            round_bytes(Format::F16, &mut rounded);
            prop_assert_eq!(back, rounded);
        }
    }
}
