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
        if Instant::now() >= deadline {
            return Err(fail(std::io::Error::new(std::io::ErrorKind::TimedOut, "previous rank never connected")));
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Connects this rank into the ring described by `view`, authenticating both links.
///
/// Order matters to avoid a circular wait: (a) connect to the next position and send our
/// hello (the kernel's backlog accepts it, and this rank drains its own backlog meanwhile, so
/// strangers queued there cannot stall the neighbour connecting to it); (b) accept the
/// previous position, read its hello and answer with ours and our MAC; (c) read the next
/// position's answer, check its MAC and send ours; (d) read the previous position's MAC.
/// Each step waits only on steps the neighbours take before their own blocking step.
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
    let w = view.members.len();
    let pos = view.members.iter().position(|m| m.rank == rank).ok_or_else(|| Error::Rendezvous {
        reason: format!("rank {rank} is not in the view of epoch {}", view.epoch),
    })?;
    if w == 1 {
        return Ok(Ring { view, pos, counts: [None, None], prev: None, next: None });
    }
    let deadline = Instant::now() + timeout;
    let next = view.members[(pos + 1) % w].clone();
    let prev = view.members[(pos + w - 1) % w].clone();
    let hello = |role: Role, target: Rank| Hello {
        role,
        job: view.job,
        epoch: view.epoch,
        rank: rank as u32,
        target: target as u32,
        incarnation,
        nonce: handshake::nonce(),
        completed: counts.0,
        next_seq: counts.1,
    };

    // (a), draining this rank's own listener meanwhile
    let mut acceptor = Acceptor::new(listener, &view, rank, &prev).map_err(io("accept", &prev))?;
    let mut next_stream = connect_next(next.addr, deadline, &mut acceptor).map_err(io("connect", &next))?;
    tune(&next_stream).map_err(io("configure", &next))?;
    let hello_i = handshake::send_hello(&mut next_stream, &hello(Role::RingPrev, next.rank)).map_err(auth(&next))?;
    // (b)
    let (mut prev_stream, prev_hello_i) = accept_prev(&mut acceptor, &prev, deadline)?;
    let prev_counts = Hello::decode(&prev_hello_i).map(|h| (h.completed, h.next_seq)).ok();
    let prev_hello_r = handshake::answer(&mut prev_stream, secret, &prev_hello_i, &hello(Role::RingNext, prev.rank))
        .map_err(auth(&prev))?;
    // (c)
    let (job, epoch, me, them) = (view.job, view.epoch, rank as u32, next.rank as u32);
    let next_hello = handshake::finish_initiator(&mut next_stream, secret, &hello_i, |h| {
        if h.role == Role::RingNext && h.job == job && h.epoch == epoch && h.rank == them && h.target == me {
            Ok(())
        } else {
            Err(format!("expected rank {them} of job {job:#x} epoch {epoch}, got {h:?}"))
        }
    })
    .map_err(auth(&next))?;
    // (d)
    handshake::finish_responder(&mut prev_stream, secret, &prev_hello_i, &prev_hello_r).map_err(auth(&prev))?;
    Ok(Ring {
        view,
        pos,
        counts: [prev_counts, Some((next_hello.completed, next_hello.next_seq))],
        prev: Some((prev_stream, prev)),
        next: Some((next_stream, next)),
    })
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
