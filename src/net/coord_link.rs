//! The rank's connection to the coordinator, owned by the event loop: heartbeats both
//! ways (each of this rank's carries a progress report for `ringrun status`), views pushed
//! by the coordinator, suspicions reported to it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::coord::{Progress, View};
use crate::limits::{CONTROL_BYTES_MAX, HEARTBEAT_INTERVAL};
use crate::wire::control::{Control, CONTROL_HEAD_LEN};

/// What the coordinator told this rank.
#[derive(Debug)]
pub(super) enum CoordEvent {
    /// A new view to install at the next collective boundary.
    View(View),
    /// This rank was declared failed.
    Evicted { epoch: u64, reason: String },
    /// How the call interrupted by the view of `epoch` ends.
    Decision { epoch: u64, seq: u64, finish: bool },
    /// Too few ranks remain.
    QuorumLost { epoch: u64, alive: usize, required: usize },
    /// A rank asks to join: hold before the next call and say which it is.
    JoinPrepare { epoch: u64 },
    /// The join prepared in `epoch` is off.
    JoinCancel { epoch: u64 },
    /// Nobody joins at the join point before call `seq`.
    JoinPointDone { epoch: u64, seq: u64 },
    /// Another rank's copy of a call's result, to finish that call with (sent before the
    /// decision that says so).
    Result(crate::wire::control::HandedResult),
    /// The coordinator is gone (closed, silent past the heartbeat timeout, or garbled).
    Lost(String),
}

/// The coordinator connection.
#[derive(Debug)]
pub(super) struct CoordLink {
    pub(super) stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    last_heard: Instant,
    next_beat: Instant,
    timeout: Duration,
    rank: u32,
    lost: bool,
}

impl CoordLink {
    pub(super) fn new(stream: TcpStream, rank: u32, timeout: Duration, now: Instant) -> CoordLink {
        CoordLink {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            last_heard: now,
            next_beat: now,
            timeout,
            rank,
            lost: false,
        }
    }

    /// Queues a message and writes what the socket takes.
    pub(super) fn send(&mut self, msg: &Control) {
        if self.lost {
            return;
        }
        self.outbuf.extend_from_slice(&msg.encode());
        self.flush();
    }

    pub(super) fn flush(&mut self) {
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return,
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads what arrived; returns the events it carried.
    pub(super) fn read(&mut self, now: Instant) -> Vec<CoordEvent> {
        let mut events = Vec::new();
        if self.lost {
            return events;
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.lost = true;
                    events.push(CoordEvent::Lost("the coordinator closed the connection".into()));
                    return events;
                }
                Ok(n) => {
                    if self.inbuf.len() + n > CONTROL_HEAD_LEN + CONTROL_BYTES_MAX {
                        self.lost = true;
                        events.push(CoordEvent::Lost("the coordinator sent an oversized message".into()));
                        return events;
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_heard = now;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost = true;
                    events.push(CoordEvent::Lost(format!("reading from the coordinator: {e}")));
                    return events;
                }
            }
        }
        loop {
            match Control::decode(&self.inbuf) {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    self.inbuf.drain(..used);
                    match msg {
                        Control::View(v) => events.push(CoordEvent::View(v)),
                        Control::Decision { epoch, seq, finish } => {
                            events.push(CoordEvent::Decision { epoch, seq, finish })
                        }
                        Control::Evicted { epoch, reason } => events.push(CoordEvent::Evicted { epoch, reason }),
                        Control::QuorumLost { epoch, alive, required } => events.push(CoordEvent::QuorumLost {
                            epoch,
                            alive: alive as usize,
                            required: required as usize,
                        }),
                        Control::Heartbeat { .. } => {}
                        Control::JoinPrepare { epoch } => events.push(CoordEvent::JoinPrepare { epoch }),
                        Control::JoinCancel { epoch } => events.push(CoordEvent::JoinCancel { epoch }),
                        Control::JoinPointDone { epoch, seq } => events.push(CoordEvent::JoinPointDone { epoch, seq }),
                        Control::Result(h) => events.push(CoordEvent::Result(h)),
                        other => tracing::debug!("coordinator sent an unexpected {other:?}"),
                    }
                }
                Err(e) => {
                    self.lost = true;
                    events.push(CoordEvent::Lost(format!("the coordinator sent a bad message: {e}")));
                    break;
                }
            }
        }
        events
    }

    /// True when [`CoordLink::tick`] at `now` sends a heartbeat (so the caller knows when
    /// to build a progress report).
    pub(super) fn beat_due(&self, now: Instant) -> bool {
        !self.lost && now >= self.next_beat
    }

    /// Sends a heartbeat, followed by `progress`, when one is due, and notices a silent
    /// coordinator.
    pub(super) fn tick(&mut self, now: Instant, epoch: u64, progress: Option<Progress>) -> Option<CoordEvent> {
        if self.lost {
            return None;
        }
        if now >= self.next_beat {
            self.next_beat = now + HEARTBEAT_INTERVAL;
            self.send(&Control::Heartbeat { rank: self.rank, epoch });
            if let Some(p) = progress {
                self.send(&Control::Progress(p));
            }
        }
        if now.duration_since(self.last_heard) > self.timeout {
            self.lost = true;
            return Some(CoordEvent::Lost(format!(
                "no word from the coordinator for {:?}",
                now.duration_since(self.last_heard)
            )));
        }
        None
    }

    /// True once nothing has been heard for the timeout (unread bytes may still wait).
    pub(super) fn overdue(&self, now: Instant) -> bool {
        !self.lost && now.duration_since(self.last_heard) > self.timeout
    }

    /// When `tick` must next run.
    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.lost).then(|| self.next_beat.min(self.last_heard + self.timeout))
    }

    /// True once the coordinator is gone.
    pub(super) fn is_lost(&self) -> bool {
        self.lost
    }
}
