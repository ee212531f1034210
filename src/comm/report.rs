//! What a completed call tells the caller.

use std::time::Duration;

use crate::{Epoch, Rank};

/// The outcome of a completed collective: which ranks contributed and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Membership epoch the result was computed in.
    pub epoch: Epoch,
    /// Ranks whose data is in the result, ascending.
    pub members: Vec<Rank>,
    /// Ranks admitted since the previous call (broadcast parameters to them).
    pub joined: Vec<Rank>,
    /// Sequence number of the call on this communicator.
    pub seq: u64,
    /// Bytes this rank wrote for the call, frame headers included.
    pub bytes_sent: u64,
    /// What `bytes_sent` would have been with every payload sent raw: equal to it without
    /// compression; `bytes_sent_raw / bytes_sent` is the call's compression ratio.
    pub bytes_sent_raw: u64,
    /// Time from the start of the call on the event loop to the end of reduce-scatter
    /// (zero for calls without one).
    pub reduce_scatter: Duration,
    /// Time from the end of reduce-scatter (or the start) to completion.
    pub all_gather: Duration,
    /// Time spent queued behind earlier calls before this one started.
    pub queued: Duration,
    /// Wall time from submission to completion.
    pub total: Duration,
}
