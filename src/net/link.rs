//! One ring connection's byte-level state: the frame being read and the frames queued
//! for writing. The event loop decides where payloads go; this only moves bytes.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use mio::net::TcpStream;

use super::rate::RateMeter;
use crate::codec::PooledBytes;
use crate::limits::IOVECS_MAX;
use crate::wire::header::FrameCrc;
use crate::wire::{Header, HEADER_LEN};
use crate::Rank;

/// Where the payload of the frame being read goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// Into the link's scratch buffer (reduce-scatter input, control payloads, discards).
    Scratch,
    /// Straight into the active job's buffer at this byte range (all-gather, broadcast).
    Job(Range<usize>),
    /// Into scratch, for a frame of a collective that has not started here yet: once it
    /// is in and its CRC checked, the link parks (`Rx::Parked { read: true }`). Reading it
    /// ahead is what lets a header damaged into a later `seq` or `epoch` be caught at once
    /// by its CRC rather than at the progress deadline.
    Ahead,
}

/// Progress of the frame being read.
#[derive(Debug)]
pub(super) enum Rx {
    /// Reading the fixed header; `filled` bytes so far.
    Header { filled: usize },
    /// The header is decoded but the frame belongs to a collective that has not started
    /// here yet: reading stops (TCP flow control holds the sender) until it starts. If
    /// `read`, its payload is already in scratch, CRC checked (see [`Target::Ahead`]).
    Parked { header: Header, crc: u32, read: bool },
    /// Reading the payload into `target`.
    Payload { header: Header, crc: u32, target: Target, filled: usize },
}

/// What a frame's payload is sent from.
#[derive(Debug)]
pub(super) enum OutPayload {
    /// A byte range of the active job's buffer.
    Job(Range<usize>),
    /// Bytes owned by the frame (aborts, or a job range copied out when the job ended).
    Owned(Vec<u8>),
    /// Bytes the collective made (an encoded segment, a frame forwarded as it came); the
    /// buffer goes back to its pool when the frame is written or dropped.
    Pooled(PooledBytes),
    /// Already copied into the link's lane (`net::lane`): only the header, flagged, goes
    /// over TCP.
    Lane,
}

/// A frame waiting to be written.
#[derive(Debug)]
pub(super) struct OutFrame {
    pub(super) header: [u8; HEADER_LEN],
    pub(super) payload: OutPayload,
}

/// Outcome of one read call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadStep {
    /// The requested bytes (or some of them) arrived.
    Progress,
    /// The socket has nothing more for now.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
}

/// A ring connection.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) stream: TcpStream,
    pub(super) peer: Rank,
    /// The peer's address, for error messages.
    pub(super) addr: SocketAddr,
    pub(super) rx: Rx,
    pub(super) header_bytes: [u8; HEADER_LEN],
    /// CRC32C of the frame being read: started when its header is complete, extended by
    /// every payload read while the bytes are still in cache (checked in `complete_frame`).
    pub(super) rx_crc: FrameCrc,
    /// Whether the CRC of the frames on this link covers their payloads, both ways
    /// (`Config::checksum`; both ends decide alike from the connection's addresses).
    pub(super) payload_crc: bool,
    /// Payload scratch, 8-byte aligned so reductions read it as typed slices.
    scratch: Vec<u64>,
    /// Bytes received ahead of the decoder (`net::read_ahead`).
    ahead: super::read_ahead::ReadAhead,
    pub(super) out: VecDeque<OutFrame>,
    /// Bytes of the head of `out` already written (header first, then payload).
    out_written: usize,
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) closed: bool,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// Bytes the last successful read returned.
    last_read: usize,
    /// What the statistics report about this link (see [`crate::comm::LinkStats`]).
    pub(super) counters: Counters,
    /// Drain rate of the outgoing direction while it is the bottleneck (for codec `auto`).
    pub(super) rate: RateMeter,
    /// Same-host lanes of this connection (`net::lane`).
    pub(super) lanes: super::lane::Lanes,
    /// Frames written whole to the TCP stream: the stamp of a whole frame put into the
    /// lane now (which places it among them on the receiving side).
    tcp_frames_out: u64,
    /// Frame headers read from the TCP stream and routed: whole lane frames stamped with
    /// this count come before the next one.
    pub(super) tcp_frames_in: u64,
    /// Header bytes of the next TCP frame already read when a whole lane frame before it
    /// parked: restored once that frame has gone (`EventLoop::pump_whole`).
    pub(super) held: Option<usize>,
}

/// What a link waited for while the event loop was idle (see [`Link::waiting`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Waiting {
    /// A frame the running collective expects.
    pub(super) frame: bool,
    /// The rest of a frame of which a part has arrived.
    pub(super) rest: bool,
    /// Room in a full socket (or a full same-host lane), with frames queued.
    pub(super) socket: bool,
}

/// Time and frame counters of one link, since it was connected.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    /// Frame headers received.
    pub(super) frames_in: u64,
    /// Idle time of the event loop while the running collective expected a frame here.
    pub(super) recv_wait: Duration,
    /// Of `recv_wait`, the time a frame was partly received: the link was delivering it.
    pub(super) recv_transfer: Duration,
    /// Idle time of the event loop while frames were queued here and the socket was full.
    pub(super) send_blocked: Duration,
    /// Time collectives ran while this link was up (the denominator of its throughput).
    pub(super) active: Duration,
}

impl Link {
    pub(super) fn new(
        stream: TcpStream,
        peer: Rank,
        addr: SocketAddr,
        scratch_bytes: usize,
        checksum: crate::comm::Checksum,
    ) -> Link {
        let local = stream.local_addr().ok();
        let payload_crc = checksum.covers(local.map(|a| a.ip()), stream.peer_addr().ok().map(|a| a.ip()));
        Link {
            stream,
            peer,
            addr,
            rx: Rx::Header { filled: 0 },
            header_bytes: [0; HEADER_LEN],
            rx_crc: FrameCrc::start(&[0; HEADER_LEN]),
            payload_crc,
            scratch: vec![0u64; scratch_bytes.div_ceil(8)],
            ahead: super::read_ahead::ReadAhead::new(),
            out: VecDeque::new(),
            out_written: 0,
            readable: true,
            writable: true,
            closed: false,
            bytes_in: 0,
            bytes_out: 0,
            last_read: 0,
            counters: Counters::default(),
            rate: RateMeter::new(local.map(|a| a.ip()), addr.ip()),
            lanes: super::lane::Lanes::default(),
            tcp_frames_out: 0,
            tcp_frames_in: 0,
            held: None,
        }
    }

    /// What this link waits for, sampled before the event loop goes idle: a frame if the
    /// collective `expected` one, the rest of a frame if part of it is in, a full socket.
    pub(super) fn waiting(&self, expected: bool) -> Waiting {
        let mid_frame = matches!(self.rx, Rx::Header { filled } if filled > 0) || matches!(self.rx, Rx::Payload { .. });
        let blocked = !self.writable || self.lanes.tx_blocked;
        Waiting { frame: expected, rest: expected && mid_frame, socket: !self.out.is_empty() && blocked }
    }

    /// Accounts `idle` time of the event loop during a collective to what the link was
    /// `waiting` for when the loop went idle (several can hold at once).
    pub(super) fn note_idle(&mut self, idle: Duration, waiting: Waiting) {
        if waiting.frame {
            self.counters.recv_wait += idle;
        }
        if waiting.rest {
            self.counters.recv_transfer += idle;
        }
        if waiting.socket {
            self.counters.send_blocked += idle;
        }
    }

    /// The link's statistics, seen from this rank.
    pub(super) fn stats(&self, side: crate::comm::Side) -> crate::comm::LinkStats {
        let c = &self.counters;
        crate::comm::LinkStats {
            side,
            peer: self.peer,
            bytes_sent: self.bytes_out + self.lanes.bytes_sent,
            bytes_received: self.bytes_in + self.lanes.bytes_received,
            frames_received: c.frames_in,
            recv_wait: c.recv_wait,
            recv_transfer: c.recv_transfer,
            send_blocked: c.send_blocked,
            active: c.active,
            lane_bytes_sent: self.lanes.bytes_sent,
            lane_bytes_received: self.lanes.bytes_received,
        }
    }

    /// Capacity of the scratch buffer in bytes: the largest payload this link accepts.
    pub(super) fn scratch_cap(&self) -> usize {
        self.scratch.len() * 8
    }

    pub(super) fn scratch(&self, len: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.scratch)[..len]
    }

    /// True if the read-ahead buffer already holds the whole next payload of `len` bytes
    /// (a frame that came with its header in one `recv`); then it has gone through the
    /// frame's CRC, and [`Link::ahead_payload`] hands it on without a copy into scratch
    /// until [`Link::consume_ahead`].
    pub(super) fn payload_in_ahead(&mut self, len: usize) -> bool {
        let Some(bytes) = self.ahead.peek(len) else { return false };
        if self.payload_crc {
            self.rx_crc.update(bytes);
        }
        true
    }

    /// The payload [`Link::payload_in_ahead`] found (empty if it is no longer there).
    pub(super) fn ahead_payload(&self, len: usize) -> &[u8] {
        self.ahead.peek(len).unwrap_or_default()
    }

    /// Drops the payload [`Link::payload_in_ahead`] found from the read-ahead buffer.
    pub(super) fn consume_ahead(&mut self, len: usize) {
        self.ahead.consume(len);
    }

    /// The payload of the frame being completed: its lane slot for a lane frame (checked
    /// when its header arrived), else scratch.
    pub(super) fn payload(&self, len: usize) -> &[u8] {
        match self.lanes.rx.as_ref().filter(|_| self.lanes.rx_frame) {
            Some(rx) => rx.payload(len).unwrap_or_default(),
            None => self.scratch(len),
        }
    }

    /// The poller reported the socket readable (`closed`: its end of stream or an error).
    pub(super) fn read_ready(&mut self, closed: bool) {
        self.readable = true;
        self.ahead.ready(closed);
    }

    fn read_into(&mut self, dst: &mut [u8]) -> std::io::Result<ReadStep> {
        if dst.is_empty() {
            self.last_read = 0;
            return Ok(ReadStep::Progress);
        }
        loop {
            match self.ahead.read(&mut self.stream, dst) {
                Ok((0, _)) => return Ok(ReadStep::Closed),
                Ok((n, received)) => {
                    self.bytes_in += received as u64;
                    self.last_read = n;
                    return Ok(ReadStep::Progress);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(ReadStep::WouldBlock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads more of the header. `Progress` means `filled` grew (check for completion).
    pub(super) fn read_header(&mut self, filled: &mut usize) -> std::io::Result<ReadStep> {
        let mut tmp = [0u8; HEADER_LEN];
        let want = HEADER_LEN - *filled;
        let step = self.read_into(&mut tmp[..want])?;
        if step == ReadStep::Progress {
            let n = self.last_read;
            self.header_bytes[*filled..*filled + n].copy_from_slice(&tmp[..n]);
            *filled += n;
        }
        Ok(step)
    }

    /// The header read from the stream is about to be routed: its CRC starts, and it
    /// counts as received.
    pub(super) fn start_stream_frame(&mut self) {
        self.rx_crc = FrameCrc::start(&self.header_bytes);
        self.counters.frames_in += 1;
        self.tcp_frames_in += 1;
    }

    /// Puts a whole frame into the lane instead of queueing it, if the lane takes it
    /// (`Lanes::try_send_whole`) and nothing waits on the stream before it (its stamp then
    /// is exactly the frames written so far). Returns `None` if it must be queued, else
    /// whether the receiver needs a bell.
    pub(super) fn send_whole(&mut self, header: &[u8; HEADER_LEN], payload: &[u8], call_bytes: usize) -> Option<bool> {
        if !self.out.is_empty() {
            return None;
        }
        self.lanes.try_send_whole(header, payload, call_bytes, self.payload_crc, self.tcp_frames_out)
    }

    /// Reads more payload into scratch (`job` is `None`) or into `job[range]`, and extends
    /// the frame's CRC with the bytes just read if the link checksums payloads (the kernel
    /// has just written them: they are in cache now, and may not be by the time the whole
    /// payload is in).
    pub(super) fn read_payload(
        &mut self,
        len: usize,
        filled: &mut usize,
        job: Option<&mut [u8]>,
    ) -> std::io::Result<ReadStep> {
        let start = *filled;
        let step = match job {
            Some(dst) => {
                let r = self.read_into(&mut dst[start..]);
                if self.payload_crc && matches!(r, Ok(ReadStep::Progress)) {
                    self.rx_crc.update(&dst[start..start + self.last_read]);
                }
                r?
            }
            None => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut scratch);
                let r = self.read_into(&mut bytes[start..len]);
                if self.payload_crc && matches!(r, Ok(ReadStep::Progress)) {
                    self.rx_crc.update(&bytes[start..start + self.last_read]);
                }
                self.scratch = scratch;
                r?
            }
        };
        if step == ReadStep::Progress {
            *filled += self.last_read;
        }
        Ok(step)
    }

    /// Writes as much of the queue as the socket takes. `job` resolves `OutPayload::Job`.
    /// Returns the number of frames fully written.
    pub(super) fn flush(&mut self, job: Option<&[u8]>) -> std::io::Result<usize> {
        let mut done = 0;
        while self.writable && !self.out.is_empty() {
            // Frames from the first one that waits for a lane slot on stay queued.
            let ready = self.move_to_lane(job);
            if ready == 0 {
                break;
            }
            // On the stack: this runs for every write, it must not allocate.
            let mut iov = [IoSlice::new(&[]); IOVECS_MAX];
            let mut used = 0;
            let mut skip = self.out_written;
            for f in self.out.iter().take(ready.min(IOVECS_MAX / 2)) {
                let payload: &[u8] = match &f.payload {
                    OutPayload::Job(r) => &job.expect("job payload queued without an active job")[r.clone()],
                    OutPayload::Owned(v) => v,
                    OutPayload::Pooled(p) => p,
                    OutPayload::Lane => &[],
                };
                for part in [&f.header[..], payload] {
                    if skip >= part.len() {
                        skip -= part.len();
                    } else {
                        iov[used] = IoSlice::new(&part[skip..]);
                        used += 1;
                        skip = 0;
                    }
                }
            }
            let n = match self.stream.write_vectored(&iov[..used]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    self.rate.blocked(std::time::Instant::now());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.bytes_out += n as u64;
            self.rate.wrote(n);
            self.out_written += n;
            while let Some(f) = self.out.front() {
                let len = HEADER_LEN + f.stream_len();
                if self.out_written < len {
                    break;
                }
                self.out_written -= len;
                self.out.pop_front();
                self.tcp_frames_out += 1;
                done += 1;
            }
        }
        if self.out.is_empty() && self.rate.measuring() {
            self.rate.idle(std::time::Instant::now());
        }
        Ok(done)
    }

    /// True if any queued frame still points into the active job's buffer.
    pub(super) fn holds_job_bytes(&self) -> bool {
        self.out.iter().any(|f| matches!(f.payload, OutPayload::Job(_)))
    }

    /// Detaches the queue from the job's buffer before the buffer goes back to the user:
    /// a frame already partly written must still be finished (the stream would break
    /// otherwise), so its payload is copied; untouched job frames are dropped.
    pub(super) fn release_job(&mut self, job: &[u8]) {
        let started = self.out_written > 0;
        let mut kept = VecDeque::new();
        for (i, mut f) in std::mem::take(&mut self.out).into_iter().enumerate() {
            if let OutPayload::Job(r) = &f.payload {
                if i == 0 && started {
                    f.payload = OutPayload::Owned(job[r.clone()].to_vec());
                } else {
                    continue;
                }
            }
            kept.push_back(f);
        }
        self.out = kept;
    }
}

impl OutFrame {
    /// Payload bytes that follow the header on the TCP stream.
    fn stream_len(&self) -> usize {
        match &self.payload {
            OutPayload::Job(r) => r.len(),
            OutPayload::Owned(v) => v.len(),
            OutPayload::Pooled(p) => p.len(),
            OutPayload::Lane => 0,
        }
    }
}

impl Link {
    /// Queues a connection-level frame (`net::lane`) ahead of every frame not yet started:
    /// it must not wait behind data frames that may themselves wait for the peer.
    pub(super) fn push_control(&mut self, mut header: Header, payload: Vec<u8>) {
        header.payload_len = payload.len() as u32;
        header.raw_len = header.payload_len;
        let header = if self.payload_crc { header.encode(&payload) } else { header.encode_header_only() };
        let at = usize::from(self.out_written > 0).min(self.out.len());
        self.out.insert(at, OutFrame { header, payload: OutPayload::Owned(payload) });
    }

    /// Moves the payloads of the frames about to be written into the lane, in queue order:
    /// raw data frames large enough (`Lanes::try_send`) whose bytes have not started to leave.
    /// Returns how many frames at the head of the queue may be written now: all of them,
    /// or those before the first one that waits for a free slot (the peer sends a
    /// `LaneCredit` once it has consumed half the lane). Waiting there instead of sending
    /// that frame over TCP keeps slots in the order their headers go out, and keeps the
    /// bytes on the one-copy path: measured, falling back to TCP whenever the lane was full
    /// sent half of them through the socket.
    fn move_to_lane(&mut self, job: Option<&[u8]>) -> usize {
        self.lanes.tx_blocked = false;
        if !matches!(self.lanes.tx, super::lane::Tx::Active(_)) {
            return usize::MAX;
        }
        let skip = usize::from(self.out_written > 0);
        for (k, f) in self.out.iter_mut().enumerate().skip(skip).take(IOVECS_MAX / 2) {
            let payload: &[u8] = match &f.payload {
                OutPayload::Job(r) => match job.and_then(|j| j.get(r.clone())) {
                    Some(p) => p,
                    None => return usize::MAX,
                },
                OutPayload::Pooled(p) => p,
                OutPayload::Owned(_) | OutPayload::Lane => continue,
            };
            if !super::lane::is_raw_data(&f.header) {
                continue;
            }
            let len = payload.len();
            match self.lanes.try_send(payload, job.map_or(0, <[u8]>::len)) {
                super::lane::Put::Copied => {}
                super::lane::Put::Unfit => continue,
                super::lane::Put::Full => {
                    self.lanes.tx_blocked = true;
                    return k;
                }
            }
            let covered = if self.payload_crc { len } else { 0 };
            crate::wire::header::set_flags(&mut f.header, super::lane::FLAG_LANE, covered);
            f.payload = OutPayload::Lane;
        }
        usize::MAX
    }
}
