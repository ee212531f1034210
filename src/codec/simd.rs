//! Run-time selection of AVX2 for the byte kernels, and the few kernels written with AVX2
//! intrinsics. With the thread-clock read in `cpu_share`, the only `unsafe` in the codecs.
//!
//! The kernels in `planes` and `lossy` are plain loops that the compiler vectorizes. For
//! the x86-64 baseline (SSE2) it cannot vectorize the byte transposes well: measured on
//! an AMD EPYC with 512 KiB segments (best of 20 runs), shuffle of 4-byte elements runs at
//! 0.7 GB/s and f32 to bf16 at 2.8 GB/s; the same loops compiled with AVX2 run at 5.4-6.5
//! and 6.5 GB/s (memcpy: 5.5-7 GB/s). [`avx2_dispatch`] compiles a kernel twice and calls the AVX2 copy
//! when the CPU has AVX2 (std caches the detection: one relaxed load per call). Other
//! targets (aarch64 has NEON in its baseline) use the portable copy.
//!
//! Leaving the zero elements out of a plane pack (`zeros2`, `zeros4`) is a compaction by a
//! data-dependent mask, which no compiler vectorizes: the scalar loop costs about 3 ns per
//! element, more than the 2 bytes a bf16 zero saves are worth. [`split2`], [`merge2`],
//! [`split4`] and [`merge4`] do it 16 elements at a time: the block's bytes are first
//! sorted into planes, then each plane's 16 bytes are compacted (or expanded) with one byte
//! shuffle (`pshufb`) driven by a table of shuffle masks indexed by 8 presence bits. They
//! process whole blocks of 16 and return how far they got; the portable code of `zeros2`
//! and `zeros4` finishes the rest (and is all of it on CPUs without AVX2). Their loads and
//! stores go through `bytemuck` casts of byte arrays, so the only unsafe operation is
//! calling a function compiled for AVX2.

/// Defines `fn $name` that runs `$body` compiled with AVX2 when the CPU supports it and
/// `fn $portable` (the same body for the target's baseline), which tests compare. The AVX2
/// copy may also use POPCNT.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $portable:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        #[inline(always)]
        $vis fn $portable($($arg: $ty),*) $(-> $ret)? $body

        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,popcnt")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if $crate::codec::simd::has_avx2() {
                    // SAFETY: `avx2` only requires that the CPU supports AVX2 and POPCNT,
                    // checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;

/// Whether this CPU has AVX2 and POPCNT (every AVX2 CPU has POPCNT; both are checked):
/// what every AVX2 copy of a kernel here is compiled for.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
}

/// Whether [`split2`] and [`merge2`] (and the 4-byte ones) run vectorized on this CPU;
/// without, their callers' portable loops do all the work (about 3 ns per element).
pub(super) fn compaction_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    return has_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What a 2-byte element stream is made of, for [`split2`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// f32 (host order), rounded to bfloat16 (round to nearest even, NaN kept quiet).
    F32ToBf16,
    /// 2-byte elements as they are: byte 0 goes to the low plane.
    Bytes2,
}

/// What [`merge2`] writes for each element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sink {
    /// The 2-byte element (low plane byte first).
    Bytes2,
    /// The element as bfloat16 widened to f32 (host order).
    WidenBf16,
    /// The element as bfloat16 widened to f32 and added into the f32 already there.
    AddBf16,
}

/// The blocks of 16 elements [`super::zeros2`] splits, with AVX2: presence bits into
/// `bitmap`, the bytes of the present elements into `lo` and `hi` from 0. Returns
/// `(elements done, present elements written)`, `(0, 0)` without AVX2. `lo` and `hi` must
/// hold at least as many bytes as there are elements (stores may reach 16 bytes past the
/// last present element written, never past the block).
pub(super) fn split2(source: Source, src: &[u8], bitmap: &mut [u8], lo: &mut [u8], hi: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return match source {
            // SAFETY: `split` only requires AVX2 and POPCNT, checked just above.
            Source::F32ToBf16 => unsafe { x86::split::<true>(src, bitmap, lo, hi) },
            // SAFETY: as above.
            Source::Bytes2 => unsafe { x86::split::<false>(src, bitmap, lo, hi) },
        };
    }
    let _ = (source, src, bitmap, lo, hi);
    (0, 0)
}

/// The blocks of 16 elements [`super::zeros2`] merges, with AVX2: each element of `out`
/// from its presence bit in `bitmap` and, when present, the next bytes of `lo` and `hi`,
/// written as `sink` says. Returns `(elements done, present elements read)`, `(0, 0)`
/// without AVX2. Never reads past `lo`, `hi` or `bitmap`, whatever their contents: plane
/// bytes past the end read as zero.
pub(super) fn merge2(sink: Sink, bitmap: &[u8], lo: &[u8], hi: &[u8], out: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return match sink {
            // SAFETY: `merge` only requires AVX2 and POPCNT, checked just above.
            Sink::Bytes2 => unsafe { x86::merge::<{ x86::BYTES2 }>(bitmap, lo, hi, out) },
            // SAFETY: as above.
            Sink::WidenBf16 => unsafe { x86::merge::<{ x86::WIDEN_BF16 }>(bitmap, lo, hi, out) },
            // SAFETY: as above.
            Sink::AddBf16 => unsafe { x86::merge::<{ x86::ADD_BF16 }>(bitmap, lo, hi, out) },
        };
    }
    let _ = (sink, bitmap, lo, hi, out);
    (0, 0)
}

/// What [`merge4`] writes for each element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sink4 {
    /// The 4-byte element (plane `p` gives byte `p`).
    Bytes4,
    /// The element as f32 (host order) added into the f32 already there.
    AddF32,
}

/// [`split2`] for 4-byte elements as they are, into four planes (byte `p` to `planes[p]`).
/// Every plane must hold at least as many bytes as there are elements.
pub(super) fn split4(src: &[u8], bitmap: &mut [u8], planes: [&mut [u8]; 4]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `split4` only requires AVX2 and POPCNT, checked just above.
        return unsafe { x86::split4(src, bitmap, planes) };
    }
    let _ = (src, bitmap, planes);
    (0, 0)
}

/// [`merge2`] for 4-byte elements from four planes, written as `sink` says.
pub(super) fn merge4(sink: Sink4, bitmap: &[u8], planes: [&[u8]; 4], out: &mut [u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return match sink {
            // SAFETY: `merge4` only requires AVX2 and POPCNT, checked just above.
            Sink4::Bytes4 => unsafe { x86::merge4::<false>(bitmap, planes, out) },
            // SAFETY: as above.
            Sink4::AddF32 => unsafe { x86::merge4::<true>(bitmap, planes, out) },
        };
    }
    let _ = (sink, bitmap, planes, out);
    (0, 0)
}

/// The AVX2 kernels. Every function requires AVX2 and POPCNT (`# Safety` of each); none dereferences
/// a pointer: vectors are loaded from and stored to byte arrays with `bytemuck::cast`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `merge` writes 2-byte elements.
    pub(super) const BYTES2: u8 = 0;
    /// `merge` writes bfloat16 widened to f32.
    pub(super) const WIDEN_BF16: u8 = 1;
    /// `merge` adds bfloat16 widened to f32 into `out`.
    pub(super) const ADD_BF16: u8 = 2;

    /// `pshufb` indices that gather the bytes whose bits are set in the index, in order,
    /// into the low bytes (`offset` added to each index); the other bytes select zero.
    const fn compact_table(offset: u64) -> [u64; 256] {
        let mut table = [0u64; 256];
        let mut b = 0;
        while b < 256 {
            let (mut v, mut k, mut i) = (0x8080_8080_8080_8080u64, 0, 0);
            while i < 8 {
                if b >> i & 1 == 1 {
                    v = v & !(0xff << (8 * k)) | (i + offset) << (8 * k);
                    k += 1;
                }
                i += 1;
            }
            table[b as usize] = v;
            b += 1;
        }
        table
    }

    /// Compaction masks for elements 0..8 of a block.
    const COMPACT_LOW: [u64; 256] = compact_table(0);
    /// Compaction masks for elements 8..16 of a block.
    const COMPACT_HIGH: [u64; 256] = compact_table(8);

    /// `pshufb` indices that put byte `k` (the `k`-th set bit) at the position of the `k`-th
    /// set bit; clear bits select zero (0x80, which stays >= 0x80 when up to 8 is added).
    const EXPAND: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut b = 0;
        while b < 256 {
            let (mut v, mut k, mut i) = (0u64, 0u64, 0);
            while i < 8 {
                let byte = if b >> i & 1 == 1 {
                    k += 1;
                    k - 1
                } else {
                    0x80
                };
                v |= byte << (8 * i);
                i += 1;
            }
            table[b as usize] = v;
            b += 1;
        }
        table
    };

    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn load256(bytes: &[u8]) -> __m256i {
        let mut a = [0u8; 32];
        a.copy_from_slice(&bytes[..32]);
        bytemuck::cast(a)
    }

    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn store256(bytes: &mut [u8], v: __m256i) {
        bytes[..32].copy_from_slice(&bytemuck::cast::<__m256i, [u8; 32]>(v));
    }

    /// bf16 bits of eight f32 in the low halves of the lanes: as `lossy::f32_to_bf16_bits`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn round_bf16(bits: __m256i) -> __m256i {
        let high = _mm256_srli_epi32::<16>(bits);
        let lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)));
        let quiet_nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
        let magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff));
        let is_nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f80_0000));
        _mm256_blendv_epi8(rounded, quiet_nan, is_nan)
    }

    /// The low and high bytes of the 16 elements at the front of `src` (64 bytes of f32
    /// when `ROUND`, else 32 bytes of 2-byte elements), each in element order.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn load_planes<const ROUND: bool>(src: &[u8]) -> (__m128i, __m128i) {
        // In each lane: the low bytes of its 8 elements, then their high bytes.
        let by_plane = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, //
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        let x = if ROUND {
            // packus keeps each lane's halves: elements 0-3, 8-11 | 4-7, 12-15.
            let a = round_bf16(load256(&src[..32]));
            let b = round_bf16(load256(&src[32..64]));
            let s = _mm256_shuffle_epi8(_mm256_packus_epi32(a, b), by_plane);
            // Dwords now: lo 0-3, lo 8-11, hi 0-3, hi 8-11 | lo 4-7, lo 12-15, hi 4-7, hi 12-15.
            _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        } else {
            let s = _mm256_shuffle_epi8(load256(&src[..32]), by_plane);
            // Qwords now: lo 0-7, hi 0-7 | lo 8-15, hi 8-15.
            _mm256_permute4x64_epi64::<0b11_01_10_00>(s)
        };
        (_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x))
    }

    /// See [`super::split2`]; `ROUND` selects [`super::Source::F32ToBf16`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn split<const ROUND: bool>(
        src: &[u8],
        bitmap: &mut [u8],
        lo: &mut [u8],
        hi: &mut [u8],
    ) -> (usize, usize) {
        let block_bytes = if ROUND { 64 } else { 32 };
        let (mut done, mut at) = (0, 0);
        for (block, bits) in src.chunks_exact(block_bytes).zip(bitmap.chunks_exact_mut(2)) {
            let (l, h) = load_planes::<ROUND>(block);
            let zero = _mm_cmpeq_epi8(_mm_or_si128(l, h), _mm_setzero_si128());
            let present = !(_mm_movemask_epi8(zero) as u32) & 0xffff;
            let (b0, b1) = (present as u8, (present >> 8) as u8);
            bits[0] = b0;
            bits[1] = b1;
            let (mask, c0) = compact_mask(b0, b1);
            store_compacted(lo, at, c0, _mm_shuffle_epi8(l, mask));
            store_compacted(hi, at, c0, _mm_shuffle_epi8(h, mask));
            at += present.count_ones() as usize;
            done += 16;
        }
        (done, at)
    }

    /// The 16 bytes of `plane` from `at`; zeros for those past its end.
    #[inline]
    fn window(plane: &[u8], at: usize) -> __m128i {
        let rest = plane.get(at..).unwrap_or_default();
        let bytes = match rest.first_chunk::<16>() {
            Some(bytes) => *bytes,
            None => {
                let mut bytes = [0u8; 16];
                bytes[..rest.len()].copy_from_slice(rest);
                bytes
            }
        };
        bytemuck::cast(bytes)
    }

    /// See [`super::merge2`]; `MODE` is one of [`BYTES2`], [`WIDEN_BF16`], [`ADD_BF16`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn merge<const MODE: u8>(bitmap: &[u8], lo: &[u8], hi: &[u8], out: &mut [u8]) -> (usize, usize) {
        let block_bytes = if MODE == BYTES2 { 32 } else { 64 };
        let (mut done, mut at) = (0, 0);
        for (block, bits) in out.chunks_exact_mut(block_bytes).zip(bitmap.chunks_exact(2)) {
            let (l, h) = (window(lo, at), window(hi, at));
            let (b0, b1) = (bits[0], bits[1]);
            let c0 = u64::from(b0.count_ones());
            let mask = _mm_set_epi64x(
                (EXPAND[usize::from(b1)] + c0 * 0x0101_0101_0101_0101) as i64,
                EXPAND[usize::from(b0)] as i64,
            );
            let (l, h) = (_mm_shuffle_epi8(l, mask), _mm_shuffle_epi8(h, mask));
            let (e0, e1) = (_mm_unpacklo_epi8(l, h), _mm_unpackhi_epi8(l, h));
            if MODE == BYTES2 {
                store256(block, _mm256_set_m128i(e1, e0));
            } else {
                let (half0, half1) = block.split_at_mut(32);
                for (dst, e) in [(half0, e0), (half1, e1)] {
                    let wide = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(e));
                    if MODE == WIDEN_BF16 {
                        store256(dst, wide);
                    } else {
                        let sum = _mm256_add_ps(_mm256_castsi256_ps(load256(dst)), _mm256_castsi256_ps(wide));
                        store256(dst, _mm256_castps_si256(sum));
                    }
                }
            }
            at += (b0.count_ones() + b1.count_ones()) as usize;
            done += 16;
        }
        (done, at)
    }

    /// The compaction mask for a block of 16 elements with presence bits `b0` (elements
    /// 0..8) and `b1` (8..16), and where the second half's bytes go (`at` + `b0`'s count).
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn compact_mask(b0: u8, b1: u8) -> (__m128i, usize) {
        let mask = _mm_set_epi64x(COMPACT_HIGH[usize::from(b1)] as i64, COMPACT_LOW[usize::from(b0)] as i64);
        (mask, b0.count_ones() as usize)
    }

    /// Stores the compacted bytes `c` (block elements 0..8 in the low half, 8..16 in the
    /// high half, each compacted to its front) at `at` and `at + c0` of `plane`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn store_compacted(plane: &mut [u8], at: usize, c0: usize, c: __m128i) {
        // The first store's tail is overwritten by the second, the second's by the next
        // block (or ignored past the last present element).
        plane[at..at + 8].copy_from_slice(&(_mm_cvtsi128_si64(c) as u64).to_le_bytes());
        plane[at + c0..at + c0 + 8].copy_from_slice(&(_mm_extract_epi64::<1>(c) as u64).to_le_bytes());
    }

    /// See [`super::split4`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn split4(src: &[u8], bitmap: &mut [u8], planes: [&mut [u8]; 4]) -> (usize, usize) {
        // In each lane: byte 0 of its 4 elements, then bytes 1, 2, 3.
        let by_plane = _mm256_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, //
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
        );
        // Then qword p: byte p of the vector's 8 elements.
        let gather = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let [p0, p1, p2, p3] = planes;
        let (mut done, mut at) = (0, 0);
        for (block, bits) in src.chunks_exact(64).zip(bitmap.chunks_exact_mut(2)) {
            let (a, b) = (load256(&block[..32]), load256(&block[32..]));
            let zero = _mm256_setzero_si256();
            let za = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, zero))) as u32;
            let zb = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, zero))) as u32;
            let present = !(za | zb << 8) & 0xffff;
            let (b0, b1) = (present as u8, (present >> 8) as u8);
            bits[0] = b0;
            bits[1] = b1;
            let a = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(a, by_plane), gather);
            let b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(b, by_plane), gather);
            let (a01, a23) = (_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
            let (b01, b23) = (_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
            let (mask, c0) = compact_mask(b0, b1);
            let bytes = [
                _mm_unpacklo_epi64(a01, b01),
                _mm_unpackhi_epi64(a01, b01),
                _mm_unpacklo_epi64(a23, b23),
                _mm_unpackhi_epi64(a23, b23),
            ];
            for (plane, v) in [&mut *p0, &mut *p1, &mut *p2, &mut *p3].into_iter().zip(bytes) {
                store_compacted(plane, at, c0, _mm_shuffle_epi8(v, mask));
            }
            at += present.count_ones() as usize;
            done += 16;
        }
        (done, at)
    }

    /// See [`super::merge4`]; `ADD` selects [`super::Sink4::AddF32`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn merge4<const ADD: bool>(bitmap: &[u8], planes: [&[u8]; 4], out: &mut [u8]) -> (usize, usize) {
        let (mut done, mut at) = (0, 0);
        for (block, bits) in out.chunks_exact_mut(64).zip(bitmap.chunks_exact(2)) {
            let (b0, b1) = (bits[0], bits[1]);
            let c0 = u64::from(b0.count_ones());
            let mask = _mm_set_epi64x(
                (EXPAND[usize::from(b1)] + c0 * 0x0101_0101_0101_0101) as i64,
                EXPAND[usize::from(b0)] as i64,
            );
            let [v0, v1, v2, v3] = planes.map(|p| _mm_shuffle_epi8(window(p, at), mask));
            let (t01lo, t01hi) = (_mm_unpacklo_epi8(v0, v1), _mm_unpackhi_epi8(v0, v1));
            let (t23lo, t23hi) = (_mm_unpacklo_epi8(v2, v3), _mm_unpackhi_epi8(v2, v3));
            let first = _mm256_set_m128i(_mm_unpackhi_epi16(t01lo, t23lo), _mm_unpacklo_epi16(t01lo, t23lo));
            let second = _mm256_set_m128i(_mm_unpackhi_epi16(t01hi, t23hi), _mm_unpacklo_epi16(t01hi, t23hi));
            let (half0, half1) = block.split_at_mut(32);
            for (dst, e) in [(half0, first), (half1, second)] {
                if ADD {
                    let sum = _mm256_add_ps(_mm256_castsi256_ps(load256(dst)), _mm256_castsi256_ps(e));
                    store256(dst, _mm256_castps_si256(sum));
                } else {
                    store256(dst, e);
                }
            }
            at += (b0.count_ones() + b1.count_ones()) as usize;
            done += 16;
        }
        (done, at)
    }
}
