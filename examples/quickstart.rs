//! The smallest complete ringcc program: sum a buffer across ranks and print the report.
//!
//! Run: cargo build --release --examples && target/release/ringrun -n 4 target/release/examples/quickstart
use ringcc::{Communicator, ReduceOp};

fn main() -> Result<(), ringcc::Error> {
    let comm = Communicator::from_env()?;
    let mut grads: Vec<f32> = (0..1_000_000).map(|i| (comm.rank() * 1000 + i % 1000) as f32).collect();
    let report = comm.all_reduce(&mut grads, ReduceOp::Sum)?;
    println!(
        "rank {} of {}: epoch {}, members {:?}, grads[1] = {}, {} bytes sent in {:?}",
        comm.rank(),
        comm.world_size(),
        report.epoch,
        report.members,
        grads[1],
        report.bytes_sent,
        report.total
    );
    Ok(())
}
