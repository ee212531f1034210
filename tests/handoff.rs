//! Small blocking calls turn the event loop on the caller's thread (`net::handoff`); these
//! check that jobs still run in order and complete whoever drives the loop.

mod common;

use std::time::{Duration, Instant};

use ringcc::{Communicator, ReduceOp};

/// Bound on any single wait here: a job left behind by a caller would wait forever.
const WAIT: Duration = Duration::from_secs(10);

fn value(i: usize, rank: usize, round: usize) -> f32 {
    ((i * 7 + rank * 13 + round) % 1000) as f32
}

fn sum(len: usize, world: usize, round: usize) -> Vec<f32> {
    (0..len).map(|i| (0..world).map(|r| value(i, r, round)).sum()).collect()
}

#[test]
fn async_and_small_blocking_calls_interleave_in_order() {
    const WORLD: usize = 3;
    // Above `limits::INLINE_BYTES_MAX`: this one runs on the loop thread.
    const BIG: usize = 300_000;
    const SMALL: usize = 100;
    let outcomes = common::thread_ring(
        WORLD,
        |_| {},
        |comm: Communicator| {
            let r = comm.rank();
            for round in 0..20 {
                let big =
                    comm.all_reduce_async((0..BIG).map(|i| value(i, r, round)).collect::<Vec<_>>(), ReduceOp::Sum);
                let mut small: Vec<f32> = (0..SMALL).map(|i| value(i, r, round + 1)).collect();
                comm.all_reduce(&mut small, ReduceOp::Sum).unwrap_or_else(|e| panic!("rank {r} round {round}: {e}"));
                assert_eq!(small, sum(SMALL, WORLD, round + 1), "rank {r} round {round} small");
                let mut big = big;
                let (got, _) = big.wait_timeout(WAIT).expect("big call done in time").expect("big call");
                assert_eq!(got, sum(BIG, WORLD, round), "rank {r} round {round} big");
                // Sent while the loop thread leaves the loop to callers: it must not wait for them.
                let mut after = comm.all_reduce_async(vec![r as f32; SMALL], ReduceOp::Sum);
                let (got, _) =
                    after.wait_timeout(WAIT).expect("async call after a blocking one done in time").expect("async");
                assert_eq!(got, vec![(0..WORLD).sum::<usize>() as f32; SMALL]);
            }
        },
    );
    assert_eq!(outcomes.len(), WORLD);
}

#[test]
fn small_calls_complete_without_spinning() {
    const WORLD: usize = 4;
    let took = common::thread_ring(
        WORLD,
        |c| c.spin = Duration::ZERO,
        |comm: Communicator| {
            let started = Instant::now();
            for round in 0..100 {
                let mut v: Vec<f32> = (0..256).map(|i| value(i, comm.rank(), round)).collect();
                comm.all_reduce(&mut v, ReduceOp::Sum).expect("all_reduce");
                assert_eq!(v, sum(256, WORLD, round));
            }
            started.elapsed()
        },
    );
    // A call that waited in the poller (up to its next deadline: heartbeats, 500 ms) before
    // starting took over 15 s here; sleeping in the poller between frames takes about a
    // millisecond per call even on a loaded host.
    assert!(took.iter().all(|t| *t < Duration::from_secs(4)), "{took:?}");
}
