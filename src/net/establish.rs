//! Opening the ring: connect to the next position, accept the previous one, and check
//! each side's hello before anything else is read.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::handshake::{self, HandshakeError};
use crate::coord::{Member, View};
use crate::limits::{
    CONNECT_RETRY_DELAY_MAX, CONNECT_RETRY_DELAY_MIN, HANDSHAKE_TIMEOUT, PENDING_CONNECTIONS_MAX, SOCKET_BUFFER_BYTES,
};
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

fn connect_with_retry(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut delay = CONNECT_RETRY_DELAY_MIN;
    loop {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match s.connect_timeout(&addr.into(), left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(s.into()),
            Err(e) if Instant::now() + delay >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(CONNECT_RETRY_DELAY_MAX);
            }
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
        // (a)
        if matches!(self.next, NextSide::Idle) {
            let mut stream = connect_with_retry(next.addr, deadline).map_err(io("connect", &next))?;
            tune(&stream).map_err(io("configure", &next))?;
            let hello_i =
                handshake::send_hello(&mut stream, &self.hello(Role::RingPrev, next.rank)).map_err(auth(&next))?;
            self.next = NextSide::Sent { stream, hello_i };
        }
        // (b)
        if matches!(self.prev, PrevSide::Idle) {
            let (mut stream, hello_i) = accept_prev(listener, &self.view, self.rank, &prev, deadline)?;
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

/// A connection accepted while waiting for the previous position, whose hello is not yet
/// complete.
struct Pending {
    stream: TcpStream,
    from: SocketAddr,
    hello: [u8; HELLO_LEN],
    filled: usize,
    opened: Instant,
}

impl Pending {
    /// Reads what arrived of the hello (never past its fixed size). `Ok(true)` once it is
    /// complete; an error (to log) if the connection closed, failed or ran out of time.
    fn poll(&mut self, now: Instant) -> Result<bool, String> {
        match self.stream.read(&mut self.hello[self.filled..]) {
            Ok(0) => return Err("closed before its hello".into()),
            Ok(n) => self.filled += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e.to_string()),
        }
        if self.filled == HELLO_LEN {
            Ok(true)
        } else if now.duration_since(self.opened) > HANDSHAKE_TIMEOUT {
            Err(format!("no complete hello within {HANDSHAKE_TIMEOUT:?}"))
        } else {
            Ok(false)
        }
    }
}

/// Accepts connections until one carries the previous position's hello; anything else (a
/// stranger, another job, a garbled, slow or silent client) is closed and logged,
/// rate-limited.
///
/// Hellos are read from every pending connection side by side (non-blocking, fixed size),
/// so silent strangers cannot hold the real neighbour back: each gets
/// [`HANDSHAKE_TIMEOUT`], and at most [`PENDING_CONNECTIONS_MAX`] wait at once (the oldest
/// is dropped for a newcomer; a genuine neighbour sends its hello as soon as it connects).
fn accept_prev(
    listener: &TcpListener,
    view: &View,
    rank: Rank,
    prev: &Member,
    deadline: Instant,
) -> Result<(TcpStream, [u8; HELLO_LEN]), Error> {
    let fail = |source: std::io::Error| Error::Io { op: "accept", peer: prev.rank, addr: prev.addr, source };
    listener.set_nonblocking(true).map_err(fail)?;
    let mut pending: Vec<Pending> = Vec::new();
    let mut rejected = 0usize;
    let mut refuse = |from: SocketAddr, why: &dyn std::fmt::Debug| {
        rejected += 1;
        if rejected <= 8 || rejected.is_power_of_two() {
            tracing::warn!(%from, rejected, "refused a ring connection that is not from rank {}: {why:?}", prev.rank);
        }
    };
    let expected = |h: &Hello| {
        h.role == Role::RingPrev
            && h.job == view.job
            && h.epoch == view.epoch
            && h.rank == prev.rank as u32
            && h.target == rank as u32
    };
    loop {
        let mut progressed = false;
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    progressed = true;
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if pending.len() >= PENDING_CONNECTIONS_MAX {
                        refuse(pending.remove(0).from, &"too many connections waiting for their hello");
                    }
                    pending.push(Pending { stream, from, hello: [0; HELLO_LEN], filled: 0, opened: Instant::now() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(e)),
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let filled = pending[i].filled;
            match pending[i].poll(now) {
                Ok(false) => {
                    progressed |= pending[i].filled > filled;
                    i += 1;
                }
                Ok(true) => {
                    let p = pending.swap_remove(i);
                    match Hello::decode(&p.hello) {
                        Ok(h) if expected(&h) => {
                            p.stream.set_nonblocking(false).map_err(fail)?;
                            tune(&p.stream).map_err(fail)?;
                            return Ok((p.stream, p.hello));
                        }
                        Ok(h) if h.job == view.job && h.epoch > view.epoch => {
                            // A neighbour already runs a newer view: this one is superseded.
                            return Err(fail(std::io::Error::other(format!(
                                "view of epoch {} superseded by epoch {}",
                                view.epoch, h.epoch
                            ))));
                        }
                        other => refuse(p.from, &other),
                    }
                }
                Err(why) => refuse(pending.swap_remove(i).from, &why),
            }
        }
        if Instant::now() >= deadline {
            return Err(fail(std::io::Error::new(std::io::ErrorKind::TimedOut, "previous rank never connected")));
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
