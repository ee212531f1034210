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

/// Worlds of 5 and more run recursive doubling over partner links (connections to the
/// non-neighbours it pairs ranks with): forced, and by `Auto` at 8 ranks. Every rank ends
/// with the same bits, and they are the exact sum (integers, exact in f32) or, for values
/// whose sum depends on the order, the same on every rank.
#[test]
fn doubling_over_partner_links_is_exact_in_larger_worlds() {
    use ringcc::comm::Side;
    use ringcc::core::collective::Algorithm;
    use ringcc::core::doubling::partner_positions;
    for (world, algorithm) in [(5, Algorithm::Doubling), (6, Algorithm::Doubling), (8, Algorithm::Auto)] {
        let results = common::thread_ring(
            world,
            move |c| c.algorithm = algorithm,
            move |comm| {
                let r = comm.rank();
                let mut out = Vec::new();
                for len in [1usize, 7, 1000, 4099] {
                    let mut ints: Vec<f32> = (0..len).map(|i| ((i * 7 + r * 13) % 1000) as f32).collect();
                    let report = comm.all_reduce(&mut ints, ReduceOp::Sum).expect("all_reduce");
                    assert_eq!(report.members, (0..world).collect::<Vec<_>>());
                    let mut mixed: Vec<f32> = (0..len)
                        .map(|i| ((i * 31 + r * 17) as f32).sin() * 10f32.powi((i + r) as i32 % 9 - 4))
                        .collect();
                    comm.all_reduce(&mut mixed, ReduceOp::Avg).expect("all_reduce");
                    out.push((ints, mixed));
                }
                // Every link is in the statistics, partner links after the ring's, and
                // the partner links carried the doubling rounds' frames both ways.
                let stats = comm.local_stats();
                let sides: Vec<(Side, usize)> = stats.links.iter().map(|l| (l.side, l.peer)).collect();
                let mut want = vec![(Side::Prev, (r + world - 1) % world), (Side::Next, (r + 1) % world)];
                want.extend(partner_positions(world, r).into_iter().map(|q| (Side::Partner, q)));
                assert_eq!(sides, want, "world {world} rank {r}");
                for l in stats.links.iter().filter(|l| l.side == Side::Partner) {
                    assert!(l.bytes_sent > 0 && l.bytes_received > 0 && l.frames_received > 0, "{l:?}");
                }
                out
            },
        );
        for (k, len) in [1usize, 7, 1000, 4099].into_iter().enumerate() {
            let want: Vec<f32> = (0..len).map(|i| (0..world).map(|r| ((i * 7 + r * 13) % 1000) as f32).sum()).collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got[k].0, want, "world {world} len {len} rank {rank}");
                let same = got[k].1.iter().zip(&results[0][k].1).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "world {world} len {len}: rank {rank}'s average differs from rank 0's");
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

/// A rank that stops calling (alive, heartbeating, its loop idle) stalls the ring: every rank
/// behind it in the chain reports its own upstream neighbour stalled. Only the head of the
/// chain is evicted; the others redo the call without it and go on.
#[test]
fn a_stuck_rank_is_the_only_one_evicted_for_a_chain_of_stalls() {
    let results = common::thread_ring(
        4,
        |c| c.progress_timeout = std::time::Duration::from_millis(800),
        |comm| {
            let r = comm.rank();
            let mut reports = Vec::new();
            for call in 0..6 {
                if r == 2 && call == 3 {
                    std::thread::sleep(std::time::Duration::from_secs(4));
                }
                let mut v = vec![(r + 1) as f32; 1000];
                match comm.all_reduce(&mut v, ReduceOp::Sum) {
                    Ok(report) => {
                        let want: f32 = report.members.iter().map(|m| (m + 1) as f32).sum();
                        assert!(v.iter().all(|x| *x == want), "rank {r} call {call}: {} != {want}", v[0]);
                        reports.push(report.members);
                    }
                    Err(e) => return (r, reports, Some(e.to_string())),
                }
            }
            (r, reports, None)
        },
    );
    for (r, reports, err) in results {
        if r == 2 {
            assert!(err.as_deref().is_some_and(|e| e.contains("evicted")), "rank 2: {err:?}");
        } else {
            assert_eq!(err, None, "rank {r}");
            assert_eq!(reports.len(), 6, "rank {r}");
            assert_eq!(reports[5], vec![0, 1, 3], "rank {r}: only the stuck rank goes");
        }
    }
}
