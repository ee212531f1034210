//! Same-host lanes (`Config::lanes`) between real processes on 127.0.0.1: every collective,
//! dtype and op is exact and identical on every rank (`ringcheck`) with lanes on and off,
//! the link statistics show payload bytes moving through lanes only when they are on, and
//! no lane file is left behind.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcc::coord::{Server, ServerOptions};

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
    // Lengths up to 100003 elements: the larger ones have segments above the lane minimum
    // (32 KiB) at these world sizes; the 16 MiB all-reduce runs many full segments.
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
            // Payloads of 16 MiB of f32 and more went through lanes: most bytes.
            assert!(lane_sent * 2 > sent, "world {world} rank {r}: only {lane_sent} of {sent} bytes through lanes");
        }
        for (r, (sent, lane_sent, lane_received)) in run(world, false).into_iter().enumerate() {
            assert!(sent > 0, "world {world} rank {r} sent nothing");
            assert_eq!((lane_sent, lane_received), (0, 0), "world {world} rank {r}: lanes are off");
        }
        assert_eq!(lane_files_left(), 0, "lane files left behind after world {world}");
    }
}
