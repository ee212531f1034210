//! Exact retry's backup: the input bytes a call overwrites, saved just before each first
//! write, so that a redo after a view change starts from the caller's input.

use std::ops::Range;

use super::{Collective, Link};
use crate::core::schedule::{chunk_range, segment_range};
use crate::wire::Header;

/// The input bytes a call overwrote, saved segment by segment just before each first write
/// (when the bytes are in cache anyway), so that a redo can restore the input.
#[derive(Debug)]
pub(super) struct Backup {
    /// At least as long as the buffer (a longer one from an earlier, larger call is kept
    /// whole); only saved segments hold meaningful bytes.
    pub(super) bytes: Vec<u8>,
    /// Per part and per block: segments saved so far. Segments of a chunk are written in
    /// order, and a chunk written in reduce-scatter is not saved again in all-gather.
    pub(super) saved: Vec<Vec<u32>>,
}

impl Collective {
    /// Gives the collective a buffer (its capacity is reused) in which to save the input
    /// bytes it overwrites, just before it overwrites them, so that
    /// [`Collective::restore_input`] can put the input back for a redo. Call it right after
    /// `start`. The latency path keeps every input anyway and needs none: it hands `bytes`
    /// back, so that the caller keeps the buffer for its next large call instead of
    /// allocating and zeroing it again (training loops interleave small and large calls).
    #[must_use = "a buffer handed back is the caller's to keep for the next call"]
    pub fn attach_backup(&mut self, mut bytes: Vec<u8>, buf_len: usize) -> Option<Vec<u8>> {
        if self.latency.is_some() || self.parts.is_empty() {
            return Some(bytes);
        }
        if bytes.len() < buf_len {
            if bytes.capacity() < buf_len {
                // A fresh zeroed allocation: its pages are touched only where segments are
                // saved, and the old contents need no copy.
                drop(std::mem::take(&mut bytes));
                bytes = vec![0; buf_len];
            } else {
                bytes.resize(buf_len, 0);
            }
        }
        let saved = self.parts.iter().map(|_| vec![0; self.spec.world]).collect();
        self.backup = Some(Backup { bytes, saved });
        None
    }

    /// Takes back the buffer given to [`Collective::attach_backup`].
    pub fn take_backup(&mut self) -> Option<Vec<u8>> {
        self.backup.take().map(|b| b.bytes)
    }

    /// Must be called before the payload of `h` is read into the range
    /// [`Collective::recv_target`] returned for it: saves the input bytes there first.
    pub fn before_in_place(&mut self, link: Link, h: &Header, buf: &[u8]) {
        if self.backup.is_none() {
            return;
        }
        let Some(i) = self.parts.iter().position(|p| p.send_link.opposite() == link) else { return };
        let Some(cur) = self.parts[i].expect else { return };
        let (block, bytes) = self.expected_bytes(i, cur);
        if h.segment == cur.segment {
            self.save_input(i, block, cur.segment, bytes, buf);
        }
    }

    pub(super) fn save_input(&mut self, i: usize, block: usize, segment: u32, bytes: Range<usize>, buf: &[u8]) {
        let Some(b) = self.backup.as_mut() else { return };
        let Some(done) = b.saved.get_mut(i).and_then(|p| p.get_mut(block)) else { return };
        if segment >= *done && bytes.end <= buf.len() && bytes.end <= b.bytes.len() {
            crate::core::stream::copy_bypassing_cache(&mut b.bytes[bytes.clone()], &buf[bytes]);
            *done = segment + 1;
        }
    }

    /// Puts this rank's input back into `buf`, wherever this call overwrote it. Returns
    /// false if it cannot (a call that wrote its buffer without a backup attached).
    pub fn restore_input(&self, buf: &mut [u8]) -> bool {
        if let Some(d) = &self.latency {
            let input = d.input(self.spec.pos);
            if input.len() == buf.len() {
                buf.copy_from_slice(input);
            }
            return input.len() == buf.len();
        }
        let Some(b) = &self.backup else { return self.parts.is_empty() };
        let esize = self.spec.dtype.size();
        let w = self.spec.world;
        for (i, part) in self.parts.iter().enumerate() {
            for (block, &done) in b.saved[i].iter().enumerate() {
                let r = chunk_range(part.elems.len(), w, block);
                for seg in 0..done as usize {
                    let e = segment_range(r.len(), self.seg_elems, seg);
                    let start = (part.elems.start + r.start + e.start) * esize;
                    let end = (part.elems.start + r.start + e.end) * esize;
                    buf[start..end].copy_from_slice(&b.bytes[start..end]);
                }
            }
        }
        true
    }
}
