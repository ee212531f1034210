//! Ranks that disagree about a call get a typed error on every rank, quickly, and the
//! communicator stays usable for the next call.

mod common;

use std::time::{Duration, Instant};

use ringcc::{Communicator, Error, ReduceOp};

fn with_ring<R: Send + 'static>(world: usize, f: impl Fn(Communicator) -> R + Send + Sync + Clone + 'static) -> Vec<R> {
    common::thread_ring(
        world,
        |c| {
            c.segment_bytes = 256;
            // Long enough that passing these tests proves the abort cascade, not the timeout.
            c.progress_timeout = Duration::from_secs(30);
        },
        f,
    )
}

/// Runs one bad call (different per rank via `bad`) then a good one; returns per rank the
/// bad call's error text and how long it took.
fn mismatch_then_recover(world: usize, bad: fn(&Communicator) -> Result<ringcc::Report, Error>) {
    let results = with_ring(world, move |comm| {
        let t = Instant::now();
        let err = bad(&comm).expect_err("a mismatched call must fail");
        let took = t.elapsed();
        let mut v = vec![comm.rank() as i64 + 1; 1000];
        let report = comm.all_reduce(&mut v, ReduceOp::Sum).expect("the next call works");
        (err.to_string(), matches!(err, Error::Protocol { .. }), took, v, report.seq)
    });
    let want = (1..=world as i64).sum::<i64>();
    for (rank, (err, typed, took, v, _)) in results.iter().enumerate() {
        assert!(typed, "rank {rank}: untyped error {err}");
        assert!(*took < Duration::from_secs(5), "rank {rank} took {took:?} to fail: {err}");
        assert!(v.iter().all(|x| *x == want), "rank {rank}: the call after the mismatch is wrong");
    }
}

#[test]
fn different_lengths_fail_fast_everywhere() {
    mismatch_then_recover(4, |c| {
        let mut v = vec![1.0f32; if c.rank() == 2 { 5000 } else { 4000 }];
        c.all_reduce(&mut v, ReduceOp::Sum)
    });
}

#[test]
fn different_dtypes_fail_fast_everywhere() {
    mismatch_then_recover(3, |c| {
        if c.rank() == 1 {
            c.all_reduce(&mut vec![1.0f64; 3000], ReduceOp::Sum)
        } else {
            c.all_reduce(&mut vec![1.0f32; 3000], ReduceOp::Sum)
        }
    });
}

#[test]
fn different_ops_fail_fast_everywhere() {
    mismatch_then_recover(3, |c| {
        let op = if c.rank() == 0 { ReduceOp::Max } else { ReduceOp::Sum };
        c.all_reduce(&mut vec![1i32; 3000], op)
    });
}

#[test]
fn different_collectives_fail_fast_everywhere() {
    mismatch_then_recover(4, |c| {
        let mut v = vec![1u8; 4000];
        if c.rank() == 3 {
            c.broadcast(&mut v, 0)
        } else {
            c.all_reduce(&mut v, ReduceOp::Sum)
        }
    });
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let results = with_ring(2, |comm| {
        let e1 = comm.reduce_scatter(&[1.0f32; 5], &mut [0.0; 2], ReduceOp::Sum).unwrap_err();
        let e2 = comm.all_gather(&[1.0f32; 2], &mut [0.0; 3]).unwrap_err();
        let e3 = comm.broadcast(&mut [1.0f32; 2], 9).unwrap_err();
        let ok = comm.barrier().is_ok();
        [e1, e2, e3].iter().all(|e| matches!(e, Error::InvalidArgument { .. })) && ok
    });
    assert!(results.iter().all(|ok| *ok));
}
