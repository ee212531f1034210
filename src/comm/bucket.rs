//! Gradient bucketing: overlap the all-reduce of later layers with the backward pass of
//! earlier ones, as PyTorch DDP does.
//!
//! The backward pass produces gradients last layer first. Each layer's gradients are copied
//! into the open bucket as soon as they exist; a bucket that reaches its size is handed to
//! [`Communicator::all_reduce_async`] at once and reduces on the event loop while the caller
//! computes the next layer. [`Bucketer::finish`] sends the last, partly filled bucket, waits
//! for every bucket in order and copies the results back into the layers' own slices.
//!
//! A layer may straddle buckets: buckets are filled to exactly their size (the last one of a
//! step excepted), so a layer larger than a bucket spans several and every bucket is
//! launched the moment it is full.

use super::{Communicator, Error, Report, Work};
use crate::core::{Element, ReduceOp};

/// A run of one layer's elements inside one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Index of the layer in push order.
    layer: usize,
    /// First element of the run within the layer.
    layer_offset: usize,
    /// First element of the run within the bucket.
    bucket_offset: usize,
    /// Elements in the run.
    len_elems: usize,
}

/// One bucket's contents and where each run of them came from.
#[derive(Debug)]
struct Bucket<T> {
    data: Vec<T>,
    pieces: Vec<Piece>,
}

/// The packing rule, free of any communicator so it can be tested alone: copies layers into
/// buckets of `bucket_elems` and yields each bucket as it fills.
#[derive(Debug)]
struct Packing<T> {
    bucket_elems: usize,
    open: Bucket<T>,
    layers: usize,
}

impl<T: Copy> Packing<T> {
    /// `bucket_elems` is clamped to at least 1.
    fn new(bucket_elems: usize) -> Packing<T> {
        Packing { bucket_elems: bucket_elems.max(1), open: Bucket { data: Vec::new(), pieces: Vec::new() }, layers: 0 }
    }

    /// Copies `layer` into the open bucket, appending every bucket that became full to
    /// `full`, in order. Returns the layer's index. An empty layer takes an index and no space.
    fn push(&mut self, layer: &[T], full: &mut Vec<Bucket<T>>) -> usize {
        let index = self.layers;
        self.layers += 1;
        let mut layer_offset = 0;
        while layer_offset < layer.len() {
            if self.open.data.is_empty() {
                // One allocation per bucket instead of repeated doubling; untouched pages of
                // a large reservation cost nothing until written.
                self.open.data.reserve_exact(self.bucket_elems);
            }
            let room = self.bucket_elems - self.open.data.len();
            let len_elems = room.min(layer.len() - layer_offset);
            self.open.pieces.push(Piece { layer: index, layer_offset, bucket_offset: self.open.data.len(), len_elems });
            self.open.data.extend_from_slice(&layer[layer_offset..layer_offset + len_elems]);
            layer_offset += len_elems;
            if self.open.data.len() == self.bucket_elems {
                full.push(self.close());
            }
        }
        index
    }

    /// The open bucket, if it holds any element; a new empty one replaces it.
    fn take_open(&mut self) -> Option<Bucket<T>> {
        (!self.open.data.is_empty()).then(|| self.close())
    }

    /// The open bucket as it is; a new empty one replaces it.
    fn close(&mut self) -> Bucket<T> {
        Bucket { data: std::mem::take(&mut self.open.data), pieces: std::mem::take(&mut self.open.pieces) }
    }
}

/// Copies each run of `data` back to the layer it came from.
///
/// # Panics
/// If a piece lies outside `data` or its layer: the pieces were made from these very
/// slices, so that is a bug here, not bad input.
fn scatter<T: Copy>(data: &[T], pieces: &[Piece], layers: &mut [&mut [T]]) {
    for p in pieces {
        let source = &data[p.bucket_offset..p.bucket_offset + p.len_elems];
        layers[p.layer][p.layer_offset..p.layer_offset + p.len_elems].copy_from_slice(source);
    }
}

/// Packs per-layer gradients into buckets and all-reduces each bucket in the background as
/// soon as it is full, so communication overlaps the rest of the backward pass.
///
/// Call order, identical on every rank: [`Bucketer::push`] each layer's gradient slice in
/// backward order (last layer first) as soon as it is computed, then [`Bucketer::finish`].
/// Every rank must push layers of the same lengths in the same order and use the same
/// bucket size, so that the buckets (and hence the collectives) match; a mismatch is
/// reported by `finish` as the collective's error, never as a wrong sum.
///
/// Memory: the buckets together hold one copy of the pushed gradients until `finish`.
/// The number of buckets in flight is bounded by the total pushed size over the bucket
/// size; past the communicator's queue depth ([`crate::limits::QUEUE_DEPTH_MAX`]) a push
/// blocks until earlier buckets complete.
///
/// Dropping a `Bucketer` without calling `finish` leaves the layers as they were (the
/// reductions still run to completion, as every rank needs its part).
///
/// # Examples
///
/// ```no_run
/// use ringcc::{Bucketer, Communicator, ReduceOp};
/// # fn main() -> Result<(), ringcc::Error> {
/// let comm = Communicator::from_env()?;
/// let (mut grad_w2, mut grad_w1) = (vec![1.0f32; 640], vec![2.0f32; 4096]);
/// let mut bucketer = Bucketer::with_bucket_bytes(&comm, ReduceOp::Avg, 8 << 10);
/// bucketer.push(&mut grad_w2); // last layer first: its reduction starts while ...
/// bucketer.push(&mut grad_w1); // ... the caller was computing this one
/// let reports = bucketer.finish()?;
/// println!("{} buckets, members {:?}", reports.len(), reports.first().map(|r| &r.members));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Bucketer<'a, T: Element> {
    comm: &'a Communicator,
    op: ReduceOp,
    packing: Packing<T>,
    layers: Vec<&'a mut [T]>,
    in_flight: Vec<(Work<Vec<T>>, Vec<Piece>)>,
    full: Vec<Bucket<T>>,
}

impl<'a, T: Element> Bucketer<'a, T> {
    /// Default bucket size in bytes: 25 MiB, PyTorch DDP's `bucket_cap_mb` default. Large
    /// enough that per-call latency is small next to transfer time, small enough that the
    /// first bucket starts while most of the backward pass is still ahead.
    pub const BUCKET_BYTES_DEFAULT: usize = 25 << 20;

    /// A bucketer with buckets of [`Bucketer::BUCKET_BYTES_DEFAULT`] bytes.
    pub fn new(comm: &'a Communicator, op: ReduceOp) -> Bucketer<'a, T> {
        Bucketer::with_bucket_bytes(comm, op, Self::BUCKET_BYTES_DEFAULT)
    }

    /// A bucketer with buckets of `bucket_bytes` bytes, rounded down to whole elements;
    /// below one element's size a bucket holds one element.
    pub fn with_bucket_bytes(comm: &'a Communicator, op: ReduceOp, bucket_bytes: usize) -> Bucketer<'a, T> {
        Bucketer {
            comm,
            op,
            packing: Packing::new(bucket_bytes / T::DTYPE.size()),
            layers: Vec::new(),
            in_flight: Vec::new(),
            full: Vec::new(),
        }
    }

    /// Adds one layer's gradients (copied now) and launches every bucket that became full.
    /// `layer` receives the reduced values in [`Bucketer::finish`]; until then it is borrowed.
    pub fn push(&mut self, layer: &'a mut [T]) {
        self.packing.push(layer, &mut self.full);
        self.layers.push(layer);
        for bucket in self.full.drain(..) {
            let work = self.comm.all_reduce_async(bucket.data, self.op);
            self.in_flight.push((work, bucket.pieces));
        }
    }

    /// Buckets handed to the communicator so far (the open bucket is not counted).
    pub fn launched(&self) -> usize {
        self.in_flight.len()
    }

    /// Launches the partly filled last bucket, waits for every bucket in launch order and
    /// writes the reduced values back into the pushed layers. Returns one report per
    /// bucket, in launch order (empty if nothing but empty layers was pushed).
    ///
    /// # Errors
    /// The first failed bucket's [`Error`], after which the layers hold unspecified data
    /// (some buckets may have been written back, others not).
    pub fn finish(mut self) -> Result<Vec<Report>, Error> {
        if let Some(bucket) = self.packing.take_open() {
            let work = self.comm.all_reduce_async(bucket.data, self.op);
            self.in_flight.push((work, bucket.pieces));
        }
        let mut reports = Vec::with_capacity(self.in_flight.len());
        for (work, pieces) in self.in_flight.drain(..) {
            let (data, report) = work.wait()?;
            scatter(&data, &pieces, &mut self.layers);
            reports.push(report);
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `lens` (layer i filled with 1000 * i + position) and returns the buckets,
    /// the open one last.
    fn pack(bucket_elems: usize, lens: &[usize]) -> Vec<Bucket<u32>> {
        let mut packing = Packing::new(bucket_elems);
        let mut buckets = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let layer: Vec<u32> = (0..len as u32).map(|k| 1000 * i as u32 + k).collect();
            assert_eq!(packing.push(&layer, &mut buckets), i);
        }
        buckets.extend(packing.take_open());
        buckets
    }

    fn sizes(buckets: &[Bucket<u32>]) -> Vec<usize> {
        buckets.iter().map(|b| b.data.len()).collect()
    }

    #[test]
    fn layers_that_fit_share_a_bucket_and_a_bucket_closes_when_exactly_full() {
        let b = pack(10, &[4, 6, 3]);
        assert_eq!(sizes(&b), [10, 3]);
        assert_eq!(
            b[0].pieces,
            [
                Piece { layer: 0, layer_offset: 0, bucket_offset: 0, len_elems: 4 },
                Piece { layer: 1, layer_offset: 0, bucket_offset: 4, len_elems: 6 }
            ]
        );
        assert_eq!(b[1].pieces, [Piece { layer: 2, layer_offset: 0, bucket_offset: 0, len_elems: 3 }]);
    }

    #[test]
    fn a_layer_that_does_not_fit_straddles_two_buckets() {
        let b = pack(10, &[7, 5]);
        assert_eq!(sizes(&b), [10, 2]);
        assert_eq!(b[0].pieces[1], Piece { layer: 1, layer_offset: 0, bucket_offset: 7, len_elems: 3 });
        assert_eq!(b[1].pieces, [Piece { layer: 1, layer_offset: 3, bucket_offset: 0, len_elems: 2 }]);
        assert_eq!(b[0].data[7..], [1000, 1001, 1002]);
        assert_eq!(b[1].data, [1003, 1004]);
    }

    #[test]
    fn a_layer_larger_than_a_bucket_spans_several_full_buckets() {
        let b = pack(4, &[1, 13]);
        assert_eq!(sizes(&b), [4, 4, 4, 2]);
        let pieces: Vec<_> = b.iter().flat_map(|b| b.pieces.iter().copied()).collect();
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces.iter().filter(|p| p.layer == 1).map(|p| p.len_elems).sum::<usize>(), 13);
    }

    #[test]
    fn empty_layers_and_no_layers_make_no_buckets() {
        assert!(pack(8, &[]).is_empty());
        assert!(pack(8, &[0, 0]).is_empty());
        let b = pack(8, &[0, 3, 0]);
        assert_eq!(sizes(&b), [3]);
        assert_eq!(b[0].pieces, [Piece { layer: 1, layer_offset: 0, bucket_offset: 0, len_elems: 3 }]);
    }

    #[test]
    fn a_zero_bucket_size_means_one_element_per_bucket() {
        assert_eq!(sizes(&pack(0, &[3])), [1, 1, 1]);
    }

    #[test]
    fn scatter_restores_every_layer_from_its_buckets() {
        for bucket_elems in [1, 2, 3, 5, 8, 64] {
            let lens = [5usize, 0, 17, 1, 8];
            let buckets = pack(bucket_elems, &lens);
            assert!(buckets.iter().rev().skip(1).all(|b| b.data.len() == bucket_elems), "only the last is partial");
            let mut storage: Vec<Vec<u32>> = lens.iter().map(|&n| vec![u32::MAX; n]).collect();
            let mut layers: Vec<&mut [u32]> = storage.iter_mut().map(|v| v.as_mut_slice()).collect();
            for b in &buckets {
                scatter(&b.data, &b.pieces, &mut layers);
            }
            for (i, layer) in storage.iter().enumerate() {
                let want: Vec<u32> = (0..lens[i] as u32).map(|k| 1000 * i as u32 + k).collect();
                assert_eq!(layer, &want, "bucket {bucket_elems}, layer {i}");
            }
        }
    }
}
