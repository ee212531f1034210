//! The public error type.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::collective::ProtocolError;
use crate::wire::WireError;
use crate::{Epoch, Rank};

/// Why a call did not complete on this rank. Every variant names the rank, address,
/// epoch or operation that matters; partial data is never returned as success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable or configuration value is missing, malformed or
    /// contradicts another one.
    #[error("configuration: {0}")]
    Config(String),
    /// A caller passed arguments that cannot work (lengths, root out of range).
    #[error("invalid argument to {op}: {reason}")]
    InvalidArgument {
        /// The call.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The coordinator could not be reached within `Config::connect_timeout`.
    #[error("coordinator at {addr} unreachable after {waited:?}: {source}")]
    CoordinatorUnreachable {
        /// Address tried.
        addr: String,
        /// How long this rank kept trying.
        waited: Duration,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// Rendezvous did not complete: a rank never showed up, or the coordinator refused.
    #[error("rendezvous failed: {reason}")]
    Rendezvous {
        /// What the coordinator or this rank saw.
        reason: String,
    },
    /// Ranks were started with different configurations.
    #[error("config mismatch on {field}: rank {rank} has {local}, rank {other_rank} has {remote}")]
    ConfigMismatch {
        /// The differing field.
        field: String,
        /// This rank.
        rank: Rank,
        /// This rank's value.
        local: String,
        /// The rank that differs.
        other_rank: Rank,
        /// Its value.
        remote: String,
    },
    /// A peer or the coordinator failed the mutual handshake: another secret, another job,
    /// an old incarnation, or a replayed handshake.
    #[error("authentication with {} at {addr} failed: {reason}", peer.map_or("the coordinator".to_string(), |p| format!("rank {p}")))]
    Authentication {
        /// The peer's rank (`None` for the coordinator).
        peer: Option<Rank>,
        /// Its address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A socket operation on the connection to `peer` failed.
    #[error("{op} with rank {peer} at {addr} failed: {source}")]
    Io {
        /// The operation (`connect`, `read`, `write`, `accept`).
        op: &'static str,
        /// The peer's rank.
        peer: Rank,
        /// The peer's address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A peer's connection closed during collective `seq`.
    #[error("connection to rank {peer} closed during collective #{seq} (epoch {epoch})")]
    PeerClosed {
        /// The peer.
        peer: Rank,
        /// The call's sequence number.
        seq: u64,
        /// Epoch of the view.
        epoch: Epoch,
    },
    /// A peer sent bytes that can never form a frame (including a checksum mismatch).
    #[error("bad frame from rank {peer}: {source}")]
    Wire {
        /// The peer.
        peer: Rank,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// The ranks disagree about a collective (different call, length, dtype, op), or a
    /// peer broke the schedule, stalled, or aborted.
    #[error("collective #{seq} ({op}) failed in epoch {epoch}: {source}")]
    Protocol {
        /// The call's sequence number.
        seq: u64,
        /// Epoch of the view.
        epoch: Epoch,
        /// The collective.
        op: &'static str,
        /// The failure.
        #[source]
        source: ProtocolError,
    },
    /// `wait_timeout` ran out before the work completed (the work goes on).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Too few ranks survived to rebuild the ring (`Config::min_world`).
    #[error("only {alive} ranks alive in epoch {epoch}, need {required}")]
    QuorumLost {
        /// Ranks alive.
        alive: usize,
        /// `min_world`.
        required: usize,
        /// Epoch.
        epoch: Epoch,
    },
    /// The coordinator declared this rank failed (it was frozen, unreachable or stuck);
    /// it is no longer a member and every call fails with this.
    #[error("rank {rank} was evicted in epoch {epoch}: {reason}")]
    Evicted {
        /// This rank.
        rank: Rank,
        /// Epoch of the view that excludes it.
        epoch: Epoch,
        /// Why the coordinator evicted it.
        reason: String,
    },
    /// The membership changed while collective `seq` ran and it could not finish; the
    /// ring has been rebuilt over the survivors: call again.
    #[error("collective #{seq} interrupted by a membership change (epoch {epoch} -> {new_epoch}); call it again")]
    Interrupted {
        /// The call's sequence number.
        seq: u64,
        /// Epoch it ran in.
        epoch: Epoch,
        /// The new epoch.
        new_epoch: Epoch,
    },
    /// After a membership change, this rank's state contradicts the coordinator's decision
    /// on the interrupted call, or no decision came in time. With `Config::exact_retry` this
    /// cannot happen while the coordinator lives; without it, survivors may disagree on
    /// whether the interrupted call completed. Going on would pair different calls and sum
    /// unrelated buffers, so every later call fails with this instead.
    #[error("this rank cannot go on after a membership change (it completed {completed} collectives): {detail}")]
    Desynchronized {
        /// Collectives this rank completed.
        completed: u64,
        /// What contradicted what.
        detail: String,
    },
    /// The communicator is shut down or its event loop ended.
    #[error("communicator is shut down: {0}")]
    Shutdown(String),
}
