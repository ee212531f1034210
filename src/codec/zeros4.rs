//! Zero elements of 4-byte elements (f32, i32) left out of a plane pack, in one pass each
//! way: the 4-byte counterpart of `zeros2`.
//!
//! Sending: [`split`] reads the elements once and writes each one's presence bit (present:
//! some byte non-zero) and, for present elements only, byte `p` to plane `p`. Receiving:
//! [`merge`] does the inverse straight into the elements or into their f32 sum (absent
//! elements are zero). With AVX2 16 elements at a time (`simd::split4`, `simd::merge4`);
//! the portable loops here finish what those leave and run everything elsewhere.
//! [`planes_bytes4`] writes the whole planes and counts the zeros, for streams where too
//! few are zero to leave out.

use super::simd::{self, avx2_dispatch, Sink4};
use super::zeros2::count_present;
use super::CodecError;

/// Splits `buf` into four consecutive planes of `n` bytes (`buf` has at least `4 n`).
pub(super) fn planes_mut(buf: &mut [u8], n: usize) -> [&mut [u8]; 4] {
    let (p0, rest) = buf.split_at_mut(n);
    let (p1, rest) = rest.split_at_mut(n);
    let (p2, rest) = rest.split_at_mut(n);
    [p0, p1, p2, &mut rest[..n]]
}

/// Writes the presence bitmap (`ceil(n / 8)` bytes) of the 4-byte `elems` and byte `p` of
/// each present element to the front of `planes[p]`. Returns the number of present
/// elements `m`: plane `p` is `planes[p][..m]`.
///
/// # Panics
/// If `elems` is not whole 4-byte elements, `bitmap` is not `ceil(n / 8)` bytes, or a
/// plane is shorter than `n` (caller bugs).
pub(super) fn split(elems: &[u8], bitmap: &mut [u8], planes: [&mut [u8]; 4]) -> usize {
    assert!(elems.len() % 4 == 0, "{} bytes is not whole 4-byte elements", elems.len());
    let n = elems.len() / 4;
    assert_eq!(bitmap.len(), n.div_ceil(8), "bitmap length");
    assert!(planes.iter().all(|p| p.len() >= n), "planes shorter than the elements");
    let [p0, p1, p2, p3] = planes;
    let (done, at) = simd::split4(elems, bitmap, [&mut *p0, &mut *p1, &mut *p2, &mut *p3]);
    debug_assert!(done % 16 == 0 && done <= n && at <= done);
    split_portable(elems, bitmap, [p0, p1, p2, p3], done, at)
}

/// The portable split from element `done` (a multiple of 8) on, `at` present elements
/// already written; returns the total present.
fn split_portable(elems: &[u8], bitmap: &mut [u8], planes: [&mut [u8]; 4], done: usize, mut at: usize) -> usize {
    let [p0, p1, p2, p3] = planes;
    for (group, bits) in elems[4 * done..].chunks(32).zip(&mut bitmap[done / 8..]) {
        let mut b = 0u8;
        for (i, e) in group.chunks_exact(4).enumerate() {
            // Write every element, advance past the present ones: an absent one is
            // overwritten by the next.
            [p0[at], p1[at], p2[at], p3[at]] = [e[0], e[1], e[2], e[3]];
            let present = u8::from(e[0] | e[1] | e[2] | e[3] != 0);
            b |= present << i;
            at += usize::from(present);
        }
        *bits = b;
    }
    at
}

/// Writes the `n` 4-byte elements of `out` from the presence `bitmap` (`ceil(n / 8)`
/// bytes) and the four planes of the present elements, as `sink` says; absent elements are
/// zero (+0.0).
///
/// # Errors
/// [`CodecError::Corrupt`] if `out` is not whole elements, the bitmap has another length
/// or bits past `n`, or a plane does not hold exactly one byte per present element; `out`
/// is then unchanged. Nothing is read or written outside the given slices whatever the
/// bitmap says.
pub(super) fn merge(sink: Sink4, bitmap: &[u8], planes: [&[u8]; 4], out: &mut [u8]) -> Result<(), CodecError> {
    let n = out.len() / 4;
    let present = count_present(bitmap);
    let stray = n % 8 != 0 && bitmap.last().is_some_and(|b| b >> (n % 8) != 0);
    if out.len() % 4 != 0 || bitmap.len() != n.div_ceil(8) || stray || planes.iter().any(|p| p.len() != present) {
        return Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
    }
    let (done, at) = simd::merge4(sink, bitmap, planes, out);
    debug_assert!(done % 16 == 0 && done <= n && at <= present);
    merge_portable(sink, bitmap, planes, out, done, at);
    Ok(())
}

/// The portable merge from element `done` (a multiple of 8) on, `at` present elements
/// already read. Out-of-range plane bytes read as zero (not possible after [`merge`]'s
/// checks, and never a panic).
fn merge_portable(sink: Sink4, bitmap: &[u8], planes: [&[u8]; 4], out: &mut [u8], done: usize, mut at: usize) {
    for (group, bits) in out[4 * done..].chunks_mut(32).zip(&bitmap[done / 8..]) {
        for (i, e) in group.chunks_exact_mut(4).enumerate() {
            let present = bits >> i & 1 != 0;
            let x = planes.map(|p| if present { p.get(at).copied().unwrap_or(0) } else { 0 });
            at += usize::from(present);
            match sink {
                Sink4::Bytes4 => e.copy_from_slice(&x),
                Sink4::AddF32 => {
                    let sum = f32::from_ne_bytes([e[0], e[1], e[2], e[3]]) + f32::from_ne_bytes(x);
                    e.copy_from_slice(&sum.to_ne_bytes());
                }
            }
        }
    }
}

avx2_dispatch! {
    /// Writes byte `p` of every 4-byte element of `elems` to plane `p` of `dst` (`n`
    /// bytes each, one after the other, as `planes::shuffle`); returns how many elements
    /// are zero.
    pub(super) fn planes_bytes4 / planes_bytes4_portable(elems: &[u8], dst: &mut [u8]) -> usize {
        assert!(elems.len() == dst.len() && elems.len() % 4 == 0, "4-byte plane lengths");
        let n = elems.len() / 4;
        let [p0, p1, p2, p3] = planes_mut(dst, n);
        let mut zeros = 0;
        for ((((e, a), b), c), d) in elems.chunks_exact(4).zip(p0).zip(p1).zip(p2).zip(p3) {
            [*a, *b, *c, *d] = [e[0], e[1], e[2], e[3]];
            zeros += usize::from(e[0] | e[1] | e[2] | e[3] == 0);
        }
        zeros
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Elements: zero when `kind % 4 == 0`, else a pattern (that may have zero bytes).
    fn elements(kinds: &[u8], seed: u32) -> Vec<u32> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k % 4 {
                0 => 0,
                1 => 0x8000_0000, // -0.0: present
                2 => u32::from(*k) << (8 * (i % 4)),
                _ => seed.wrapping_mul(i as u32 + 1) | 1,
            })
            .collect()
    }

    fn reference(values: &[u32]) -> (Vec<u8>, [Vec<u8>; 4]) {
        let mut bitmap = vec![0u8; values.len().div_ceil(8)];
        let mut planes: [Vec<u8>; 4] = Default::default();
        for (i, v) in values.iter().enumerate() {
            if *v != 0 {
                bitmap[i / 8] |= 1 << (i % 8);
                for (plane, byte) in planes.iter_mut().zip(v.to_ne_bytes()) {
                    plane.push(byte);
                }
            }
        }
        (bitmap, planes)
    }

    #[test]
    fn malformed_bitmaps_and_planes_are_errors_and_leave_the_output_alone() {
        let corrupt = Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
        let p = [1u8; 21];
        let mut out = [7u8; 4 * 20];
        for (bitmap, m) in [(&[0xff, 0xff, 0x0f][..], 19), (&[0xff, 0xff, 0x0f], 21), (&[0xff, 0xff, 0x1f], 21)] {
            for sink in [Sink4::Bytes4, Sink4::AddF32] {
                assert_eq!(merge(sink, bitmap, [&p[..m]; 4], &mut out), corrupt);
            }
        }
        assert_eq!(
            merge(Sink4::Bytes4, &[0xff, 0xff, 0x0f], [&p[..20], &p[..20], &p[..19], &p[..20]], &mut out),
            corrupt
        );
        assert_eq!(merge(Sink4::Bytes4, &[0xff, 0xff, 0x0f], [&p[..20]; 4], &mut out[..79]), corrupt);
        assert_eq!(out, [7u8; 4 * 20], "nothing written");
        assert_eq!(merge(Sink4::Bytes4, &[0xff, 0xff, 0x0f], [&p[..20]; 4], &mut out), Ok(()));
        assert!(out.iter().all(|b| *b == 1));
    }

    proptest! {
        #[test]
        fn split_and_merge_match_the_reference_and_each_other(
            kinds in prop::collection::vec(any::<u8>(), 0..300),
            seed: u32,
        ) {
            let values = elements(&kinds, seed);
            let n = values.len();
            let elems: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
            let (bitmap_want, planes_want) = reference(&values);
            let m = planes_want[0].len();
            for portable in [false, true] {
                let mut bitmap = vec![0xa5u8; n.div_ceil(8)];
                let mut buf = vec![0x5au8; 4 * n];
                let got = if portable {
                    split_portable(&elems, &mut bitmap, planes_mut(&mut buf, n), 0, 0)
                } else {
                    split(&elems, &mut bitmap, planes_mut(&mut buf, n))
                };
                prop_assert_eq!(got, m);
                prop_assert_eq!(&bitmap, &bitmap_want);
                for (p, want) in planes_want.iter().enumerate() {
                    prop_assert_eq!(&buf[p * n..p * n + m], &want[..], "plane {}, portable: {}", p, portable);
                }
            }
            let planes = [&planes_want[0][..], &planes_want[1], &planes_want[2], &planes_want[3]];
            let acc: Vec<u8> = (0..n).flat_map(|i| (i as f32 * 0.75 - 9.0).to_ne_bytes()).collect();
            let sum_want: Vec<u8> = acc
                .chunks_exact(4)
                .zip(&values)
                .flat_map(|(a, v)| (f32::from_ne_bytes([a[0], a[1], a[2], a[3]]) + f32::from_bits(*v)).to_ne_bytes())
                .collect();
            for portable in [false, true] {
                let run = |sink, out: &mut [u8]| {
                    if portable {
                        merge_portable(sink, &bitmap_want, planes, out, 0, 0);
                    } else {
                        merge(sink, &bitmap_want, planes, out).expect("consistent");
                    }
                };
                let mut out = vec![0xa5u8; 4 * n];
                run(Sink4::Bytes4, &mut out);
                prop_assert_eq!(&out, &elems, "elements, portable: {}", portable);
                let mut sum = acc.clone();
                run(Sink4::AddF32, &mut sum);
                for (g, w) in sum.chunks_exact(4).zip(sum_want.chunks_exact(4)) {
                    let (g, w) = (f32::from_ne_bytes([g[0], g[1], g[2], g[3]]), f32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
                    prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "sum, portable: {}", portable);
                }
            }
            let mut whole = vec![0u8; 4 * n];
            let zeros = values.iter().filter(|v| **v == 0).count();
            for kernel in [planes_bytes4, planes_bytes4_portable] {
                prop_assert_eq!(kernel(&elems, &mut whole), zeros);
                let mut back = vec![0u8; 4 * n];
                crate::codec::planes::unshuffle(4, &whole, &mut back);
                prop_assert_eq!(&back, &elems);
            }
        }
    }
}
