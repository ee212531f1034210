//! The event loop: one thread per communicator, owning the ring's sockets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

use super::coord_link::CoordLink;
use super::establish::Ring;
use super::link::{Link as Conn, Target, Waiting};
use super::{Job, JobOutcome};
use crate::codec::CodecChoice;
use crate::comm::stats::Recorder;
use crate::comm::straggler::WINDOW_SLOTS;
use crate::comm::{Config, LinkStats, Side};
use crate::coord::View;
use crate::core::collective::{Algorithm, Collective, Link};
use crate::core::payload::Codecs;
use crate::wire::control::Control;
use crate::wire::CollKind;
use crate::{Error, Rank, Report};

#[path = "recovery.rs"]
mod recovery;

#[path = "calls.rs"]
mod calls;
#[path = "coordination.rs"]
mod coordination;
#[path = "frames.rs"]
mod frames;
#[path = "lane_loop.rs"]
mod lane_loop;

#[path = "progress.rs"]
mod progress;

#[path = "handoff.rs"]
mod handoff;
#[path = "joining.rs"]
mod joining;
#[path = "retain.rs"]
mod retain;

// Link slot i (0 prev, 1 next, 2.. partner links) polls as `token_of(i)`.
const WAKER: Token = Token(2);
const COORD: Token = Token(3);

/// The poll token of link slot `i`.
fn token_of(i: usize) -> Token {
    Token(if i < 2 { i } else { i + 2 })
}

/// The link slot a poll token stands for (`None` for the waker and the coordinator).
fn slot_of_token(t: Token) -> Option<usize> {
    match t.0 {
        0 | 1 => Some(t.0),
        2 | 3 => None,
        n => Some(n - 2),
    }
}

/// Most frames read from one link before the loop turns to writing and the other link,
/// so one busy link cannot starve the rest.
const FRAMES_PER_TURN: usize = 16;

/// How long a closing communicator keeps flushing and draining its links so that peers
/// see an orderly end of stream rather than a reset.
const LINGER: Duration = Duration::from_millis(500);

/// Largest collective (bytes) during which the loop spins instead of sleeping.
const SPIN_BYTES_MAX: usize = 256 << 10;

/// Pause between attempts to connect to the neighbours of a new view.
const REBUILD_RETRY_DELAY: Duration = Duration::from_millis(20);

/// What the caller's thread sends the loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run a collective after those already queued.
    Run(Job),
    /// The application reached a join point (`net::joining`); the answer is the ranks
    /// admitted there.
    JoinPoint(Sender<Result<Vec<Rank>, Error>>),
}

/// Handle to a running event loop. Dropping it stops the loop and joins the thread.
#[derive(Debug)]
pub(crate) struct Driver {
    tx: Option<Sender<Command>>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    /// The loop, shared with callers that drive it themselves (`handoff`).
    cell: Arc<handoff::Cell>,
}

impl Driver {
    /// Starts the loop on an established ring.
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the poller or the thread cannot be created.
    pub(crate) fn start(
        ring: Ring,
        config: &Config,
        coordinator: Option<std::net::TcpStream>,
        listener: std::net::TcpListener,
        shared: Arc<super::Shared>,
    ) -> Result<Driver, Error> {
        let os = |e: std::io::Error| Error::Shutdown(format!("event loop setup: {e}"));
        let codecs = Codecs::new(config.codec_level, Some(crate::codec::cpu_share::thread_cpu_clock))
            .map(|c| c.with_sched_times(crate::codec::cpu_share::thread_sched_times))
            .map_err(|e| Error::Config(format!("codec {}: {e}", config.codec.name())))?;
        let poll = Poll::new().map_err(os)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(os)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let now = Instant::now();
        let coord = match coordinator {
            Some(s) => {
                s.set_nonblocking(true).map_err(os)?;
                let mut s = mio::net::TcpStream::from_std(s);
                poll.registry().register(&mut s, COORD, Interest::READABLE | Interest::WRITABLE).map_err(os)?;
                Some(CoordLink::new(s, config.rank as u32, config.heartbeat_timeout, now))
            }
            None => None,
        };
        let fault = if config.incarnation == 0 { super::fault::FaultPlan::from_env(config.rank)? } else { None };
        let mut ev = EventLoop {
            poll,
            rx,
            links: vec![None, None],
            partner_pos: Vec::new(),
            coord,
            listener,
            secret: config.secret.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            job: ring.view.job,
            epoch: 0,
            members: Vec::new(),
            sorted: Vec::new(),
            pos: 0,
            rank: config.rank,
            segment_bytes: config.segment_bytes,
            algorithm: config.algorithm,
            codec: config.codec,
            codecs: Some(Box::new(codecs)),
            progress_timeout: config.progress_timeout,
            exact_retry: config.exact_retry,
            heartbeat_timeout: config.heartbeat_timeout,
            orphan_exit: config.orphan_exit,
            queue: VecDeque::new(),
            active: None,
            next_seq: ring.view.start_seq.unwrap_or(0),
            completed: ring.view.start_seq.unwrap_or(0),
            hold: None,
            switches: VecDeque::new(),
            joined: if ring.view.start_seq.is_some() { ring.view.joined.clone() } else { Vec::new() },
            incarnation: config.incarnation,
            join_points: config.join_points,
            checksum: config.checksum,
            lanes: config.lanes,
            join_wait: None,
            broken: None,
            pending_view: None,
            awaiting: None,
            rebuild: None,
            decision: None,
            backup: Vec::new(),
            results: retain::Results::new(config.exact_retry),
            fault,
            terminal: None,
            stale_frames: 0,
            shared,
            recorder: Recorder::default(),
            frame_delay: config.test_frame_delay,
        };
        ev.adopt_ring(ring).map_err(os)?;
        let turn =
            handoff::Turn { events: Events::with_capacity(64), last_activity: now, spin: config.spin, ended: false };
        let cell = Arc::new(handoff::Cell::new(ev, turn));
        let runner = Arc::clone(&cell);
        let thread = std::thread::Builder::new()
            .name(format!("ringcc-net-{}", config.rank))
            .spawn(move || runner.run())
            .map_err(os)?;
        Ok(Driver { tx: Some(tx), waker, thread: Some(thread), cell })
    }

    /// Queues a job; its outcome arrives on the job's reply channel.
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the loop has ended.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or_else(|| Error::Shutdown("communicator dropped".into()))?;
        tx.send(Command::Run(job)).map_err(|_| Error::Shutdown("event loop ended".into()))?;
        self.cell.end_linger();
        self.waker.wake().map_err(|e| Error::Shutdown(format!("wake event loop: {e}")))
    }

    /// Tells the loop the application reached a join point; the answer arrives on `reply`.
    ///
    /// # Errors
    /// [`Error::Shutdown`] if the loop has ended.
    pub(crate) fn join_point(&self, reply: Sender<Result<Vec<Rank>, Error>>) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or_else(|| Error::Shutdown("communicator dropped".into()))?;
        tx.send(Command::JoinPoint(reply)).map_err(|_| Error::Shutdown("event loop ended".into()))?;
        self.cell.end_linger();
        self.waker.wake().map_err(|e| Error::Shutdown(format!("wake event loop: {e}")))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Closing the channel tells the loop to finish; the waker makes it notice.
        self.tx = None;
        self.cell.shut_down();
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The collective running now.
struct Active {
    job: Job,
    coll: Collective,
    seq: u64,
    started: Instant,
    /// A failure outside the collective's own logic (a link closed or sent garbage).
    error: Option<Error>,
    /// Epoch and ascending members of the view this attempt runs in (what its report says).
    epoch: u64,
    members: Vec<Rank>,
    /// The collective saves the input bytes it overwrites (exact retry).
    backed_up: bool,
    /// Since when a retryable failure waits for a new view (exact retry).
    retry_since: Option<Instant>,
    /// A stall of this attempt was reported to the coordinator.
    stall_reported: bool,
    /// Ranks admitted into the ring at this call (its report lists them).
    joined: Vec<Rank>,
}

/// What to do with the frame whose header was just read.
enum Route {
    /// It belongs to a collective that has not started here: stop reading this link.
    Park,
    /// It belongs to a finished or failed collective: read and drop it.
    Discard,
    /// It belongs to the active collective: read its payload into this target.
    Active(Target),
}

struct EventLoop {
    poll: Poll,
    rx: Receiver<Command>,
    /// `[prev, next, partner links...]`: slots 0 and 1 are the ring links, slot `2 + k`
    /// the partner link to position `partner_pos[k]` (recursive doubling's non-neighbour
    /// partners, `core::doubling::partner_positions`).
    links: Vec<Option<Conn>>,
    /// The position at the other end of each partner link, in slot order.
    partner_pos: Vec<usize>,
    coord: Option<CoordLink>,
    /// Where new neighbours connect after a view change.
    listener: std::net::TcpListener,
    secret: Vec<u8>,
    job: u64,
    epoch: u64,
    /// Ranks in ring order.
    members: Vec<Rank>,
    /// Ranks ascending.
    sorted: Vec<Rank>,
    pos: usize,
    rank: Rank,
    segment_bytes: usize,
    algorithm: Algorithm,
    codec: CodecChoice,
    /// Lent to the active collective while it runs.
    codecs: Option<Box<Codecs>>,
    progress_timeout: Duration,
    /// `Config::exact_retry`: completion tokens and backups, redo after a view change.
    exact_retry: bool,
    heartbeat_timeout: Duration,
    /// Exit the process when the coordinator (the launcher) is lost: no orphans.
    orphan_exit: bool,
    queue: VecDeque<Job>,
    active: Option<Active>,
    next_seq: u64,
    /// Collectives completed successfully (compared with neighbours after a rebuild).
    completed: u64,
    /// Held before the next call for the join the coordinator prepares in this epoch.
    hold: Option<u64>,
    /// Views admitting ranks, each with the first call it applies to (`net::joining`).
    switches: VecDeque<(View, u64)>,
    /// Ranks admitted at the next call.
    joined: Vec<Rank>,
    /// `Config::incarnation`, sent in every ring hello.
    incarnation: u64,
    /// `Config::join_points`: joins are admitted only at the application's join points.
    join_points: bool,
    /// `Config::checksum`: which links' payloads the frame CRC covers.
    checksum: crate::comm::Checksum,
    /// `Config::lanes`: offer and accept same-host lanes (`net::lane`).
    lanes: bool,
    /// The application waits at a join point (`net::joining`).
    join_wait: Option<joining::JoinWait>,
    /// Set once a link has failed, with when: later jobs wait for a new view, and fail with
    /// this reason if none comes in time.
    broken: Option<(Rank, String, Instant, bool)>,
    /// A view from the coordinator, installed as soon as the loop gets to it.
    pending_view: Option<View>,
    /// The epoch whose decision on the interrupted call this rank waits for, and since
    /// when: no call runs meanwhile.
    awaiting: Option<(u64, Instant)>,
    /// The ring of a new view being built (resumable across attempts), and when the view
    /// arrived.
    rebuild: Option<(super::establish::RingBuilder, Instant)>,
    /// A decision from the coordinator: epoch, seq, finish.
    decision: Option<(u64, u64, bool)>,
    /// Buffer lent to each collective to save the input it overwrites (exact retry); its
    /// capacity is reused from call to call.
    backup: Vec<u8>,
    /// Results kept and handed over for calls without completion tokens (`retain`).
    results: retain::Results,
    /// A fault to inject (`RINGCC_FAULT`, tests only).
    fault: Option<super::fault::FaultPlan>,
    /// Set when this rank can no longer take part (evicted, quorum lost, coordinator lost
    /// while the ring is broken): every job fails with it.
    terminal: Option<Terminal>,
    stale_frames: u64,
    /// Where the caller's thread reads the current view.
    shared: Arc<super::Shared>,
    /// Statistics that do not belong to one link (see `comm::stats`).
    recorder: Recorder,
    /// Test hook: sleep after every received frame (`Config::test_frame_delay`).
    frame_delay: Duration,
}

/// Why this rank can no longer run collectives.
#[derive(Debug, Clone)]
enum Terminal {
    Evicted { epoch: u64, reason: String },
    Desynchronized { completed: u64, detail: String },
    QuorumLost { epoch: u64, alive: usize, required: usize },
}

impl Terminal {
    fn error(&self, rank: Rank) -> Error {
        match self.clone() {
            Terminal::Evicted { epoch, reason } => Error::Evicted { rank, epoch, reason },
            Terminal::QuorumLost { epoch, alive, required } => Error::QuorumLost { alive, required, epoch },
            Terminal::Desynchronized { completed, detail } => Error::Desynchronized { completed, detail },
        }
    }
}

/// What the link in slot `i` is, for log lines.
fn link_kind(i: usize) -> &'static str {
    if i < 2 {
        "ring link"
    } else {
        "partner link"
    }
}

/// The slot of `link` among `[prev, next, partner links...]`, the partner links leading to
/// `partner_pos` in order; `None` for a partner this rank has no link to.
fn slot_in(partner_pos: &[usize], link: Link) -> Option<usize> {
    match link {
        Link::Prev => Some(0),
        Link::Next => Some(1),
        Link::Partner(q) => partner_pos.iter().position(|&p| p as u32 == q).map(|k| 2 + k),
    }
}

impl EventLoop {
    /// The collective's name for link slot `i`.
    fn link_of(&self, i: usize) -> Link {
        match i {
            0 => Link::Prev,
            1 => Link::Next,
            _ => Link::Partner(self.partner_pos.get(i - 2).map_or(u32::MAX, |&q| q as u32)),
        }
    }

    /// The slot of the collective's `link`, if this rank has that link.
    fn slot(&self, link: Link) -> Option<usize> {
        slot_in(&self.partner_pos, link)
    }

    /// The peer rank at the other end of `link`, if this rank has that link.
    fn peer_on(&self, link: Link) -> Option<Rank> {
        self.slot(link).and_then(|i| self.links.get(i)?.as_ref()).map(|l| l.peer)
    }

    /// One turn of the loop: poll for readiness (sleeping at most `sleep_max`, and not at
    /// all while spinning), then make all the progress possible. Whichever thread drives the
    /// loop (`handoff`) calls it with the loop's `Turn`. Returns false once the loop has
    /// ended (closed or failed): it must not be turned again.
    fn turn(&mut self, t: &mut handoff::Turn, sleep_max: Option<Duration>) -> bool {
        if t.ended {
            return false;
        }
        let now = Instant::now();
        let deadlines = [
            self.active.as_ref().and_then(|a| a.coll.poll_timeout()),
            self.coord.as_ref().and_then(|c| c.deadline()),
            self.broken.as_ref().map(|(_, _, since, _)| *since + self.rebuild_wait()),
            self.awaiting.map(|(_, since)| since + self.rebuild_wait()),
            self.rebuild.as_ref().map(|_| now + REBUILD_RETRY_DELAY),
            self.active.as_ref().and_then(|a| a.retry_since).map(|since| since + self.rebuild_wait()),
        ];
        let mut timeout = deadlines.into_iter().flatten().min().map(|d| d.saturating_duration_since(now));
        if let Some(max) = sleep_max {
            timeout = Some(timeout.map_or(max, |d| d.min(max)));
        }
        // Right after activity, poll without sleeping for a short while: waking a
        // sleeping thread costs tens of microseconds, which dominates small collectives.
        // Large collectives are bandwidth-bound: sleeping in the poller leaves the core
        // to the peers (on an oversubscribed host they share it).
        let small = self.active.as_ref().is_none_or(|a| a.job.buf.bytes().len() < SPIN_BYTES_MAX);
        let spinning = small && now.duration_since(t.last_activity) < t.spin;
        if spinning {
            timeout = Some(Duration::ZERO);
        }
        // A loop that may block tells its lanes' senders first, then looks once more
        // (`net::lane`: whole frames put in meanwhile come with a bell).
        let may_block = timeout != Some(Duration::ZERO);
        if may_block && self.lanes_asleep(true) {
            timeout = Some(Duration::ZERO);
        }
        let expecting = self.expecting();
        let polled = self.poll.poll(&mut t.events, timeout);
        if may_block {
            self.lanes_asleep(false);
        }
        if let Err(e) = polled {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.fail_everything(&format!("poll: {e}"));
                t.ended = true;
                return false;
            }
        }
        let mut closing = false;
        for ev in t.events.iter() {
            match ev.token() {
                WAKER => closing |= self.take_commands(),
                COORD => self.read_coordinator(now),
                t => {
                    if let Some(l) = slot_of_token(t).and_then(|i| self.links.get_mut(i)?.as_mut()) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            l.read_ready(ev.is_read_closed() || ev.is_error());
                        }
                        l.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                    }
                }
            }
        }
        let busy = !t.events.is_empty();
        let polled = now.elapsed();
        self.tick_coordinator(Instant::now());
        let progressed = self.drive(Instant::now()) || busy;
        if progressed {
            t.last_activity = Instant::now();
        } else if spinning {
            std::thread::yield_now();
        }
        // Idle: the poll, or the whole turn if it moved nothing.
        self.note_idle(expecting, if progressed { polled } else { now.elapsed() });
        if closing {
            self.close();
            t.ended = true;
            return false;
        }
        true
    }

    /// Moves the jobs the callers sent into the queue. Returns true once the communicator
    /// is gone (its sender dropped): the loop must close.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Run(job)) => self.queue.push_back(job),
                Ok(Command::JoinPoint(reply)) => self.request_join_point(reply),
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Makes all the progress possible without blocking. Returns true if anything moved.
    fn drive(&mut self, now: Instant) -> bool {
        let mut any = false;
        loop {
            let mut progressed = self.maybe_install_view();
            progressed |= self.try_rebuild();
            progressed |= self.apply_decision(now);
            progressed |= self.maybe_switch();
            progressed |= self.maybe_join_point();
            if self.active.is_none() {
                progressed |= self.start_next(now);
            }
            for i in 0..self.links.len() {
                progressed |= self.pump_read(i, now);
            }
            progressed |= self.flush_all();
            progressed |= self.drain_transmits();
            progressed |= self.check_active(now);
            if !progressed {
                break;
            }
            any = true;
        }
        if let Some(a) = self.active.as_mut() {
            a.coll.handle_timeout(now);
        }
        self.check_active(now) || any
    }

    /// Marks link `i` dead, fails the active collective and everything after it.
    fn fail_link(&mut self, i: usize, reason: String, peer: Rank) {
        let link = self.link_of(i);
        let needed = self.active.as_ref().is_some_and(|a| a.coll.expects_on(link));
        if let Some(l) = self.links.get_mut(i).and_then(Option::as_mut) {
            if l.closed {
                return;
            }
            l.closed = true;
            let _ = self.poll.registry().deregister(&mut l.stream);
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
            l.out.clear();
            // A neighbour that sent all this call needs from it may leave before the call
            // completes here: only a link still read from is a failure.
            if needed {
                tracing::warn!(peer, addr = %l.addr, %reason, "{} failed", link_kind(i));
            } else {
                tracing::debug!(peer, addr = %l.addr, %reason, "{} closed after its last frame", link_kind(i));
            }
        }
        if needed {
            self.suspect(peer, false, &reason);
        }
        self.broken.get_or_insert((peer, reason, Instant::now(), needed));
        if let Some(a) = self.active.as_mut() {
            // Only what arrives on a link feeds this rank's result. A link that is no longer
            // read from only had sends left: a neighbour that finished and left does not
            // need them, and a crashed one is detected by the ranks that read from it.
            if needed {
                a.error.get_or_insert(Error::PeerClosed { peer, seq: a.seq, epoch: self.epoch });
            }
        }
    }

    fn fail_everything(&mut self, reason: &str) {
        self.answer_join_point(Err(Error::Shutdown(reason.into())));
        if let Some(mut a) = self.active.take() {
            for l in self.links.iter_mut().flatten() {
                l.release_job(a.job.buf.bytes());
            }
            self.codecs = a.coll.take_codecs().or(self.codecs.take());
            if let Some(b) = a.coll.take_backup() {
                self.backup = b;
            }
            let _ = a.job.reply.send(JobOutcome { result: Err(Error::Shutdown(reason.into())) });
        }
        for j in self.queue.drain(..) {
            let _ = j.reply.send(JobOutcome { result: Err(Error::Shutdown(reason.into())) });
        }
    }

    /// Clean shutdown: fail what is left, flush what was queued (aborts), close the write
    /// side so peers see an orderly end, not a reset.
    fn close(&mut self) {
        self.fail_everything("communicator dropped");
        let rank = self.rank as u32;
        if let Some(c) = self.coord.as_mut() {
            c.send(&Control::Leave { rank });
        }
        let deadline = Instant::now() + LINGER;
        for l in self.links.iter_mut().flatten().filter(|l| !l.closed) {
            while !l.out.is_empty() && Instant::now() < deadline {
                l.writable = true;
                if l.flush(None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = l.stream.shutdown(std::net::Shutdown::Write);
        }
        // Read until the peer's end of stream before closing: closing with unread bytes
        // would send a reset, which can destroy data the peer has not read yet.
        let mut sink = [0u8; 16 << 10];
        for l in self.links.iter_mut().flatten().filter(|l| !l.closed) {
            while Instant::now() < deadline {
                match std::io::Read::read(&mut l.stream, &mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// Statistics hooks (`comm::stats`): what the loop counts and publishes.
impl EventLoop {
    /// Per link, what it waits for, sampled before the loop polls; `None` between
    /// collectives (idle time then is nobody's wait).
    fn expecting(&self) -> Option<[Waiting; 2]> {
        let a = self.active.as_ref()?;
        Some([self.waiting_on(a, 0), self.waiting_on(a, 1)])
    }

    /// What the active call waits for on link slot `i` (nothing on a closed link).
    fn waiting_on(&self, a: &Active, i: usize) -> Waiting {
        match self.links.get(i).and_then(Option::as_ref).filter(|l| !l.closed) {
            Some(l) => l.waiting(a.coll.expects_on(self.link_of(i))),
            None => Waiting::default(),
        }
    }

    /// Accounts `idle` loop time during a collective to what the links were waiting for:
    /// the ring links by `expecting` (their state before the poll), the partner links,
    /// which only latency-path calls use, by their state now.
    fn note_idle(&mut self, expecting: Option<[Waiting; 2]>, idle: Duration) {
        let Some(expecting) = expecting else { return };
        for i in 0..self.links.len() {
            let waiting = match (expecting.get(i), self.active.as_ref()) {
                (Some(w), _) => *w,
                (None, Some(a)) => self.waiting_on(a, i),
                (None, None) => Waiting::default(),
            };
            if let Some(l) = self.links[i].as_mut() {
                l.note_idle(idle, waiting);
            }
        }
        self.recorder.note_idle(idle, expecting.iter().any(|w| w.rest));
    }

    /// The ring links' statistics, `[prev, next]` (what the straggler windows compare).
    fn link_stats(&self) -> [Option<LinkStats>; 2] {
        let side = [Side::Prev, Side::Next];
        [0, 1].map(|i| self.links[i].as_ref().map(|l| l.stats(side[i])))
    }

    /// Every link's statistics: the ring links, then the partner links.
    fn all_link_stats(&self) -> Vec<LinkStats> {
        let partners = self.links.iter().skip(2).flatten().map(|l| l.stats(Side::Partner));
        self.link_stats().into_iter().flatten().chain(partners).collect()
    }

    /// Counts a completed collective and publishes the statistics for `Communicator::stats`.
    fn record_completed(&mut self, coll: CollKind, buf_bytes: usize, report: &Report, ran: Duration) {
        for l in self.links.iter_mut().flatten() {
            l.counters.active += ran;
        }
        self.recorder.collective_done(coll, buf_bytes, report, ran);
        let links = self.all_link_stats();
        self.shared.set_stats(self.recorder.stats(self.rank, self.epoch, links));
    }

    /// Writes this rank's statistics window into its slot of a stats exchange buffer
    /// (`f64` slots, [`WINDOW_SLOTS`] per rank, in rank order).
    fn write_window(&mut self, bytes: &mut [u8]) {
        let window = self.recorder.take_window(self.link_stats());
        let at = self.rank * WINDOW_SLOTS;
        let slot = bytemuck::try_cast_slice_mut::<u8, f64>(bytes).ok().and_then(|s| s.get_mut(at..at + WINDOW_SLOTS));
        if let Some(slot) = slot {
            window.write(slot);
        }
    }
}
