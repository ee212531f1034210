//! Zero elements of 2-byte elements (bf16, f16) left out of a plane pack, in one pass each
//! way.
//!
//! Sending: [`split_bf16`] reads f32 once and writes, per element, the bf16 rounding's
//! presence bit (present: some byte non-zero) and, for present elements only, its low byte
//! to the low plane and its high byte to the high plane; [`split_bytes2`] does the same
//! for 2-byte elements as they are (byte 0 is the low plane). Receiving: [`merge`] does
//! the inverse from the bitmap and the two planes, straight into the f32 result or the sum
//! (absent elements are zero). Rounding, zero test, compaction and the plane split happen
//! in one pass over the data instead of four (round, test, compact, shuffle), and with AVX2
//! 16 elements at a time (`simd::split2`, `simd::merge2`); the portable loops here finish
//! what the AVX2 kernels leave and run everything elsewhere.
//!
//! The dense counterparts [`planes_bf16`] and [`planes_bytes2`] write all elements' planes
//! and count the zeros, for streams where too few are zero to leave out.

use super::lossy::{bf16_bits_to_f32, f32_to_bf16_bits};
use super::simd::{self, avx2_dispatch, Sink, Source};
use super::CodecError;

/// Rounds the f32 `raw` to bf16 and writes their presence bitmap (`ceil(n / 8)` bytes) and
/// the low and high bytes of the present ones to the fronts of `lo` and `hi`. Returns the
/// number of present elements `m`: the planes are `lo[..m]` and `hi[..m]`.
///
/// # Panics
/// If `raw` is not whole f32, `bitmap` is not `ceil(n / 8)` bytes, or `lo` or `hi` is
/// shorter than `n` (caller bugs).
pub(super) fn split_bf16(raw: &[u8], bitmap: &mut [u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
    split(Source::F32ToBf16, raw, bitmap, lo, hi)
}

/// [`split_bf16`] for 2-byte elements as they are (host order: byte 0 to `lo`).
///
/// # Panics
/// As [`split_bf16`], with `elems` whole 2-byte elements.
pub(super) fn split_bytes2(elems: &[u8], bitmap: &mut [u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
    split(Source::Bytes2, elems, bitmap, lo, hi)
}

fn split(source: Source, src: &[u8], bitmap: &mut [u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
    let n = check_split(source, src, bitmap, lo, hi);
    let (done, at) = simd::split2(source, src, bitmap, lo, hi);
    debug_assert!(done % 16 == 0 && done <= n && at <= done);
    split_portable(source, src, bitmap, lo, hi, done, at)
}

/// Checks [`split_bf16`]'s length contract and returns the number of elements.
fn check_split(source: Source, src: &[u8], bitmap: &[u8], lo: &[u8], hi: &[u8]) -> usize {
    let elem_bytes = source_bytes(source);
    assert!(src.len() % elem_bytes == 0, "{} bytes is not whole {elem_bytes}-byte elements", src.len());
    let n = src.len() / elem_bytes;
    assert_eq!(bitmap.len(), n.div_ceil(8), "bitmap length");
    assert!(lo.len() >= n && hi.len() >= n, "planes shorter than the elements");
    n
}

fn source_bytes(source: Source) -> usize {
    match source {
        Source::F32ToBf16 => 4,
        Source::Bytes2 => 2,
    }
}

/// The portable split from element `done` (a multiple of 8) on, `at` present elements
/// already written; returns the total present.
fn split_portable(
    source: Source,
    src: &[u8],
    bitmap: &mut [u8],
    lo: &mut [u8],
    hi: &mut [u8],
    done: usize,
    mut at: usize,
) -> usize {
    let elem_bytes = source_bytes(source);
    let groups = src[done * elem_bytes..].chunks(8 * elem_bytes);
    for (group, bits) in groups.zip(&mut bitmap[done / 8..]) {
        let mut b = 0u8;
        for (i, e) in group.chunks_exact(elem_bytes).enumerate() {
            let [l, h] = match source {
                Source::F32ToBf16 => f32_to_bf16_bits(f32::from_ne_bytes([e[0], e[1], e[2], e[3]])).to_le_bytes(),
                Source::Bytes2 => [e[0], e[1]],
            };
            // Write every element, advance past the present ones: an absent one is
            // overwritten by the next.
            lo[at] = l;
            hi[at] = h;
            let present = u8::from(l | h != 0);
            b |= present << i;
            at += usize::from(present);
        }
        *bits = b;
    }
    at
}

/// Writes the `n` elements of `out` (2 bytes each for [`Sink::Bytes2`], else f32) from
/// the presence `bitmap` (`ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` for element `i`)
/// and the planes `lo` and `hi` of the present elements, as `sink` says; absent elements
/// are zero (+0.0).
///
/// # Errors
/// [`CodecError::Corrupt`] if `out` is not whole elements, the bitmap has another length
/// or bits past `n`, or the planes do not hold exactly one byte per present element; `out`
/// is then unchanged. Nothing is read or written outside the given slices whatever the
/// bitmap says.
pub(super) fn merge(sink: Sink, bitmap: &[u8], lo: &[u8], hi: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let out_bytes = sink_bytes(sink);
    let n = out.len() / out_bytes;
    let present = count_present(bitmap);
    let stray = n % 8 != 0 && bitmap.last().is_some_and(|b| b >> (n % 8) != 0);
    if out.len() % out_bytes != 0
        || bitmap.len() != n.div_ceil(8)
        || stray
        || lo.len() != present
        || hi.len() != present
    {
        return Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
    }
    let (done, at) = simd::merge2(sink, bitmap, lo, hi, out);
    debug_assert!(done % 16 == 0 && done <= n && at <= present);
    merge_portable(sink, bitmap, lo, hi, out, done, at);
    Ok(())
}

fn sink_bytes(sink: Sink) -> usize {
    match sink {
        Sink::Bytes2 => 2,
        Sink::WidenBf16 | Sink::AddBf16 => 4,
    }
}

/// The portable merge from element `done` (a multiple of 8) on, `at` present elements
/// already read. Out-of-range plane bytes read as zero (not possible after [`merge`]'s
/// checks, and never a panic).
fn merge_portable(sink: Sink, bitmap: &[u8], lo: &[u8], hi: &[u8], out: &mut [u8], done: usize, mut at: usize) {
    let out_bytes = sink_bytes(sink);
    let groups = out[done * out_bytes..].chunks_mut(8 * out_bytes);
    for (group, bits) in groups.zip(&bitmap[done / 8..]) {
        let b = *bits;
        for (i, e) in group.chunks_exact_mut(out_bytes).enumerate() {
            let present = b >> i & 1 != 0;
            let byte = |plane: &[u8]| if present { plane.get(at).copied().unwrap_or(0) } else { 0 };
            let (l, h) = (byte(lo), byte(hi));
            at += usize::from(present);
            match sink {
                Sink::Bytes2 => e.copy_from_slice(&[l, h]),
                Sink::WidenBf16 => e.copy_from_slice(&bf16_bits_to_f32(u16::from_le_bytes([l, h])).to_ne_bytes()),
                Sink::AddBf16 => {
                    let acc = f32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
                    e.copy_from_slice(&(acc + bf16_bits_to_f32(u16::from_le_bytes([l, h]))).to_ne_bytes());
                }
            }
        }
    }
}

avx2_dispatch! {
    /// Number of bits set in `bitmap` (present elements), 8 bytes at a time. A plain loop:
    /// an iterator `sum` was compiled as a separate function without POPCNT.
    pub(super) fn count_present / count_present_portable(bitmap: &[u8]) -> usize {
        let words = bitmap.chunks_exact(8);
        let mut total = 0;
        for b in words.remainder() {
            total += b.count_ones() as usize;
        }
        for w in words {
            total += u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]).count_ones() as usize;
        }
        total
    }
}

avx2_dispatch! {
    /// Rounds the f32 `raw` to bf16 and writes all their low bytes to `lo` and high bytes
    /// to `hi` (`n` bytes each); returns how many round to zero (+0.0).
    pub(super) fn planes_bf16 / planes_bf16_portable(raw: &[u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
        assert!(raw.len() == 4 * lo.len() && lo.len() == hi.len(), "bf16 plane lengths");
        let mut zeros = 0;
        for ((r, l), h) in raw.chunks_exact(4).zip(lo.iter_mut()).zip(hi.iter_mut()) {
            let bits = f32_to_bf16_bits(f32::from_ne_bytes([r[0], r[1], r[2], r[3]]));
            [*l, *h] = bits.to_le_bytes();
            zeros += usize::from(bits == 0);
        }
        zeros
    }
}

avx2_dispatch! {
    /// Writes byte 0 of the 2-byte `elems` to `lo` and byte 1 to `hi` (`n` bytes each);
    /// returns how many elements are zero.
    pub(super) fn planes_bytes2 / planes_bytes2_portable(elems: &[u8], lo: &mut [u8], hi: &mut [u8]) -> usize {
        assert!(elems.len() == 2 * lo.len() && lo.len() == hi.len(), "2-byte plane lengths");
        let mut zeros = 0;
        for ((e, l), h) in elems.chunks_exact(2).zip(lo.iter_mut()).zip(hi.iter_mut()) {
            *l = e[0];
            *h = e[1];
            zeros += usize::from(e[0] | e[1] == 0);
        }
        zeros
    }
}

#[cfg(test)]
#[path = "zeros2_tests.rs"]
mod tests;
