//! The real driver: one mio event-loop thread per communicator owns every socket.
//!
//! The caller's thread hands jobs to the loop through a crossbeam channel and a mio
//! [`mio::Waker`], or, for a small blocking call, turns the loop itself (`handoff.rs`:
//! no thread hand-off); the loop runs one collective at a time (in submission order), feeds
//! received frames to the sans-IO [`crate::core::collective::Collective`], and writes what
//! it asks to send with vectored writes. The loop only reads the clock and moves bytes.

mod accept;
mod coord_link;
mod establish;
mod event_loop;
mod fault;
pub(crate) mod handshake;
pub(crate) mod lane;
mod link;
mod rate;
mod read_ahead;
mod shm;
mod sockbuf;

use std::any::Any;
use std::time::Instant;

use crate::core::{DataType, ReduceOp};
use crate::wire::CollKind;
use crate::{Error, Rank, Report};

pub(crate) use establish::{establish_ring, listen};

pub(crate) use event_loop::Driver;
pub(crate) use rate::same_host;

/// What the caller asks the loop to run; the loop adds sequence number, epoch and layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobSpec {
    pub(crate) coll: CollKind,
    pub(crate) op: ReduceOp,
    pub(crate) dtype: DataType,
    pub(crate) len_elems: usize,
    pub(crate) root: Rank,
    /// Epoch of the membership the caller laid the buffer out for (all_gather and
    /// reduce_scatter sizes depend on it); the call fails if the view changed since.
    pub(crate) epoch: u64,
    /// The statistics exchange of `Communicator::stats`: when the job starts (every
    /// earlier call done), the loop writes this rank's window into its slot of the buffer.
    pub(crate) stats_exchange: bool,
}

/// Membership state the event loop publishes for the caller's thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Members of the current view, ascending, with its epoch.
    pub(crate) view: std::sync::Mutex<(u64, Vec<Rank>)>,
    /// This rank's statistics as of the last completed collective.
    stats: std::sync::Mutex<Option<crate::comm::Stats>>,
}

impl Shared {
    /// The current (epoch, members ascending).
    pub(crate) fn view(&self) -> (u64, Vec<Rank>) {
        self.view.lock().map(|v| v.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn set(&self, epoch: u64, members: Vec<Rank>) {
        match self.view.lock() {
            Ok(mut v) => *v = (epoch, members),
            Err(p) => *p.into_inner() = (epoch, members),
        }
    }

    /// The last published statistics, if any collective has completed.
    pub(crate) fn stats(&self) -> Option<crate::comm::Stats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn set_stats(&self, stats: crate::comm::Stats) {
        match self.stats.lock() {
            Ok(mut s) => *s = Some(stats),
            Err(p) => *p.into_inner() = Some(stats),
        }
    }
}

/// The bytes a job works on.
///
/// Either borrowed from a caller that blocks until the job's outcome arrives (so the
/// pointer stays valid and unaliased for the job's life), or owned by `owner` (a boxed
/// `Vec<T>` whose heap storage `ptr` points into; moving the box does not move it).
pub(crate) struct JobBuf {
    ptr: *mut u8,
    len: usize,
    owner: Option<Box<dyn Any + Send>>,
}

// SAFETY: the pointer is only dereferenced by the event-loop thread while the job runs; the
// borrowed case's caller is blocked on the outcome and the owned case's storage moves with
// the job, so no other thread touches the bytes meanwhile.
unsafe impl Send for JobBuf {}

impl std::fmt::Debug for JobBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobBuf({} bytes, owned: {})", self.len, self.owner.is_some())
    }
}

impl JobBuf {
    /// A buffer borrowed from a caller that will block until the job's outcome arrives.
    ///
    /// # Safety
    /// The caller must not touch `bytes` and must keep it alive until it has received the
    /// job's outcome (or the outcome channel reports the loop gone).
    pub(crate) unsafe fn borrowed(bytes: &mut [u8]) -> JobBuf {
        JobBuf { ptr: bytes.as_mut_ptr(), len: bytes.len(), owner: None }
    }

    /// A buffer owned by the job: `owner` must be a `Vec<T>` of a [`crate::Element`] type.
    pub(crate) fn owned<T: crate::Element>(mut v: Vec<T>) -> JobBuf {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(v.as_mut_slice());
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        JobBuf { ptr, len, owner: Some(Box::new(v)) }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: see the type's invariant: ptr is valid for len bytes while the job lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only live view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub(crate) fn into_owner(self) -> Option<Box<dyn Any + Send>> {
        self.owner
    }
}

/// A job sent to the loop.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) buf: JobBuf,
    pub(crate) reply: crossbeam_channel::Sender<JobOutcome>,
    pub(crate) submitted: Instant,
}

/// What the loop sends back: the owned buffer (if any) and the report, or the error.
#[derive(Debug)]
pub(crate) struct JobOutcome {
    pub(crate) result: Result<(Option<Box<dyn Any + Send>>, Report), Error>,
}
