//! The coordinator's connections: accepting them (bounded), the mutual handshake before
//! anything else is read, framed reads and writes of control messages, and closing.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::{Interest, Token};

use super::{Auth, Conn, Phase, State};
use crate::limits::{CONTROL_BYTES_MAX, PENDING_CONNECTIONS_MAX};
use crate::net::handshake;
use crate::wire::auth::{self, Side, MAC_LEN};
use crate::wire::control::{Control, CONTROL_HEAD_LEN};
use crate::wire::hello::{Hello, Role, HELLO_LEN};

impl State {
    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let cap = self.options.world_size + PENDING_CONNECTIONS_MAX;
                    if self.conns.len() >= cap {
                        tracing::warn!(%peer, "coordinator refuses a connection: {cap} already open");
                        continue;
                    }
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = Conn {
                        stream,
                        auth: Auth::AwaitHello,
                        peer,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        rank: None,
                        opened: Instant::now(),
                        left: false,
                    };
                    self.conns.insert(token, conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("coordinator accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what a connection sent, handles whole messages, writes pending output.
    pub(super) fn service(&mut self, token: Token) {
        let mut closed = false;
        if let Some(c) = self.conns.get_mut(&token) {
            let mut buf = [0u8; 8192];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        if c.inbuf.len() + n > CONTROL_HEAD_LEN + CONTROL_BYTES_MAX {
                            tracing::warn!(peer = %c.peer, "coordinator closes a connection that sent too much");
                            closed = true;
                            break;
                        }
                        c.inbuf.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        // Messages that arrived before the end of stream still count: a rank's last words
        // are often its Leave, read in the same pass as the close.
        let eof = closed;
        if !closed && !self.authenticate(token) {
            closed = true;
        }
        loop {
            let Some(c) = self.conns.get_mut(&token) else { return };
            if !matches!(c.auth, Auth::Done) || (closed && !eof) {
                break;
            }
            match Control::decode(&c.inbuf) {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    c.inbuf.drain(..used);
                    self.handle(token, msg);
                }
                Err(e) => {
                    tracing::warn!(peer = %c.peer, "coordinator closes a connection: {e}");
                    closed = true;
                    break;
                }
            }
        }
        self.flush(token);
        if closed {
            self.close(token);
        }
    }

    /// Advances the handshake with the bytes received so far. Returns false if the
    /// connection must be closed (it failed the handshake).
    pub(super) fn authenticate(&mut self, token: Token) -> bool {
        let secret = self.options.secret.clone();
        let Some(c) = self.conns.get_mut(&token) else { return true };
        loop {
            match &c.auth {
                Auth::Done => return true,
                Auth::AwaitHello => {
                    if c.inbuf.len() < HELLO_LEN {
                        return true;
                    }
                    let mut hello_i = [0u8; HELLO_LEN];
                    hello_i.copy_from_slice(&c.inbuf[..HELLO_LEN]);
                    c.inbuf.drain(..HELLO_LEN);
                    let ok = Hello::decode(&hello_i)
                        .map(|h| h.role == Role::Rank && (h.job == 0 || h.job == self.options.job));
                    if ok != Ok(true) {
                        let peer = c.peer;
                        self.refuse_connection(peer, &format!("bad hello: {ok:?}"));
                        return false;
                    }
                    let mine = Hello {
                        role: Role::Coordinator,
                        job: self.options.job,
                        epoch: 0,
                        rank: u32::MAX,
                        target: u32::MAX,
                        incarnation: 0,
                        nonce: handshake::nonce(),
                        completed: 0,
                        next_seq: 0,
                    };
                    let hello_r = mine.encode();
                    c.outbuf.extend_from_slice(&hello_r);
                    c.outbuf.extend_from_slice(&auth::mac(&secret, Side::Responder, &hello_i, &hello_r));
                    c.auth = Auth::AwaitMac { hello_i, hello_r };
                }
                Auth::AwaitMac { hello_i, hello_r } => {
                    if c.inbuf.len() < MAC_LEN {
                        return true;
                    }
                    let good = auth::verify(&secret, Side::Initiator, hello_i, hello_r, &c.inbuf[..MAC_LEN]);
                    c.inbuf.drain(..MAC_LEN);
                    if !good {
                        let peer = c.peer;
                        self.refuse_connection(peer, "authentication failed (wrong secret or replayed handshake)");
                        return false;
                    }
                    c.auth = Auth::Done;
                }
            }
        }
    }

    pub(super) fn refuse_connection(&mut self, peer: SocketAddr, why: &str) {
        self.refused += 1;
        if self.refused <= 8 || self.refused.is_power_of_two() {
            tracing::warn!(%peer, refused = self.refused, "coordinator refused a connection: {why}");
        }
    }

    pub(super) fn send(&mut self, token: Token, msg: &Control) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.outbuf.extend_from_slice(&msg.encode());
        }
        self.flush(token);
    }

    pub(super) fn flush(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        while !c.outbuf.is_empty() {
            match c.stream.write(&c.outbuf) {
                Ok(0) => return,
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    pub(super) fn close(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if let Some(rank) = c.rank {
                if matches!(self.phase, Phase::Rendezvous) {
                    // A rank that gave up during rendezvous may come back.
                    if self.registered.get(&rank).is_some_and(|(t, _)| *t == token) {
                        self.registered.remove(&rank);
                    }
                } else if self.registered.get(&rank).is_some_and(|(t, _)| *t != token) {
                    // A replaced incarnation: the rank's current process is another one.
                } else if let Phase::Running(m) = &mut self.phase {
                    if !c.left {
                        tracing::warn!(rank, peer = %c.peer, "rank disconnected from the coordinator");
                    }
                    m.handle_disconnect(rank, Instant::now());
                }
            }
        }
    }
}
