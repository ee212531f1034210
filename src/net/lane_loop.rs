//! The event loop's side of same-host lanes (`net::lane`): offering a lane on each new
//! ring connection to a peer on this host, answering offers and replies (connection-level
//! frames, handled before any collective sees them), and taking flagged frames' payloads
//! out of the lane.

use std::time::Instant;

use super::EventLoop;
use crate::codec::Codec;
use crate::core::{DataType, ReduceOp};
use crate::limits::ABORT_REASON_MAX;
use crate::net::lane::{RxLane, Tx, TxLane, Whole, FLAG_LANE};
use crate::net::link::Rx;
use crate::wire::{CollKind, FrameKind, Header, Phase};

/// Whether a frame of this kind is a lane frame of the connection, not of a collective.
pub(super) fn is_lane_control(kind: FrameKind) -> bool {
    matches!(kind, FrameKind::LaneOffer | FrameKind::LaneReply | FrameKind::LaneCredit | FrameKind::LaneBell)
}

impl EventLoop {
    /// Offers a lane on link `i` if lanes are on here and its peer is on this host. Until
    /// the peer accepts, and for good if it refuses, the link's frames go over TCP.
    pub(super) fn offer_lane(&mut self, i: usize) {
        if !self.lanes {
            return;
        }
        let (job, rank, segment_bytes) = (self.job, self.rank, self.segment_bytes);
        let header = self.lane_header(FrameKind::LaneOffer);
        let Some(l) = self.links[i].as_mut() else { return };
        if !l.rate.same_host() {
            return;
        }
        match TxLane::create(job, rank, l.peer, segment_bytes) {
            Ok(lane) => {
                l.push_control(header, lane.offer());
                l.lanes.tx = Tx::Offered(lane);
            }
            Err(e) => tracing::debug!(peer = l.peer, error = %e, "no same-host lane: keeping to TCP"),
        }
    }

    /// A lane offer, reply or credit arrived on link `i` (CRC checked).
    pub(super) fn handle_lane_control(&mut self, i: usize, header: &Header) {
        let reply = self.lane_header(FrameKind::LaneReply);
        let (lanes_on, job, rank, segment_bytes) = (self.lanes, self.job, self.rank, self.segment_bytes);
        let Some(l) = self.links[i].as_mut() else { return };
        let payload = l.scratch(header.payload_len as usize).to_vec();
        let peer = l.peer;
        match header.kind {
            FrameKind::LaneOffer => {
                let answer = if !lanes_on {
                    Err("lanes are off on this rank".to_string())
                } else if l.lanes.rx.is_some() {
                    Err("this connection already has a lane".to_string())
                } else if usize::try_from(header.sender).ok() != Some(peer) {
                    Err(format!("offer from rank {} on the link to rank {peer}", header.sender))
                } else {
                    RxLane::accept(&payload, job, peer, rank, segment_bytes)
                };
                let body = match answer {
                    Ok(lane) => {
                        l.lanes.rx = Some(lane);
                        vec![1]
                    }
                    Err(why) => {
                        tracing::warn!(peer, %why, "refused a same-host lane: keeping to TCP");
                        let mut body = vec![0];
                        body.extend(why.bytes().take(ABORT_REASON_MAX - 1));
                        body
                    }
                };
                l.push_control(reply, body);
            }
            FrameKind::LaneReply => match (std::mem::take(&mut l.lanes.tx), payload.first()) {
                (Tx::Offered(mut lane), Some(1)) => {
                    lane.unlink();
                    l.lanes.tx = Tx::Active(lane);
                }
                (Tx::Offered(_), Some(0)) => {
                    let why = String::from_utf8_lossy(&payload[1..]).into_owned();
                    tracing::warn!(peer, %why, "peer refused the same-host lane: keeping to TCP");
                }
                (tx, _) => {
                    l.lanes.tx = tx;
                    self.fail_link(i, "lane reply without an offer pending".into(), peer);
                }
            },
            // Nothing to do here: the flush that follows every frame finds the free slots.
            FrameKind::LaneCredit if matches!(l.lanes.tx, Tx::Active(_)) => {}
            FrameKind::LaneCredit => self.fail_link(i, "lane credit without a lane".into(), peer),
            // The whole frames it rang for were routed before it (`pump_whole`).
            FrameKind::LaneBell if l.lanes.rx.is_some() => {}
            FrameKind::LaneBell => self.fail_link(i, "lane bell without an accepted lane".into(), peer),
            _ => {}
        }
    }

    /// A header with the lane flag arrived on link `i`: its payload is in the next slot of
    /// the link's lane. Checks that the link has an accepted lane and the payload is there,
    /// completes the CRC, then routes the frame like one read from the socket (its payload
    /// is complete at once). A flag on a link without a lane fails the link.
    pub(super) fn route_lane_header(&mut self, i: usize, header: Header, crc: u32, now: Instant) {
        let Some(l) = self.links[i].as_mut() else { return };
        let len = header.payload_len as usize;
        // Where the CRC covers the header alone, check it first: a damaged header is then
        // reported as damage, not as a lane violation.
        let early = if l.payload_crc { Ok(()) } else { l.rx_crc.verify(crc).map_err(|e| e.to_string()) };
        let checked = early.and_then(|()| match l.lanes.rx.as_ref() {
            None => Err("lane flag on a connection without an accepted lane".to_string()),
            Some(_) if header.kind != FrameKind::Data => Err(format!("lane flag on a {:?} frame", header.kind)),
            Some(rx) => rx.payload(len).map(|p| {
                if l.payload_crc {
                    l.rx_crc.update(p);
                }
            }),
        });
        if let Err(why) = checked.and_then(|()| l.rx_crc.verify(crc).map_err(|e| e.to_string())) {
            let peer = l.peer;
            self.fail_link(i, why, peer);
            return;
        }
        l.lanes.rx_frame = true;
        self.route_header(i, header, crc);
        let Some(l) = self.links[i].as_mut() else { return };
        if l.closed {
            return;
        }
        match &mut l.rx {
            Rx::Payload { filled, .. } => {
                *filled = len;
                self.complete_frame(i, now);
            }
            Rx::Parked { read, .. } => *read = true,
            Rx::Header { .. } => {}
        }
    }

    /// Routes the whole lane frames (header in the lane, `net::lane`) that come before the
    /// next TCP frame of link `i`, while the link is between frames. A frame that parks
    /// stops it; the header bytes of the TCP frame already read wait in `Link::held`.
    /// Returns true if it routed any.
    pub(super) fn pump_whole(&mut self, i: usize, now: Instant) -> bool {
        let mut any = false;
        for _ in 0..crate::limits::LANE_SLOTS {
            let Some(l) = self.links[i].as_mut() else { return any };
            let Rx::Header { filled } = l.rx else { return any };
            let Some(rx) = l.lanes.rx.as_ref().filter(|_| !l.closed) else { return any };
            let bytes = match rx.next_whole(l.tcp_frames_in) {
                Whole::None | Whole::Later => return any,
                Whole::Ready(bytes) => bytes,
                Whole::Misplaced(why) => {
                    let peer = l.peer;
                    self.fail_link(i, why, peer);
                    return true;
                }
            };
            any = true;
            let (header, crc) = match Header::decode_flagged(&bytes) {
                Ok((h, crc, flags)) if flags & FLAG_LANE != 0 => (h, crc),
                bad => {
                    let why = match bad {
                        Ok(_) => "whole lane frame without the lane flag".to_string(),
                        Err(e) => format!("bad header: {e}"),
                    };
                    let peer = l.peer;
                    self.fail_link(i, why, peer);
                    return true;
                }
            };
            l.rx_crc = crate::wire::header::FrameCrc::start(&bytes);
            l.counters.frames_in += 1;
            l.rx = Rx::Header { filled: 0 };
            self.route_lane_header(i, header, crc, now);
            let Some(l) = self.links[i].as_mut() else { return any };
            if matches!(l.rx, Rx::Header { .. }) {
                l.rx = Rx::Header { filled };
            } else {
                l.held = Some(filled);
                return any;
            }
        }
        any
    }

    /// Before the loop may block in the poller (`asleep`) or after it (not): tells the
    /// senders of this rank's lanes, so they ring a bell for a whole frame put into a lane
    /// while it sleeps. Returns true if a whole frame can be routed now (then do not block).
    pub(super) fn lanes_asleep(&self, asleep: bool) -> bool {
        let mut ready = false;
        for l in self.links.iter().flatten().filter(|l| !l.closed) {
            if let Some(rx) = l.lanes.rx.as_ref() {
                rx.sleep(asleep);
                ready |= asleep
                    && matches!(l.rx, Rx::Header { .. })
                    && matches!(rx.next_whole(l.tcp_frames_in), Whole::Ready(_) | Whole::Misplaced(_));
            }
        }
        ready
    }

    /// The header of a connection-level lane frame from this rank (its payload is filled
    /// in by `Link::push_control`).
    pub(super) fn lane_header(&self, kind: FrameKind) -> Header {
        Header {
            kind,
            codec: Codec::Raw,
            phase: Phase::ReduceScatter,
            coll: CollKind::AllReduce,
            op: ReduceOp::Sum,
            dtype: DataType::U8,
            step: 0,
            job: self.job,
            epoch: self.epoch,
            seq: 0,
            len_elems: 0,
            chunk: 0,
            segment: 0,
            payload_len: 0,
            raw_len: 0,
            sender: self.rank as u32,
        }
    }
}
