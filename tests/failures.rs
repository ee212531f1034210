//! Peers that die or freeze: the ring is rebuilt over the survivors, interrupted calls
//! return a typed error, and every later call is exact over the members it reports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringcc::coord::{Server, ServerOptions};

fn coordinator(world: usize, min_world: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = ServerOptions::new(world, 11, Duration::from_secs(20));
    options.heartbeat_timeout = Duration::from_secs(2);
    options.min_world = min_world;
    Server::start(listener, options).unwrap()
}

fn survivor(rank: usize, world: usize, coord: &str, iterations: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ringcheck"))
        .args(["--survive", &iterations.to_string(), "--pause-ms", "5"])
        .env("RINGCC_RANK", rank.to_string())
        .env("RINGCC_WORLD_SIZE", world.to_string())
        .env("RINGCC_COORDINATOR", coord)
        .env("RINGCC_HEARTBEAT_TIMEOUT", "2")
        .env("RINGCC_PROGRESS_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut c: Child, deadline: Instant) -> (bool, String) {
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            let out = c.wait_with_output().unwrap();
            panic!("hang: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn kill_one_and_survive(world: usize, victim: usize, signal: &str) {
    let server = coordinator(world, 2);
    let addr = server.local_addr().to_string();
    let mut ranks: Vec<Option<Child>> = (0..world).map(|r| Some(survivor(r, world, &addr, 400))).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = ranks[victim].as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut survived = 0;
    let mut expected: Vec<usize> = (0..world).filter(|r| *r != victim).collect();
    expected.sort_unstable();
    for (r, c) in ranks.iter_mut().enumerate() {
        let c = c.take().unwrap();
        if r == victim {
            if signal == "-STOP" {
                let _ = Command::new("kill").args(["-CONT", &pid]).status();
            }
            let _ = finish(c, deadline);
            continue;
        }
        let (ok, text) = finish(c, deadline);
        assert!(!text.contains("wrong"), "survivor {r} computed a wrong sum: {text}");
        if ok {
            assert!(text.contains("survived 400 collectives"), "survivor {r}: {text}");
            let want = format!("members {expected:?}");
            assert!(text.contains(&want), "survivor {r} should end with {want}: {text}");
            survived += 1;
        } else {
            // Until the retry protocol lands, a kill inside the final all-gather can leave
            // survivors disagreeing on the interrupted call: they must stop with a typed
            // error rather than go on pairing different calls.
            let typed = ["disagree", "evicted", "ranks alive"].iter().any(|w| text.contains(w));
            assert!(typed, "survivor {r}: untyped failure: {text}");
            eprintln!("survivor {r} stopped with a typed error: {}", text.lines().last().unwrap_or_default());
        }
    }
    eprintln!("{survived} of {} survivors completed every call", world - 1);
}

#[test]
fn survivors_go_on_after_kill_9() {
    kill_one_and_survive(4, 2, "-KILL");
}

#[test]
fn a_frozen_rank_is_evicted_and_survivors_go_on() {
    kill_one_and_survive(3, 1, "-STOP");
}
