//! Plane packs: the payload of `shuffle+zstd` and `bf16+zstd`.
//!
//! The `n` elements of a segment (`k` bytes each: f32 4, bf16 2, any element type's size
//! for shuffle+zstd) are cut into `k` byte planes, and each plane is stored either as one
//! zstd frame or as it is, whichever the encoder found pays. Elements whose `k` bytes are
//! all zero may be left out of the planes and marked absent in a bitmap instead.
//!
//! Why: after the shuffle, the sign and exponent plane of float gradients compresses 2-3x,
//! while the mantissa planes are close to noise; zstd spent most of its time on those for a
//! few percent (on `benches/data/grads.f32`, a 512 KiB segment's mantissa planes shrink
//! only to 0.79 of their size, and only because 29.5% of the values are exact zeros).
//! Storing noise planes raw and zeros as one bit makes encoding several times faster.
//!
//! # Format
//!
//! ```text
//! byte 0      flags: bit 0 = zero elements left out (a bitmap section comes first),
//!                    bit 1 = the bitmap section is zstd; other bits zero
//! byte 1      zstd mask: bit p set = plane p's section is zstd; bits p >= k zero
//! sections    [bitmap] plane 0, plane 1, ..., plane k-1
//! ```
//!
//! A section of `len` bytes is either those bytes as they are, or a little-endian u32 `c`
//! followed by `c` bytes that are exactly one zstd frame declaring a content size of `len`.
//! The bitmap has `ceil(n / 8)` bytes, bit `i % 8` of byte `i / 8` set when element `i` is
//! present; its bits past `n` are zero. Each plane has `m` bytes: byte `p` of every present
//! element in order (`m = n` without a bitmap, else the number of set bits). Absent elements
//! decode to `k` zero bytes. The payload ends exactly after the last section.
//!
//! All sizes come from the receiver's expected `n` and from the bitmap (never more than
//! `n` bits), so a payload can never make the decoder write outside its buffers.

use zstd::zstd_safe::{CCtx, DCtx};

use super::decoder::decompress;
use super::encoder::compress;
use super::{planes, CodecError};

/// Flag: zero elements are left out, a presence bitmap comes first.
const FLAG_BITMAP: u8 = 1;
/// Flag: the bitmap section is a zstd frame.
const FLAG_BITMAP_ZSTD: u8 = 2;

/// Most planes a pack has (the largest element type, 8 bytes); slot `PLANES_MAX` of the
/// encoder's policy is the bitmap.
const PLANES_MAX: usize = 8;

/// A section is kept as zstd only if zstd shrinks it at least this much (raw bytes per
/// compressed byte). On `grads.f32`, zstd level 1 encodes a plane at 0.3-0.5 GB/s and
/// decodes it at about 1 GB/s per core; a mantissa plane shrinks 1.26x (only through its
/// exact zeros), which would cost each rank more CPU than the 21% of wire bytes it saves
/// are worth at 1 Gbit/s with two ranks per core. The sign and exponent plane shrinks
/// 2.3-2.6x.
pub(super) const SECTION_RATIO_MIN: f64 = 1.4;

/// Segments a section that did not compress is stored raw before zstd is tried on it again.
pub(super) const SECTION_RETRY_SEGMENTS: u32 = 16;

/// Zero elements are left out only if their bytes are at least this many times the
/// bitmap's: the bitmap and the expansion on the receiver must pay for themselves (f32:
/// from 1 zero in 16; bf16: from 1 in 8).
const ZEROS_OVER_BITMAP_MIN: usize = 2;

/// Smallest element size zeros are left out of. Leaving zeros out costs about 3 ns per
/// element (bitmap, compaction, expansion) whatever the element size; for bf16 that is more
/// than the 2 bytes a zero saves are worth: on `grads.f32` (one core, CPU time), bf16+zstd
/// encoded 0.69 GB/s of f32 and decoded 1.25 with zeros left out (ratio 3.8), 1.15 and 3.3
/// without (ratio 2.9), and four ranks sharing two cores are CPU-bound at 1 Gbit/s.
const SPARSE_ELEM_BYTES_MIN: usize = 4;

/// Per section slot (planes, then the bitmap): segments left before zstd is tried again.
#[derive(Debug, Clone, Copy, Default)]
struct Policy {
    /// Element size the slots were learned for; another size starts afresh.
    elem_bytes: usize,
    skip: [u32; PLANES_MAX + 1],
}

impl Policy {
    /// Starts a segment of `elem_bytes`-byte elements: counts every slot's wait down.
    fn start(&mut self, elem_bytes: usize) {
        if self.elem_bytes != elem_bytes {
            *self = Policy { elem_bytes, ..Policy::default() };
        }
        for s in &mut self.skip {
            *s = s.saturating_sub(1);
        }
    }

    fn due(&self, slot: usize) -> bool {
        self.skip.get(slot).is_some_and(|s| *s == 0)
    }

    fn failed(&mut self, slot: usize) {
        if let Some(s) = self.skip.get_mut(slot) {
            *s = SECTION_RETRY_SEGMENTS;
        }
    }
}

/// Which stream a pack belongs to: the encoder learns per stream which sections compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// shuffle+zstd.
    Shuffle = 0,
    /// bf16+zstd.
    Bf16 = 1,
}

/// The encoding side's scratch and what it learned about each stream's sections.
#[derive(Debug, Default)]
pub(crate) struct PackEncoder {
    /// The present elements, when zeros are left out.
    dense: Vec<u8>,
    planes: Vec<u8>,
    bitmap: Vec<u8>,
    frame: Vec<u8>,
    policies: [Policy; 2],
}

impl PackEncoder {
    /// Writes the pack of `elems` (`elem_bytes`-byte elements, host order) into `out`
    /// (empty on entry). Returns `Ok(false)`, with `out` empty, when the pack would not be
    /// smaller than `limit` bytes: the caller then sends the uncompressed form.
    ///
    /// # Errors
    /// [`CodecError::Zstd`] if zstd cannot allocate.
    pub(crate) fn encode(
        &mut self,
        cctx: &mut CCtx<'static>,
        stream: Stream,
        elem_bytes: usize,
        elems: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, CodecError> {
        let policy = &mut self.policies[stream as usize];
        policy.start(elem_bytes);
        let n = elems.len() / elem_bytes;
        self.bitmap.resize(n.div_ceil(8), 0);
        let present =
            if elem_bytes >= SPARSE_ELEM_BYTES_MIN { presence(elem_bytes, elems, &mut self.bitmap) } else { None };
        let sparse = present.is_some_and(|m| (n - m) * elem_bytes >= ZEROS_OVER_BITMAP_MIN * self.bitmap.len().max(1));
        if !sparse && !(0..elem_bytes).any(|p| policy.due(p)) {
            return Ok(false); // every plane raw and no zeros to leave out: no smaller than raw
        }
        let dense = match present {
            Some(m) if sparse => {
                self.dense.resize(m * elem_bytes, 0);
                compact(elem_bytes, elems, &self.bitmap, &mut self.dense);
                &self.dense[..]
            }
            _ => elems,
        };
        let m = dense.len() / elem_bytes;
        self.planes.resize(dense.len(), 0);
        planes::shuffle(elem_bytes, dense, &mut self.planes);
        out.extend_from_slice(&[0, 0]);
        let mut flags = 0;
        if sparse {
            flags |= FLAG_BITMAP;
            if section(cctx, policy, PLANES_MAX, &self.bitmap, &mut self.frame, out)? {
                flags |= FLAG_BITMAP_ZSTD;
            }
        }
        let mut mask = 0u8;
        for p in 0..elem_bytes {
            let plane = &self.planes[p * m..(p + 1) * m];
            if section(cctx, policy, p, plane, &mut self.frame, out)? {
                mask |= 1 << p;
            }
            if out.len() >= limit {
                out.clear();
                return Ok(false);
            }
        }
        out[0] = flags;
        out[1] = mask;
        Ok(true)
    }
}

/// Appends one section of `data`: zstd if the slot is due and zstd shrinks it by
/// [`SECTION_RATIO_MIN`] (returns true), else the bytes as they are.
fn section(
    cctx: &mut CCtx<'static>,
    policy: &mut Policy,
    slot: usize,
    data: &[u8],
    frame: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<bool, CodecError> {
    if policy.due(slot) && !data.is_empty() {
        frame.clear();
        compress(cctx, data, frame)?;
        match u32::try_from(frame.len()) {
            Ok(len) if frame.len() as f64 * SECTION_RATIO_MIN <= data.len() as f64 => {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(frame);
                return Ok(true);
            }
            _ => policy.failed(slot),
        }
    }
    out.extend_from_slice(data);
    Ok(false)
}

/// The decoding side's scratch.
#[derive(Debug, Default)]
pub(crate) struct PackDecoder {
    /// Planes, `m` bytes each, one after the other.
    planes: Vec<u8>,
    bitmap: Vec<u8>,
    /// The present elements, unshuffled, when zeros were left out.
    dense: Vec<u8>,
}

/// What [`PackDecoder::read`] found, in the decoder's scratch.
pub(crate) enum Unpacked<'a> {
    /// Every element was sent: all `k` planes, `n` bytes each, one after the other.
    Planes(&'a [u8]),
    /// Zero elements were left out: the presence bitmap and the present elements, for
    /// [`expand`].
    Sparse {
        /// Bit `i` set: element `i` is present.
        bitmap: &'a [u8],
        /// The present elements in order.
        dense: &'a [u8],
    },
}

impl PackDecoder {
    /// Reads the pack `payload` of `n` elements of `elem_bytes` bytes.
    ///
    /// # Errors
    /// [`CodecError::Corrupt`] for unknown flags, a truncated or overlong payload, a bitmap
    /// with bits past `n`, or a bad zstd frame; [`CodecError::SizeMismatch`] for a zstd
    /// frame of another content size.
    pub(crate) fn read<'a>(
        &'a mut self,
        dctx: &mut DCtx<'static>,
        elem_bytes: usize,
        n: usize,
        payload: &[u8],
    ) -> Result<Unpacked<'a>, CodecError> {
        let corrupt = |reason| CodecError::Corrupt { reason };
        let Some(([flags, mask], mut rest)) = payload.split_first_chunk::<2>() else {
            return Err(corrupt("pack shorter than its header"));
        };
        let (flags, mask) = (*flags, *mask);
        if flags & !(FLAG_BITMAP | FLAG_BITMAP_ZSTD) != 0 || (flags & FLAG_BITMAP == 0 && flags != 0) {
            return Err(corrupt("unknown pack flags"));
        }
        if elem_bytes < 8 && mask >> elem_bytes != 0 {
            return Err(corrupt("zstd mask names a plane past the element size"));
        }
        let sparse = flags & FLAG_BITMAP != 0;
        let m = if sparse {
            self.bitmap.resize(n.div_ceil(8), 0);
            read_section(dctx, &mut rest, flags & FLAG_BITMAP_ZSTD != 0, &mut self.bitmap)?;
            if n % 8 != 0 && self.bitmap.last().is_some_and(|b| b >> (n % 8) != 0) {
                return Err(corrupt("bitmap bits past the last element"));
            }
            self.bitmap.iter().map(|b| b.count_ones() as usize).sum()
        } else {
            n
        };
        self.planes.resize(m * elem_bytes, 0);
        for (p, plane) in self.planes.chunks_exact_mut(m.max(1)).take(elem_bytes).enumerate() {
            read_section(dctx, &mut rest, mask >> p & 1 != 0, plane)?;
        }
        if !rest.is_empty() {
            return Err(corrupt("bytes after the last pack section"));
        }
        if !sparse {
            return Ok(Unpacked::Planes(&self.planes));
        }
        self.dense.resize(self.planes.len(), 0);
        planes::unshuffle(elem_bytes, &self.planes, &mut self.dense);
        Ok(Unpacked::Sparse { bitmap: &self.bitmap, dense: &self.dense })
    }
}

/// Reads one section of exactly `dst.len()` bytes from the front of `rest` into `dst`.
fn read_section(dctx: &mut DCtx<'static>, rest: &mut &[u8], zstd: bool, dst: &mut [u8]) -> Result<(), CodecError> {
    let truncated = CodecError::Corrupt { reason: "pack section truncated" };
    if !zstd {
        let (bytes, tail) = rest.split_at_checked(dst.len()).ok_or(truncated)?;
        dst.copy_from_slice(bytes);
        *rest = tail;
        return Ok(());
    }
    let (len, tail) = rest.split_first_chunk::<4>().ok_or(truncated.clone())?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| truncated.clone())?;
    let (frame, tail) = tail.split_at_checked(len).ok_or(truncated)?;
    decompress(dctx, frame, dst)?;
    *rest = tail;
    Ok(())
}

/// Writes the presence bitmap of `elems` (`bitmap` has `ceil(n / 8)` bytes) and returns
/// how many elements are present, for the element sizes packs leave zeros out of (1, 2, 4,
/// 8); `None` for other sizes.
fn presence(elem_bytes: usize, elems: &[u8], bitmap: &mut [u8]) -> Option<usize> {
    fn run<const K: usize>(elems: &[u8], bitmap: &mut [u8]) -> usize {
        let mut m = 0;
        for (group, bits) in elems.chunks(8 * K).zip(bitmap.iter_mut()) {
            let mut b = 0u8;
            for (i, e) in group.chunks_exact(K).enumerate() {
                b |= u8::from(e.iter().fold(0, |a, x| a | x) != 0) << i;
            }
            *bits = b;
            m += b.count_ones() as usize;
        }
        m
    }
    Some(match elem_bytes {
        1 => run::<1>(elems, bitmap),
        2 => run::<2>(elems, bitmap),
        4 => run::<4>(elems, bitmap),
        8 => run::<8>(elems, bitmap),
        _ => return None,
    })
}

/// The kernels of [`compact`] and [`expand`] for one element size, on whole words: a mixed
/// group of 8 elements is unpredictable, so both are branch-free there.
macro_rules! word_kernels {
    ($compact:ident, $expand:ident, $word:ty) => {
        fn $compact(elems: &[u8], bitmap: &[u8], dense: &mut [u8]) {
            const K: usize = std::mem::size_of::<$word>();
            let mut at = 0;
            for (group, bits) in elems.chunks(8 * K).zip(bitmap) {
                if *bits == 0xff && group.len() == 8 * K {
                    dense[at..at + 8 * K].copy_from_slice(group);
                    at += 8 * K;
                    continue;
                }
                for (i, e) in group.chunks_exact(K).enumerate() {
                    // Write every element, advance past the present ones: an absent one is
                    // overwritten by the next.
                    if let Some(d) = dense.get_mut(at..at + K) {
                        d.copy_from_slice(e);
                    }
                    at += usize::from(bits >> i & 1) * K;
                }
            }
        }

        fn $expand(bitmap: &[u8], dense: &[u8], out: &mut [u8]) {
            const K: usize = std::mem::size_of::<$word>();
            let mut at = 0;
            for (group, bits) in out.chunks_mut(8 * K).zip(bitmap) {
                match *bits {
                    0 => group.fill(0),
                    0xff if group.len() == 8 * K => {
                        group.copy_from_slice(&dense[at..at + 8 * K]);
                        at += 8 * K;
                    }
                    b => {
                        // Each element's source from the bits before it, not from the previous
                        // element: eight independent loads instead of a chain.
                        let before = &PRESENT_BEFORE[usize::from(b)];
                        for (i, e) in group.chunks_exact_mut(K).enumerate() {
                            let present = <$word>::from(b >> i & 1);
                            let from = at + usize::from(before[i]) * K;
                            let mut x = [0u8; K];
                            if let Some(src) = dense.get(from..from + K) {
                                x.copy_from_slice(src);
                            }
                            let v = <$word>::from_ne_bytes(x) & (0 as $word).wrapping_sub(present);
                            e.copy_from_slice(&v.to_ne_bytes());
                        }
                        at += b.count_ones() as usize * K;
                    }
                }
            }
        }
    };
}

/// `PRESENT_BEFORE[b][i]`: bits set in `b` below bit `i` (where element `i` of a group with
/// presence byte `b` sits among the group's present elements).
const PRESENT_BEFORE: [[u8; 8]; 256] = {
    let mut table = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            table[b][i] = (b & ((1 << i) - 1)).count_ones() as u8;
            i += 1;
        }
        b += 1;
    }
    table
};

word_kernels!(compact1, expand1, u8);
word_kernels!(compact2, expand2, u16);
word_kernels!(compact4, expand4, u32);
word_kernels!(compact8, expand8, u64);

/// Copies the elements of `elems` that `bitmap` marks present into `dense`, in order.
/// `dense` holds exactly the present elements (caller's invariant: from [`presence`]).
fn compact(elem_bytes: usize, elems: &[u8], bitmap: &[u8], dense: &mut [u8]) {
    match elem_bytes {
        1 => compact1(elems, bitmap, dense),
        2 => compact2(elems, bitmap, dense),
        4 => compact4(elems, bitmap, dense),
        _ => compact8(elems, bitmap, dense),
    }
}

/// Inverse of [`compact`]: the elements, absent ones zero, from the bitmap and the present
/// elements `dense` into `out` (`n` elements of `elem_bytes`: 1, 2, 4 or 8).
///
/// # Errors
/// [`CodecError::Corrupt`] if `dense` holds another number of elements than the bitmap
/// marks present, or the sizes disagree (not possible for what [`PackDecoder::read`]
/// returns; checked, not assumed).
pub(crate) fn expand(elem_bytes: usize, bitmap: &[u8], dense: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
    let k = elem_bytes;
    if !matches!(k, 1 | 2 | 4 | 8) || present * k != dense.len() || bitmap.len() != (out.len() / k).div_ceil(8) {
        return Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
    }
    match k {
        1 => expand1(bitmap, dense, out),
        2 => expand2(bitmap, dense, out),
        4 => expand4(bitmap, dense, out),
        _ => expand8(bitmap, dense, out),
    }
    Ok(())
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
