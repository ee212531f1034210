//! Opening the ring: connect to the next position, accept the previous one, and check
//! each side's hello before anything else is read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::coord::{Member, View};
use crate::limits::{CONNECT_RETRY_DELAY_MAX, CONNECT_RETRY_DELAY_MIN, HANDSHAKE_TIMEOUT, SOCKET_BUFFER_BYTES};
use crate::wire::hello::{Hello, Role, HELLO_LEN};
use crate::{Error, Rank};

/// An established ring: this rank's position and its two links (none when alone).
#[derive(Debug)]
pub(crate) struct Ring {
    pub(crate) view: View,
    pub(crate) pos: usize,
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

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // A failing OS RNG only weakens the (future) replay protection; the ring still works.
    let _ = getrandom::getrandom(&mut n);
    n
}

fn read_hello(stream: &mut TcpStream) -> std::io::Result<Hello> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut b = [0u8; HELLO_LEN];
    stream.read_exact(&mut b)?;
    Hello::decode(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Connects this rank into the ring described by `view`.
///
/// Order matters to avoid a circular wait: connect to the next position and send the
/// hello (the kernel's backlog accepts it), then accept and answer the previous position,
/// then read the next position's answer.
///
/// # Errors
/// [`Error::Io`] naming the neighbour that could not be reached or answered wrongly, or
/// [`Error::Rendezvous`] if the view does not contain this rank.
pub(crate) fn establish_ring(
    view: View,
    rank: Rank,
    incarnation: u64,
    listener: &TcpListener,
    timeout: Duration,
) -> Result<Ring, Error> {
    let w = view.members.len();
    let pos = view.members.iter().position(|m| m.rank == rank).ok_or_else(|| Error::Rendezvous {
        reason: format!("rank {rank} is not in the view of epoch {}", view.epoch),
    })?;
    if w == 1 {
        return Ok(Ring { view, pos, prev: None, next: None });
    }
    let deadline = Instant::now() + timeout;
    let next = view.members[(pos + 1) % w].clone();
    let prev = view.members[(pos + w - 1) % w].clone();
    fn io(op: &'static str, m: &Member) -> impl Fn(std::io::Error) -> Error {
        let (peer, addr) = (m.rank, m.addr);
        move |source| Error::Io { op, peer, addr, source }
    }
    let hello = |target: Rank| Hello {
        role: Role::RingPrev,
        job: view.job,
        epoch: view.epoch,
        rank: rank as u32,
        target: target as u32,
        incarnation,
        nonce: nonce(),
    };

    let mut next_stream = connect_with_retry(next.addr, deadline).map_err(io("connect", &next))?;
    tune(&next_stream).map_err(io("configure", &next))?;
    next_stream.write_all(&hello(next.rank).encode()).map_err(io("write hello", &next))?;

    let mut prev_stream = accept_prev(listener, &view, rank, &prev, deadline)?;
    prev_stream.write_all(&hello(prev.rank).encode()).map_err(io("write hello", &prev))?;

    let answer = read_hello(&mut next_stream).map_err(io("read hello", &next))?;
    if answer.job != view.job
        || answer.epoch != view.epoch
        || answer.rank != next.rank as u32
        || answer.target != rank as u32
    {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected hello {answer:?}"));
        return Err(io("read hello", &next)(e));
    }
    for s in [&next_stream, &prev_stream] {
        s.set_read_timeout(None).map_err(io("configure", &next))?;
    }
    Ok(Ring { view, pos, prev: Some((prev_stream, prev)), next: Some((next_stream, next)) })
}

/// Accepts connections until the previous position's hello arrives; anything else (a
/// stranger, another job, a garbled hello) is closed and logged.
fn accept_prev(
    listener: &TcpListener,
    view: &View,
    rank: Rank,
    prev: &Member,
    deadline: Instant,
) -> Result<TcpStream, Error> {
    let fail = |source: std::io::Error| Error::Io { op: "accept", peer: prev.rank, addr: prev.addr, source };
    listener.set_nonblocking(true).map_err(fail)?;
    let mut rejected = 0usize;
    loop {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(fail)?;
                match read_hello(&mut s) {
                    Ok(h)
                        if h.job == view.job
                            && h.epoch == view.epoch
                            && h.rank == prev.rank as u32
                            && h.target == rank as u32 =>
                    {
                        tune(&s).map_err(fail)?;
                        return Ok(s);
                    }
                    other => {
                        rejected += 1;
                        if rejected <= 8 {
                            tracing::warn!(%from, ?other, "refused a ring connection that is not from rank {}", prev.rank);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(fail(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "previous rank never connected",
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(fail(e)),
        }
    }
}
