//! The coordinator: rendezvous and membership authority, server and client.
//!
//! `ringrun` hosts the server; without a launcher, rank 0 runs it in a background thread.

mod client;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use crate::Rank;

pub use client::Client;
pub use server::Server;

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
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Ranks expected.
    pub world_size: usize,
    /// Job id.
    pub job: u64,
    /// How long to wait for every rank to register.
    pub rendezvous_timeout: Duration,
}
