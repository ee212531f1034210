//! The public API: [`Communicator`], [`Work`], [`Report`], [`Config`], [`Error`].

mod communicator;
mod config;
mod env;
mod error;
mod report;
mod work;

pub use communicator::{Communicator, CommunicatorBuilder};
pub use config::{Config, Secret};
pub use error::Error;
pub use report::Report;
pub use work::Work;
