//! The coordinator server: one thread, one mio poll, bounded buffers.
//!
//! Rendezvous: every rank registers (rank, world size, listen address, host, config
//! fingerprint); when all `world_size` ranks are in, each gets the first view (epoch 1,
//! ring order grouping ranks of one host). A job-wide problem (a fingerprint mismatch, a
//! wrong world size, a duplicate or out-of-range rank, a rank missing at the deadline) is
//! sent to every registered rank, and to any that registers later, as a [`Refusal`].
//!
//! `conns`: accepting, authenticating, reading and writing connections. `rendezvous`:
//! registrations, joins and the first view. This file: the loop, membership events and
//! resync decisions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

mod conns;
mod rendezvous;

use super::handover::Handovers;
use super::status::{Board, JobStatus, Stage, StatusHandle, StatusRequests};
use super::{Member, Registration, ServerOptions, View};
use crate::core::membership::{Membership, MembershipEvent, ResyncReport};
use crate::limits::HANDSHAKE_TIMEOUT;
use crate::wire::control::{Control, Refusal};
use crate::wire::hello::HELLO_LEN;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// A running coordinator (a background thread). Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    status: StatusHandle,
}

impl Server {
    /// Starts serving on `listener` in a thread named `ringcc-coord`.
    ///
    /// # Errors
    /// An I/O error if the listener cannot be set up or the thread cannot start.
    pub fn start(listener: TcpListener, options: ServerOptions) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (status, status_rx) = StatusHandle::new(waker.clone());
        let state = State {
            poll,
            listener,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            registered: BTreeMap::new(),
            deadline: Instant::now() + options.rendezvous_timeout,
            phase: Phase::Rendezvous,
            options,
            stop: stop.clone(),
            refused: 0,
            last_beat: Instant::now(),
            board: Board::default(),
            status_rx,
            handovers: Handovers::default(),
        };
        let thread = std::thread::Builder::new().name("ringcc-coord".into()).spawn(move || state.run())?;
        Ok(Server { addr, stop, waker, thread: Some(thread), status })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that asks this coordinator for the job's status (see
    /// [`crate::coord::status`]); it answers `None` once the server is dropped.
    pub fn status_handle(&self) -> StatusHandle {
        self.status.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
enum Phase {
    Rendezvous,
    /// Rendezvous done; the membership authority decides every later view.
    Running(Box<Membership<Member>>),
    Refused(Refusal),
}

/// Where a connection stands in the mutual handshake; nothing but the hello and the MAC is
/// read before `Done`.
enum Auth {
    AwaitHello,
    AwaitMac { hello_i: [u8; HELLO_LEN], hello_r: [u8; HELLO_LEN] },
    Done,
}

struct Conn {
    stream: TcpStream,
    auth: Auth,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    rank: Option<usize>,
    opened: Instant,
    left: bool,
}

struct State {
    poll: Poll,
    listener: mio::net::TcpListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    registered: BTreeMap<usize, (Token, Registration)>,
    deadline: Instant,
    phase: Phase,
    options: ServerOptions,
    stop: Arc<AtomicBool>,
    /// Connections refused so far (log lines are rate-limited by it).
    refused: u64,
    /// When the coordinator last sent heartbeats.
    last_beat: Instant,
    /// Latest progress report of each rank, for status requests.
    board: Board,
    status_rx: StatusRequests,
    /// Results handed over with the reports on the current view (`handover`).
    handovers: Handovers,
}

impl State {
    fn run(mut self) {
        let mut events = Events::with_capacity(128);
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut wake_at = (self.last_beat + self.options.heartbeat_interval).max(now);
            match &self.phase {
                Phase::Rendezvous => wake_at = wake_at.min(self.deadline),
                Phase::Running(m) => wake_at = m.poll_timeout().map_or(wake_at, |t| wake_at.min(t)),
                Phase::Refused(_) => {}
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wake_at.saturating_duration_since(now))) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("coordinator poll failed: {e}");
                    return;
                }
            }
            let ready: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for t in ready {
                match t {
                    LISTENER => self.accept(),
                    WAKER => {}
                    t => self.service(t),
                }
            }
            let now = Instant::now();
            self.check_deadlines(now);
            if let Phase::Running(m) = &mut self.phase {
                m.handle_timeout(now);
            }
            self.apply_membership_events();
            if now >= self.last_beat + self.options.heartbeat_interval {
                self.last_beat = now;
                self.beat();
            }
            while let Ok(reply) = self.status_rx.try_recv() {
                let _ = reply.try_send(self.status(now));
            }
        }
    }

    /// A snapshot of the job for status requests.
    fn status(&self, now: Instant) -> JobStatus {
        let connected: BTreeSet<usize> = self.conns.values().filter_map(|c| c.rank).collect();
        let (stage, members) = match &self.phase {
            Phase::Rendezvous => {
                (Stage::Rendezvous { deadline_in: self.deadline.saturating_duration_since(now) }, None)
            }
            Phase::Running(m) => (
                Stage::Running { epoch: m.epoch(), quorum_lost: m.is_lost() },
                Some(m.members().iter().map(|(r, _)| *r).collect::<BTreeSet<usize>>()),
            ),
            Phase::Refused(r) => (Stage::Refused { reason: format!("{r:?}") }, None),
        };
        let ranks = (0..self.options.world_size)
            .map(|rank| {
                let view = members.as_ref().map(|m| (m.contains(&rank), connected.contains(&rank)));
                self.board.rank_status(rank, view, self.registered.contains_key(&rank), now)
            })
            .collect();
        JobStatus {
            job: self.options.job,
            world_size: self.options.world_size,
            stage,
            heartbeat_timeout: self.options.heartbeat_timeout,
            ranks,
        }
    }

    /// Tells every member the coordinator is alive (ranks give up a silent coordinator).
    fn beat(&mut self) {
        let Phase::Running(m) = &self.phase else { return };
        let msg = Control::Heartbeat { rank: u32::MAX, epoch: m.epoch() };
        self.send_members(&msg);
    }

    /// Sends `takers` the copy of the result `source` handed over for the view of `epoch`,
    /// before the decision that finishes the call with it.
    fn hand_over(&mut self, epoch: u64, source: Option<usize>, takers: &[usize]) {
        let Some(copy) = source.and_then(|s| self.handovers.copy_of(s, epoch)) else { return };
        let msg = Control::Result(copy);
        let tokens: Vec<Token> = takers.iter().filter_map(|r| self.token_of(*r)).collect();
        for t in tokens {
            self.send(t, &msg);
        }
    }

    /// Sends `msg` to every member of the current view.
    fn send_members(&mut self, msg: &Control) {
        for t in self.member_tokens() {
            self.send(t, msg);
        }
    }

    /// The view message of `epoch` over `members` (see [`View`]).
    fn view(&self, epoch: u64, members: Vec<(usize, Member)>, start_seq: Option<u64>, joined: Vec<usize>) -> View {
        View {
            job: self.options.job,
            epoch,
            world_size: self.options.world_size,
            members: members.into_iter().map(|(_, m)| m).collect(),
            start_seq,
            joined,
        }
    }

    fn member_tokens(&self) -> Vec<Token> {
        let Phase::Running(m) = &self.phase else { return Vec::new() };
        m.members().iter().filter_map(|(r, _)| self.token_of(*r)).collect()
    }

    fn token_of(&self, rank: usize) -> Option<Token> {
        self.conns.iter().find(|(_, c)| c.rank == Some(rank)).map(|(t, _)| *t)
    }

    /// Sends what the membership authority decided.
    fn apply_membership_events(&mut self) {
        loop {
            let Phase::Running(m) = &mut self.phase else { return };
            let Some(event) = m.poll_event() else { return };
            match event {
                MembershipEvent::Evicted { rank, epoch, reason } => {
                    tracing::warn!(rank, epoch, %reason, "rank evicted");
                    self.board.evicted(rank, &reason);
                    // A rank replaced by a restart: its connection is the new process's, which
                    // waits to join; the eviction was of the old one.
                    let replaced = m.is_joining(rank);
                    if let Some(t) = self.token_of(rank).filter(|_| !replaced) {
                        self.send(t, &Control::Evicted { epoch, reason });
                    }
                }
                MembershipEvent::ViewInstalled { epoch, members } => {
                    tracing::warn!(epoch, members = ?members.iter().map(|(r, _)| *r).collect::<Vec<_>>(), "new view");
                    let view = self.view(epoch, members, None, Vec::new());
                    self.send_members(&Control::View(view));
                }
                MembershipEvent::JoinPrepare { epoch } => {
                    tracing::info!(epoch, "a rank asks to join: members hold at their next call");
                    self.send_members(&Control::JoinPrepare { epoch });
                }
                MembershipEvent::JoinPointDone { epoch, seq } => {
                    self.send_members(&Control::JoinPointDone { epoch, seq })
                }
                MembershipEvent::JoinCancel { epoch } => {
                    tracing::warn!(epoch, "join cancelled: the joining rank went away");
                    self.send_members(&Control::JoinCancel { epoch });
                }
                MembershipEvent::Admitted { epoch, members, joined, start_seq } => {
                    tracing::warn!(epoch, start_seq, ?joined, members = ?members.iter().map(|(r, _)| *r).collect::<Vec<_>>(), "ranks admitted");
                    for r in &joined {
                        self.board.joined(*r);
                    }
                    let view = self.view(epoch, members, Some(start_seq), joined);
                    self.send_members(&Control::View(view));
                }
                MembershipEvent::Decision { epoch, seq, finish, source, takers } => {
                    tracing::info!(epoch, seq, finish, ?source, ?takers, "interrupted call decided");
                    self.hand_over(epoch, source, &takers);
                    self.send_members(&Control::Decision { epoch, seq, finish });
                }
                MembershipEvent::QuorumLost { epoch, alive, required } => {
                    tracing::error!(epoch, alive, required, "quorum lost");
                    let msg = Control::QuorumLost { epoch, alive: alive as u32, required: required as u32 };
                    let all: Vec<Token> =
                        self.conns.iter().filter(|(_, c)| c.rank.is_some()).map(|(t, _)| *t).collect();
                    for t in all {
                        self.send(t, &msg);
                    }
                }
            }
        }
    }

    fn handle(&mut self, token: Token, msg: Control) {
        let now = Instant::now();
        let sender = self.conns.get(&token).and_then(|c| c.rank);
        if let (Phase::Running(m), Some(r)) = (&mut self.phase, sender) {
            m.handle_heartbeat(r, now);
        }
        match msg {
            Control::Register(reg) => self.register(token, reg),
            Control::Leave { rank } => {
                if let Some(c) = self.conns.get_mut(&token) {
                    if c.rank == Some(rank as usize) {
                        c.left = true;
                        self.board.left(rank as usize);
                        if let Phase::Running(m) = &mut self.phase {
                            m.handle_leave(rank as usize);
                        }
                    }
                }
            }
            Control::Heartbeat { .. } => {}
            Control::Progress(p) => {
                if sender == Some(p.rank) {
                    self.board.record(p, now);
                }
            }
            Control::Resync { rank, epoch, completed, holds, attempt_epoch } => {
                if let (Phase::Running(m), true) = (&mut self.phase, sender == Some(rank as usize)) {
                    let handed = self.handovers.handed_by(rank as usize, epoch);
                    let report = ResyncReport { completed, holds, attempt_epoch, handed };
                    m.handle_resync(rank as usize, epoch, report, now);
                }
            }
            Control::Result(h) => {
                if let (Phase::Running(m), Some(r)) = (&self.phase, sender) {
                    if !self.handovers.offer(r, m.epoch(), h) {
                        tracing::debug!(rank = r, epoch = m.epoch(), "handed-over result not kept");
                    }
                }
            }
            Control::JoinPoint { rank, epoch, seq } => {
                if let (Phase::Running(m), true) = (&mut self.phase, sender == Some(rank as usize)) {
                    m.handle_join_point(rank as usize, epoch, seq, now);
                }
            }
            Control::JoinAck { rank, epoch, next_seq } => {
                if let (Phase::Running(m), true) = (&mut self.phase, sender == Some(rank as usize)) {
                    m.handle_join_ack(rank as usize, epoch, next_seq, now);
                }
            }
            Control::Suspect { rank, suspect, epoch, stalled, reason } => {
                if sender == Some(rank as usize) {
                    tracing::warn!(rank, suspect, epoch, stalled, %reason, "suspicion reported");
                    if let Phase::Running(m) = &mut self.phase {
                        m.handle_suspect(rank as usize, suspect as usize, epoch, stalled, now);
                    }
                }
            }
            other => {
                if let Some(c) = self.conns.get(&token) {
                    tracing::warn!(peer = %c.peer, "coordinator ignores unexpected {other:?}");
                }
            }
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Rendezvous) && now >= self.deadline {
            let missing: Vec<usize> =
                (0..self.options.world_size).filter(|r| !self.registered.contains_key(r)).collect();
            self.refuse_all(Refusal::Rendezvous {
                reason: format!(
                    "ranks {missing:?} did not register within {:?} ({} of {} arrived)",
                    self.options.rendezvous_timeout,
                    self.registered.len(),
                    self.options.world_size
                ),
            });
        }
        // Connections that never identify themselves are dropped after the handshake time.
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.rank.is_none() && now.duration_since(c.opened) > HANDSHAKE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            self.close(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::coord::status::Presence;
    use crate::coord::{Client, Registration};

    #[test]
    fn a_leave_read_together_with_the_close_is_a_clean_leave() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server::start(listener, ServerOptions::new(2, 7, Duration::from_secs(20))).unwrap();
        let addr = server.local_addr().to_string();
        let clients: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(&addr, Duration::from_secs(5), &[], rank).unwrap();
                    let reg = Registration {
                        rank,
                        world_size: 2,
                        incarnation: 0,
                        listen: "127.0.0.1:9".parse().unwrap(),
                        host: "h".into(),
                        fingerprint: Vec::new(),
                    };
                    c.register(&reg, Duration::from_secs(10)).unwrap();
                    c.into_stream()
                })
            })
            .collect();
        let mut streams: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
        // Rank 0's last words and its end of stream leave in one go, as a dropped
        // communicator sends them.
        let mut last = streams.remove(0);
        last.write_all(&Control::Leave { rank: 0 }.encode()).unwrap();
        drop(last);
        let handle = server.status_handle();
        let deadline = Instant::now() + Duration::from_secs(10);
        let presence = loop {
            let status = handle.query(Duration::from_secs(5)).expect("status");
            let p = status.ranks[0].presence.clone();
            if !matches!(p, Presence::Member) || Instant::now() > deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(presence, Presence::Left);
        drop(streams);
    }
}
