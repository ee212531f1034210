//! The coordinator: rendezvous and membership authority, server and client.
//!
//! `ringrun` hosts the server; without a launcher, rank 0 runs it in a background thread.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::{Error, Rank};

/// One member of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its rank.
    pub rank: Rank,
    /// Where it listens for ring connections.
    pub addr: SocketAddr,
    /// Host name it reported (ranks of one host are adjacent in the ring).
    pub host: String,
}

/// A membership view handed out by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Job id.
    pub job: u64,
    /// View number; grows with every change.
    pub epoch: u64,
    /// World size the job was started with.
    pub world_size: usize,
    /// Members in ring order.
    pub members: Vec<Member>,
}

/// What a rank tells the coordinator at rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its rank.
    pub rank: Rank,
    /// The world size it was started with.
    pub world_size: usize,
    /// Incarnation of this process (grows when a rank restarts).
    pub incarnation: u64,
    /// Where it listens for ring connections.
    pub listen: SocketAddr,
    /// Its host name.
    pub host: String,
    /// Config fields every rank must agree on.
    pub fingerprint: Vec<(String, String)>,
}

/// Settings of a coordinator server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Ranks expected.
    pub world_size: usize,
    /// Job id.
    pub job: u64,
    /// How long to wait for every rank to register.
    pub rendezvous_timeout: Duration,
}

/// A running coordinator (a background thread). Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
}

impl Server {
    /// Starts serving on `listener`.
    ///
    /// # Errors
    /// An I/O error if the listener cannot be set up or the thread cannot start.
    pub fn start(listener: TcpListener, options: ServerOptions) -> std::io::Result<Server> {
        let _ = options;
        Ok(Server { addr: listener.local_addr()? })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// An open session with the coordinator.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    addr: String,
}

impl Client {
    /// Connects to the coordinator, retrying with backoff until `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::CoordinatorUnreachable`] with the last connection error.
    pub fn connect(coordinator: &str, connect_timeout: Duration) -> Result<Client, Error> {
        let _ = connect_timeout;
        let stream = TcpStream::connect(coordinator).map_err(|e| Error::CoordinatorUnreachable {
            addr: coordinator.into(),
            waited: Duration::ZERO,
            source: e,
        })?;
        Ok(Client { stream, addr: coordinator.into() })
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
    /// [`Error::Rendezvous`] if no view arrives within `rendezvous_timeout`.
    pub fn register(&mut self, registration: &Registration, rendezvous_timeout: Duration) -> Result<View, Error> {
        let _ = (registration, rendezvous_timeout, &self.addr);
        Err(Error::Rendezvous { reason: "not built".into() })
    }

    /// The underlying connection (the event loop watches it).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
