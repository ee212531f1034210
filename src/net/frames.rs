//! Frames on the ring links: where a header's payload goes, reading payloads into place,
//! handing complete frames to the collective, and queueing and writing what it sends.

use std::time::Instant;

use super::{slot_in, EventLoop, Route, FRAMES_PER_TURN};
use crate::core::collective::Link;
use crate::limits::ENCODED_FRAMES_QUEUED_MAX;
use crate::net::link::{OutFrame, OutPayload, ReadStep, Rx, Target};
use crate::wire::Header;

impl EventLoop {
    /// Frames parked for the active collective can now be read.
    pub(super) fn unpark(&mut self) {
        for i in 0..self.links.len() {
            self.unpark_link(i);
        }
    }

    /// Routes again the frame parked on link `i`, if any.
    pub(super) fn unpark_link(&mut self, i: usize) {
        if let Some(l) = self.links[i].as_mut() {
            if let Rx::Parked { header, crc, read } = l.rx {
                l.rx = Rx::Header { filled: 0 };
                self.route_header(i, header, crc);
                if read {
                    self.deliver_read_ahead(i);
                }
            }
        }
    }

    /// Finishes a parked frame whose payload was read ahead into scratch (and CRC checked)
    /// once `route_header` has routed it again: delivered from scratch (a frame meant for
    /// the buffer is copied there by the collective), discarded, or parked again.
    pub(super) fn deliver_read_ahead(&mut self, i: usize) {
        let Some(l) = self.links[i].as_mut() else { return };
        let Rx::Payload { header, crc, target, .. } = std::mem::replace(&mut l.rx, Rx::Header { filled: 0 }) else {
            return;
        };
        let len = header.payload_len as usize;
        l.rx = match target {
            Target::Ahead => Rx::Parked { header, crc, read: true },
            Target::Scratch | Target::Job(_) => Rx::Payload { header, crc, target: Target::Scratch, filled: len },
        };
        if matches!(l.rx, Rx::Payload { .. }) {
            self.complete_frame(i, Instant::now());
        }
    }

    /// Moves the active collective's transmits into the links' write queues. A call that
    /// encodes is paced: segments are encoded only while their link's queue is short, so
    /// compression of one segment overlaps the writing of the previous ones. A frame that
    /// can go whole through a same-host lane goes there at once (a latency-path frame
    /// straight from the caller's buffer, as the collective makes it). Returns true if it
    /// sent or queued anything.
    pub(super) fn drain_transmits(&mut self) -> bool {
        let bell = self.lane_header(crate::wire::FrameKind::LaneBell);
        let Some(a) = self.active.as_mut() else { return false };
        let limit = if a.coll.encodes() { ENCODED_FRAMES_QUEUED_MAX } else { usize::MAX };
        let buf = a.job.buf.bytes();
        let mut out =
            Outlet { links: &mut self.links, partner_pos: &self.partner_pos, limit, buf_len: buf.len(), bell, sent: 0 };
        let mut queued = false;
        while let Some(t) = a.coll.poll_transmit_into(buf, &mut out) {
            queued = true;
            let bytes = t.owned.as_deref().or_else(|| buf.get(t.payload.clone())).unwrap_or_default();
            if !out.send_whole(t.link, &t.header, bytes) {
                let Some(l) = out.link(t.link) else { continue };
                let payload = match t.owned {
                    Some(bytes) => OutPayload::Pooled(bytes),
                    None => OutPayload::Job(t.payload),
                };
                l.out.push_back(OutFrame { header: t.header, payload });
            }
        }
        queued || out.sent > 0
    }

    pub(super) fn key(&self) -> (u64, u64) {
        (self.epoch, self.active.as_ref().map_or(self.next_seq, |a| a.seq))
    }

    /// Decides where the payload of a just-read header goes, and sets the link's state.
    pub(super) fn route_header(&mut self, i: usize, header: Header, crc: u32) {
        let lane = self.links[i].as_ref().is_some_and(|l| l.lanes.rx_frame);
        let route = if header.job != self.job {
            let peer = self.links[i].as_ref().map_or(0, |l| l.peer);
            self.fail_link(i, format!("frame of job {:#x}, this job is {:#x}", header.job, self.job), peer);
            return;
        } else if super::lane_loop::is_lane_control(header.kind) {
            // Connection-level: read into scratch, handled in `complete_frame`.
            Route::Active(Target::Scratch)
        } else {
            let here = self.key();
            let theirs = (header.epoch, header.seq);
            // Calls are sequential and a rank starts call k + 2 only after it returned k + 1,
            // which needed every member's input, so an honest neighbour is at most one call ahead.
            if header.seq > here.1.saturating_add(1)
                || header.epoch > self.epoch.saturating_add(crate::limits::FRAME_EPOCH_AHEAD_MAX)
            {
                let peer = self.links[i].as_ref().map_or(0, |l| l.peer);
                let why = format!(
                    "frame of call #{} epoch {} while this rank is at call #{} epoch {}: further ahead than a neighbour can be",
                    header.seq, header.epoch, here.1, self.epoch
                );
                self.fail_link(i, why, peer);
                return;
            }
            match (&self.active, theirs.cmp(&here)) {
                (_, std::cmp::Ordering::Less) => Route::Discard,
                (None, _) | (_, std::cmp::Ordering::Greater) => Route::Park,
                // The attempt of an older view waits for the coordinator's decision.
                (Some(a), std::cmp::Ordering::Equal) if a.epoch != self.epoch || self.awaiting.is_some() => Route::Park,
                // A lane payload is handed over from its slot (the collective copies it
                // into place if it belongs there).
                (Some(_), std::cmp::Ordering::Equal) if lane => Route::Active(Target::Scratch),
                (Some(a), std::cmp::Ordering::Equal) => {
                    Route::Active(a.coll.recv_target(self.link_of(i), &header).map_or(Target::Scratch, Target::Job))
                }
            }
        };
        let link = self.link_of(i);
        if let (Route::Active(Target::Job(_)), Some(a)) = (&route, self.active.as_mut()) {
            // The payload overwrites the buffer: the input there is saved first (exact retry).
            a.coll.before_in_place(link, &header, a.job.buf.bytes());
        }
        let Some(l) = self.links[i].as_mut() else { return };
        l.rx = match route {
            Route::Park if header.payload_len as usize <= l.scratch_cap() => {
                Rx::Payload { header, crc, target: Target::Ahead, filled: 0 }
            }
            Route::Park => Rx::Parked { header, crc, read: false },
            Route::Discard => {
                self.stale_frames += 1;
                Rx::Payload { header, crc, target: Target::Scratch, filled: 0 }
            }
            Route::Active(target) => Rx::Payload { header, crc, target, filled: 0 },
        };
        if let Rx::Payload { header, target: Target::Scratch, .. } = &l.rx {
            if header.payload_len as usize > l.scratch_cap() {
                let (cap, len, peer) = (l.scratch_cap(), header.payload_len, l.peer);
                self.fail_link(i, format!("payload of {len} bytes exceeds the agreed segment size {cap}"), peer);
            }
        }
    }

    /// Reads frames from link `i` until it would block, parks, or has had its turn.
    pub(super) fn pump_read(&mut self, i: usize, now: Instant) -> bool {
        let mut progressed = false;
        for _ in 0..FRAMES_PER_TURN * 4 {
            let Some(l) = self.links[i].as_mut() else { return progressed };
            if l.closed {
                return progressed;
            }
            if matches!(l.rx, Rx::Header { .. }) {
                // Between frames: whole lane frames that come before the next TCP frame.
                if let Some(f) = l.held.take() {
                    l.rx = Rx::Header { filled: f };
                }
                progressed |= self.pump_whole(i, now);
            }
            let Some(l) = self.links[i].as_mut() else { return progressed };
            let header_in = matches!(l.rx, Rx::Header { filled: crate::wire::HEADER_LEN });
            if l.closed || (!l.readable && !header_in) {
                return progressed;
            }
            let step = match &mut l.rx {
                Rx::Parked { .. } => return progressed,
                Rx::Header { filled } => {
                    let mut f = *filled;
                    let r = l.read_header(&mut f);
                    l.rx = Rx::Header { filled: f };
                    match r {
                        Ok(ReadStep::Progress) if f == crate::wire::HEADER_LEN => {
                            // Whole lane frames stamped before this one were put into the
                            // lane before it was written: they are visible now, and go first.
                            progressed |= self.pump_whole(i, now);
                            let Some(l) = self.links[i].as_mut() else { return progressed };
                            if l.closed || !matches!(l.rx, Rx::Header { .. }) {
                                return progressed;
                            }
                            l.start_stream_frame();
                            match Header::decode_flagged(&l.header_bytes) {
                                Ok((h, crc, flags)) => {
                                    if flags & crate::net::lane::FLAG_LANE != 0 {
                                        self.route_lane_header(i, h, crc, now);
                                    } else {
                                        self.route_header(i, h, crc);
                                    }
                                    Ok(ReadStep::Progress)
                                }
                                Err(e) => {
                                    let peer = l.peer;
                                    self.fail_link(i, format!("bad header: {e}"), peer);
                                    return true;
                                }
                            }
                        }
                        other => other,
                    }
                }
                Rx::Payload { header, target, filled, .. } => {
                    let len = header.payload_len as usize;
                    let mut f = *filled;
                    let target = target.clone();
                    // Data frames only: connection-level lane frames read their payload
                    // from scratch, and a lane frame's payload is in its slot.
                    let data = !super::lane_loop::is_lane_control(header.kind) && !l.lanes.rx_frame;
                    if f == 0 && len > 0 && data && target == Target::Scratch && l.payload_in_ahead(len) {
                        // Handed on from the read-ahead buffer: no copy into scratch.
                        self.complete_frame_from(i, now, true);
                        progressed = true;
                        continue;
                    }
                    let r = match target {
                        Target::Scratch | Target::Ahead => l.read_payload(len, &mut f, None),
                        Target::Job(range) => {
                            let job = self.active.as_mut().map(|a| &mut a.job.buf.bytes_mut()[range]);
                            l.read_payload(len, &mut f, job)
                        }
                    };
                    if let Rx::Payload { filled, .. } = &mut l.rx {
                        *filled = f;
                    }
                    if matches!(r, Ok(ReadStep::Progress)) && f == len {
                        self.complete_frame(i, now);
                    }
                    r
                }
            };
            match step {
                Ok(ReadStep::Progress) => progressed = true,
                Ok(ReadStep::WouldBlock) => return progressed,
                Ok(ReadStep::Closed) => {
                    let peer = self.links[i].as_ref().map_or(0, |l| l.peer);
                    self.fail_link(i, "connection closed".into(), peer);
                    return true;
                }
                Err(e) => {
                    let peer = self.links[i].as_ref().map_or(0, |l| l.peer);
                    self.fail_link(i, format!("read: {e}"), peer);
                    return true;
                }
            }
        }
        progressed
    }

    /// A whole frame is in: check its CRC, hand it to the collective, queue what follows.
    /// A lane frame's slot goes back to the sender once the frame is used or dropped (a
    /// frame parked for a later call keeps it).
    pub(super) fn complete_frame(&mut self, i: usize, now: Instant) {
        self.complete_frame_from(i, now, false);
    }

    /// [`EventLoop::complete_frame`] for a payload in scratch or a lane slot, or still in
    /// the link's read-ahead buffer (`from_ahead`, for a frame routed to scratch), which it
    /// consumes.
    fn complete_frame_from(&mut self, i: usize, now: Instant, from_ahead: bool) {
        let len = match self.links[i].as_ref().map(|l| &l.rx) {
            Some(Rx::Payload { header, .. }) => header.payload_len as usize,
            _ => 0,
        };
        self.complete_frame_here(i, now, from_ahead);
        let credit = self.lane_header(crate::wire::FrameKind::LaneCredit);
        if let Some(l) = self.links[i].as_mut() {
            if !matches!(l.rx, Rx::Parked { .. }) && l.lanes.release_frame(len) {
                l.push_control(credit, Vec::new());
            }
        }
    }

    fn complete_frame_here(&mut self, i: usize, now: Instant, from_ahead: bool) {
        let link = self.link_of(i);
        let Some(l) = self.links[i].as_mut() else { return };
        let Rx::Payload { header, crc, target, .. } = std::mem::replace(&mut l.rx, Rx::Header { filled: 0 }) else {
            return;
        };
        let len = header.payload_len as usize;
        let (ours, discard) = match &self.active {
            Some(a) => ((header.epoch, header.seq) == (a.epoch, a.seq) && a.epoch == self.epoch, false),
            None => (false, true),
        };
        if matches!(target, Target::Job(_)) && self.active.is_none() {
            return;
        }
        // Every payload byte went through the CRC as it was read (`Link::read_payload`).
        if let Err(e) = l.rx_crc.verify(crc) {
            let peer = l.peer;
            if self.active.is_none() {
                // `fail_link` logs a link closed between calls quietly; this is damage.
                tracing::warn!(peer, addr = %l.addr, reason = %e, "frame of a later call failed its check");
            }
            self.fail_link(i, format!("{e}"), peer);
            return;
        }
        if super::lane_loop::is_lane_control(header.kind) {
            self.handle_lane_control(i, &header);
            return;
        }
        if target == Target::Ahead {
            // Its call may have started while the payload was arriving: route it again
            // (it parks if it still cannot go anywhere).
            l.rx = Rx::Parked { header, crc, read: true };
            self.unpark_link(i);
            return;
        }
        let Some(a) = self.active.as_mut().filter(|_| !discard && ours) else {
            if from_ahead {
                l.consume_ahead(len);
            }
            return;
        };
        let _ = match target {
            Target::Scratch | Target::Ahead => {
                let payload = if from_ahead { l.ahead_payload(len) } else { l.payload(len) };
                a.coll.handle_frame(now, link, &header, payload, a.job.buf.bytes_mut())
            }
            Target::Job(_) => a.coll.handle_frame_in_place(now, link, &header, a.job.buf.bytes_mut()),
        };
        if from_ahead {
            l.consume_ahead(len);
        }
        self.drain_transmits();
        if self.fault.is_some() {
            // Nothing more expected: phase `result` (its last frames may not have left yet).
            if let Some((seq, at)) = self.active.as_ref().map(|a| (a.seq, a.coll.waiting_on())) {
                let (phase, step) = at.map_or(("result", 0), |(_, phase, step)| (phase, step));
                self.check_fault(seq, phase, step);
            }
        }
        if !self.frame_delay.is_zero() {
            std::thread::sleep(self.frame_delay);
        }
    }

    pub(super) fn flush_all(&mut self) -> bool {
        let mut progressed = false;
        for i in 0..self.links.len() {
            let job = self.active.as_ref().map(|a| a.job.buf.bytes());
            let Some(l) = self.links[i].as_mut() else { continue };
            if l.closed {
                continue;
            }
            match l.flush(job) {
                Ok(n) => progressed |= n > 0,
                Err(e) => {
                    let peer = l.peer;
                    self.fail_link(i, format!("write: {e}"), peer);
                    progressed = true;
                }
            }
        }
        progressed
    }
}

/// The links as [`crate::core::collective::Outlet`] of the active collective.
struct Outlet<'a> {
    links: &'a mut [Option<crate::net::link::Link>],
    partner_pos: &'a [usize],
    /// Frames a link's queue may hold before the collective stops making them for it.
    limit: usize,
    /// Bytes of the call's buffer.
    buf_len: usize,
    /// Header of a lane bell from this rank.
    bell: Header,
    /// Frames sent whole through lanes.
    sent: usize,
}

impl Outlet<'_> {
    /// The open connection of `link`.
    fn link(&mut self, link: Link) -> Option<&mut crate::net::link::Link> {
        let i = slot_in(self.partner_pos, link)?;
        self.links.get_mut(i)?.as_mut().filter(|l| !l.closed)
    }

    /// Sends a frame whole through `link`'s lane if it can go there (`Link::send_whole`),
    /// with a bell if the receiver may be asleep. Returns false if it must be queued.
    fn send_whole(&mut self, link: Link, header: &[u8; crate::wire::HEADER_LEN], payload: &[u8]) -> bool {
        let (buf_len, bell) = (self.buf_len, self.bell);
        let Some(l) = self.link(link) else { return false };
        match l.send_whole(header, payload, buf_len) {
            Some(ring) => {
                if ring {
                    l.push_control(bell, Vec::new());
                }
                self.sent += 1;
                true
            }
            None => false,
        }
    }
}

impl crate::core::collective::Outlet for Outlet<'_> {
    fn may_send(&self, link: Link) -> bool {
        let conn = slot_in(self.partner_pos, link).and_then(|i| self.links.get(i)?.as_ref());
        conn.is_none_or(|l| l.closed || l.out.len() < self.limit)
    }

    fn send_now(&mut self, link: Link, header: &[u8; crate::wire::HEADER_LEN], payload: &[u8]) -> bool {
        self.send_whole(link, header, payload)
    }
}
