//! The public API: [`Communicator`], [`Work`], [`Report`], [`Config`], [`Error`].

mod bucket;
mod communicator;
mod config;
mod env;
mod error;
mod report;
mod work;
pub use bucket::Bucketer;

pub use communicator::{Communicator, CommunicatorBuilder};
pub use config::{Config, Secret};
pub use error::Error;
pub use report::Report;
pub use work::Work;
