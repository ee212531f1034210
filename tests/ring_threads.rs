//! Collectives with every rank as a thread of this process, over real loopback TCP.

mod common;

use ringcc::{Communicator, ReduceOp};

fn with_ring<R: Send + 'static>(
    world: usize,
    segment_bytes: usize,
    f: impl Fn(Communicator) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    common::thread_ring(world, move |c| c.segment_bytes = segment_bytes, f)
}

#[test]
fn all_reduce_sums_exactly_for_small_worlds() {
    for world in [1, 2, 3, 4, 5] {
        for len in [0usize, 1, 7, 1000, 100_003] {
            let results = with_ring(world, 4096, move |comm| {
                let r = comm.rank();
                let mut v: Vec<f32> = (0..len).map(|i| ((i * 7 + r * 13) % 1000) as f32).collect();
                let report = comm
                    .all_reduce(&mut v, ReduceOp::Sum)
                    .unwrap_or_else(|e| panic!("world {world} len {len} rank {r}: {e}"));
                assert_eq!(report.members, (0..world).collect::<Vec<_>>());
                v
            });
            let want: Vec<f32> = (0..len).map(|i| (0..world).map(|r| ((i * 7 + r * 13) % 1000) as f32).sum()).collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got, &want, "world {world} len {len} rank {rank}");
            }
        }
    }
}

#[test]
fn communicator_is_send_and_sync_and_reports_its_view() {
    fn check<T: Send + Sync>() {}
    check::<Communicator>();
    let views = with_ring(3, 1024, |comm| (comm.epoch(), comm.members()));
    assert!(views.iter().all(|v| *v == (1, vec![0, 1, 2])), "{views:?}");
}
