//! Real processes on 127.0.0.1: every collective, dtype and op checked exactly by
//! `ringcheck` in each rank, plus misuse that must end in errors, not hangs.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcc::coord::{Server, ServerOptions};

/// A coordinator hosted by the test, like ringrun does.
fn coordinator(world: usize, rendezvous: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    Server::start(listener, ServerOptions::new(world, 7, rendezvous)).unwrap()
}

fn rank(bin: &str, rank: usize, world: usize, coord: &str, args: &[&str], env: &[(&str, String)]) -> Child {
    let mut c = Command::new(bin);
    c.args(args)
        .env("RINGCC_RANK", rank.to_string())
        .env("RINGCC_WORLD_SIZE", world.to_string())
        .env("RINGCC_COORDINATOR", coord)
        .env("RINGCC_JOB_ID", "7")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Waits for every child, killing all of them if `limit` passes (a hang is a failure).
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let mut running = 0;
        for c in children.iter_mut().flatten() {
            running += usize::from(c.try_wait().unwrap().is_none());
        }
        if running == 0 {
            break;
        }
        if Instant::now() > deadline {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("ranks still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children.iter_mut().map(|c| c.take().unwrap().wait_with_output().unwrap()).collect()
}

fn run_ringcheck(world: usize, args: &[&str], limit: Duration) {
    let server = coordinator(world, Duration::from_secs(30));
    let addr = server.local_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let children = (0..world).map(|r| rank(bin, r, world, &addr, args, &[])).collect();
    for (r, out) in wait_all(children, limit).iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "world {world} rank {r} failed: {stdout}\n{stderr}");
        assert!(stdout.contains("all exact"), "world {world} rank {r}: {stdout}");
    }
}

#[test]
fn every_collective_dtype_and_op_is_exact_for_worlds_1_to_5() {
    for world in [1, 2, 3, 4, 5] {
        run_ringcheck(world, &["--lengths", "0,1,7,1000003", "--big-mib", "64"], Duration::from_secs(120));
    }
}

#[test]
fn eight_ranks_with_tiny_segments_and_both_ring_algorithms() {
    run_ringcheck(8, &["--lengths", "0,1,7,1000003", "--big-mib", "64"], Duration::from_secs(180));
    run_ringcheck(
        4,
        &["--lengths", "1,7,4099", "--big-mib", "0", "--segment-bytes", "64", "--algo", "ring"],
        Duration::from_secs(60),
    );
    run_ringcheck(
        5,
        &["--lengths", "1,7,4099", "--big-mib", "0", "--segment-bytes", "64", "--algo", "bidir"],
        Duration::from_secs(60),
    );
}

/// Every codec setting over real sockets: lossless codecs exact (and compressing), lossy
/// ones exact where no rounding can occur and within their bound elsewhere, every rank
/// bit-identical (ringcheck checks all of it). Small segments make many frames per call.
#[test]
fn every_codec_is_exact_or_within_its_bound_on_every_rank() {
    for codec in ["zstd", "shuffle+zstd", "bf16", "f16", "bf16+zstd", "auto", "auto+bf16"] {
        let args = ["--codec", codec, "--lengths", "1,7,30011", "--big-mib", "4", "--segment-bytes", "8192"];
        run_ringcheck(3, &args, Duration::from_secs(60));
    }
    run_ringcheck(
        4,
        &["--codec", "bf16+zstd", "--lengths", "4099", "--big-mib", "2", "--algo", "bidir"],
        Duration::from_secs(60),
    );
}

/// A cast codec on a buffer large enough that each rank holds more all-gather frames to
/// pass on than `limits::FORWARDS_KEPT_BYTES_MAX` (96 MiB at N=4: two chunks of bf16 frames
/// are 24 MiB): the frames past the bound leave encoded again from the decoded bytes, and
/// every rank must still end bit-identical and within the cast's bound.
#[test]
fn forwards_past_the_copy_bound_are_encoded_again_exactly() {
    for codec in ["bf16", "f16"] {
        let args = ["--codec", codec, "--lengths", "1", "--big-mib", "96", "--in-flight", "0", "--algo", "ring"];
        run_ringcheck(4, &args, Duration::from_secs(120));
    }
}

fn quickstart_like<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--lengths", "10", "--big-mib", "0", "--in-flight", "0"];
    v.extend_from_slice(args);
    v
}

#[test]
fn wrong_world_size_in_one_rank_is_an_error_on_every_rank() {
    let server = coordinator(3, Duration::from_secs(10));
    let addr = server.local_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let args = quickstart_like(&[]);
    let children = vec![
        rank(bin, 0, 3, &addr, &args, &[]),
        rank(bin, 1, 3, &addr, &args, &[]),
        rank(bin, 2, 4, &addr, &args, &[]),
    ];
    for (r, out) in wait_all(children, Duration::from_secs(30)).iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {r} should fail");
        assert!(stderr.contains("world_size"), "rank {r} error should name world_size: {stderr}");
    }
}

#[test]
fn a_rank_that_never_shows_up_is_named_within_the_rendezvous_timeout() {
    let server = coordinator(3, Duration::from_secs(2));
    let addr = server.local_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let args = quickstart_like(&[]);
    let start = Instant::now();
    let children = vec![rank(bin, 0, 3, &addr, &args, &[]), rank(bin, 1, 3, &addr, &args, &[])];
    for (r, out) in wait_all(children, Duration::from_secs(30)).iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {r} should fail");
        assert!(stderr.contains("[2]"), "rank {r} error should name the missing rank 2: {stderr}");
    }
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
}

#[test]
fn a_rank_with_the_wrong_secret_is_refused_and_named() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = ServerOptions::new(3, 7, Duration::from_secs(3));
    options.secret = b"the-right-secret-0123456789".to_vec();
    let server = Server::start(listener, options).unwrap();
    let addr = server.local_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let args = quickstart_like(&[]);
    let good = ("RINGCC_SECRET", "the-right-secret-0123456789".to_string());
    let bad = ("RINGCC_SECRET", "a-wrong-secret-9876543210".to_string());
    let children = vec![
        rank(bin, 0, 3, &addr, &args, std::slice::from_ref(&good)),
        rank(bin, 1, 3, &addr, &args, std::slice::from_ref(&good)),
        rank(bin, 2, 3, &addr, &args, &[bad, ("RINGCC_CONNECT_TIMEOUT", "2".into())]),
    ];
    let outs = wait_all(children, Duration::from_secs(40));
    let stderr: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).collect();
    assert!(outs.iter().all(|o| !o.status.success()), "{stderr:?}");
    assert!(stderr[2].contains("authentication"), "rank 2: {}", stderr[2]);
    for (r, text) in stderr.iter().enumerate().take(2) {
        assert!(text.contains("[2]"), "rank {r} should name the missing rank 2: {text}");
    }
}

#[test]
fn unreachable_coordinator_is_an_error_within_the_connect_timeout() {
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let start = Instant::now();
    let args = quickstart_like(&[]);
    let child = rank(bin, 0, 2, &format!("127.0.0.1:{port}"), &args, &[("RINGCC_CONNECT_TIMEOUT", "1.5".into())]);
    let out = &wait_all(vec![child], Duration::from_secs(40))[0];
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(35), "took {:?}", start.elapsed());
}

/// `kill -9` of a rank during rendezvous (registered, waiting for the others): the
/// coordinator forgets its registration, a restarted process takes its place, and the job
/// runs exactly; without a restart, the others are told rank 2 is missing (previous test).
#[test]
fn a_rank_killed_during_rendezvous_can_be_replaced() {
    use ringcc::coord::status::Presence;
    let server = coordinator(3, Duration::from_secs(20));
    let addr = server.local_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_ringcheck");
    let args = quickstart_like(&[]);
    let mut first = rank(bin, 2, 3, &addr, &args, &[]);
    let status = server.status_handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    let presence = |r: usize| status.query(Duration::from_secs(5)).map(|s| s.ranks[r].presence.clone());
    while presence(2) != Some(Presence::Registered) {
        assert!(Instant::now() < deadline, "rank 2 never registered");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    while presence(2) != Some(Presence::Unregistered) {
        assert!(Instant::now() < deadline, "the killed rank's registration was kept");
        std::thread::sleep(Duration::from_millis(10));
    }
    let restarted = ("RINGCC_INCARNATION", "1".to_string());
    let children = vec![
        rank(bin, 0, 3, &addr, &args, &[]),
        rank(bin, 1, 3, &addr, &args, &[]),
        rank(bin, 2, 3, &addr, &args, &[restarted]),
    ];
    for (r, out) in wait_all(children, Duration::from_secs(60)).iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "rank {r}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("all exact"), "rank {r}: {stdout}");
    }
}
