//! ringcc: ring all-reduce over TCP for data-parallel training.
//!
//! Processes form a ring over TCP, cut each buffer into one chunk per rank and pipeline
//! segments of those chunks through a reduce-scatter and an all-gather. Every rank ends
//! with bit-identical results, and every call returns a [`Report`] naming the ranks whose
//! data is in the result.
//!
//! ```no_run
//! use ringcc::{Communicator, ReduceOp};
//! # fn main() -> Result<(), ringcc::Error> {
//! let comm = Communicator::from_env()?; // set by ringrun, torchrun, mpirun or srun
//! let mut grads = vec![1.0f32; 1024];
//! let report = comm.all_reduce(&mut grads, ReduceOp::Sum)?;
//! println!("rank {} of {}: epoch {}, members {:?}",
//!          comm.rank(), comm.world_size(), report.epoch, report.members);
//! # Ok(()) }
//! ```
//!
//! Layers (see `docs/ARCHITECTURE.md`): `core` is the sans-IO logic (schedule, collective
//! state machine, reduction kernels), `wire` the frame format, `net` the mio driver that
//! moves bytes, `coord` the rendezvous and membership service, `sim` an in-memory network
//! in virtual time that drives the same core, and `comm` the public API.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod bench;
pub mod codec;
pub mod comm;
pub mod coord;
pub mod core;
pub mod launch;
pub mod limits;
pub mod net;
pub mod sim;
pub mod wire;

pub use crate::comm::{Bucketer, Communicator, CommunicatorBuilder, Config, Error, Report, Stats, Work};
pub use crate::core::{DataType, Element, ReduceOp};
pub use half::{bf16, f16};

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Prints ringcc's log lines (membership changes, evictions, refused connections) on
/// stderr, filtered by `RINGCC_LOG` (`tracing` filter syntax, e.g. `ringcc=info`; default
/// `warn`). Does nothing if the program already installed a `tracing` subscriber. The
/// bundled programs call it; applications may, or install their own subscriber.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGCC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A rank: a process's id in the job, fixed for the life of the job.
pub type Rank = usize;
/// A membership view number; every frame carries the epoch it was sent in.
pub type Epoch = u64;
