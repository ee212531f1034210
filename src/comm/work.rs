//! Handles to collectives running in the background.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::{Error, Report};
use crate::net::JobOutcome;

/// A collective submitted with an `*_async` call. Calls complete in submission order.
/// Dropping a `Work` does not cancel the collective (the other ranks need this rank's
/// part); its buffer is freed when it completes.
#[derive(Debug)]
pub struct Work<B> {
    rx: Receiver<JobOutcome>,
    done: Option<JobOutcome>,
    _buffer: std::marker::PhantomData<fn() -> B>,
}

impl<B: Send + 'static> Work<B> {
    pub(crate) fn new(rx: Receiver<JobOutcome>) -> Work<B> {
        Work { rx, done: None, _buffer: std::marker::PhantomData }
    }

    /// Blocks until the collective completes and returns the buffer with the result.
    ///
    /// # Errors
    /// The collective's [`Error`]; the buffer is lost with it (its contents would be
    /// partial).
    pub fn wait(mut self) -> Result<(B, Report), Error> {
        let outcome = match self.done.take() {
            Some(o) => o,
            None => self.rx.recv().map_err(|_| Error::Shutdown("event loop ended".into()))?,
        };
        Self::unpack(outcome)
    }

    /// Waits at most `timeout`: `None` if the collective is still running (call again),
    /// otherwise its outcome. After an outcome has been returned the handle is spent and
    /// further calls return `Some(Err(Error::Shutdown))`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<(B, Report), Error>> {
        if self.done.is_none() {
            match self.rx.recv_timeout(timeout) {
                Ok(o) => self.done = Some(o),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(Err(Error::Shutdown("event loop ended or outcome already taken".into())))
                }
            }
        }
        self.done.take().map(Self::unpack)
    }

    /// True once the collective has completed (successfully or not); `wait` will then
    /// not block.
    pub fn is_completed(&mut self) -> bool {
        if self.done.is_some() {
            return true;
        }
        match self.rx.try_recv() {
            Ok(o) => {
                self.done = Some(o);
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => true,
        }
    }

    fn unpack(outcome: JobOutcome) -> Result<(B, Report), Error> {
        let (owner, report) = outcome.result?;
        let owner = owner.ok_or_else(|| Error::Shutdown("buffer lost".into()))?;
        let b = owner.downcast::<B>().map_err(|_| Error::Shutdown("buffer of another type".into()))?;
        Ok((*b, report))
    }
}
