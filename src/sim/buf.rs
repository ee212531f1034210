//! An 8-byte-aligned byte buffer.
//!
//! The real driver hands the core a user's `Vec<T>` (aligned for `T`) and reads reduce-scatter
//! payloads into a `Vec<u64>` scratch, so the core's kernels see aligned typed slices there.
//! The simulator stores rank buffers and frame payloads the same way, so it exercises the
//! same kernel paths.

/// Bytes backed by `u64` words: the start is 8-byte aligned, the length any byte count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes { words: vec![0; len.div_ceil(8)], len }
    }

    /// A copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> AlignedBytes {
        let mut b = AlignedBytes::zeroed(bytes.len());
        b.as_bytes_mut().copy_from_slice(bytes);
        b
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows to at least `len` bytes (new bytes are zero); never shrinks.
    pub fn grow_to(&mut self, len: usize) {
        if len > self.len {
            self.words.resize(len.div_ceil(8), 0);
            self.len = len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_exact_length() {
        let b = AlignedBytes::from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(b.as_bytes(), &[1, 2, 3, 4, 5]);
        assert_eq!(b.as_bytes().as_ptr() as usize % 8, 0);
        let mut z = AlignedBytes::zeroed(0);
        assert!(z.is_empty());
        z.grow_to(9);
        assert_eq!(z.len(), 9);
        assert!(z.as_bytes().iter().all(|&x| x == 0));
    }
}
