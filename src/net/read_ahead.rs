//! A read-ahead buffer for one ring link: small reads (a frame header, a latency-path
//! payload) are served from one `recv` of up to [`READ_AHEAD_BYTES`], so a burst of small
//! frames costs one system call instead of two per frame. Large reads (segments) go straight
//! into their destination, as before. Bytes come out in the order the kernel delivered them,
//! so framing, parking and CRC checks above it see the same stream.
//!
//! A `recv` that returns fewer bytes than it asked for found the socket's queue empty (on
//! Linux, `tcp_recvmsg` returns short only once the receive queue and the backlog are
//! drained), and the edge-triggered poller reports the next arrival. Until that report
//! ([`ReadAhead::ready`]) reads answer `WouldBlock` without a system call: on the latency
//! path that was one `recv` in two, each returning `EAGAIN`. Once the peer's end of stream
//! or an error was reported, every read goes to the kernel, since a short read before the
//! end of stream raises no new event for it.

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
    /// The last `recv` came back short: the kernel holds nothing until the poller says so.
    drained: bool,
    /// The poller reported the end of stream or an error: no more short-read inference.
    closing: bool,
}

impl ReadAhead {
    pub(super) fn new() -> ReadAhead {
        ReadAhead {
            buf: vec![0u8; READ_AHEAD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            drained: false,
            closing: false,
        }
    }

    /// The poller reported the socket readable (`closed`: its end of stream or an error).
    pub(super) fn ready(&mut self, closed: bool) {
        self.drained = false;
        self.closing |= closed;
    }

    /// Notes what a `recv` of `asked` bytes that returned `n` says about the socket.
    fn received(&mut self, n: usize, asked: usize) {
        self.drained = n > 0 && n < asked && !self.closing;
    }

    /// Fills the start of `dst` (not empty): from buffered bytes without a system call if
    /// any, else with one `read` of `stream`. Returns (bytes copied into `dst`, bytes
    /// received from the kernel by this call); (0, 0) is the end of stream.
    ///
    /// # Errors
    /// The `read` error (`WouldBlock` included, also without a system call while the socket
    /// is known drained), with nothing consumed.
    pub(super) fn read(&mut self, stream: &mut impl Read, dst: &mut [u8]) -> std::io::Result<(usize, usize)> {
        if self.start == self.end && self.drained {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        if self.start == self.end && dst.len() > SMALL_READ_BYTES {
            let n = stream.read(dst)?;
            self.received(n, dst.len());
            return Ok((n, n));
        }
        let mut received = 0;
        if self.start == self.end {
            received = stream.read(&mut self.buf)?;
            self.received(received, self.buf.len());
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
        assert_eq!(s.reads, 1, "known drained: WouldBlock without a system call");
    }

    /// A socket whose chunks arrive one at a time, when the test delivers them.
    struct Arrivals {
        pending: std::collections::VecDeque<Vec<u8>>,
        visible: std::collections::VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl Read for Arrivals {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let mut n = 0;
            while n < out.len() {
                let Some(front) = self.visible.front_mut() else { break };
                let k = front.len().min(out.len() - n);
                out[n..n + k].copy_from_slice(&front[..k]);
                front.drain(..k);
                if front.is_empty() {
                    self.visible.pop_front();
                }
                n += k;
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    /// Reads 72 bytes at a time; whenever a read would block, the next chunk arrives and
    /// the poller reports it (`closed`: as its end of stream). Returns the system calls.
    fn read_arrivals(chunks: &[usize], closed: bool) -> usize {
        let total: usize = chunks.iter().sum();
        let data: Vec<u8> = (0..total as u32).map(|i| (i * 5) as u8).collect();
        let mut at = 0;
        let pending = chunks
            .iter()
            .map(|&c| {
                at += c;
                data[at - c..at].to_vec()
            })
            .collect();
        let mut s = Arrivals { pending, visible: Default::default(), reads: 0 };
        let mut ra = ReadAhead::new();
        let mut got = Vec::new();
        let mut dst = [0u8; 72];
        for _ in 0..10_000 {
            match ra.read(&mut s, &mut dst) {
                Ok((n, _)) => got.extend_from_slice(&dst[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let Some(next) = s.pending.pop_front() else { break };
                    s.visible.push_back(next);
                    ra.ready(closed);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, data, "every byte, in order");
        s.reads
    }

    #[test]
    fn a_short_recv_waits_for_the_poller_and_an_end_of_stream_turns_that_off() {
        // The first read finds nothing yet (one recv). Then arrivals of 100, 5000 and 30
        // bytes: one recv each and no EAGAIN, since each short recv proves the queue empty
        // until the poller reports the next.
        assert_eq!(read_arrivals(&[100, 5000, 30], false), 1 + 3);
        // After an end of stream was reported short reads prove nothing: each arrival costs
        // its recv and one that finds the queue empty.
        assert_eq!(read_arrivals(&[100, 5000, 30], true), 1 + 6);
        // A recv that fills the whole buffer says nothing about the queue either.
        assert_eq!(read_arrivals(&[READ_AHEAD_BYTES, 10], false), 1 + 3);
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
        // The 100-byte read was short: the rest counts as a later arrival the poller reports.
        ra.ready(false);
        let (n, received) = ra.read(&mut s, &mut big[28..]).unwrap();
        assert_eq!((n, received), (2 * READ_AHEAD_BYTES - 28, 2 * READ_AHEAD_BYTES - 28));
        assert_eq!(&big[..], &data[72..72 + 2 * READ_AHEAD_BYTES]);
        assert_eq!(&head[..], &data[..72]);
    }
}
