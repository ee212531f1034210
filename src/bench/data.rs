//! `ringbench --data FILE`: buffers filled with the user's own data (gradients saved from
//! training) instead of the check pattern, so codecs are measured on what they will carry.
//!
//! The file holds raw little-endian elements of the run's `--dtype`. Rank `r` of `n` starts
//! `r/n` of the way into the file and wraps around at its end, so ranks contribute
//! different data, as data-parallel ranks do.

use std::path::Path;

use crate::DataType;

/// Largest data file read, in bytes: the sample is repeated to fill larger buffers.
pub const DATA_FILE_BYTES_MAX: u64 = 1 << 30;

/// A data file's elements, in host byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    bytes: Vec<u8>,
    elem_bytes: usize,
}

impl DataFile {
    /// Reads `path` as little-endian elements of `dtype`; a trailing partial element is
    /// ignored.
    ///
    /// # Errors
    /// A message naming the file if it cannot be read, is larger than
    /// [`DATA_FILE_BYTES_MAX`], or holds no whole element.
    pub fn read(path: &Path, dtype: DataType) -> Result<DataFile, String> {
        let name = path.display();
        let len = std::fs::metadata(path).map_err(|e| format!("--data {name}: {e}"))?.len();
        if len > DATA_FILE_BYTES_MAX {
            return Err(format!("--data {name}: {len} bytes is over the limit of {DATA_FILE_BYTES_MAX}"));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("--data {name}: {e}"))?;
        DataFile::from_le_bytes(bytes, dtype).ok_or_else(|| format!("--data {name}: no whole {} element", dtype.name()))
    }

    /// The elements of `dtype` in `bytes` (little-endian), or `None` if there is not one.
    pub fn from_le_bytes(mut bytes: Vec<u8>, dtype: DataType) -> Option<DataFile> {
        let elem_bytes = dtype.size();
        bytes.truncate(bytes.len() / elem_bytes * elem_bytes);
        if bytes.is_empty() {
            return None;
        }
        if cfg!(target_endian = "big") {
            bytes.chunks_exact_mut(elem_bytes).for_each(<[u8]>::reverse);
        }
        Some(DataFile { bytes, elem_bytes })
    }

    /// Fills `dst` (whole elements) with rank `rank` of `world`'s share: the file from
    /// `rank/world` of the way in, wrapping around.
    pub fn fill(&self, rank: usize, world: usize, dst: &mut [u8]) {
        let elems = self.bytes.len() / self.elem_bytes;
        let mut at = elems * rank / world.max(1) * self.elem_bytes;
        let mut done = 0;
        while done < dst.len() {
            let n = (self.bytes.len() - at).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&self.bytes[at..at + n]);
            done += n;
            at = (at + n) % self.bytes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_start_at_their_share_and_wrap_around() {
        let data = DataFile::from_le_bytes((0u8..16).collect(), DataType::I32).expect("four elements");
        let mut dst = vec![0u8; 24];
        data.fill(0, 2, &mut dst);
        assert_eq!(&dst[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]);
        data.fill(1, 2, &mut dst[..12]);
        assert_eq!(&dst[..12], &[8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3]);
        assert_eq!(DataFile::from_le_bytes(vec![1, 2, 3], DataType::I32), None);
        assert_eq!(DataFile::from_le_bytes(vec![1, 2, 3, 4, 5], DataType::I32).map(|d| d.bytes.len()), Some(4));
    }
}
