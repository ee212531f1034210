//! The rank's side of the coordinator protocol.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{Registration, View};
use crate::limits::{CONNECT_RETRY_DELAY_MAX, CONNECT_RETRY_DELAY_MIN, CONTROL_BYTES_MAX};
use crate::net::handshake::{self, HandshakeError};
use crate::wire::control::{Control, Refusal, CONTROL_HEAD_LEN};
use crate::wire::hello::{Hello, Role};
use crate::Error;
use crate::Rank;

/// An open session with the coordinator.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: String,
}

impl Client {
    /// Connects to the coordinator, retrying with backoff until `connect_timeout` (the
    /// coordinator may start after the ranks), and runs the mutual handshake.
    ///
    /// # Errors
    /// [`Error::CoordinatorUnreachable`] with the last connection error;
    /// [`Error::Authentication`] if the coordinator does not prove the same secret.
    pub fn connect(coordinator: &str, connect_timeout: Duration, secret: &[u8], rank: Rank) -> Result<Client, Error> {
        let started = Instant::now();
        let deadline = started + connect_timeout;
        let mut delay = CONNECT_RETRY_DELAY_MIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            let attempt = coordinator.to_socket_addrs().and_then(|mut addrs| {
                let addr: SocketAddr = addrs.next().ok_or_else(|| std::io::Error::other("resolves to no address"))?;
                TcpStream::connect_timeout(&addr, left)
            });
            match attempt {
                Ok(mut stream) => {
                    let _ = stream.set_nodelay(true);
                    authenticate(&mut stream, secret, rank).map_err(|e| match e {
                        HandshakeError::Io(source) => Error::CoordinatorUnreachable {
                            addr: coordinator.into(),
                            waited: started.elapsed(),
                            source,
                        },
                        other => {
                            Error::Authentication { peer: None, addr: coordinator.into(), reason: other.to_string() }
                        }
                    })?;
                    return Ok(Client { stream, addr: coordinator.into() });
                }
                Err(e) if Instant::now() + delay >= deadline => {
                    return Err(Error::CoordinatorUnreachable {
                        addr: coordinator.into(),
                        waited: started.elapsed(),
                        source: e,
                    });
                }
                Err(_) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(CONNECT_RETRY_DELAY_MAX);
                }
            }
        }
    }

    /// The local address of the connection: the interface that routes to the
    /// coordinator, where this rank should listen for its peers.
    ///
    /// # Errors
    /// The OS error if the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Registers and waits for the first view.
    ///
    /// # Errors
    /// [`Error::ConfigMismatch`] or [`Error::Rendezvous`] as the coordinator reports, or
    /// [`Error::Rendezvous`] if no view arrives within `rendezvous_timeout` or the
    /// coordinator closes the connection.
    pub fn register(&mut self, registration: &Registration, rendezvous_timeout: Duration) -> Result<View, Error> {
        let lost = |what: String| Error::Rendezvous { reason: what };
        self.stream
            .write_all(&Control::Register(registration.clone()).encode())
            .map_err(|e| lost(format!("sending registration to the coordinator at {}: {e}", self.addr)))?;
        let deadline = Instant::now() + rendezvous_timeout;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match Control::decode(&buf) {
                Ok(Some((msg, _))) => return self.answer(msg, registration),
                Ok(None) => {}
                Err(e) => return Err(lost(format!("coordinator at {} sent a bad message: {e}", self.addr))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(lost(format!(
                    "no view from the coordinator at {} within {rendezvous_timeout:?}",
                    self.addr
                )));
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| lost(format!("socket: {e}")))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(lost(format!("coordinator at {} closed the connection", self.addr))),
                Ok(n) => {
                    if buf.len() + n > CONTROL_HEAD_LEN + CONTROL_BYTES_MAX {
                        return Err(lost("coordinator sent an oversized message".into()));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(format!("reading from the coordinator at {}: {e}", self.addr))),
            }
        }
    }

    fn answer(&mut self, msg: Control, registration: &Registration) -> Result<View, Error> {
        match msg {
            Control::View(view) => {
                let _ = self.stream.set_read_timeout(None);
                Ok(view)
            }
            Control::Refused(Refusal::ConfigMismatch { field, rank, value, other_rank, other_value }) => {
                Err(Error::ConfigMismatch {
                    field,
                    rank: rank as usize,
                    local: value,
                    other_rank: other_rank as usize,
                    remote: other_value,
                })
            }
            Control::Refused(Refusal::Rendezvous { reason }) => Err(Error::Rendezvous { reason }),
            other => Err(Error::Rendezvous {
                reason: format!("rank {}: unexpected answer from the coordinator: {other:?}", registration.rank),
            }),
        }
    }

    /// The underlying connection (the event loop watches it).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// The rank's side of the handshake with the coordinator (job 0: the coordinator assigns it).
fn authenticate(stream: &mut TcpStream, secret: &[u8], rank: Rank) -> Result<(), HandshakeError> {
    let mine = Hello {
        role: Role::Rank,
        job: 0,
        epoch: 0,
        rank: rank as u32,
        target: u32::MAX,
        incarnation: 0,
        nonce: handshake::nonce(),
        completed: 0,
        next_seq: 0,
    };
    let hello_i = handshake::send_hello(stream, &mine)?;
    handshake::finish_initiator(stream, secret, &hello_i, |h| {
        if h.role == Role::Coordinator {
            Ok(())
        } else {
            Err(format!("expected the coordinator, got {h:?}"))
        }
    })?;
    Ok(())
}
