//! The coordinator connection seen from the loop: its events (views, decisions, refusals),
//! suspicions this rank reports, and adopting the links of a rebuilt ring.

use std::time::{Duration, Instant};

use mio::Interest;

use super::{token_of, EventLoop, Terminal};
use crate::limits::REBUILD_TIMEOUT;
use crate::net::coord_link::CoordEvent;
use crate::net::establish::Ring;
use crate::net::link::Link as Conn;
use crate::wire::control::Control;
use crate::{Error, Rank};

impl EventLoop {
    pub(super) fn read_coordinator(&mut self, now: Instant) {
        let events = match self.coord.as_mut() {
            Some(c) => {
                c.flush();
                c.read(now)
            }
            None => return,
        };
        for e in events {
            self.handle_coord_event(e);
        }
    }

    pub(super) fn tick_coordinator(&mut self, now: Instant) {
        // After a freeze (SIGSTOP), read what arrived before calling the coordinator silent:
        // it may well have said that this rank was evicted.
        if self.coord.as_ref().is_some_and(|c| c.overdue(now)) {
            self.read_coordinator(now);
        }
        let epoch = self.epoch;
        let report = self.coord.as_ref().is_some_and(|c| c.beat_due(now)).then(|| self.progress(now));
        if let Some(e) = self.coord.as_mut().and_then(|c| c.tick(now, epoch, report)) {
            self.handle_coord_event(e);
        }
    }

    pub(super) fn handle_coord_event(&mut self, e: CoordEvent) {
        match e {
            CoordEvent::View(v) if v.epoch > self.epoch => match v.start_seq {
                Some(start_seq) => self.on_admit(v, start_seq),
                None if self.pending_view.as_ref().is_none_or(|p| p.epoch < v.epoch) => self.pending_view = Some(v),
                None => {}
            },
            CoordEvent::View(_) => {}
            CoordEvent::Decision { epoch, seq, finish } => self.decision = Some((epoch, seq, finish)),
            CoordEvent::Result(h) => self.results.receive(h),
            CoordEvent::Evicted { epoch, reason } => {
                tracing::error!(rank = self.rank, epoch, %reason, "this rank was evicted");
                self.terminal = Some(Terminal::Evicted { epoch, reason });
            }
            CoordEvent::QuorumLost { epoch, alive, required } => {
                tracing::error!(epoch, alive, required, "quorum lost");
                // A rank already evicted keeps saying so: the quorum is the others' problem.
                self.terminal.get_or_insert(Terminal::QuorumLost { epoch, alive, required });
            }
            CoordEvent::JoinPrepare { epoch } => self.on_join_prepare(epoch),
            CoordEvent::JoinCancel { epoch } => self.on_join_cancel(epoch),
            CoordEvent::JoinPointDone { epoch, seq } => self.on_join_point_done(epoch, seq),
            CoordEvent::Lost(reason) => {
                self.hold = None;
                self.answer_join_point(Ok(Vec::new()));
                if self.orphan_exit {
                    eprintln!("ringcc: rank {}: lost the launcher's coordinator ({reason}); exiting", self.rank);
                    std::process::exit(1);
                }
                tracing::warn!(rank = self.rank, %reason, "coordinator lost: no membership changes from now on");
            }
        }
        if let Some(t) = self.terminal.clone() {
            if let Some(a) = self.active.as_mut() {
                // A terminal error replaces a retryable one (a lost peer waiting for a view
                // that will never come), so the call fails now with the real reason.
                let retryable = matches!(a.error, None | Some(Error::PeerClosed { .. } | Error::Interrupted { .. }));
                if retryable {
                    a.error = Some(t.error(self.rank));
                    a.retry_since = None;
                }
            }
        }
    }

    /// Tells the coordinator a neighbour failed this rank.
    pub(super) fn suspect(&mut self, peer: Rank, stalled: bool, reason: &str) {
        let msg = Control::Suspect {
            rank: self.rank as u32,
            suspect: peer as u32,
            epoch: self.epoch,
            stalled,
            reason: reason.chars().take(512).collect(),
        };
        if let Some(c) = self.coord.as_mut() {
            c.send(&msg);
        }
    }

    /// How long queued collectives wait for a new view after the ring broke.
    pub(super) fn rebuild_wait(&self) -> Duration {
        let coordinator_alive = self.coord.as_ref().is_some_and(|c| !c.is_lost());
        if coordinator_alive {
            self.heartbeat_timeout + REBUILD_TIMEOUT
        } else {
            Duration::ZERO
        }
    }

    /// Replaces the links with those of `ring` and adopts its view.
    pub(super) fn adopt_ring(&mut self, ring: Ring) -> std::io::Result<()> {
        self.drop_links();
        let partners = ring.partners.into_iter().map(|(pos, stream, member)| (Some(pos), Some((stream, member))));
        let sides = [(None, ring.prev), (None, ring.next)].into_iter().chain(partners);
        for (i, (partner, side)) in sides.enumerate() {
            if i >= self.links.len() {
                self.links.push(None);
            }
            if let Some(pos) = partner {
                self.partner_pos.push(pos);
            }
            let Some((stream, member)) = side else { continue };
            stream.set_nonblocking(true)?;
            let mut s = mio::net::TcpStream::from_std(stream);
            self.poll.registry().register(&mut s, token_of(i), Interest::READABLE | Interest::WRITABLE)?;
            let mut conn = Conn::new(
                s,
                member.rank,
                member.addr,
                self.segment_bytes.max(crate::limits::ABORT_REASON_MAX),
                self.checksum,
            );
            // Partner links carry only the latency path's small frames: their CRC always
            // covers the payload, at both ends (`Spec::payload_crc`).
            conn.payload_crc |= partner.is_some();
            self.links[i] = Some(conn);
        }
        self.epoch = ring.view.epoch;
        self.members = ring.view.members.iter().map(|m| m.rank).collect();
        self.sorted = self.members.clone();
        self.sorted.sort_unstable();
        self.pos = ring.pos;
        self.broken = None;
        self.shared.set(self.epoch, self.sorted.clone());
        self.offer_lane(0);
        self.offer_lane(1);
        Ok(())
    }
}
