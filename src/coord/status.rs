//! Job status: where each rank stands, as it last reported to the coordinator.
//!
//! With every heartbeat (every [`HEARTBEAT_INTERVAL`]) a rank also sends a [`Progress`]
//! report: its epoch, how many calls it completed, what its event loop is doing, and for a
//! running call its sequence number, phase, step and the rank it waits for. The
//! coordinator keeps the latest report per rank, when it arrived, and since when it has
//! not changed (a report that stays the same, received bytes included, means no progress
//! at all). [`JobStatus`] is a snapshot of that; [`JobStatus::render`] prints it as a
//! table followed by a diagnosis that follows "waits for" from rank to rank to the one
//! that holds the others up (`ringrun status`, or SIGUSR1 to `ringrun`).
//!
//! Times are those of the coordinator's clock, to within one heartbeat interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Waker;

use crate::limits::HEARTBEAT_INTERVAL;
use crate::wire::CollKind;
use crate::Rank;

#[path = "status_text.rs"]
mod text;

/// Most status requests waiting for the coordinator thread at once; more are refused.
pub const STATUS_REQUESTS_MAX: usize = 16;

/// Longest phase name a progress report may carry, in bytes.
pub const PHASE_NAME_MAX: usize = 32;

/// Silence or standstill after which the status calls a rank silent or stuck: three missed
/// heartbeats, so one late heartbeat on a busy host does not count.
pub const QUIET_AFTER: Duration = HEARTBEAT_INTERVAL.saturating_mul(3);

/// What a rank's event loop is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// No call runs and none is queued.
    Idle = 0,
    /// A call runs.
    Running = 1,
    /// A ring link broke: calls wait for the coordinator's next view.
    AwaitingView = 2,
    /// A new view is in; the rank waits for the coordinator's decision on the interrupted
    /// call.
    AwaitingDecision = 3,
    /// Connecting to the neighbours of a new view.
    Rebuilding = 4,
    /// The rank can no longer take part (evicted, quorum lost, out of step): calls fail.
    Stopped = 5,
}

impl Activity {
    /// Decodes a wire id.
    ///
    /// # Errors
    /// [`crate::wire::WireError::UnknownId`] for an id this build does not know.
    pub fn from_u8(id: u8) -> Result<Activity, crate::wire::WireError> {
        Ok(match id {
            0 => Activity::Idle,
            1 => Activity::Running,
            2 => Activity::AwaitingView,
            3 => Activity::AwaitingDecision,
            4 => Activity::Rebuilding,
            5 => Activity::Stopped,
            _ => return Err(crate::wire::WireError::UnknownId { field: "activity", value: id.into() }),
        })
    }

    /// Short name, as the status table shows it.
    pub fn name(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Running => "running",
            Activity::AwaitingView => "await-view",
            Activity::AwaitingDecision => "await-decision",
            Activity::Rebuilding => "rebuilding",
            Activity::Stopped => "stopped",
        }
    }
}

/// The call a rank is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallProgress {
    /// Its sequence number (0-based count of calls on the communicator).
    pub seq: u64,
    /// Which collective.
    pub coll: CollKind,
    /// The phase whose frame it waits for (`reduce-scatter`, `all-gather`, `broadcast`,
    /// `gather`, `fin`), or `sending` when it waits for no frame. At most
    /// [`PHASE_NAME_MAX`] bytes of `a-z`, `0-9`, `-` and `_` (see [`is_phase_name`]).
    pub phase: String,
    /// The step of that phase.
    pub step: u32,
    /// The rank whose frame it waits for (one of them, if it waits on both links).
    pub waits_for: Option<Rank>,
    /// How long the call has been running (retries included).
    pub running: Duration,
}

/// A rank's progress report (rank to coordinator, with each heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The reporting rank.
    pub rank: Rank,
    /// Epoch of its current view.
    pub epoch: u64,
    /// Calls it completed successfully.
    pub completed: u64,
    /// What its event loop is doing.
    pub activity: Activity,
    /// Calls queued behind the running one.
    pub queued: u32,
    /// Bytes received on its ring links so far: the coordinator tells slow progress from
    /// none by whether this moves.
    pub received_bytes: u64,
    /// The running call, if any.
    pub call: Option<CallProgress>,
}

impl Progress {
    /// True if `other` shows the same progress (only the call's running time differs).
    fn same_progress(&self, other: &Progress) -> bool {
        let strip = |p: &Progress| {
            let mut p = p.clone();
            if let Some(c) = p.call.as_mut() {
                c.running = Duration::ZERO;
            }
            p
        };
        strip(self) == strip(other)
    }
}

/// True for a phase name a progress report may carry: 1 to [`PHASE_NAME_MAX`] bytes of
/// `a-z`, `0-9`, `-` and `_` (safe to print on a terminal).
pub fn is_phase_name(s: &str) -> bool {
    (1..=PHASE_NAME_MAX).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Where the job is, as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for every rank to register.
    Rendezvous {
        /// Time left until the rendezvous deadline.
        deadline_in: Duration,
    },
    /// Rendezvous done.
    Running {
        /// Current epoch.
        epoch: u64,
        /// Too few ranks remain: no more views will be installed.
        quorum_lost: bool,
    },
    /// The coordinator refused the job.
    Refused {
        /// Why.
        reason: String,
    },
}

/// How the coordinator knows a rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Not registered (during rendezvous).
    Unregistered,
    /// Registered, waiting for the others (during rendezvous).
    Registered,
    /// A member of the current view, connected.
    Member,
    /// A member of the current view whose coordinator connection closed.
    Disconnected,
    /// It said it leaves (clean shutdown).
    Left,
    /// Declared failed and removed from the view.
    Evicted {
        /// Why, as the coordinator decided.
        reason: String,
    },
}

impl Presence {
    fn name(&self) -> &'static str {
        match self {
            Presence::Unregistered => "unregistered",
            Presence::Registered => "registered",
            Presence::Member => "member",
            Presence::Disconnected => "disconnected",
            Presence::Left => "left",
            Presence::Evicted { .. } => "evicted",
        }
    }
}

/// One rank in a [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankStatus {
    /// The rank.
    pub rank: Rank,
    /// How the coordinator knows it.
    pub presence: Presence,
    /// Its latest progress report, if it sent one.
    pub report: Option<Progress>,
    /// Time since that report arrived.
    pub heard_ago: Option<Duration>,
    /// Time since its reports last changed (how long it has shown no progress).
    pub unchanged_for: Option<Duration>,
}

/// A snapshot of the job as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// Job id.
    pub job: u64,
    /// World size the job was started with.
    pub world_size: usize,
    /// Where the job is.
    pub stage: Stage,
    /// Silence after which the coordinator evicts a rank.
    pub heartbeat_timeout: Duration,
    /// Every rank of the world, ascending.
    pub ranks: Vec<RankStatus>,
}

impl JobStatus {
    /// The status as a table, one line per rank, then one or more `diagnosis:` lines that
    /// name the rank holding the others up (if any). Ends with a newline.
    pub fn render(&self) -> String {
        text::render(self)
    }
}

/// Status requests as the coordinator thread receives them: each carries where to send
/// the answer.
pub(super) type StatusRequests = crossbeam_channel::Receiver<crossbeam_channel::Sender<JobStatus>>;

/// Asks a running coordinator for a [`JobStatus`] from any thread
/// (`Server::status_handle`).
#[derive(Debug, Clone)]
pub struct StatusHandle {
    requests: crossbeam_channel::Sender<crossbeam_channel::Sender<JobStatus>>,
    waker: Arc<Waker>,
}

impl StatusHandle {
    /// A handle, and the requests it sends, for the coordinator whose poll `waker` wakes.
    pub(super) fn new(waker: Arc<Waker>) -> (StatusHandle, StatusRequests) {
        let (requests, rx) = crossbeam_channel::bounded(STATUS_REQUESTS_MAX);
        (StatusHandle { requests, waker }, rx)
    }

    /// A snapshot of the job, or `None` if the coordinator has stopped, is busy with
    /// [`STATUS_REQUESTS_MAX`] other requests, or does not answer within `timeout`.
    pub fn query(&self, timeout: Duration) -> Option<JobStatus> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests.try_send(tx).ok()?;
        self.waker.wake().ok()?;
        rx.recv_timeout(timeout).ok()
    }
}

/// The latest report of one rank and when it arrived and last changed.
#[derive(Debug)]
struct Entry {
    report: Progress,
    heard: Instant,
    changed: Instant,
}

/// What the coordinator keeps for [`JobStatus`]: at most one report per rank (ranks are
/// below [`crate::limits::WORLD_MAX`]), plus how ranks left.
#[derive(Debug, Default)]
pub(super) struct Board {
    entries: BTreeMap<Rank, Entry>,
    left: BTreeMap<Rank, ()>,
    evicted: BTreeMap<Rank, String>,
}

impl Board {
    /// Keeps `report` as the latest of its rank, received at `now`.
    pub(super) fn record(&mut self, report: Progress, now: Instant) {
        let changed = match self.entries.get(&report.rank) {
            Some(e) if e.report.same_progress(&report) => e.changed,
            _ => now,
        };
        self.entries.insert(report.rank, Entry { report, heard: now, changed });
    }

    /// `rank` said it leaves.
    pub(super) fn left(&mut self, rank: Rank) {
        self.left.insert(rank, ());
    }

    /// `rank` was admitted again (a restarted process): it no longer counts as gone.
    pub(super) fn joined(&mut self, rank: Rank) {
        self.left.remove(&rank);
        self.evicted.remove(&rank);
    }

    /// `rank` was evicted for `reason`.
    pub(super) fn evicted(&mut self, rank: Rank, reason: &str) {
        self.evicted.insert(rank, reason.to_string());
    }

    /// The status of `rank` at `now`, given whether it is a member of the current view
    /// and connected (`None` before the first view: `registered` says whether it is).
    pub(super) fn rank_status(
        &self,
        rank: Rank,
        view: Option<(bool, bool)>,
        registered: bool,
        now: Instant,
    ) -> RankStatus {
        let presence = match view {
            None if registered => Presence::Registered,
            None => Presence::Unregistered,
            Some((true, true)) if !self.left.contains_key(&rank) => Presence::Member,
            Some((_, _)) if self.left.contains_key(&rank) => Presence::Left,
            Some((true, _)) => Presence::Disconnected,
            Some((false, _)) => Presence::Evicted { reason: self.evicted.get(&rank).cloned().unwrap_or_default() },
        };
        let entry = self.entries.get(&rank);
        RankStatus {
            rank,
            presence,
            report: entry.map(|e| e.report.clone()),
            heard_ago: entry.map(|e| now.saturating_duration_since(e.heard)),
            unchanged_for: entry.map(|e| now.saturating_duration_since(e.changed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn report(rank: Rank, seq: u64, phase: &str, waits_for: Option<Rank>) -> Progress {
        Progress {
            rank,
            epoch: 1,
            completed: seq,
            activity: Activity::Running,
            queued: 0,
            received_bytes: 100,
            call: Some(CallProgress {
                seq,
                coll: CollKind::AllReduce,
                phase: phase.into(),
                step: 1,
                waits_for,
                running: Duration::from_millis(5),
            }),
        }
    }

    #[test]
    fn the_unchanged_time_restarts_only_when_progress_shows() {
        let t0 = Instant::now();
        let mut board = Board::default();
        let mut r = report(2, 3, "reduce-scatter", Some(1));
        board.record(r.clone(), t0);
        // Only the running time moved: no progress.
        if let Some(c) = r.call.as_mut() {
            c.running = Duration::from_secs(2);
        }
        board.record(r.clone(), t0 + Duration::from_secs(2));
        let s = board.rank_status(2, Some((true, true)), true, t0 + Duration::from_secs(3));
        assert_eq!(s.unchanged_for, Some(Duration::from_secs(3)));
        assert_eq!(s.heard_ago, Some(Duration::from_secs(1)));
        // Bytes arrived: progress, even in the same step.
        r.received_bytes += 1;
        board.record(r, t0 + Duration::from_secs(4));
        let s = board.rank_status(2, Some((true, true)), true, t0 + Duration::from_secs(5));
        assert_eq!(s.unchanged_for, Some(Duration::from_secs(1)));
        assert_eq!(s.presence, Presence::Member);
    }

    #[test]
    fn presence_follows_view_connection_and_how_a_rank_went() {
        let now = Instant::now();
        let mut board = Board::default();
        board.left(3);
        board.evicted(4, "no heartbeat for 5s");
        assert_eq!(board.rank_status(0, None, false, now).presence, Presence::Unregistered);
        assert_eq!(board.rank_status(0, None, true, now).presence, Presence::Registered);
        assert_eq!(board.rank_status(1, Some((true, false)), true, now).presence, Presence::Disconnected);
        assert_eq!(board.rank_status(3, Some((false, false)), true, now).presence, Presence::Left);
        let evicted = Presence::Evicted { reason: "no heartbeat for 5s".into() };
        assert_eq!(board.rank_status(4, Some((false, true)), true, now).presence, evicted);
        assert_eq!(board.rank_status(4, None, true, now).report, None);
    }

    #[test]
    fn a_coordinator_answers_status_requests_until_it_is_dropped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let options = crate::coord::ServerOptions::new(2, 9, Duration::from_secs(30));
        let server = crate::coord::Server::start(listener, options).unwrap();
        let handle = server.status_handle();
        let status = handle.query(Duration::from_secs(5)).expect("an answer");
        assert!(matches!(status.stage, Stage::Rendezvous { deadline_in } if deadline_in > Duration::from_secs(20)));
        assert_eq!((status.job, status.world_size, status.ranks.len()), (9, 2, 2));
        assert!(status.ranks.iter().all(|r| r.presence == Presence::Unregistered && r.report.is_none()));
        assert!(status.render().ends_with("diagnosis: waiting for ranks 0, 1 to register\n"));
        drop(server);
        assert_eq!(handle.query(Duration::from_secs(1)), None);
    }

    #[test]
    fn phase_names_are_short_and_printable() {
        for ok in ["reduce-scatter", "all-gather", "broadcast", "gather", "fin", "sending", "a_1"] {
            assert!(is_phase_name(ok), "{ok}");
        }
        for bad in ["", "Reduce", "a b", "\u{1b}[2J", "é", &"x".repeat(PHASE_NAME_MAX + 1)] {
            assert!(!is_phase_name(bad), "{bad:?}");
        }
        for id in 0..=5 {
            assert_eq!(Activity::from_u8(id).map(|a| a as u8), Ok(id));
        }
        assert!(Activity::from_u8(6).is_err());
    }
}
