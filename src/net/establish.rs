//! Opening the ring: connect to the next position, accept the previous one, and check
//! each side's hello before anything else is read.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::accept::Acceptor;
use super::handshake::{self, HandshakeError};
use crate::coord::{Member, View};
use crate::limits::{CONNECT_ATTEMPT_MIN, CONNECT_RETRY_DELAY_MAX, CONNECT_RETRY_DELAY_MIN, SOCKET_BUFFER_BYTES};
use crate::wire::hello::{Hello, Role, HELLO_LEN};
use crate::{Error, Rank};

/// An established ring: this rank's position and its two links (none when alone).
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) view: View,
    pub(crate) pos: usize,
    /// `(completed, next_seq)` each neighbour reported in its hello (`[prev, next]`).
    pub(crate) counts: [Option<(u64, u64)>; 2],
    pub(crate) prev: Option<(TcpStream, Member)>,
    pub(crate) next: Option<(TcpStream, Member)>,
}

/// Applies the socket options every ring connection gets: no Nagle delay, large buffers,
/// keepalive (a dead host is noticed even without traffic).
pub(crate) fn tune(stream: &TcpStream) -> std::io::Result<()> {
    let s = SockRef::from(stream);
    s.set_nodelay(true)?;
    s.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
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
    s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
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
        s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
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

/// Waits, reading pending hellos side by side, until the previous position has connected.
fn accept_prev(
    acceptor: &mut Acceptor<'_>,
    prev: &Member,
    deadline: Instant,
) -> Result<(TcpStream, [u8; HELLO_LEN]), Error> {
    let fail = io("accept", prev);
    loop {
        let moved = acceptor.step(Instant::now()).map_err(&fail)?;
        if let Some(found) = acceptor.take() {
            return Ok(found);
        }
        if let Some(epoch) = acceptor.superseded() {
            return Err(fail(std::io::Error::other(format!("superseded by the view of epoch {epoch}"))));
        }
        if Instant::now() >= deadline {
            return Err(fail(std::io::Error::new(std::io::ErrorKind::TimedOut, "previous rank never connected")));
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

/// The link to the next position, as far as its handshake got.
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

/// The link from the previous position, as far as its handshake got.
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
/// Order matters to avoid a circular wait: (a) connect to the next position and send our
/// hello (the kernel's backlog accepts it); (b) accept the previous position, read its hello
/// and answer with ours and our MAC; (c) read the next position's answer, check its MAC and
/// send ours; (d) read the previous position's MAC. Each step waits only on steps the
/// neighbours take before their own blocking step.
#[derive(Debug)]
pub(crate) struct RingBuilder {
    view: View,
    rank: Rank,
    pos: usize,
    incarnation: u64,
    counts: (u64, u64),
    next: NextSide,
    prev: PrevSide,
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
        Ok(RingBuilder { view, rank, pos, incarnation, counts, next: NextSide::Idle, prev: PrevSide::Idle })
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

    /// Takes the handshakes as far as they go within `timeout`: the ring once both links
    /// are authenticated; otherwise what stopped it, and the builder keeps its progress for
    /// the next attempt.
    ///
    /// # Errors
    /// As [`establish_ring`].
    pub(crate) fn attempt(&mut self, listener: &TcpListener, timeout: Duration, secret: &[u8]) -> Result<Ring, Error> {
        let w = self.view.members.len();
        if w == 1 {
            return Ok(Ring { view: self.view.clone(), pos: self.pos, counts: [None, None], prev: None, next: None });
        }
        self.advance(listener, Instant::now() + timeout, secret)?;
        let next_m = self.view.members[(self.pos + 1) % w].clone();
        let prev_m = self.view.members[(self.pos + w - 1) % w].clone();
        match (std::mem::replace(&mut self.next, NextSide::Idle), std::mem::replace(&mut self.prev, PrevSide::Idle)) {
            (NextSide::Done { stream: n, counts: nc }, PrevSide::Done { stream: p, counts: pc }) => Ok(Ring {
                view: self.view.clone(),
                pos: self.pos,
                counts: [pc, Some(nc)],
                prev: Some((p, prev_m)),
                next: Some((n, next_m)),
            }),
            (next, prev) => {
                (self.next, self.prev) = (next, prev);
                Err(Error::Rendezvous { reason: "ring handshake incomplete".into() })
            }
        }
    }

    /// Steps (a) to (d), each only if its link is not past it yet.
    fn advance(&mut self, listener: &TcpListener, deadline: Instant, secret: &[u8]) -> Result<(), Error> {
        let w = self.view.members.len();
        let next = self.view.members[(self.pos + 1) % w].clone();
        let prev = self.view.members[(self.pos + w - 1) % w].clone();
        // (a), draining this rank's own listener meanwhile (strangers queued there must not
        // stall the neighbour connecting to it)
        let mut acceptor = Acceptor::new(listener, &self.view, self.rank, &prev).map_err(io("accept", &prev))?;
        if matches!(self.next, NextSide::Idle) {
            let mut stream = connect_next(next.addr, deadline, &mut acceptor).map_err(io("connect", &next))?;
            tune(&stream).map_err(io("configure", &next))?;
            let hello_i =
                handshake::send_hello(&mut stream, &self.hello(Role::RingPrev, next.rank)).map_err(auth(&next))?;
            self.next = NextSide::Sent { stream, hello_i };
        }
        // (b)
        if matches!(self.prev, PrevSide::Idle) {
            let (mut stream, hello_i) = accept_prev(&mut acceptor, &prev, deadline)?;
            let hello_r = handshake::answer(&mut stream, secret, &hello_i, &self.hello(Role::RingNext, prev.rank))
                .map_err(auth(&prev))?;
            self.prev = PrevSide::Answered { stream, hello_i, hello_r };
        }
        // (c)
        if let NextSide::Sent { mut stream, hello_i } = std::mem::replace(&mut self.next, NextSide::Idle) {
            bound(&stream, deadline).map_err(io("configure", &next))?;
            let (job, epoch, me, them) = (self.view.job, self.view.epoch, self.rank as u32, next.rank as u32);
            let r = handshake::finish_initiator(&mut stream, secret, &hello_i, |h| {
                if h.role == Role::RingNext && h.job == job && h.epoch == epoch && h.rank == them && h.target == me {
                    Ok(())
                } else {
                    Err(format!("expected rank {them} of job {job:#x} epoch {epoch}, got {h:?}"))
                }
            });
            match r {
                Ok(h) => self.next = NextSide::Done { stream, counts: (h.completed, h.next_seq) },
                Err(e) => {
                    // Out of time: the answer may come in a later attempt. Otherwise the peer
                    // hung up or failed, and the link starts over (Idle).
                    if timed_out(&e) {
                        self.next = NextSide::Sent { stream, hello_i };
                    }
                    return Err(auth(&next)(e));
                }
            }
        }
        // (d)
        if let PrevSide::Answered { mut stream, hello_i, hello_r } = std::mem::replace(&mut self.prev, PrevSide::Idle) {
            bound(&stream, deadline).map_err(io("configure", &prev))?;
            match handshake::finish_responder(&mut stream, secret, &hello_i, &hello_r) {
                Ok(()) => {
                    let counts = Hello::decode(&hello_i).map(|h| (h.completed, h.next_seq)).ok();
                    self.prev = PrevSide::Done { stream, counts };
                }
                Err(e) => {
                    if timed_out(&e) {
                        self.prev = PrevSide::Answered { stream, hello_i, hello_r };
                    }
                    return Err(auth(&prev)(e));
                }
            }
        }
        Ok(())
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
