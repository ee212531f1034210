//! Opening the ring: connect to the next position, accept the previous one, and check
//! each side's hello before anything else is read.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::accept::Acceptor;
use super::handshake::{self, HandshakeError};
use super::sockbuf;
use crate::coord::{Member, View};
use crate::limits::{CONNECT_ATTEMPT_MIN, CONNECT_RETRY_DELAY_MAX, CONNECT_RETRY_DELAY_MIN};
use crate::wire::hello::{Hello, Role, HELLO_LEN};
use crate::{Error, Rank};

/// An established ring: this rank's position, its two links (none when alone) and its
/// partner links (recursive doubling's non-neighbour partners, worlds of 5 or more).
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) view: View,
    pub(crate) pos: usize,
    /// `(completed, next_seq)` each neighbour reported in its hello (`[prev, next]`).
    pub(crate) counts: [Option<(u64, u64)>; 2],
    pub(crate) prev: Option<(TcpStream, Member)>,
    pub(crate) next: Option<(TcpStream, Member)>,
    /// One link per position of `core::doubling::partner_positions`, in that order: the
    /// partner's position, the connection and the member.
    pub(crate) partners: Vec<(usize, TcpStream, Member)>,
}

/// Applies the socket options every ring connection gets: no Nagle delay, large buffers
/// where the system allows them with a short unsent backlog (`net::sockbuf`), keepalive (a
/// dead host is noticed even without traffic).
pub(crate) fn tune(stream: &TcpStream) -> std::io::Result<()> {
    let s = SockRef::from(stream);
    s.set_nodelay(true)?;
    sockbuf::size_send(SockRef::from(stream))?;
    sockbuf::size_recv(SockRef::from(stream))?;
    sockbuf::limit_unsent(stream)?;
    s.set_keepalive(true)?;
    Ok(())
}

/// Binds the listener ring connections arrive on, with receive buffers set before any
/// connection is accepted (so window scaling uses them).
///
/// # Errors
/// The OS error from socket, bind or listen.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    sockbuf::size_recv(SockRef::from(&s))?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// Connects to `addr` while `acceptor` keeps draining this rank's own listener (see
/// `net::accept`). Each attempt is a non-blocking connect given [`CONNECT_ATTEMPT_MIN`], then
/// twice as long as the one before (so links of any round-trip time connect): a SYN dropped
/// by a full backlog is sent again soon after the backlog empties, not after the kernel's 1 s
/// retransmission. A refused connect is retried after a growing delay until `deadline`.
fn connect_next(addr: SocketAddr, deadline: Instant, acceptor: &mut Acceptor<'_>) -> std::io::Result<TcpStream> {
    let mut delay = CONNECT_RETRY_DELAY_MIN;
    let mut attempt = CONNECT_ATTEMPT_MIN;
    loop {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sockbuf::size_recv(SockRef::from(&s))?;
        s.set_nonblocking(true)?;
        let mut failed = match s.connect(&addr.into()) {
            Ok(()) => None,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
            Err(e) => Some(e),
        };
        let started = Instant::now();
        while failed.is_none() {
            let now = Instant::now();
            if let Some(e) = s.take_error()? {
                failed = Some(e);
            } else if s.peer_addr().is_ok() {
                s.set_nonblocking(false)?;
                return Ok(s.into());
            } else if now >= deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"));
            } else if now.duration_since(started) >= attempt {
                break;
            } else if !acceptor.step(now)? {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        attempt = attempt.saturating_mul(2);
        if let Some(e) = failed {
            let until = Instant::now() + delay;
            if until >= deadline {
                return Err(e);
            }
            while Instant::now() < until {
                if !acceptor.step(Instant::now())? {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            delay = (delay * 2).min(CONNECT_RETRY_DELAY_MAX);
        }
    }
}

/// Waits, reading pending hellos side by side, until `from` has connected with `role`
/// (the previous position, or a partner that opens a partner link).
fn accept_from(
    acceptor: &mut Acceptor<'_>,
    from: &Member,
    role: Role,
    deadline: Instant,
) -> Result<(TcpStream, [u8; HELLO_LEN]), Error> {
    let fail = io("accept", from);
    loop {
        let moved = acceptor.step(Instant::now()).map_err(&fail)?;
        if let Some(found) = acceptor.take(from, role) {
            return Ok(found);
        }
        if let Some(epoch) = acceptor.superseded() {
            return Err(fail(std::io::Error::other(format!("superseded by the view of epoch {epoch}"))));
        }
        if Instant::now() >= deadline {
            let what = if role == Role::RingPrev { "previous rank" } else { "partner rank" };
            return Err(fail(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} never connected"))));
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Connects this rank into the ring described by `view`, authenticating both links, in one
/// attempt of at most `timeout` (see [`RingBuilder`] for the steps).
///
/// # Errors
/// [`Error::Io`] naming the neighbour that could not be reached, [`Error::Authentication`]
/// if a neighbour fails the handshake, or [`Error::Rendezvous`] if the view does not contain
/// this rank.
pub(crate) fn establish_ring(
    view: View,
    rank: Rank,
    incarnation: u64,
    counts: (u64, u64),
    listener: &TcpListener,
    timeout: Duration,
    secret: &[u8],
) -> Result<Ring, Error> {
    RingBuilder::new(view, rank, incarnation, counts)?.attempt(listener, timeout, secret)
}

/// A link this rank opens (to the next position, or to a partner of a higher position), as
/// far as its handshake got.
#[derive(Debug)]
enum NextSide {
    Idle,
    /// Connected and our hello sent.
    Sent {
        stream: TcpStream,
        hello_i: [u8; HELLO_LEN],
    },
    /// Authenticated; the neighbour's (completed, next_seq).
    Done {
        stream: TcpStream,
        counts: (u64, u64),
    },
}

/// A link this rank accepts (from the previous position, or from a partner of a lower
/// position), as far as its handshake got.
#[derive(Debug)]
enum PrevSide {
    Idle,
    /// Its hello read, ours and our MAC sent.
    Answered {
        stream: TcpStream,
        hello_i: [u8; HELLO_LEN],
        hello_r: [u8; HELLO_LEN],
    },
    /// Authenticated; the neighbour's (completed, next_seq).
    Done {
        stream: TcpStream,
        counts: Option<(u64, u64)>,
    },
}

/// A ring being built, resumable across attempts. Each link's half-done handshake survives
/// an attempt that failed elsewhere, so a neighbour that completed its end of a link is not
/// left holding a link this end dropped; a link whose peer hung up starts over.
///
/// Besides the two ring links, a world of 5 or more has partner links (recursive doubling's
/// partners that are not ring neighbours, `core::doubling::partner_positions`); the lower
/// position of each pair opens it, like the previous position opens a ring link.
///
/// Order matters to avoid a circular wait: (a) connect to the next position and to the
/// partners this rank opens, and send our hellos (the kernel's backlog accepts them); (b)
/// accept the previous position and the partners that open a link to this rank, read their
/// hellos and answer with ours and our MAC; (c) read the answers to the links we opened,
/// check their MACs and send ours; (d) read the MACs of the links we accepted. Each step
/// waits only on steps the peers take before their own blocking step.
#[derive(Debug)]
pub(crate) struct RingBuilder {
    view: View,
    rank: Rank,
    pos: usize,
    incarnation: u64,
    counts: (u64, u64),
    next: NextSide,
    prev: PrevSide,
    /// Partner links this rank opens (to higher positions): position and state.
    opens: Vec<(usize, NextSide)>,
    /// Partner links this rank accepts (from lower positions): position and state.
    accepts: Vec<(usize, PrevSide)>,
}

/// A handshake read that ran out of time (the peer may still answer in a later attempt).
fn timed_out(e: &HandshakeError) -> bool {
    matches!(e, HandshakeError::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

impl RingBuilder {
    /// Starts building the ring of `view` for `rank`.
    ///
    /// # Errors
    /// [`Error::Rendezvous`] if the view does not contain `rank`.
    pub(crate) fn new(view: View, rank: Rank, incarnation: u64, counts: (u64, u64)) -> Result<RingBuilder, Error> {
        let pos = view.members.iter().position(|m| m.rank == rank).ok_or_else(|| Error::Rendezvous {
            reason: format!("rank {rank} is not in the view of epoch {}", view.epoch),
        })?;
        let partners = crate::core::doubling::partner_positions(view.members.len(), pos);
        let opens = partners.iter().filter(|&&q| q > pos).map(|&q| (q, NextSide::Idle)).collect();
        let accepts = partners.iter().filter(|&&q| q < pos).map(|&q| (q, PrevSide::Idle)).collect();
        Ok(RingBuilder {
            view,
            rank,
            pos,
            incarnation,
            counts,
            next: NextSide::Idle,
            prev: PrevSide::Idle,
            opens,
            accepts,
        })
    }

    /// Epoch of the view being built.
    pub(crate) fn epoch(&self) -> u64 {
        self.view.epoch
    }

    fn hello(&self, role: Role, target: Rank) -> Hello {
        Hello {
            role,
            job: self.view.job,
            epoch: self.view.epoch,
            rank: self.rank as u32,
            target: target as u32,
            incarnation: self.incarnation,
            nonce: handshake::nonce(),
            completed: self.counts.0,
            next_seq: self.counts.1,
        }
    }

    /// Takes the handshakes as far as they go within `timeout`: the ring once every link is
    /// authenticated; otherwise what stopped it, and the builder keeps its progress for the
    /// next attempt.
    ///
    /// # Errors
    /// As [`establish_ring`].
    pub(crate) fn attempt(&mut self, listener: &TcpListener, timeout: Duration, secret: &[u8]) -> Result<Ring, Error> {
        let w = self.view.members.len();
        if w == 1 {
            let (view, pos) = (self.view.clone(), self.pos);
            return Ok(Ring { view, pos, counts: [None, None], prev: None, next: None, partners: Vec::new() });
        }
        self.advance(listener, Instant::now() + timeout, secret)?;
        let done = matches!(self.next, NextSide::Done { .. })
            && matches!(self.prev, PrevSide::Done { .. })
            && self.opens.iter().all(|(_, s)| matches!(s, NextSide::Done { .. }))
            && self.accepts.iter().all(|(_, s)| matches!(s, PrevSide::Done { .. }));
        if !done {
            return Err(Error::Rendezvous { reason: "ring handshake incomplete".into() });
        }
        let next = std::mem::replace(&mut self.next, NextSide::Idle);
        let prev = std::mem::replace(&mut self.prev, PrevSide::Idle);
        let (NextSide::Done { stream: n, counts: nc }, PrevSide::Done { stream: p, counts: pc }) = (next, prev) else {
            return Err(Error::Rendezvous { reason: "ring handshake incomplete".into() });
        };
        let member = |q: usize| self.view.members[q % w].clone();
        let mut partners = Vec::new();
        for (q, side) in std::mem::take(&mut self.opens) {
            if let NextSide::Done { stream, .. } = side {
                partners.push((q, stream, member(q)));
            }
        }
        for (q, side) in std::mem::take(&mut self.accepts) {
            if let PrevSide::Done { stream, .. } = side {
                partners.push((q, stream, member(q)));
            }
        }
        partners.sort_by_key(|(q, ..)| *q);
        Ok(Ring {
            view: self.view.clone(),
            pos: self.pos,
            counts: [pc, Some(nc)],
            prev: Some((p, member(self.pos + w - 1))),
            next: Some((n, member(self.pos + 1))),
            partners,
        })
    }

    /// Steps (a) to (d), each only for the links not past it yet.
    fn advance(&mut self, listener: &TcpListener, deadline: Instant, secret: &[u8]) -> Result<(), Error> {
        let w = self.view.members.len();
        let members = self.view.members.clone();
        let next = members[(self.pos + 1) % w].clone();
        let prev = members[(self.pos + w - 1) % w].clone();
        let mut expect = Vec::new();
        if matches!(self.prev, PrevSide::Idle) {
            expect.push((&prev, Role::RingPrev));
        }
        for (q, _) in self.accepts.iter().filter(|(_, s)| matches!(s, PrevSide::Idle)) {
            expect.push((&members[*q], Role::PartnerOpen));
        }
        // (a), draining this rank's own listener meanwhile (strangers queued there must not
        // stall the neighbour connecting to it)
        let mut acceptor = Acceptor::new(listener, &self.view, self.rank, &expect).map_err(io("accept", &prev))?;
        let mut side = std::mem::replace(&mut self.next, NextSide::Idle);
        let r = self.open(&mut side, &next, Role::RingPrev, deadline, &mut acceptor);
        self.next = side;
        r?;
        let mut opens = std::mem::take(&mut self.opens);
        let r = opens
            .iter_mut()
            .try_for_each(|(q, side)| self.open(side, &members[*q], Role::PartnerOpen, deadline, &mut acceptor));
        self.opens = opens;
        r?;
        // (b)
        let mut side = std::mem::replace(&mut self.prev, PrevSide::Idle);
        let r = self.answer(&mut side, (&prev, Role::RingPrev, Role::RingNext), &mut acceptor, deadline, secret);
        self.prev = side;
        r?;
        let mut accepts = std::mem::take(&mut self.accepts);
        let r = accepts.iter_mut().try_for_each(|(q, side)| {
            let roles = (&members[*q], Role::PartnerOpen, Role::PartnerAnswer);
            self.answer(side, roles, &mut acceptor, deadline, secret)
        });
        self.accepts = accepts;
        r?;
        // (c)
        finish_open(
            &mut self.next,
            (&next, Role::RingNext),
            (self.view.job, self.view.epoch, self.rank),
            deadline,
            secret,
        )?;
        for (q, side) in &mut self.opens {
            let id = (self.view.job, self.view.epoch, self.rank);
            finish_open(side, (&members[*q], Role::PartnerAnswer), id, deadline, secret)?;
        }
        // (d)
        finish_accept(&mut self.prev, &prev, deadline, secret)?;
        for (q, side) in &mut self.accepts {
            finish_accept(side, &members[*q], deadline, secret)?;
        }
        Ok(())
    }

    /// (a) for one link this rank opens: connect and send our hello with `role`.
    fn open(
        &self,
        side: &mut NextSide,
        to: &Member,
        role: Role,
        deadline: Instant,
        acceptor: &mut Acceptor<'_>,
    ) -> Result<(), Error> {
        if matches!(side, NextSide::Idle) {
            let mut stream = connect_next(to.addr, deadline, acceptor).map_err(io("connect", to))?;
            tune(&stream).map_err(io("configure", to))?;
            let hello_i = handshake::send_hello(&mut stream, &self.hello(role, to.rank)).map_err(auth(to))?;
            *side = NextSide::Sent { stream, hello_i };
        }
        Ok(())
    }

    /// (b) for one link this rank accepts: the connection of `from` whose hello has
    /// `role`, answered with our hello (`answer_role`) and our MAC.
    fn answer(
        &self,
        side: &mut PrevSide,
        (from, role, answer_role): (&Member, Role, Role),
        acceptor: &mut Acceptor<'_>,
        deadline: Instant,
        secret: &[u8],
    ) -> Result<(), Error> {
        if matches!(side, PrevSide::Idle) {
            let (mut stream, hello_i) = accept_from(acceptor, from, role, deadline)?;
            let hello_r = handshake::answer(&mut stream, secret, &hello_i, &self.hello(answer_role, from.rank))
                .map_err(auth(from))?;
            *side = PrevSide::Answered { stream, hello_i, hello_r };
        }
        Ok(())
    }
}

/// (c) for one link this rank opened: read the answer (whose hello must have `role`, come
/// from `to` and name this job, epoch and rank: `id`), check its MAC and send ours.
fn finish_open(
    side: &mut NextSide,
    (to, role): (&Member, Role),
    (job, epoch, rank): (u64, u64, Rank),
    deadline: Instant,
    secret: &[u8],
) -> Result<(), Error> {
    let NextSide::Sent { mut stream, hello_i } = std::mem::replace(side, NextSide::Idle) else {
        return Ok(());
    };
    let restore = |side: &mut NextSide, stream, hello_i| *side = NextSide::Sent { stream, hello_i };
    if let Err(e) = bound(&stream, deadline) {
        restore(side, stream, hello_i);
        return Err(io("configure", to)(e));
    }
    let (me, them) = (rank as u32, to.rank as u32);
    let r = handshake::finish_initiator(&mut stream, secret, &hello_i, |h| {
        if h.role == role && h.job == job && h.epoch == epoch && h.rank == them && h.target == me {
            Ok(())
        } else {
            Err(format!("expected {role:?} from rank {them} of job {job:#x} epoch {epoch}, got {h:?}"))
        }
    });
    match r {
        Ok(h) => {
            *side = NextSide::Done { stream, counts: (h.completed, h.next_seq) };
            Ok(())
        }
        Err(e) => {
            // Out of time: the answer may come in a later attempt. Otherwise the peer hung
            // up or failed, and the link starts over (Idle).
            if timed_out(&e) {
                restore(side, stream, hello_i);
            }
            Err(auth(to)(e))
        }
    }
}

/// (d) for one link this rank accepted: read the opener's MAC.
fn finish_accept(side: &mut PrevSide, from: &Member, deadline: Instant, secret: &[u8]) -> Result<(), Error> {
    let PrevSide::Answered { mut stream, hello_i, hello_r } = std::mem::replace(side, PrevSide::Idle) else {
        return Ok(());
    };
    if let Err(e) = bound(&stream, deadline) {
        *side = PrevSide::Answered { stream, hello_i, hello_r };
        return Err(io("configure", from)(e));
    }
    match handshake::finish_responder(&mut stream, secret, &hello_i, &hello_r) {
        Ok(()) => {
            let counts = Hello::decode(&hello_i).map(|h| (h.completed, h.next_seq)).ok();
            *side = PrevSide::Done { stream, counts };
            Ok(())
        }
        Err(e) => {
            if timed_out(&e) {
                *side = PrevSide::Answered { stream, hello_i, hello_r };
            }
            Err(auth(from)(e))
        }
    }
}

/// Makes the next handshake read on `stream` wait no longer than until `deadline`.
fn bound(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))
}

fn io(op: &'static str, m: &Member) -> impl Fn(std::io::Error) -> Error {
    let (peer, addr) = (m.rank, m.addr);
    move |source| Error::Io { op, peer, addr, source }
}

fn auth(m: &Member) -> impl Fn(HandshakeError) -> Error {
    let (peer, addr) = (m.rank, m.addr);
    move |e| match e {
        HandshakeError::Io(source) => Error::Io { op: "handshake", peer, addr, source },
        other => Error::Authentication { peer: Some(peer), addr: addr.to_string(), reason: other.to_string() },
    }
}
