//! Who drives the event loop: its own thread, or the caller of a small blocking collective.
//!
//! Handing a job to the loop thread and the result back costs two thread wake-ups, tens of
//! microseconds each on a busy host: more than the whole ring exchange of a 4 KiB
//! all-reduce on loopback. So a caller that blocks on a small collective
//! ([`crate::limits::INLINE_BYTES_MAX`]) takes the loop and turns it on its own thread
//! until its outcome is there; meanwhile the loop thread waits on a gate (no polling, no
//! CPU). After the call the loop thread keeps off for [`crate::limits::HANDBACK_LINGER`],
//! so back-to-back small calls find the loop free and pay no wake-up at all; then it takes
//! the loop back and sleeps in the poller as before. Nothing is lost while nobody polls:
//! the kernel buffers what arrives, and every deadline the loop keeps is far longer than
//! the linger.
//!
//! Contract: only one thread turns the loop at a time (the `Mutex` around it); jobs start
//! in submission order whoever turns it (a caller queues its job through the same channel
//! as everyone else); the loop thread never waits on the gate once the communicator is
//! dropped.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::Events;

use super::{Driver, EventLoop};
use crate::limits::{HANDBACK_LINGER, INLINE_BYTES_MAX};
use crate::net::{Job, JobOutcome};
use crate::Error;

/// What one turn of the loop keeps for the next, whichever thread runs it.
pub(super) struct Turn {
    pub(super) events: Events,
    /// When the loop last moved anything: it spins (polls without sleeping) for `spin`
    /// after it.
    pub(super) last_activity: Instant,
    /// `Config::spin`.
    pub(super) spin: Duration,
    /// The loop has closed or failed: nobody may turn it again.
    pub(super) ended: bool,
}

/// When the loop thread may turn the loop.
#[derive(Debug, Default)]
struct Gate {
    /// A caller holds or is taking the loop.
    callers: usize,
    /// Until when the loop thread leaves the loop to callers after the last one left.
    linger_until: Option<Instant>,
    /// The communicator is dropped: the loop thread must turn the loop to close it.
    shutdown: bool,
}

/// The loop, its turn state, and the gate that keeps the loop thread off it while callers
/// drive it.
pub(super) struct Cell {
    driven: Mutex<(EventLoop, Turn)>,
    gate: Mutex<Gate>,
    /// Wakes the loop thread when it must stop waiting: shutdown, or work a caller cannot
    /// finish (callers that leave nothing behind never notify it: it would wake for nothing).
    shut: Condvar,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell").field("gate", &*lock(&self.gate)).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while turning the loop is a bug already reported by that thread's panic;
    // the state stays usable for failing the remaining jobs.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cell {
    pub(super) fn new(ev: EventLoop, turn: Turn) -> Cell {
        Cell { driven: Mutex::new((ev, turn)), gate: Mutex::new(Gate::default()), shut: Condvar::new() }
    }

    /// The loop thread's body: turn the loop whenever no caller drives it, until it ends.
    pub(super) fn run(&self) {
        loop {
            self.wait_for_callers();
            let mut g = lock(&self.driven);
            if self.callers_first() {
                // A caller came between the gate and the lock: it goes first.
                continue;
            }
            let (ev, turn) = &mut *g;
            if !ev.turn(turn, None) {
                return;
            }
        }
    }

    /// Blocks the loop thread while callers drive the loop or the linger runs.
    fn wait_for_callers(&self) {
        let mut gate = lock(&self.gate);
        loop {
            if gate.shutdown {
                return;
            }
            let now = Instant::now();
            let until = match gate.linger_until {
                _ if gate.callers > 0 => now + HANDBACK_LINGER,
                Some(t) if t > now => t,
                _ => return,
            };
            gate = match self.shut.wait_timeout(gate, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// True while the loop thread must leave the loop to callers.
    fn callers_first(&self) -> bool {
        let gate = lock(&self.gate);
        !gate.shutdown && (gate.callers > 0 || gate.linger_until.is_some_and(|t| t > Instant::now()))
    }

    /// Tells the loop thread to stop waiting: the communicator is gone.
    pub(super) fn shut_down(&self) {
        lock(&self.gate).shutdown = true;
        self.shut.notify_all();
    }

    /// Turns the loop on the caller's thread until `rx` has the outcome, then lets the loop
    /// thread have it again after the linger.
    fn drive_until(&self, waker: &mio::Waker, rx: &Receiver<JobOutcome>) -> Result<JobOutcome, Error> {
        lock(&self.gate).callers += 1;
        let mut g = match self.driven.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // The loop thread is in a turn, maybe asleep in the poller: wake it so it
                // ends the turn (it has queued this job by then) and then stays off.
                let _ = waker.wake();
                lock(&self.driven)
            }
        };
        // Start the job just queued before the first poll (nothing wakes the poller for
        // it), and count it as activity: spin from the first turn.
        {
            let (ev, turn) = &mut *g;
            ev.take_commands();
            let now = Instant::now();
            ev.drive(now);
            turn.last_activity = now;
        }
        let outcome = loop {
            match rx.try_recv() {
                Ok(o) => break Some(o),
                Err(crossbeam_channel::TryRecvError::Disconnected) => break None,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let (ev, turn) = &mut *g;
            if ev.take_commands() || !ev.turn(turn, None) {
                // Only the loop thread closes the loop; an ended loop has answered every job.
                break rx.try_recv().ok();
            }
        };
        // Work this caller leaves behind (async jobs, a recovery) must not wait for the
        // linger: the loop thread takes over at once.
        let busy = g.0.has_work();
        drop(g);
        let mut gate = lock(&self.gate);
        gate.callers -= 1;
        gate.linger_until = (!busy).then(|| Instant::now() + HANDBACK_LINGER);
        drop(gate);
        if busy {
            self.shut.notify_all();
        }
        outcome.ok_or_else(|| Error::Shutdown("event loop ended".into()))
    }

    /// Ends the linger so that the loop thread picks up a job sent from a thread that does
    /// not drive the loop itself (an async call).
    pub(super) fn end_linger(&self) {
        let mut gate = lock(&self.gate);
        if gate.linger_until.take().is_some() && gate.callers == 0 {
            drop(gate);
            self.shut.notify_all();
        }
    }
}

impl EventLoop {
    /// True while the loop has something to move without a caller: a job running or
    /// queued, a membership change in progress, a join to switch to or a join point.
    fn has_work(&self) -> bool {
        self.active.is_some()
            || !self.queue.is_empty()
            || !self.rx.is_empty()
            || self.rebuild.is_some()
            || self.awaiting.is_some()
            || self.pending_view.is_some()
            || !self.switches.is_empty()
            || self.join_wait.is_some()
    }
}

impl Driver {
    /// Runs `job` for a caller that blocks until its outcome arrives on `rx` (the job's
    /// reply channel): small jobs on the caller's own thread, larger ones on the loop
    /// thread while the caller waits.
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the loop has ended.
    pub(crate) fn run_blocking(&self, job: Job, rx: &Receiver<JobOutcome>) -> Result<JobOutcome, Error> {
        let inline = job.buf.bytes().len() <= INLINE_BYTES_MAX;
        if !inline {
            self.submit(job)?;
            return rx.recv().map_err(|_| Error::Shutdown("event loop ended".into()));
        }
        let tx = self.tx.as_ref().ok_or_else(|| Error::Shutdown("communicator dropped".into()))?;
        tx.send(super::Command::Run(job)).map_err(|_| Error::Shutdown("event loop ended".into()))?;
        self.cell.drive_until(&self.waker, rx)
    }
}
