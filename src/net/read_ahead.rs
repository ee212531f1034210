//! A read-ahead buffer for one ring link: small reads (a frame header, a latency-path
//! payload) are served from one `recv` of up to [`READ_AHEAD_BYTES`], so a burst of small
//! frames costs one system call instead of two per frame. Large reads (segments) go straight
//! into their destination, as before. Bytes come out in the order the kernel delivered them,
//! so framing, parking and CRC checks above it see the same stream.

use std::io::Read;

use crate::limits::READ_AHEAD_BYTES;

/// Reads at most this long go through the buffer; longer ones bypass it once it is empty.
const SMALL_READ_BYTES: usize = READ_AHEAD_BYTES / 4;

/// Bytes received from the kernel and not yet handed out.
#[derive(Debug)]
pub(super) struct ReadAhead {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadAhead {
    pub(super) fn new() -> ReadAhead {
        ReadAhead { buf: vec![0u8; READ_AHEAD_BYTES].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Fills the start of `dst` (not empty): from buffered bytes without a system call if
    /// any, else with one `read` of `stream`. Returns (bytes copied into `dst`, bytes
    /// received from the kernel by this call); (0, 0) is the end of stream.
    ///
    /// # Errors
    /// The `read` error (`WouldBlock` included), with nothing consumed.
    pub(super) fn read(&mut self, stream: &mut impl Read, dst: &mut [u8]) -> std::io::Result<(usize, usize)> {
        if self.start == self.end && dst.len() > SMALL_READ_BYTES {
            let n = stream.read(dst)?;
            return Ok((n, n));
        }
        let mut received = 0;
        if self.start == self.end {
            received = stream.read(&mut self.buf)?;
            (self.start, self.end) = (0, received);
        }
        let n = dst.len().min(self.end - self.start);
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok((n, received))
    }

    /// The next `len` bytes, if the buffer holds them all (without consuming them).
    pub(super) fn peek(&self, len: usize) -> Option<&[u8]> {
        (self.end - self.start >= len).then(|| &self.buf[self.start..self.start + len])
    }

    /// Consumes `len` bytes [`ReadAhead::peek`] returned.
    pub(super) fn consume(&mut self, len: usize) {
        self.start += len.min(self.end - self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes in the given chunk sizes, counting reads.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunks: Vec<usize>,
        reads: usize,
    }

    impl Read for Chunked {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let Some(&c) = self.chunks.first() else {
                return Err(std::io::ErrorKind::WouldBlock.into());
            };
            let n = c.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            if n == c {
                self.chunks.remove(0);
            } else {
                self.chunks[0] -= n;
            }
            Ok(n)
        }
    }

    #[test]
    fn peeked_bytes_are_the_next_ones_and_consumed_once() {
        let data: Vec<u8> = (0..500u32).map(|i| (i * 3) as u8).collect();
        let mut s = Chunked { data: data.clone(), pos: 0, chunks: vec![500], reads: 0 };
        let mut ra = ReadAhead::new();
        let mut head = [0u8; 72];
        ra.read(&mut s, &mut head).unwrap();
        assert_eq!(ra.peek(429), None, "only 428 bytes are buffered");
        assert_eq!(ra.peek(400), Some(&data[72..472]));
        ra.consume(400);
        let mut rest = [0u8; 28];
        assert_eq!(ra.read(&mut s, &mut rest).unwrap(), (28, 0));
        assert_eq!(&rest[..], &data[472..]);
        assert_eq!(s.reads, 1);
    }

    #[test]
    fn small_reads_share_one_recv_and_keep_the_byte_order() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut s = Chunked { data: data.clone(), pos: 0, chunks: vec![3000], reads: 0 };
        let mut ra = ReadAhead::new();
        let mut got = Vec::new();
        for want in [72, 1000, 72, 1000, 72, 784] {
            let mut dst = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                let (n, _) = ra.read(&mut s, &mut dst[filled..]).unwrap();
                filled += n;
            }
            got.extend_from_slice(&dst);
        }
        assert_eq!(got, data);
        assert_eq!(s.reads, 1, "six small reads, one system call");
        assert!(ra.read(&mut s, &mut [0u8; 8]).is_err(), "then WouldBlock");
    }

    #[test]
    fn large_reads_bypass_the_buffer_once_it_is_drained() {
        let data: Vec<u8> = (0..(3 * READ_AHEAD_BYTES) as u32).map(|i| i as u8).collect();
        let mut s = Chunked { data: data.clone(), pos: 0, chunks: vec![100, 3 * READ_AHEAD_BYTES], reads: 0 };
        let mut ra = ReadAhead::new();
        let mut head = [0u8; 72];
        assert_eq!(ra.read(&mut s, &mut head).unwrap(), (72, 100));
        let mut big = vec![0u8; 2 * READ_AHEAD_BYTES];
        assert_eq!(ra.read(&mut s, &mut big).unwrap(), (28, 0), "the buffered rest first");
        let (n, received) = ra.read(&mut s, &mut big[28..]).unwrap();
        assert_eq!((n, received), (2 * READ_AHEAD_BYTES - 28, 2 * READ_AHEAD_BYTES - 28));
        assert_eq!(&big[..], &data[72..72 + 2 * READ_AHEAD_BYTES]);
        assert_eq!(&head[..], &data[..72]);
    }
}
