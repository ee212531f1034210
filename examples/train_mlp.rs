//! Data-parallel training of a small MLP (64-64-10, ReLU, softmax cross-entropy, plain Rust)
//! on the 8x8 handwritten digits, with the gradients of every step averaged by ringcc.
//!
//! Every rank makes the same seeded train/test split, trains on its own shard of the
//! training set, and after each minibatch replaces its gradients by their average over all
//! ranks (one `all_reduce` with `ReduceOp::Avg`, or with `--bucket-mib` a `Bucketer` that
//! starts reducing the last layer while the first is still being computed). All ranks then
//! take the same SGD step. Each epoch prints the loss and test accuracy and checks, by
//! comparing a hash of the weight bytes across ranks, that every rank holds bit-identical
//! weights; if not, it exits with status 1.
//!
//! Under `ringrun --elastic` it survives `kill -9` of a rank: the survivors go on (their
//! reports name who is in each sum; `Avg` divides by them). With `--max-restarts`, the
//! killed rank is started again and rejoins at the next epoch's join point, where the
//! lowest surviving rank broadcasts the epoch, the weights and the momentum to it.
//!
//! Run: cargo build --release --examples && target/release/ringrun -n 4 target/release/examples/train_mlp
//! Alone (one rank, hosting its own coordinator): cargo run --release --example train_mlp
//! Flags: --epochs --batch --lr --momentum --hidden --seed --bucket-mib MIB --save-grads FILE
//! --save-grads-max-mib MIB --save-grads-every STEPS --save-grads-local --stats (see --help).
//! A correct run ends above 90% test accuracy.

#[path = "train_mlp/data.rs"]
mod data;
#[path = "train_mlp/model.rs"]
mod model;
#[path = "train_mlp/train.rs"]
mod train;

use std::error::Error;
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ringcc::coord::{Server, ServerOptions};
use ringcc::Communicator;

/// How long a lone rank waits for itself to register with its own coordinator.
const ALONE_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The rank variables of ringrun, torchrun, mpirun and srun; with none of them set the
/// program was started by hand and runs alone.
const LAUNCHER_RANK_VARS: [&str; 4] = ["RINGCC_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"];

fn main() -> ExitCode {
    ringcc::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_mlp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let opts = train::Options::parse();
    let all = data::Dataset::parse_csv(data::DIGITS_CSV)?;
    // Without any launcher, run as the only rank with a coordinator on a free loopback port.
    // Declared before `comm` so that it is dropped after it.
    let _server;
    // Join points: a restarted rank (ringrun --elastic --max-restarts) is admitted at the
    // start of an epoch, where the others hand it the model.
    let comm = if LAUNCHER_RANK_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
        let mut config = ringcc::Config::from_env()?;
        config.join_points = true;
        Communicator::connect(config)?
    } else {
        println!("no launcher variables ({}): running alone as rank 0 of 1", LAUNCHER_RANK_VARS.join(", "));
        let options = ServerOptions::new(1, 1, ALONE_RENDEZVOUS_TIMEOUT);
        let server = Server::start(TcpListener::bind("127.0.0.1:0")?, options)?;
        let addr = server.local_addr().to_string();
        _server = server;
        Communicator::builder()
            .rank(0)
            .world_size(1)
            .coordinator(addr)
            .host_coordinator(false)
            .join_points(true)
            .connect()?
    };
    let outcome = train::train(&comm, &all, &opts, &mut std::io::stdout().lock())?;
    if comm.rank() == 0 {
        let last = outcome.accuracy.last().copied().unwrap_or(0.0);
        println!(
            "done: test accuracy {:.2}%, final weights {:016x}, {} steps of gradients saved",
            100.0 * last,
            outcome.weights_hash,
            outcome.saved_steps
        );
    }
    Ok(())
}
