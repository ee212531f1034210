//! Copies that bypass the cache (non-temporal stores), for exact retry's backup: the input
//! saved before a call overwrites it is read again only if the call must be redone, so
//! writing it through the cache would first read every destination line from memory
//! (read-for-ownership) and then evict the lines the reduction is about to use. The only
//! `unsafe` of the core is here.

/// Copies `src` into `dst` (equal lengths) with non-temporal stores where the CPU has them
/// (SSE2, in every x86-64), else with an ordinary copy. Later loads of `dst` by this thread
/// see the bytes (a store fence ends the copy).
///
/// # Panics
/// If the lengths differ.
pub fn copy_bypassing_cache(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 64 * 64;
        let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
        for (dc, sc) in d.chunks_exact_mut(64).zip(s.chunks_exact(64)) {
            let (p, q) = (dc.as_mut_ptr().cast::<__m128i>(), sc.as_ptr().cast::<__m128i>());
            for k in 0..4 {
                // SAFETY: `dc` and `sc` are 64 bytes, so p + k and q + k (k < 4) point to
                // 16 bytes inside them; `dc` starts 16-byte aligned (`head` aligned the body
                // and chunks of 64 keep it), as the streaming store requires; the load is
                // unaligned. SSE2 is in the x86-64 baseline.
                unsafe { _mm_stream_si128(p.add(k), _mm_loadu_si128(q.add(k))) };
            }
        }
        // SAFETY: a fence has no preconditions; it orders the streaming stores above before
        // every later store, as ordinary stores are ordered.
        unsafe { _mm_sfence() };
        dst[head + body..].copy_from_slice(&src[head + body..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_any_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..17 {
            for len in [0, 1, 15, 16, 63, 64, 65, 1000, 4096 - offset] {
                let mut dst = vec![0u8; 4200];
                copy_bypassing_cache(&mut dst[offset..offset + len], &src[100..100 + len]);
                assert_eq!(&dst[offset..offset + len], &src[100..100 + len], "offset {offset} len {len}");
                assert!(dst[..offset].iter().chain(&dst[offset + len..]).all(|&b| b == 0), "wrote outside");
            }
        }
    }
}
