//! Every knob of a communicator, with its default, unit and when to change it.

use std::net::IpAddr;
use std::time::Duration;

use crate::codec::Codec;
use crate::core::collective::Algorithm;
use crate::Rank;

/// Configuration of one rank's communicator. Build it with [`crate::Communicator::builder`]
/// or read it with [`Config::from_env`]. Fields marked *fingerprint* must be equal on every
/// rank; rendezvous stops with [`crate::Error::ConfigMismatch`] naming the field otherwise.
#[derive(Debug, Clone)]
pub struct Config {
    /// This process's rank, `0..world_size`. No default.
    pub rank: Rank,
    /// Number of ranks in the job (*fingerprint*). No default.
    pub world_size: usize,
    /// Rank among the processes on this host (informational; ring order groups hosts).
    pub local_rank: Option<usize>,
    /// Number of ranks on this host.
    pub local_size: Option<usize>,
    /// `host:port` of the coordinator. Default `127.0.0.1:29500` (torchrun's default port).
    pub coordinator: String,
    /// Whether this process runs the coordinator in a background thread. Default: rank 0
    /// does, unless a launcher (ringrun) hosts it. The hosting rank is then a single point
    /// of failure for membership changes.
    pub host_coordinator: bool,
    /// Job id carried in every frame; frames of another job are refused. Default: derived
    /// from the coordinator address.
    pub job_id: u64,
    /// Address this rank listens on for ring connections. Default: the local address of
    /// the route to the coordinator (loopback when the coordinator is on loopback).
    pub bind: Option<IpAddr>,
    /// Largest segment payload in bytes (*fingerprint*). Segments pipeline: one is reduced
    /// while the next is on the wire. Default 512 KiB, measured best on loopback and 1 Gbit/s.
    pub segment_bytes: usize,
    /// Ring algorithm for all_reduce (*fingerprint*). Default `Auto`.
    pub algorithm: Algorithm,
    /// Payload codec (*fingerprint*). Default `Raw`.
    pub codec: Codec,
    /// How long to keep trying to reach the coordinator and peers. Default 30 s.
    pub connect_timeout: Duration,
    /// How long the coordinator waits for every rank to register. Default 60 s.
    pub rendezvous_timeout: Duration,
    /// Longest time a collective may go without receiving a frame before it fails as
    /// stalled (*fingerprint*). Default 30 s; raise it for very slow links with huge segments.
    pub progress_timeout: Duration,
}

impl Config {
    /// A config with defaults for everything but rank and world size.
    pub fn new(rank: Rank, world_size: usize) -> Config {
        Config {
            rank,
            world_size,
            local_rank: None,
            local_size: None,
            coordinator: "127.0.0.1:29500".into(),
            host_coordinator: rank == 0,
            job_id: 0,
            bind: None,
            segment_bytes: 512 << 10,
            algorithm: Algorithm::Auto,
            codec: Codec::Raw,
            connect_timeout: Duration::from_secs(30),
            rendezvous_timeout: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(30),
        }
    }

    /// Reads the configuration a launcher left in the environment: `RINGCC_*` first, then
    /// torchrun's, Open MPI's and Slurm's variables (see the README).
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming a missing, malformed or contradictory variable.
    pub fn from_env() -> Result<Config, crate::Error> {
        super::env::config_from_vars(&|k| std::env::var(k).ok())
    }

    /// The fields every rank must agree on, as (name, value) pairs.
    pub fn fingerprint(&self) -> Vec<(String, String)> {
        vec![
            ("protocol_version".into(), crate::wire::PROTOCOL_VERSION.to_string()),
            ("world_size".into(), self.world_size.to_string()),
            ("segment_bytes".into(), self.segment_bytes.to_string()),
            ("algorithm".into(), self.algorithm.name().into()),
            ("codec".into(), self.codec.name().into()),
            ("progress_timeout".into(), format!("{:?}", self.progress_timeout)),
        ]
    }

    /// Checks values that make no sense on their own.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the field.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WORLD_MAX};
        let err = |m: String| Err(crate::Error::Config(m));
        if self.world_size == 0 || self.world_size > WORLD_MAX {
            return err(format!("world_size {} is outside 1..={WORLD_MAX}", self.world_size));
        }
        if self.rank >= self.world_size {
            return err(format!("rank {} is outside 0..{}", self.rank, self.world_size));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return err(format!(
                "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        if self.codec != Codec::Raw {
            return err(format!("codec {} is not available in this build", self.codec.name()));
        }
        Ok(())
    }
}
