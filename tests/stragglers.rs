//! Per-link statistics and straggler detection on a real ring (threads over loopback TCP):
//! one rank slowed by the test hook (`Config::test_frame_delay`, a sleep after every frame
//! its event loop receives) is named on every rank; with no rank slowed, nobody is.

mod common;

use std::time::{Duration, Instant};

use ringcc::comm::{Side, StragglerCause};
use ringcc::{Communicator, ReduceOp, Stats};

/// Ranks in the ring.
const WORLD: usize = 4;
/// Collectives per window: the detector needs 8.
const CALLS: usize = 12;

/// Runs `CALLS` all-reduces of `elems` f32 on `WORLD` ranks, with rank `slow` (if any)
/// sleeping `delay` per received frame, then `stats()` on every rank.
fn run(elems: usize, slow: Option<(usize, Duration)>) -> Vec<(Stats, Stats)> {
    let tune = move |c: &mut ringcc::Config| {
        c.segment_bytes = 16 << 10;
        if let Some((rank, delay)) = slow {
            if c.rank == rank {
                c.test_frame_delay = delay;
            }
        }
    };
    common::thread_ring(WORLD, tune, move |comm: Communicator| {
        let mut v = vec![1.0f32; elems];
        for _ in 0..CALLS {
            comm.all_reduce(&mut v, ReduceOp::Avg).expect("all_reduce");
        }
        let before = comm.local_stats();
        let stats = comm.stats().expect("stats");
        (before, stats)
    })
}

#[test]
fn a_rank_that_sleeps_per_frame_is_named_on_every_rank() {
    let started = Instant::now();
    // 256 KiB: the bidirectional ring, so both directions wait on the slow rank.
    let results = run(64 << 10, Some((2, Duration::from_millis(2))));
    for (rank, (_, stats)) in results.iter().enumerate() {
        let s = stats.straggler.as_ref().unwrap_or_else(|| panic!("rank {rank} named nobody:\n{}", stats.render()));
        assert_eq!((s.rank, s.cause), (2, StragglerCause::Rank), "rank {rank}:\n{}", stats.render());
        assert!(s.collectives_led * 3 >= s.collectives_compared * 2 && s.collectives_compared >= 8, "{s:?}");
        assert!(s.evidence.contains("rank 2 was idle"), "{}", s.evidence);
        assert_eq!(stats.ranks.len(), WORLD);
        let slow_idle = stats.ranks[2].idle_fraction();
        assert!(stats.ranks.iter().all(|r| r.rank == 2 || r.idle_fraction() > slow_idle + 0.3), "{}", stats.render());
    }
    // Every rank reached the same verdict from the same windows.
    assert!(results.windows(2).all(|w| w[0].1.straggler == w[1].1.straggler && w[0].1.ranks == w[1].1.ranks));
    eprintln!("{}took {:?}", results[0].1.render(), started.elapsed());
}

#[test]
fn no_rank_is_named_when_none_is_slow() {
    let results = run(64 << 10, None);
    for (rank, (_, stats)) in results.iter().enumerate() {
        assert_eq!(stats.straggler, None, "rank {rank}:\n{}", stats.render());
        assert_eq!((stats.windows, stats.ranks.len()), (1, WORLD), "rank {rank}");
    }
    eprintln!("{}", results[0].1.render());
}

#[test]
fn links_count_bytes_waits_and_phases() {
    let elems = 64 << 10;
    let results = run(elems, None);
    for (rank, (before, after)) in results.iter().enumerate() {
        assert_eq!(before.rank, rank);
        assert_eq!(before.links.iter().map(|l| l.side).collect::<Vec<_>>(), vec![Side::Prev, Side::Next]);
        let peers: Vec<usize> = before.links.iter().map(|l| l.peer).collect();
        assert_eq!(peers, vec![(rank + WORLD - 1) % WORLD, (rank + 1) % WORLD], "ring order is rank order here");
        // Bidirectional ring: each link carries (n-1)/n of the buffer each way per call.
        let per_link = (CALLS * elems * 4 * (WORLD - 1) / WORLD) as u64;
        for l in &before.links {
            assert!(l.bytes_sent >= per_link && l.bytes_sent < per_link * 11 / 10, "rank {rank}: {l:?}");
            assert!(l.bytes_received >= per_link && l.bytes_received < per_link * 11 / 10, "rank {rank}: {l:?}");
            assert!(l.frames_received > 0 && l.send_gbps() > 0.0 && l.recv_gbps() > 0.0, "{l:?}");
            assert!(l.recv_wait <= l.active && !l.active.is_zero(), "{l:?}");
        }
        let ar = &before.collectives[0];
        assert_eq!((ar.collective, ar.calls, ar.bytes), ("all_reduce", CALLS as u64, (CALLS * elems * 4) as u64));
        assert!(!ar.reduce_scatter.is_zero() && !ar.all_gather.is_zero() && ar.slowest <= ar.total);
        assert!(before.idle <= before.active);
        // The exchange itself is one more (small) all_reduce.
        assert_eq!(after.collectives[0].calls, CALLS as u64 + 1);
        assert_eq!(after.ranks[rank].collectives, CALLS as u64, "the window holds the calls before stats()");
    }
}

/// The same through the launcher and real processes: `RINGCC_TEST_SLOW` slows one rank of
/// a `ringbench` run, which names it under the table and in `--json`.
#[test]
fn ringbench_names_the_rank_slowed_through_the_environment() {
    let json = std::env::temp_dir().join(format!("ringcc-stragglers-{}.json", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringrun"))
        .args(["-n", "3", "-x", "RINGCC_TEST_SLOW=1:1000", "--", env!("CARGO_BIN_EXE_ringbench")])
        .args(["-b", "256K", "-e", "256K", "-n", "12", "-w", "1", "--segment-bytes", "32K", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ringrun");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringbench still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# Straggler            : rank 1: rank 1 was idle"), "{stdout}");
    let record = std::fs::read_to_string(&json).expect("json written");
    std::fs::remove_file(&json).expect("remove json");
    assert!(record.contains("\"straggler\": {\"rank\": 1, \"cause\": \"rank\""), "{record}");
    assert_eq!(record.matches("\"idle_fraction\"").count(), 3, "{record}");
}

/// The slow-link rule end to end: three ranks in network namespaces this test creates
/// (scripts/netns: addresses that exist only inside them), one rank's uplink shaped to
/// 50 Mbit/s against 1 Gbit/s for the others. Its receivers wait mid-frame; it is named
/// with a link cause. Skips loudly without root, `ip` or `tc`.
#[test]
fn a_rank_behind_a_slow_link_is_named_for_its_link() {
    let root = env!("CARGO_MANIFEST_DIR");
    let prefix = format!("sg{}", std::process::id() % 100_000);
    let netns = |args: &[&str]| {
        std::process::Command::new(format!("{root}/scripts/netns"))
            .args(args)
            .env("NETNS_PREFIX", &prefix)
            .env("NETNS_SUBNET", "10.81.0")
            .output()
    };
    let up = netns(&["up", "3", "1gbit"]);
    if !matches!(&up, Ok(o) if o.status.success()) {
        let _ = netns(&["down"]);
        eprintln!("SKIPPED: cannot create network namespaces (needs root, ip, tc): {up:?}");
        return;
    }
    // Deletes the namespaces however the test ends.
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(|| {
        let _ = netns(&["down"]);
    });
    let slow_ns = format!("{prefix}1");
    let shaped = std::process::Command::new("ip")
        .args(["netns", "exec", &slow_ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf"])
        .args(["rate", "50mbit", "burst", "262144", "latency", "50ms"])
        .status()
        .expect("tc");
    assert!(shaped.success());
    let hosts = format!("{prefix}0:1,{prefix}1:1,{prefix}2:1");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}0"), env!("CARGO_BIN_EXE_ringrun"), "-n", "3", "-H", &hosts])
        .args(["--bind", "10.81.0.1", "--rsh", &format!("{root}/scripts/netns-rsh"), "--"])
        .args([env!("CARGO_BIN_EXE_ringbench"), "-b", "1M", "-e", "1M", "-n", "10", "-w", "1"])
        .args(["--segment-bytes", "64K"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ringrun");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringbench over the shaped links still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("# Straggler")).unwrap_or_default();
    assert!(line.starts_with("# Straggler            : rank 1: "), "{stdout}");
    assert!(line.contains("for frames from rank 1 already under way") && line.contains("links of rank 1"), "{line}");
}
