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
//!
//! # Where the work happens
//!
//! For 2- and 4-byte elements (bf16+zstd, and shuffle+zstd of f16, bf16, f32 and i32) the
//! encoder rounds (for bf16+zstd), tests for zero, compacts and splits into the planes in
//! one pass over the segment (`zeros2`, `zeros4`), and the decoder merges the planes
//! straight into the elements, the f32 result or the sum; 8-byte elements are compacted
//! (`zeros`), then shuffled (`planes`).

use zstd::zstd_safe::{CCtx, DCtx};

use super::decoder::decompress;
use super::encoder::compress;
use super::simd::{self, Sink as Merge, Sink4};
use super::{lossy, planes, zeros, zeros2, zeros4, CodecError};

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

/// Smallest element size zeros are left out of. For 2-byte elements this pays only with
/// the fused kernels of `zeros2`: with a scalar compaction (about 3 ns per element) the
/// bf16+zstd encoder on `grads.f32` ran at 0.69 GB/s of f32 per core against 1.15 without
/// zeros left out, which four ranks sharing two cores could not afford at 1 Gbit/s; with
/// them (AVX2) it encodes at 1.3 and decodes at 3.3-3.6 GB/s, ratio 3.82 against 2.89
/// (before zstd's hash log went to 8). So 2-byte elements are left dense where those
/// kernels are not vectorized (`simd::compaction_is_fast`). 1-byte elements stay dense: a
/// zero saves one byte for one bit.
const SPARSE_ELEM_BYTES_MIN: usize = 2;

/// Per section slot (planes, then the bitmap): segments left before zstd is tried again.
#[derive(Debug, Clone, Copy, Default)]
struct Policy {
    /// Element size the slots were learned for; another size starts afresh.
    elem_bytes: usize,
    skip: [u32; PLANES_MAX + 1],
    /// 2- and 4-byte elements: the last segment had zeros, too few to leave out, so the
    /// planes are written whole first (and compacted only if this segment has enough).
    dense_first: bool,
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

/// What a pack is made from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// Elements of `elem_bytes` bytes as they are, host order (shuffle+zstd).
    Elems {
        /// Size of one element.
        elem_bytes: usize,
        /// The elements.
        bytes: &'a [u8],
    },
    /// f32 (host order) rounded to bfloat16 as `lossy::encode_bf16` does (bf16+zstd).
    F32ToBf16(&'a [u8]),
}

/// Where the planes of a pack being encoded are: plane `p` is `planes[p * stride..][..m]`.
struct Layout {
    /// Elements in each plane (present elements, or all).
    m: usize,
    /// Distance between the planes' starts in the scratch buffer.
    stride: usize,
    /// Zero elements are left out (the bitmap is a section).
    sparse: bool,
}

/// The encoding side's scratch and what it learned about each stream's sections.
#[derive(Debug, Default)]
pub(crate) struct PackEncoder {
    /// The present elements, when zeros of 8-byte elements are left out.
    dense: Vec<u8>,
    planes: Vec<u8>,
    bitmap: Vec<u8>,
    frame: Vec<u8>,
    policies: [Policy; 2],
}

impl PackEncoder {
    /// Writes the pack of `source` into `out` (empty on entry). Returns `Ok(false)`, with
    /// `out` empty, when the pack would not be smaller than `limit` bytes: the caller then
    /// sends the uncompressed form.
    ///
    /// # Errors
    /// [`CodecError::Zstd`] if zstd cannot allocate.
    pub(crate) fn encode(
        &mut self,
        cctx: &mut CCtx<'static>,
        source: Source<'_>,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, CodecError> {
        let (stream, k, n) = match source {
            Source::Elems { elem_bytes, bytes } => (Stream::Shuffle, elem_bytes, bytes.len() / elem_bytes.max(1)),
            Source::F32ToBf16(raw) => (Stream::Bf16, 2, raw.len() / 4),
        };
        self.policies[stream as usize].start(k);
        let any_due = (0..k).any(|p| self.policies[stream as usize].due(p));
        self.bitmap.resize(n.div_ceil(8), 0);
        let layout = match source {
            Source::F32ToBf16(raw) => self.planes_fused(stream, Fused::Bf16, raw),
            Source::Elems { elem_bytes: 2, bytes } => self.planes_fused(stream, Fused::Bytes2, bytes),
            Source::Elems { elem_bytes: 4, bytes } => self.planes_fused(stream, Fused::Bytes4, bytes),
            Source::Elems { elem_bytes, bytes } => match self.planes_words(elem_bytes, bytes, any_due) {
                Some(layout) => layout,
                None => return Ok(false),
            },
        };
        if !layout.sparse && !any_due {
            return Ok(false); // every plane raw and no zeros to leave out: no smaller than raw
        }
        let policy = &mut self.policies[stream as usize];
        out.extend_from_slice(&[0, 0]);
        let mut flags = 0;
        if layout.sparse {
            flags |= FLAG_BITMAP;
            if section(cctx, policy, PLANES_MAX, &self.bitmap, &mut self.frame, out)? {
                flags |= FLAG_BITMAP_ZSTD;
            }
        }
        let mut mask = 0u8;
        for p in 0..k {
            let plane = &self.planes[p * layout.stride..][..layout.m];
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

    /// The planes (and the bitmap, when zeros are left out) of 2- or 4-byte elements, from
    /// the fused kernels. One pass over `src` when the stream's zeros are either worth
    /// leaving out or absent; two when a segment has zeros but too few (the stream then
    /// writes whole planes first, see `dense_first`). 2-byte elements are never sparse
    /// where the kernels are not vectorized ([`SPARSE_ELEM_BYTES_MIN`]).
    fn planes_fused(&mut self, stream: Stream, kind: Fused, src: &[u8]) -> Layout {
        let (k, n) = match kind {
            Fused::Bf16 => (2, src.len() / 4),
            Fused::Bytes2 => (2, src.len() / 2),
            Fused::Bytes4 => (4, src.len() / 4),
        };
        self.planes.resize(k * n, 0);
        let (bitmap, planes) = (&mut self.bitmap[..], &mut self.planes[..]);
        if k < 4 && !simd::compaction_is_fast() {
            kind.whole(src, planes, n);
            return Layout { m: n, stride: n, sparse: false };
        }
        let policy = &mut self.policies[stream as usize];
        let (m, zeros, sparse) = if policy.dense_first {
            let zeros = kind.whole(src, planes, n);
            let sparse = sparse_pays(k, n, n - zeros, bitmap.len());
            (if sparse { kind.split(src, bitmap, planes, n) } else { n }, zeros, sparse)
        } else {
            let present = kind.split(src, bitmap, planes, n);
            let sparse = sparse_pays(k, n, present, bitmap.len());
            if !sparse && present < n {
                kind.whole(src, planes, n);
            }
            (if sparse { present } else { n }, n - present, sparse)
        };
        policy.dense_first = !sparse && zeros > 0;
        Layout { m, stride: n, sparse }
    }

    /// The planes (and bitmap) of elements of 1 or 8 bytes (or another size, never
    /// sparse); `None` when no plane is `due` and there are no zeros worth leaving out,
    /// so the pack would not be smaller than the elements.
    fn planes_words(&mut self, elem_bytes: usize, elems: &[u8], due: bool) -> Option<Layout> {
        let k = elem_bytes;
        let n = elems.len() / k.max(1);
        let present = if k >= SPARSE_ELEM_BYTES_MIN { zeros::presence(k, elems, &mut self.bitmap) } else { None };
        let sparse = present.is_some_and(|m| sparse_pays(k, n, m, self.bitmap.len()));
        if !sparse && !due {
            return None;
        }
        let dense = match present {
            Some(m) if sparse => {
                self.dense.resize(m * k, 0);
                zeros::compact8(elems, &self.bitmap, &mut self.dense);
                &self.dense[..]
            }
            _ => elems,
        };
        let m = dense.len() / k.max(1);
        self.planes.resize(dense.len(), 0);
        planes::shuffle(k, dense, &mut self.planes);
        Some(Layout { m, stride: m, sparse })
    }
}

/// Whether leaving the zeros out pays for `n` elements of `elem_bytes` of which `present`
/// are not zero, with a bitmap of `bitmap_len` bytes ([`ZEROS_OVER_BITMAP_MIN`]).
fn sparse_pays(elem_bytes: usize, n: usize, present: usize, bitmap_len: usize) -> bool {
    (n - present) * elem_bytes >= ZEROS_OVER_BITMAP_MIN * bitmap_len.max(1)
}

/// The element streams with fused split kernels.
#[derive(Debug, Clone, Copy)]
enum Fused {
    /// f32 rounded to bf16 (`zeros2::split_bf16`).
    Bf16,
    /// 2-byte elements (`zeros2::split_bytes2`).
    Bytes2,
    /// 4-byte elements (`zeros4::split`).
    Bytes4,
}

impl Fused {
    /// The compacting split of the `n` elements in `src` into the planes at `planes[p * n..]`;
    /// returns the number present.
    fn split(self, src: &[u8], bitmap: &mut [u8], planes: &mut [u8], n: usize) -> usize {
        match self {
            Fused::Bf16 | Fused::Bytes2 => {
                let (lo, hi) = planes.split_at_mut(n);
                match self {
                    Fused::Bf16 => zeros2::split_bf16(src, bitmap, lo, hi),
                    _ => zeros2::split_bytes2(src, bitmap, lo, hi),
                }
            }
            Fused::Bytes4 => zeros4::split(src, bitmap, zeros4::planes_mut(planes, n)),
        }
    }

    /// The whole planes of the `n` elements in `src`; returns how many are zero.
    fn whole(self, src: &[u8], planes: &mut [u8], n: usize) -> usize {
        let (lo, hi) = planes.split_at_mut(n.min(planes.len()));
        match self {
            Fused::Bf16 => zeros2::planes_bf16(src, lo, hi),
            Fused::Bytes2 => zeros2::planes_bytes2(src, lo, hi),
            Fused::Bytes4 => zeros4::planes_bytes4(src, planes),
        }
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

/// What the receiver wants from a pack, and where.
#[derive(Debug)]
pub(crate) enum Sink<'o> {
    /// The elements' bytes, `elem_bytes` each (shuffle+zstd): `out` is the whole segment.
    Elems {
        /// Size of one element.
        elem_bytes: usize,
        /// The decoded elements.
        out: &'o mut [u8],
    },
    /// bf16 elements widened to f32 (bf16+zstd decode): 4 bytes of `out` per element.
    WidenBf16(&'o mut [u8]),
    /// bf16 elements widened to f32 and added to the f32 in the buffer.
    AddBf16(&'o mut [u8]),
    /// f32 elements added to the f32 in the buffer (shuffle+zstd of f32, summed).
    AddF32(&'o mut [u8]),
}

impl Sink<'_> {
    /// Element size in the pack and number of elements.
    fn shape(&self) -> (usize, usize) {
        match self {
            Sink::Elems { elem_bytes, out } => (*elem_bytes, out.len() / (*elem_bytes).max(1)),
            Sink::WidenBf16(out) | Sink::AddBf16(out) => (2, out.len() / 4),
            Sink::AddF32(out) => (4, out.len() / 4),
        }
    }
}

/// The decoding side's scratch.
#[derive(Debug, Default)]
pub(crate) struct PackDecoder {
    /// Planes, `m` bytes each, one after the other.
    planes: Vec<u8>,
    bitmap: Vec<u8>,
    /// The present elements, unshuffled, when zeros of 1- or 8-byte elements were left out.
    dense: Vec<u8>,
}

impl PackDecoder {
    /// Decodes the pack `payload` into `sink`, whose buffer length gives the number of
    /// elements the receiver expects.
    ///
    /// # Errors
    /// As [`PackDecoder::read`]; also [`CodecError::Corrupt`] if the element size of an
    /// `Elems` sink is not one a pack can carry sparse (1, 2, 4, 8) but the pack is. The
    /// sink's buffer is unchanged on error.
    pub(crate) fn decode(
        &mut self,
        dctx: &mut DCtx<'static>,
        payload: &[u8],
        sink: Sink<'_>,
    ) -> Result<(), CodecError> {
        let (k, n) = sink.shape();
        let (sparse, m) = self.read(dctx, k, n, payload)?;
        let planes = &self.planes[..m * k];
        if !sparse {
            match sink {
                Sink::Elems { elem_bytes, out } => planes::unshuffle(elem_bytes, planes, out),
                Sink::WidenBf16(out) => lossy::decode_bf16_planes(planes, out),
                Sink::AddBf16(acc) => lossy::add_bf16_planes(planes, acc),
                Sink::AddF32(acc) => planes::add_unshuffled_f32(planes, acc),
            }
            return Ok(());
        }
        let (lo, hi) = planes.split_at(m.min(planes.len()));
        match sink {
            Sink::Elems { elem_bytes: 2, out } => zeros2::merge(Merge::Bytes2, &self.bitmap, lo, hi, out),
            Sink::WidenBf16(out) => zeros2::merge(Merge::WidenBf16, &self.bitmap, lo, hi, out),
            Sink::AddBf16(acc) => zeros2::merge(Merge::AddBf16, &self.bitmap, lo, hi, acc),
            Sink::Elems { elem_bytes: 4, out } => zeros4::merge(Sink4::Bytes4, &self.bitmap, planes4(planes, m), out),
            Sink::AddF32(acc) => zeros4::merge(Sink4::AddF32, &self.bitmap, planes4(planes, m), acc),
            Sink::Elems { elem_bytes, out } => {
                self.dense.resize(planes.len(), 0);
                planes::unshuffle(elem_bytes, planes, &mut self.dense);
                zeros::expand(elem_bytes, &self.bitmap, &self.dense, out)
            }
        }
    }

    /// Reads the pack `payload` of `n` elements of `elem_bytes` bytes into the scratch:
    /// the bitmap (when zeros were left out) and `k` planes of `m` bytes, one after the
    /// other. Returns (zeros left out, `m`).
    ///
    /// # Errors
    /// [`CodecError::Corrupt`] for unknown flags, a truncated or overlong payload, a bitmap
    /// with bits past `n`, or a bad zstd frame; [`CodecError::SizeMismatch`] for a zstd
    /// frame of another content size.
    fn read(
        &mut self,
        dctx: &mut DCtx<'static>,
        elem_bytes: usize,
        n: usize,
        payload: &[u8],
    ) -> Result<(bool, usize), CodecError> {
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
            zeros2::count_present(&self.bitmap)
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
        Ok((sparse, m))
    }
}

/// The four planes of `m` bytes at the front of `planes` (shorter ones if it is shorter,
/// which `zeros4::merge` refuses).
fn planes4(planes: &[u8], m: usize) -> [&[u8]; 4] {
    std::array::from_fn(|p| planes.get(p * m..(p + 1) * m).unwrap_or_default())
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

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;
