//! Reusable payload buffers: encoded segments go back to their pool when the driver has
//! written them, so a steady stream of segments allocates nothing.

use std::sync::{Arc, Mutex, PoisonError};

use crate::limits::POOL_BUFFERS_MAX;

/// A pool of byte buffers shared by the encoder side of a communicator and the frames it
/// queues. Cloning shares the pool. `Send + Sync`: frames are written by the event-loop
/// thread, which may not be the one that took the buffer.
#[derive(Debug, Clone, Default)]
pub struct BufferPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> BufferPool {
        BufferPool::default()
    }

    /// An empty buffer with the capacity of some buffer returned earlier (none on a cold
    /// pool). Dropping the result returns its buffer here.
    pub fn take(&self) -> PooledBytes {
        let bytes = self.lock().pop().unwrap_or_default();
        PooledBytes { bytes, home: Some(self.clone()) }
    }

    /// Buffers waiting to be reused.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn give_back(&self, mut bytes: Vec<u8>) {
        let mut free = self.lock();
        // Keeping at most the most that were in use at once (bounded): memory held between
        // calls never exceeds a call's peak.
        if free.len() < POOL_BUFFERS_MAX && bytes.capacity() > 0 {
            bytes.clear();
            free.push(bytes);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding the lock leaves a list of buffers, which is still valid.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bytes that return to their [`BufferPool`] when dropped (or plain bytes, made with
/// `From<Vec<u8>>`, that are freed as usual). Dereferences to the bytes.
#[derive(Default)]
pub struct PooledBytes {
    bytes: Vec<u8>,
    home: Option<BufferPool>,
}

impl PooledBytes {
    /// The buffer, to write into (its capacity is reused).
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl std::ops::Deref for PooledBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Vec<u8>> for PooledBytes {
    fn from(bytes: Vec<u8>) -> PooledBytes {
        PooledBytes { bytes, home: None }
    }
}

impl Drop for PooledBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.home.take() {
            pool.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

impl Clone for PooledBytes {
    /// A plain copy of the bytes, not tied to the pool.
    fn clone(&self) -> PooledBytes {
        PooledBytes::from(self.bytes.clone())
    }
}

impl PartialEq for PooledBytes {
    fn eq(&self, other: &PooledBytes) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PooledBytes {}

impl std::fmt::Debug for PooledBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PooledBytes({} bytes, pooled: {})", self.bytes.len(), self.home.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_come_back_with_their_capacity() {
        let pool = BufferPool::new();
        let mut a = pool.take();
        a.vec_mut().extend_from_slice(&[1u8; 1000]);
        let cap = a.vec_mut().capacity();
        drop(a);
        assert_eq!(pool.idle(), 1);
        let mut b = pool.take();
        assert!(b.is_empty() && b.vec_mut().capacity() == cap);
        let plain = PooledBytes::from(vec![1, 2, 3]);
        assert_eq!(plain.clone(), plain);
        drop(plain);
        assert_eq!(pool.idle(), 0, "plain bytes do not join the pool");
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let pool = BufferPool::new();
        let held: Vec<PooledBytes> = (0..POOL_BUFFERS_MAX + 5)
            .map(|_| {
                let mut b = pool.take();
                b.vec_mut().push(1);
                b
            })
            .collect();
        drop(held);
        assert_eq!(pool.idle(), POOL_BUFFERS_MAX);
    }
}
