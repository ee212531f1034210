//! The coordinator: rendezvous and membership authority, server and client.
//!
//! `ringrun` hosts the server; without a launcher, rank 0 runs it in a background thread.

mod client;
pub(crate) mod handover;
mod server;
pub mod status;

use std::net::SocketAddr;
use std::time::Duration;

use crate::Rank;

pub use client::Client;
pub use server::Server;
pub use status::{Activity, CallProgress, JobStatus, Progress, StatusHandle};

/// One member of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its rank.
    pub rank: Rank,
    /// Where it listens for ring connections.
    pub addr: SocketAddr,
    /// Host name it reported (ranks of one host are adjacent in the ring).
    pub host: String,
}

/// A membership view handed out by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Job id.
    pub job: u64,
    /// View number; grows with every change.
    pub epoch: u64,
    /// World size the job was started with.
    pub world_size: usize,
    /// Members in ring order.
    pub members: Vec<Member>,
    /// For a view that admits ranks into a running job: the first call it applies to.
    /// Members finish every call before it in the previous view and switch at that
    /// boundary, without interrupting anything. `None`: a view that replaces a failed one,
    /// installed at once (the running call is suspended, then finished or redone).
    pub start_seq: Option<u64>,
    /// Ranks this view admits (restarted or new); their first call's report lists them.
    pub joined: Vec<Rank>,
}

/// What a rank tells the coordinator at rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its rank.
    pub rank: Rank,
    /// The world size it was started with.
    pub world_size: usize,
    /// Incarnation of this process (grows when a rank restarts).
    pub incarnation: u64,
    /// Where it listens for ring connections.
    pub listen: SocketAddr,
    /// Its host name.
    pub host: String,
    /// Config fields every rank must agree on.
    pub fingerprint: Vec<(String, String)>,
}

/// Settings of a coordinator server.
#[derive(Clone)]
pub struct ServerOptions {
    /// Ranks expected.
    pub world_size: usize,
    /// Job id.
    pub job: u64,
    /// How long to wait for every rank to register.
    pub rendezvous_timeout: Duration,
    /// The job secret ranks must prove (empty: loopback-only jobs without a secret).
    pub secret: Vec<u8>,
    /// How often the coordinator tells each rank it is alive.
    pub heartbeat_interval: Duration,
    /// Silence after which a rank is declared failed and evicted.
    pub heartbeat_timeout: Duration,
    /// Fewest ranks with which the job goes on; below it every rank gets `QuorumLost`.
    pub min_world: usize,
}

impl ServerOptions {
    /// Options with no secret.
    pub fn new(world_size: usize, job: u64, rendezvous_timeout: Duration) -> ServerOptions {
        ServerOptions {
            world_size,
            job,
            rendezvous_timeout,
            secret: Vec::new(),
            heartbeat_interval: crate::limits::HEARTBEAT_INTERVAL,
            heartbeat_timeout: crate::limits::HEARTBEAT_TIMEOUT,
            min_world: 1,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("world_size", &self.world_size)
            .field("job", &self.job)
            .field("rendezvous_timeout", &self.rendezvous_timeout)
            .field("secret", &format_args!("<{} bytes redacted>", self.secret.len()))
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("min_world", &self.min_world)
            .finish()
    }
}
