//! `Bucketer` end to end over loopback TCP, ranks as threads: layers of awkward sizes
//! (empty, smaller than, equal to and larger than a bucket) come back exactly reduced.

mod common;

use ringcc::{Bucketer, Communicator, ReduceOp};

fn with_ring<R: Send + 'static>(world: usize, f: impl Fn(Communicator) -> R + Send + Clone + 'static) -> Vec<R> {
    common::thread_ring(world, |_| {}, f)
}

/// Layer sizes in push order, for 16-element buckets: fills one exactly, straddles, spans
/// several, and includes empty layers.
const LENS: [usize; 7] = [16, 0, 5, 40, 1, 0, 17];

fn value(rank: usize, layer: usize, k: usize) -> i32 {
    (rank * 100_000 + layer * 1000 + k) as i32
}

#[test]
fn bucketed_sums_match_per_layer_sums_for_one_to_three_ranks() {
    for world in [1, 2, 3] {
        let results = with_ring(world, move |comm| {
            let rank = comm.rank();
            let mut layers: Vec<Vec<i32>> =
                LENS.iter().enumerate().map(|(l, &n)| (0..n).map(|k| value(rank, l, k)).collect()).collect();
            let mut bucketer = Bucketer::with_bucket_bytes(&comm, ReduceOp::Sum, 16 * 4);
            let mut launched = Vec::new();
            for layer in layers.iter_mut() {
                bucketer.push(layer.as_mut_slice());
                launched.push(bucketer.launched());
            }
            let reports = bucketer.finish().unwrap_or_else(|e| panic!("world {world} rank {rank}: {e}"));
            (layers, launched, reports.len(), reports.iter().all(|r| r.members.len() == world))
        });
        for (rank, (layers, launched, buckets, all_members)) in results.into_iter().enumerate() {
            // 79 elements in 16-element buckets: 4 full ones are launched during the pushes,
            // the fifth (15 elements) by finish.
            assert_eq!(launched, [1, 1, 1, 3, 3, 3, 4], "world {world} rank {rank}");
            assert_eq!(buckets, 5);
            assert!(all_members);
            for (l, layer) in layers.iter().enumerate() {
                let want: Vec<i32> = (0..LENS[l]).map(|k| (0..world).map(|r| value(r, l, k)).sum()).collect();
                assert_eq!(layer, &want, "world {world} rank {rank} layer {l}");
            }
        }
    }
}

#[test]
fn avg_over_two_ranks_with_the_default_bucket_is_one_call() {
    let results = with_ring(2, |comm| {
        let rank = comm.rank() as f32;
        let (mut a, mut b) = (vec![rank; 1000], vec![10.0 * rank; 3]);
        let mut bucketer = Bucketer::new(&comm, ReduceOp::Avg);
        bucketer.push(&mut a);
        bucketer.push(&mut b);
        assert_eq!(bucketer.launched(), 0, "a 25 MiB bucket is not full yet");
        let calls = bucketer.finish().unwrap().len();
        (a, b, calls)
    });
    for (a, b, calls) in results {
        assert_eq!(calls, 1);
        assert!(a.iter().all(|&x| x == 0.5));
        assert!(b.iter().all(|&x| x == 5.0));
    }
}

#[test]
fn finish_with_nothing_pushed_makes_no_call() {
    let results = with_ring(2, |comm| {
        let mut empty: Vec<f32> = Vec::new();
        let mut bucketer = Bucketer::new(&comm, ReduceOp::Sum);
        bucketer.push(&mut empty);
        bucketer.finish().unwrap().len()
    });
    assert_eq!(results, [0, 0]);
}
