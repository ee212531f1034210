//! Zero elements of 8-byte elements left out of a plane pack: the presence bitmap, the
//! compaction of the present elements and the expansion back (and the expansion of 1-byte
//! elements, which this side never sends sparse but a peer may). 2- and 4-byte elements
//! have their own fused kernels in `zeros2` and `zeros4`.
//!
//! The kernels work on whole words: a mixed group of 8 elements is unpredictable, so both
//! directions are branch-free there; all-absent and all-present groups take a shortcut.

use super::CodecError;

/// Writes the presence bitmap of `elems` (`bitmap` has `ceil(n / 8)` bytes; present: some
/// byte non-zero) and returns how many elements are present, for 8-byte elements; `None`
/// for other sizes.
pub(super) fn presence(elem_bytes: usize, elems: &[u8], bitmap: &mut [u8]) -> Option<usize> {
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
    (elem_bytes == 8).then(|| run::<8>(elems, bitmap))
}

/// The compaction kernel for one element size.
macro_rules! compact_kernel {
    ($(#[$m:meta])* $vis:vis fn $compact:ident, $word:ty) => {
        $(#[$m])*
        $vis fn $compact(elems: &[u8], bitmap: &[u8], dense: &mut [u8]) {
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
    };
}

/// The expansion kernel for one element size.
macro_rules! expand_kernel {
    ($expand:ident, $word:ty) => {
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

compact_kernel!(
    /// Copies the 8-byte elements of `elems` that `bitmap` marks present into `dense`, in
    /// order. `dense` holds exactly the present elements (caller's invariant: from
    /// [`presence`]).
    pub(super) fn compact8, u64
);
expand_kernel!(expand1, u8);
expand_kernel!(expand8, u64);

/// Inverse of [`compact8`] (and of its 1-byte counterpart): the elements, absent ones zero, from the bitmap and the present
/// elements `dense` into `out` (`n` elements of `elem_bytes`: 1 or 8; a peer may send
/// 1-byte elements sparse although this side never does).
///
/// # Errors
/// [`CodecError::Corrupt`] for another element size, if `dense` holds another number of
/// elements than the bitmap marks present, or the sizes disagree (not possible for what
/// `PackDecoder` reads; checked, not assumed).
pub(super) fn expand(elem_bytes: usize, bitmap: &[u8], dense: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
    let k = elem_bytes;
    if !matches!(k, 1 | 8) || present * k != dense.len() || bitmap.len() != (out.len() / k).div_ceil(8) {
        return Err(CodecError::Corrupt { reason: "pack bitmap and planes disagree" });
    }
    match k {
        1 => expand1(bitmap, dense, out),
        _ => expand8(bitmap, dense, out),
    }
    Ok(())
}
