//! The public API: [`Communicator`], [`Work`], [`Report`], [`Config`], [`Error`], and the
//! statistics of [`Communicator::stats`].

mod bucket;
mod communicator;
mod config;
mod env;
mod error;
mod report;
pub(crate) mod stats;
pub(crate) mod straggler;
mod work;
pub use bucket::Bucketer;

pub use communicator::{Communicator, CommunicatorBuilder};
pub use config::{Checksum, Config, Secret};
pub use error::Error;
pub use report::Report;
pub use stats::{CollectiveStats, LinkStats, RankSummary, Side, Stats};
pub use straggler::{Straggler, StragglerCause};
pub use work::Work;
