//! The ring listener's side of building a ring: connections are accepted as they come and
//! their hellos read side by side, so strangers cannot hold the real neighbour back.
//!
//! Between rebuilds nobody accepts on the listener, so whatever strangers sent meanwhile (a
//! full backlog of dead or silent connections) is waiting here when a rebuild starts. An
//! [`Acceptor`] drains it while this rank is still connecting to its own next neighbour, so
//! no rank waits on a backlog that its neighbour only empties after its own connect: every
//! rank's connect would otherwise wait on a SYN dropped by a full queue.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use super::establish::tune;
use crate::coord::{Member, View};
use crate::limits::{HANDSHAKE_TIMEOUT, PENDING_CONNECTIONS_MAX};
use crate::wire::hello::{Hello, Role, HELLO_LEN};
use crate::Rank;

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

/// Waits for the expected connections on the ring listener: the previous position's, and
/// those of the partners that open a partner link to this rank.
///
/// Anything else (a stranger, another job, a garbled, slow or silent client) is closed and
/// logged, rate-limited. Each pending connection gets [`HANDSHAKE_TIMEOUT`] for its hello, and
/// at most [`PENDING_CONNECTIONS_MAX`] wait at once: the oldest is dropped for a newcomer (a
/// genuine neighbour sends its hello as soon as it connects, so it is never the oldest for
/// long).
pub(super) struct Acceptor<'a> {
    listener: &'a TcpListener,
    pending: Vec<Pending>,
    rejected: usize,
    job: u64,
    epoch: u64,
    rank: u32,
    /// The (rank, role) of every connection still expected.
    expect: Vec<(u32, Role)>,
    /// Expected connections found and not yet taken: rank, role, connection, hello.
    found: Vec<(u32, Role, TcpStream, [u8; HELLO_LEN])>,
    /// A newer epoch a neighbour of this job already connects in: this view is superseded.
    newer: Option<u64>,
}

impl<'a> Acceptor<'a> {
    /// Starts accepting for `rank` in `view` the connections `expect` names: each
    /// member's, with the role its hello must carry.
    ///
    /// # Errors
    /// The OS error if the listener cannot be made non-blocking.
    pub(super) fn new(
        listener: &'a TcpListener,
        view: &View,
        rank: Rank,
        expect: &[(&Member, Role)],
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Acceptor {
            listener,
            pending: Vec::new(),
            rejected: 0,
            job: view.job,
            epoch: view.epoch,
            rank: rank as u32,
            expect: expect.iter().map(|(m, role)| (m.rank as u32, *role)).collect(),
            found: Vec::new(),
            newer: None,
        })
    }

    /// A newer epoch a neighbour already connects in, if one was seen: the view being built
    /// is superseded, and its coordinator message is on its way.
    pub(super) fn superseded(&self) -> Option<u64> {
        self.newer
    }

    /// The connection of `from` with `role` (blocking again, tuned) and its hello, if found.
    pub(super) fn take(&mut self, from: &Member, role: Role) -> Option<(TcpStream, [u8; HELLO_LEN])> {
        let i = self.found.iter().position(|(r, ro, ..)| (*r, *ro) == (from.rank as u32, role))?;
        let (.., stream, hello) = self.found.swap_remove(i);
        Some((stream, hello))
    }

    /// Accepts what the listener holds and reads what arrived of each pending hello, without
    /// blocking. Returns true if anything moved (so the caller need not sleep).
    ///
    /// # Errors
    /// The OS error if accepting fails for another reason than an empty queue, or the found
    /// connection cannot be made blocking again.
    pub(super) fn step(&mut self, now: Instant) -> std::io::Result<bool> {
        if self.expect.is_empty() {
            return Ok(false);
        }
        let mut moved = self.accept_all()?;
        let mut i = 0;
        while i < self.pending.len() {
            let filled = self.pending[i].filled;
            match self.pending[i].poll(now) {
                Ok(false) => {
                    moved |= self.pending[i].filled > filled;
                    i += 1;
                }
                Ok(true) => {
                    moved = true;
                    let p = self.pending.swap_remove(i);
                    match Hello::decode(&p.hello) {
                        Ok(h) if self.expected(&h) => {
                            p.stream.set_nonblocking(false)?;
                            tune(&p.stream)?;
                            self.expect.retain(|&e| e != (h.rank, h.role));
                            self.found.push((h.rank, h.role, p.stream, p.hello));
                            if self.expect.is_empty() {
                                return Ok(true);
                            }
                        }
                        Ok(h) if h.job == self.job && h.epoch > self.epoch => {
                            self.newer = self.newer.max(Some(h.epoch));
                            self.refuse(p.from, &format!("a hello of the newer epoch {}", h.epoch));
                        }
                        other => self.refuse(p.from, &other),
                    }
                }
                Err(why) => {
                    let p = self.pending.swap_remove(i);
                    self.refuse(p.from, &why);
                }
            }
        }
        Ok(moved)
    }

    fn accept_all(&mut self) -> std::io::Result<bool> {
        let mut moved = false;
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    moved = true;
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.pending.len() >= PENDING_CONNECTIONS_MAX {
                        let oldest = self.pending.remove(0);
                        self.refuse(oldest.from, &"too many connections waiting for their hello");
                    }
                    self.pending.push(Pending {
                        stream,
                        from,
                        hello: [0; HELLO_LEN],
                        filled: 0,
                        opened: Instant::now(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn expected(&self, h: &Hello) -> bool {
        self.expect.contains(&(h.rank, h.role)) && h.job == self.job && h.epoch == self.epoch && h.target == self.rank
    }

    fn refuse(&mut self, from: SocketAddr, why: &dyn std::fmt::Debug) {
        self.rejected += 1;
        if self.rejected <= 8 || self.rejected.is_power_of_two() {
            let expected: Vec<u32> = self.expect.iter().map(|e| e.0).collect();
            tracing::warn!(%from, rejected = self.rejected, "refused a ring connection that is not from rank(s) {expected:?}: {why:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;

    fn member(rank: Rank) -> Member {
        Member { rank, addr: "127.0.0.1:1".parse().expect("addr"), host: "h".into() }
    }

    fn hello(role: Role, rank: u32, target: u32, epoch: u64) -> [u8; HELLO_LEN] {
        Hello { role, job: 7, epoch, rank, target, incarnation: 0, nonce: [0; 16], completed: 0, next_seq: 0 }.encode()
    }

    /// Only the partner link this rank expects is taken: a partner hello from another rank,
    /// with another role, for another epoch or meant for another rank is refused (its
    /// connection closed), and a ring hello is not mistaken for a partner's.
    #[test]
    fn only_the_expected_partner_hello_is_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = listener.local_addr().expect("addr");
        let view = View {
            job: 7,
            epoch: 3,
            world_size: 8,
            members: (0..8).map(member).collect(),
            start_seq: None,
            joined: Vec::new(),
        };
        // Rank 5 accepts a partner link from rank 2 (positions 2 and 5 of eight pair up).
        let partner = member(2);
        let mut acceptor = Acceptor::new(&listener, &view, 5, &[(&partner, Role::PartnerOpen)]).expect("acceptor");
        let wrong = [
            hello(Role::PartnerOpen, 3, 5, 3),   // a rank that is not the partner
            hello(Role::RingPrev, 2, 5, 3),      // the partner, but as a ring neighbour
            hello(Role::PartnerAnswer, 2, 5, 3), // an answer where an opening belongs
            hello(Role::PartnerOpen, 2, 5, 2),   // an older epoch
            hello(Role::PartnerOpen, 2, 4, 3),   // meant for another rank
        ];
        let mut strangers: Vec<TcpStream> = wrong
            .iter()
            .map(|h| {
                let mut s = TcpStream::connect(at).expect("connect");
                s.write_all(h).expect("hello");
                s
            })
            .collect();
        // Every stranger is refused (its connection closed, never kept) ...
        let deadline = Instant::now() + Duration::from_secs(10);
        while acceptor.rejected < wrong.len() {
            acceptor.step(Instant::now()).expect("step");
            assert!(Instant::now() < deadline, "only {} of {} strangers refused", acceptor.rejected, wrong.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(acceptor.take(&partner, Role::PartnerOpen).is_none(), "a stranger was taken for the partner");
        for s in &mut strangers {
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut b = [0u8; 1];
            assert!(matches!(std::io::Read::read(s, &mut b), Ok(0) | Err(_)), "a stranger's connection stayed open");
        }
        // ... and the partner's own connection is taken, once.
        let mut genuine = TcpStream::connect(at).expect("connect");
        genuine.write_all(&hello(Role::PartnerOpen, 2, 5, 3)).expect("hello");
        let found = loop {
            acceptor.step(Instant::now()).expect("step");
            if let Some(found) = acceptor.take(&partner, Role::PartnerOpen) {
                break found;
            }
            assert!(Instant::now() < deadline, "the partner's connection was never taken");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(Hello::decode(&found.1).expect("hello").rank, 2);
        assert!(acceptor.take(&partner, Role::PartnerOpen).is_none(), "taken once");
    }
}
