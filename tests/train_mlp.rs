//! The `train_mlp` example's training loop, with every rank as a thread over loopback TCP:
//! it learns the digits (> 90% test accuracy) and every rank ends with the same weights.
//!
//! The example's modules are compiled into this test with `#[path]` (tests cannot import
//! examples), so their own unit tests (CSV, split, gradient check) run here too.

#[path = "../examples/train_mlp/data.rs"]
mod data;
#[path = "../examples/train_mlp/model.rs"]
mod model;
#[path = "../examples/train_mlp/train.rs"]
mod train;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ringcc::coord::{Server, ServerOptions};
use ringcc::Communicator;

/// Runs `train` with `args` on `world` ranks (threads) and returns each rank's outcome
/// and what rank 0 printed.
fn train_on(world: usize, args: &[&str]) -> (Vec<train::Outcome>, String) {
    let opts = train::Options::parse_from(std::iter::once("train_mlp").chain(args.iter().copied()));
    let all = Arc::new(data::Dataset::parse_csv(data::DIGITS_CSV).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = ServerOptions::new(world, 11, Duration::from_secs(20));
    let server = Server::start(listener, options).unwrap();
    let addr = server.local_addr().to_string();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (addr, opts, all) = (addr.clone(), opts.clone(), all.clone());
            std::thread::spawn(move || {
                let mut config = ringcc::Config::new(rank, world);
                config.coordinator = addr;
                config.host_coordinator = false;
                config.job_id = 11;
                config.progress_timeout = Duration::from_secs(10);
                // As the example sets it: each epoch starts at a join point.
                config.join_points = true;
                let comm = Communicator::connect(config).unwrap();
                let mut out = Vec::new();
                let outcome = train::train(&comm, &all, &opts, &mut out).unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                (outcome, String::from_utf8(out).unwrap())
            })
        })
        .collect();
    let (outcomes, logs): (Vec<_>, Vec<_>) = handles.into_iter().map(|h| h.join().unwrap()).unzip();
    drop(server);
    assert!(logs[1..].iter().all(String::is_empty), "only rank 0 prints");
    (outcomes, logs.into_iter().next().unwrap_or_default())
}

fn assert_learned_and_identical(world: usize, outcomes: &[train::Outcome], log: &str) {
    assert_eq!(outcomes.len(), world);
    let first = &outcomes[0];
    let last = *first.accuracy.last().unwrap();
    assert!(last > 0.90, "world {world}: final test accuracy {last}\n{log}");
    for (rank, o) in outcomes.iter().enumerate() {
        assert_eq!(o.weights_hash, first.weights_hash, "world {world}: rank {rank} weights differ");
        assert_eq!(o.accuracy, first.accuracy, "world {world}: rank {rank} evaluated other weights");
    }
    assert_eq!(log.lines().filter(|l| l.starts_with("epoch")).count(), first.accuracy.len(), "{log}");
    assert!(log.contains(&format!("same on {world} ranks")), "{log}");
}

#[test]
fn one_and_two_ranks_learn_the_digits_with_identical_weights_on_every_rank() {
    for world in [1, 2] {
        let started = Instant::now();
        let (outcomes, log) = train_on(world, &["--epochs", "15"]);
        assert_learned_and_identical(world, &outcomes, &log);
        eprintln!("world {world}: {:?}\n{log}", started.elapsed());
    }
}

#[test]
fn four_ranks_learn_the_digits_with_identical_weights_on_every_rank() {
    let (outcomes, log) = train_on(4, &["--epochs", "20"]);
    assert_learned_and_identical(4, &outcomes, &log);
}

/// With two ranks an average is (a + b) / 2 whichever rank adds, so reducing the gradients
/// in many small buckets must give bit for bit the weights of one flat all_reduce: any
/// bucket that lands in the wrong place changes the hash.
#[test]
fn bucketed_reduction_trains_the_same_weights_as_one_all_reduce() {
    let (flat, _) = train_on(2, &["--epochs", "3"]);
    let (bucketed, log) = train_on(2, &["--epochs", "3", "--bucket-mib", "0.001"]);
    assert!(log.contains("Bucketer of 1048-byte buckets"), "{log}");
    // 4810 parameters in 1048-byte (262-element) buckets: 19 buckets in each of the 23
    // steps of a 719-sample shard.
    assert!(log.lines().filter(|l| l.starts_with("epoch")).all(|l| l.contains(" 437 gradient all_reduces")), "{log}");
    assert_eq!(bucketed[0].weights_hash, bucketed[1].weights_hash);
    assert_eq!(bucketed[0].weights_hash, flat[0].weights_hash, "bucketed and flat reductions diverged");
}

#[test]
fn save_grads_writes_whole_steps_up_to_the_cap() {
    let path = std::env::temp_dir().join(format!("ringcc-train-grads-{}.f32", std::process::id()));
    let p = path.to_str().unwrap();
    // 1 MiB holds 54 steps of 4810 f32 (19,240 bytes each); an epoch of 45 steps on one rank.
    let (outcomes, log) = train_on(1, &["--epochs", "2", "--save-grads", p, "--save-grads-max-mib", "1"]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(outcomes[0].saved_steps, (1 << 20) / (4 * 4810), "{log}");
    assert_eq!(bytes.len(), outcomes[0].saved_steps * 4 * 4810);
    let grads: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert!(grads.iter().all(|g| g.is_finite()) && grads.iter().any(|&g| g != 0.0));
}

/// `--save-grads-every` keeps steps 0, k, 2k, ... of the full record, and
/// `--save-grads-local` saves rank 0's gradients before averaging (different from the
/// averaged ones with two ranks).
#[test]
fn save_grads_samples_steps_and_can_save_local_gradients() {
    let dir = std::env::temp_dir();
    let path = |name: &str| dir.join(format!("ringcc-train-{name}-{}.f32", std::process::id()));
    let run = |name: &str, extra: &[&str]| {
        let p = path(name);
        let mut args = vec!["--epochs", "1", "--save-grads", p.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (outcomes, log) = train_on(2, &args);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        (outcomes[0].saved_steps, bytes, log)
    };
    let step_bytes = 4 * 4810;
    // 719 samples per rank in batches of 32: 23 steps.
    let (all_steps, all, _) = run("all", &[]);
    assert_eq!((all_steps, all.len()), (23, 23 * step_bytes));
    let (steps, every5, log) = run("every5", &["--save-grads-every", "5"]);
    assert_eq!(steps, 5, "{log}");
    let want: Vec<u8> =
        [0, 5, 10, 15, 20].iter().flat_map(|&s| all[s * step_bytes..(s + 1) * step_bytes].to_vec()).collect();
    assert!(every5 == want, "every fifth step differs from the full record");
    let (steps, local, log) = run("local", &["--save-grads-every", "5", "--save-grads-local"]);
    assert_eq!((steps, local.len()), (5, every5.len()), "{log}");
    assert!(log.contains("rank 0's local gradients"), "{log}");
    assert!(local != every5, "local gradients equal the averaged ones");
}
