//! Same-host lanes (`Config::lanes`) between real processes on 127.0.0.1: every collective,
//! dtype and op is exact and identical on every rank (`ringcheck`) with lanes on and off,
//! the link statistics show payload bytes moving through lanes only when they are on, and
//! no lane file is left behind.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcc::coord::{Server, ServerOptions};
use ringcc::{Communicator, ReduceOp};

mod common;

/// Job id of these tests (lane files are named after it: `ringcc-lane-<job hex>-...`).
const JOB: u64 = 0x1a9e;

fn rank(rank: usize, world: usize, coord: &str, args: &[&str], lanes: bool) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringcheck"))
        .args(args)
        .env("RINGCC_RANK", rank.to_string())
        .env("RINGCC_WORLD_SIZE", world.to_string())
        .env("RINGCC_COORDINATOR", coord)
        .env("RINGCC_JOB_ID", JOB.to_string())
        .env("RINGCC_LANES", if lanes { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcheck")
}

/// Waits for every child, killing all of them if `limit` passes (a hang is a failure).
fn wait_all(mut children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    while children.iter_mut().any(|c| c.try_wait().ok().flatten().is_none()) {
        if Instant::now() > deadline {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
            panic!("ranks still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children.into_iter().map(|c| c.wait_with_output().expect("output")).collect()
}

/// (bytes sent, through lanes sent, through lanes received) from a rank's ringcheck output.
fn lane_bytes(stdout: &str) -> (u64, u64, u64) {
    let line = stdout.lines().find(|l| l.contains("through lanes")).expect("a lane statistics line");
    let numbers: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).filter_map(|t| t.parse().ok()).collect();
    // "ringcheck: rank R: bytes sent S, through lanes: sent L received M"
    match numbers[..] {
        [_, sent, lane_sent, lane_received] => (sent, lane_sent, lane_received),
        _ => panic!("unexpected statistics line {line:?}"),
    }
}

fn lane_files_left() -> usize {
    let prefix = format!("ringcc-lane-{JOB:016x}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count())
        .unwrap_or(0)
}

/// Runs ringcheck on `world` processes; returns each rank's lane statistics.
fn run(world: usize, lanes: bool) -> Vec<(u64, u64, u64)> {
    let server = Server::start(TcpListener::bind("127.0.0.1:0").expect("bind"), {
        ServerOptions::new(world, JOB, Duration::from_secs(30))
    })
    .expect("coordinator");
    let addr = server.local_addr().to_string();
    // Lengths up to 100003 elements: their frames stay on TCP (too small for a lane); the
    // 16 MiB all-reduce runs many full segments through lanes.
    let args = ["--lengths", "0,1,7,100003", "--big-mib", "16"];
    let children = (0..world).map(|r| rank(r, world, &addr, &args, lanes)).collect();
    let outputs = wait_all(children, Duration::from_secs(120));
    drop(server);
    outputs
        .iter()
        .enumerate()
        .map(|(r, out)| {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "world {world} lanes {lanes} rank {r} failed: {stdout}\n{stderr}");
            assert!(stdout.contains("all exact"), "world {world} lanes {lanes} rank {r}: {stdout}");
            lane_bytes(&stdout)
        })
        .collect()
}

#[test]
fn every_collective_is_exact_through_lanes_and_without_for_worlds_2_and_4() {
    for world in [2, 4] {
        for (r, (sent, lane_sent, lane_received)) in run(world, true).into_iter().enumerate() {
            println!("world {world} lanes on, rank {r}: {lane_sent} of {sent} bytes sent through lanes");
            assert!(lane_sent > 0 && lane_received > 0, "world {world} rank {r}: nothing went through lanes");
            // The 16 MiB all-reduce sends 2 (N - 1) / N x 16 MiB from each rank, in frames
            // that go through lanes; at least half of that must have (smaller calls' frames
            // stay on TCP: `net::lane`).
            let big = (16u64 << 20) * (world as u64 - 1) / world as u64;
            assert!(lane_sent >= big, "world {world} rank {r}: only {lane_sent} of {sent} bytes through lanes");
        }
        for (r, (sent, lane_sent, lane_received)) in run(world, false).into_iter().enumerate() {
            assert!(sent > 0, "world {world} rank {r} sent nothing");
            assert_eq!((lane_sent, lane_received), (0, 0), "world {world} rank {r}: lanes are off");
        }
        assert_eq!(lane_files_left(), 0, "lane files left behind after world {world}");
    }
}

/// Lane payload bytes this rank has sent and received so far (as of its last call).
fn lane_total(comm: &Communicator) -> u64 {
    comm.local_stats().links.iter().map(|l| l.lane_bytes_sent + l.lane_bytes_received).sum()
}

fn value(rank: usize, i: usize) -> f32 {
    ((i * 7 + rank * 13) % 1000) as f32
}

/// reduce_scatter, all_gather and broadcast of a few MiB (frames of a full 512 KiB segment)
/// move their payloads through lanes (reduce-scatter reduces out of the slot, all-gather and
/// broadcast copy from it into place) and give exactly the reference on every rank.
#[test]
fn reduce_scatter_all_gather_and_broadcast_are_exact_through_lanes() {
    const BLOCK: usize = 1 << 20;
    for world in [2, 4] {
        let results = common::thread_ring(
            world,
            |_| {},
            move |comm| {
                let r = comm.rank();
                let mut moved = Vec::new();
                let input: Vec<f32> = (0..world * BLOCK).map(|i| value(r, i)).collect();
                let mut block = vec![0f32; BLOCK];
                let before = lane_total(&comm);
                comm.reduce_scatter(&input, &mut block, ReduceOp::Sum).expect("reduce_scatter");
                moved.push(lane_total(&comm) - before);
                let mut gathered = vec![0f32; world * BLOCK];
                let mine: Vec<f32> = (0..BLOCK).map(|i| value(r, i)).collect();
                let before = lane_total(&comm);
                comm.all_gather(&mine, &mut gathered).expect("all_gather");
                moved.push(lane_total(&comm) - before);
                let mut cast: Vec<f32> = (0..world * BLOCK).map(|i| if r == 1 { value(9, i) } else { -1.0 }).collect();
                let before = lane_total(&comm);
                comm.broadcast(&mut cast, 1).expect("broadcast");
                moved.push(lane_total(&comm) - before);
                (block, gathered, cast, moved)
            },
        );
        for (r, (block, gathered, cast, moved)) in results.into_iter().enumerate() {
            let sum = |i: usize| (0..world).map(|q| value(q, i)).sum::<f32>();
            assert!((0..BLOCK).all(|i| block[i] == sum(r * BLOCK + i)), "world {world} rank {r}: reduce_scatter");
            let gathered_ok = (0..world * BLOCK).all(|i| gathered[i] == value(i / BLOCK, i % BLOCK));
            assert!(gathered_ok, "world {world} rank {r}: all_gather");
            assert!((0..world * BLOCK).all(|i| cast[i] == value(9, i)), "world {world} rank {r}: broadcast");
            assert!(moved.iter().all(|&m| m > 0), "world {world} rank {r}: lane bytes per call {moved:?}");
        }
    }
}

/// TCP bytes this rank has sent so far: everything but the lanes' payloads (headers,
/// control frames, payloads that went on the stream).
fn tcp_sent(comm: &Communicator) -> u64 {
    comm.local_stats().links.iter().map(|l| l.bytes_sent - l.lane_bytes_sent).sum()
}

/// The latency path's all-reduces (recursive doubling, one frame per round) send their frames
/// whole through lanes, header included, so their payloads stay off the TCP stream; and are
/// exact on every rank through many calls in a row (the lane's slots wrap around).
#[test]
fn small_all_reduces_go_whole_through_lanes_and_stay_exact() {
    const CALLS: usize = 40;
    for world in [2, 4] {
        let results = common::thread_ring(
            world,
            |_| {},
            move |comm| {
                let r = comm.rank();
                let mut moved = Vec::new();
                // The first calls may run before the lanes' offers are answered.
                for _ in 0..5 {
                    comm.all_reduce(&mut [0f32; 16], ReduceOp::Sum).expect("warm-up all_reduce");
                }
                for bytes in [4usize << 10, 16 << 10, 32 << 10, 64 << 10] {
                    let n = bytes / 4;
                    let (lane_before, tcp_before) = (lane_total(&comm), tcp_sent(&comm));
                    let mut ok = true;
                    for call in 0..CALLS {
                        let mut buf: Vec<f32> = (0..n).map(|i| value(r + call, i)).collect();
                        comm.all_reduce(&mut buf, ReduceOp::Sum).expect("all_reduce");
                        let want = |i: usize| (0..world).map(|q| value(q + call, i)).sum::<f32>();
                        ok &= (0..n).all(|i| buf[i].to_bits() == want(i).to_bits());
                    }
                    moved.push((bytes, ok, lane_total(&comm) - lane_before, tcp_sent(&comm) - tcp_before));
                }
                moved
            },
        );
        for (r, moved) in results.into_iter().enumerate() {
            for (bytes, ok, lane, tcp) in moved {
                assert!(ok, "world {world} rank {r}: {bytes}-byte all-reduce not exact");
                // Every call sends and receives at least one full frame through a lane.
                assert!(lane >= (2 * CALLS * bytes) as u64, "world {world} rank {r} {bytes} B: {lane} lane bytes");
                // On the stream at most bells (header-only frames), not payloads.
                assert!(tcp < (CALLS * bytes / 4) as u64, "world {world} rank {r} {bytes} B: {tcp} bytes over TCP");
            }
        }
    }
}

/// A receiver whose loop sleeps in the poller is woken for a whole lane frame by a bell over
/// TCP: rank 0 sleeps before each call, long enough for the others to stop spinning and
/// block, and their calls then end within a few milliseconds of its frames. Without the bell
/// they would sleep on until the loop's next deadline (the coordinator heartbeat, 500 ms).
#[test]
fn a_sleeping_receiver_is_rung_for_whole_lane_frames() {
    const CALLS: usize = 12;
    const NAP: Duration = Duration::from_millis(20);
    let results = common::thread_ring(
        4,
        |_| {},
        move |comm| {
            let r = comm.rank();
            let mut buf: Vec<f32> = vec![0.0; 1024];
            comm.all_reduce(&mut buf, ReduceOp::Sum).expect("warm-up all_reduce");
            let (mut slow, mut ok) = (0, true);
            for call in 0..CALLS {
                if r == 0 {
                    std::thread::sleep(NAP);
                }
                let mut buf: Vec<f32> = (0..1024).map(|i| value(r + call, i)).collect();
                let t = Instant::now();
                comm.all_reduce(&mut buf, ReduceOp::Sum).expect("all_reduce");
                slow += usize::from(t.elapsed() > NAP + Duration::from_millis(130));
                ok &= (0..1024).all(|i| buf[i].to_bits() == (0..4).map(|q| value(q + call, i)).sum::<f32>().to_bits());
            }
            (slow, ok, lane_total(&comm))
        },
    );
    for (r, (slow, ok, lane)) in results.into_iter().enumerate() {
        assert!(ok, "rank {r}: not exact");
        assert!(lane >= (2 * CALLS * 4096) as u64, "rank {r}: {lane} lane bytes");
        assert!(slow <= 3, "rank {r}: {slow} of {CALLS} calls waited past the nap: the bell did not wake it");
    }
}
