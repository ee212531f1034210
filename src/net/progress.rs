//! The progress report this rank sends with each heartbeat, for the coordinator's status
//! table (`ringrun status`, see [`crate::coord::status`]). Reading state only: building a
//! report changes nothing in the loop.

use std::time::Instant;

use super::EventLoop;
use crate::coord::{Activity, CallProgress, Progress};

/// Phase reported for a running call that waits for no frame (its own sends are queued).
const SENDING: &str = "sending";

impl EventLoop {
    /// Where this rank stands at `now`.
    pub(super) fn progress(&self, now: Instant) -> Progress {
        let work = self.active.is_some() || !self.queue.is_empty();
        let retrying = self.active.as_ref().is_some_and(|a| a.retry_since.is_some());
        let activity = if self.terminal.is_some() {
            Activity::Stopped
        } else if self.rebuild.is_some() {
            Activity::Rebuilding
        } else if self.awaiting.is_some() {
            Activity::AwaitingDecision
        } else if retrying || (work && self.broken.is_some()) {
            Activity::AwaitingView
        } else if self.active.is_some() {
            Activity::Running
        } else {
            Activity::Idle
        };
        let call = self.active.as_ref().map(|a| {
            let (phase, step, waits_for) = match a.coll.waiting_on() {
                Some((link, phase, step)) => (phase, step, self.peer_on(link)),
                None => (SENDING, 0, None),
            };
            CallProgress {
                seq: a.seq,
                coll: a.coll.spec().coll,
                phase: phase.into(),
                step,
                waits_for,
                running: now.saturating_duration_since(a.started),
            }
        });
        Progress {
            rank: self.rank,
            epoch: self.epoch,
            completed: self.completed,
            activity,
            queued: u32::try_from(self.queue.len()).unwrap_or(u32::MAX),
            received_bytes: self.links.iter().flatten().map(|l| l.bytes_in + l.lanes.bytes_received).sum(),
            call,
        }
    }
}
