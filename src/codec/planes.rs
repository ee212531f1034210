//! Byte planes: the transpose that puts byte `b` of every element together.
//!
//! For n elements of k bytes, [`shuffle`] writes plane 0 (byte 0 of every element), then
//! plane 1, ..., plane k-1, each n bytes. The high planes of float data (sign and exponent)
//! are nearly constant across a gradient and compress well; the low mantissa planes are
//! noise. [`unshuffle`] is the exact inverse.
//!
//! The 2-, 4- and 8-byte kernels zip one element with one byte of each plane, a pattern
//! the compiler vectorizes (interleaved loads or stores plus byte shuffles); see
//! `benches/codec.rs` for their throughput, and `simd` for why they are compiled twice.

use super::simd::avx2_dispatch;

/// Writes the byte planes of the `elem_bytes`-byte elements in `src` into `dst`.
///
/// # Panics
/// If `src` and `dst` differ in length, `elem_bytes` is 0, or the length is not a
/// multiple of `elem_bytes` (caller bugs).
pub fn shuffle(elem_bytes: usize, src: &[u8], dst: &mut [u8]) {
    check_lengths(elem_bytes, src.len(), dst.len());
    match elem_bytes {
        1 => dst.copy_from_slice(src),
        2 => shuffle2(src, dst),
        4 => shuffle4(src, dst),
        8 => shuffle8(src, dst),
        _ => shuffle_any(elem_bytes, src, dst),
    }
}

/// Inverse of [`shuffle`]: gathers the byte planes in `src` back into elements in `dst`.
///
/// # Panics
/// As [`shuffle`].
pub fn unshuffle(elem_bytes: usize, src: &[u8], dst: &mut [u8]) {
    check_lengths(elem_bytes, src.len(), dst.len());
    match elem_bytes {
        1 => dst.copy_from_slice(src),
        2 => unshuffle2(src, dst),
        4 => unshuffle4(src, dst),
        8 => unshuffle8(src, dst),
        _ => unshuffle_any(elem_bytes, src, dst),
    }
}

fn check_lengths(elem_bytes: usize, src_len: usize, dst_len: usize) {
    assert_eq!(src_len, dst_len, "byte plane lengths differ");
    assert!(elem_bytes > 0 && src_len % elem_bytes == 0, "{src_len} bytes is not whole {elem_bytes}-byte elements");
}

/// Splits `buf` into `K` consecutive planes of equal length.
fn planes_mut<const K: usize>(buf: &mut [u8]) -> [&mut [u8]; K] {
    let n = buf.len() / K;
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (plane, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        plane
    })
}

/// Splits `buf` into `K` consecutive planes of equal length.
fn planes<const K: usize>(buf: &[u8]) -> [&[u8]; K] {
    let n = buf.len() / K;
    std::array::from_fn(|i| &buf[i * n..(i + 1) * n])
}

avx2_dispatch! {
    fn shuffle2 / shuffle2_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1] = planes_mut::<2>(dst);
        for ((e, a), b) in src.chunks_exact(2).zip(p0).zip(p1) {
            *a = e[0];
            *b = e[1];
        }
    }
}

avx2_dispatch! {
    fn unshuffle2 / unshuffle2_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1] = planes::<2>(src);
        for ((e, a), b) in dst.chunks_exact_mut(2).zip(p0).zip(p1) {
            e.copy_from_slice(&[*a, *b]);
        }
    }
}

avx2_dispatch! {
    fn shuffle4 / shuffle4_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1, p2, p3] = planes_mut::<4>(dst);
        for ((((e, a), b), c), d) in src.chunks_exact(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            *a = e[0];
            *b = e[1];
            *c = e[2];
            *d = e[3];
        }
    }
}

avx2_dispatch! {
    fn unshuffle4 / unshuffle4_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1, p2, p3] = planes::<4>(src);
        for ((((e, a), b), c), d) in dst.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            e.copy_from_slice(&[*a, *b, *c, *d]);
        }
    }
}

// 8-byte elements as two passes of 4-byte halves would read `src` twice; one pass over
// eight planes keeps it streaming.
avx2_dispatch! {
    fn shuffle8 / shuffle8_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1, p2, p3, p4, p5, p6, p7] = planes_mut::<8>(dst);
        let lo = p0.iter_mut().zip(p1).zip(p2).zip(p3);
        let hi = p4.iter_mut().zip(p5).zip(p6).zip(p7);
        for ((e, (((a, b), c), d)), (((f, g), h), i)) in src.chunks_exact(8).zip(lo).zip(hi) {
            *a = e[0];
            *b = e[1];
            *c = e[2];
            *d = e[3];
            *f = e[4];
            *g = e[5];
            *h = e[6];
            *i = e[7];
        }
    }
}

avx2_dispatch! {
    fn unshuffle8 / unshuffle8_portable(src: &[u8], dst: &mut [u8]) {
        let [p0, p1, p2, p3, p4, p5, p6, p7] = planes::<8>(src);
        let lo = p0.iter().zip(p1).zip(p2).zip(p3);
        let hi = p4.iter().zip(p5).zip(p6).zip(p7);
        for ((e, (((a, b), c), d)), (((f, g), h), i)) in dst.chunks_exact_mut(8).zip(lo).zip(hi) {
            e.copy_from_slice(&[*a, *b, *c, *d, *f, *g, *h, *i]);
        }
    }
}

avx2_dispatch! {
    /// `acc[i] = acc[i] + x[i]`, where `x` is the f32 array (host order) whose byte planes
    /// [`shuffle`] wrote into `src`: unshuffle and sum in one pass, the same f32 addition
    /// as `reduce_into` with `Sum`.
    ///
    /// # Panics
    /// If `src` and `acc` differ in length or the length is not whole f32s (caller bugs).
    pub(crate) fn add_unshuffled_f32 / add_unshuffled_f32_portable(src: &[u8], acc: &mut [u8]) {
        check_lengths(4, src.len(), acc.len());
        let [p0, p1, p2, p3] = planes::<4>(src);
        for ((((a, b0), b1), b2), b3) in acc.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            let sum = f32::from_ne_bytes([a[0], a[1], a[2], a[3]]) + f32::from_ne_bytes([*b0, *b1, *b2, *b3]);
            a.copy_from_slice(&sum.to_ne_bytes());
        }
    }
}

fn shuffle_any(elem_bytes: usize, src: &[u8], dst: &mut [u8]) {
    let n = src.len() / elem_bytes;
    for (b, plane) in dst.chunks_exact_mut(n.max(1)).enumerate() {
        for (d, e) in plane.iter_mut().zip(src.chunks_exact(elem_bytes)) {
            *d = e[b];
        }
    }
}

fn unshuffle_any(elem_bytes: usize, src: &[u8], dst: &mut [u8]) {
    let n = src.len() / elem_bytes;
    for (b, plane) in src.chunks_exact(n.max(1)).enumerate() {
        for (s, e) in plane.iter().zip(dst.chunks_exact_mut(elem_bytes)) {
            e[b] = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Kernel = fn(&[u8], &mut [u8]);

    #[test]
    fn planes_are_in_byte_order() {
        let src = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut dst = [0u8; 12];
        shuffle(4, &src, &mut dst);
        assert_eq!(dst, [1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12]);
        shuffle(2, &src, &mut dst);
        assert_eq!(dst, [1, 3, 5, 7, 9, 11, 2, 4, 6, 8, 10, 12]);
        shuffle(3, &src, &mut dst);
        assert_eq!(dst, [1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12]);
        let mut back = [0u8; 12];
        unshuffle(3, &dst, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn empty_input_is_fine() {
        for k in 1..=8 {
            shuffle(k, &[], &mut []);
            unshuffle(k, &[], &mut []);
        }
    }

    proptest! {
        #[test]
        fn fast_kernels_match_the_generic_one(k in prop::sample::select(vec![2usize, 4, 8]), n in 0usize..300, seed: u64) {
            let src: Vec<u8> = (0..n * k).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 17) as u8).collect();
            let mut fast = vec![0u8; src.len()];
            let mut slow = vec![0u8; src.len()];
            shuffle(k, &src, &mut fast);
            shuffle_any(k, &src, &mut slow);
            prop_assert_eq!(&fast, &slow);
            let mut back = vec![0u8; src.len()];
            unshuffle(k, &fast, &mut back);
            prop_assert_eq!(&back, &src);
            unshuffle_any(k, &fast, &mut back);
            prop_assert_eq!(&back, &src);
            // The baseline copies of the kernels (this CPU may run the AVX2 ones above).
            let (shuffle_portable, unshuffle_portable): (Kernel, Kernel) = match k {
                2 => (shuffle2_portable, unshuffle2_portable),
                4 => (shuffle4_portable, unshuffle4_portable),
                _ => (shuffle8_portable, unshuffle8_portable),
            };
            if k == 4 {
                let acc: Vec<u8> = src.iter().rev().copied().collect();
                let want: Vec<u8> = acc
                    .chunks_exact(4)
                    .zip(src.chunks_exact(4))
                    .flat_map(|(a, s)| {
                        let sum = f32::from_ne_bytes([a[0], a[1], a[2], a[3]]) + f32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
                        sum.to_ne_bytes()
                    })
                    .collect();
                for kernel in [add_unshuffled_f32 as Kernel, add_unshuffled_f32_portable] {
                    let mut got = acc.clone();
                    kernel(&fast, &mut got);
                    for (g, w) in got.chunks_exact(4).zip(want.chunks_exact(4)) {
                        let g = f32::from_ne_bytes([g[0], g[1], g[2], g[3]]);
                        let w = f32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                        prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "fused unshuffle-add");
                    }
                }
            }
            shuffle_portable(&src, &mut fast);
            prop_assert_eq!(&fast, &slow);
            unshuffle_portable(&fast, &mut back);
            prop_assert_eq!(&back, &src);
        }
    }
}
