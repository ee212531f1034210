//! The communicator: connects a rank into the ring and runs collectives on it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::stats::Stats;
use super::straggler::{read_windows, Detector, WINDOW_SLOTS};
use super::{Config, Error, Report, Work};
use crate::coord::{Client, Registration, Server, ServerOptions};
use crate::core::collective::Algorithm;
use crate::core::schedule::chunk_range;
use crate::core::{DataType, Element, ReduceOp};
use crate::net::{establish_ring, Driver, Job, JobBuf, JobOutcome, JobSpec, Shared};
use crate::wire::CollKind;
use crate::Rank;
use std::sync::Arc;

/// One rank's endpoint in the ring. `Send + Sync`: calls from several threads are queued
/// in the order they arrive, and every rank must issue collectives in the same order.
/// Dropping it shuts down cleanly: the event loop is joined, sockets are closed with an
/// orderly shutdown, and peers see no error.
#[derive(Debug)]
pub struct Communicator {
    rank: Rank,
    world_size: usize,
    /// The current view, kept up to date by the event loop.
    shared: Arc<Shared>,
    driver: Driver,
    /// Straggler verdict across the windows of [`Communicator::stats`].
    detector: std::sync::Mutex<Detector>,
    /// First call of a process admitted into a running job.
    joined_at: Option<u64>,
    /// The coordinator this process hosts, if any; dropped after the driver.
    _server: Option<Server>,
}

/// Builder for a [`Communicator`]: `Communicator::builder().rank(r).world_size(n)
/// .coordinator("host:port").connect()`.
#[derive(Debug, Clone)]
pub struct CommunicatorBuilder {
    config: Config,
    host_set: bool,
}

impl CommunicatorBuilder {
    /// This process's rank (required).
    pub fn rank(mut self, rank: Rank) -> Self {
        self.config.rank = rank;
        if !self.host_set {
            self.config.host_coordinator = rank == 0;
        }
        self
    }
    /// Number of ranks (required).
    pub fn world_size(mut self, n: usize) -> Self {
        self.config.world_size = n;
        self
    }
    /// `host:port` of the coordinator.
    pub fn coordinator(mut self, addr: impl Into<String>) -> Self {
        self.config.coordinator = addr.into();
        self
    }
    /// Whether this process hosts the coordinator (default: rank 0 does).
    pub fn host_coordinator(mut self, yes: bool) -> Self {
        self.config.host_coordinator = yes;
        self.host_set = true;
        self
    }
    /// Largest segment payload in bytes.
    pub fn segment_bytes(mut self, n: usize) -> Self {
        self.config.segment_bytes = n;
        self
    }
    /// Ring algorithm for all_reduce.
    pub fn algorithm(mut self, a: Algorithm) -> Self {
        self.config.algorithm = a;
        self
    }
    /// Payload codec setting (see [`Config::codec`]); every rank passes the same one.
    pub fn codec(mut self, codec: crate::codec::CodecChoice) -> Self {
        self.config.codec = codec;
        self
    }
    /// zstd level of the zstd codecs (see [`Config::codec_level`]).
    pub fn codec_level(mut self, level: i32) -> Self {
        self.config.codec_level = level;
        self
    }
    /// How long to keep trying to reach the coordinator and peers.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }
    /// How long the coordinator waits for every rank.
    pub fn rendezvous_timeout(mut self, d: Duration) -> Self {
        self.config.rendezvous_timeout = d;
        self
    }
    /// Longest time a collective may go without receiving a frame.
    pub fn progress_timeout(mut self, d: Duration) -> Self {
        self.config.progress_timeout = d;
        self
    }
    /// Address to listen on for ring connections.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.config.bind = Some(ip);
        self
    }
    /// The per-job secret every connection must prove (required to listen beyond
    /// loopback, unless [`CommunicatorBuilder::insecure`]); every rank passes the same one.
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.config.secret = Some(super::Secret(secret.into()));
        self
    }
    /// Allows listening beyond loopback without a secret (logs a warning).
    pub fn insecure(mut self, yes: bool) -> Self {
        self.config.insecure = yes;
        self
    }
    /// Admits restarted ranks only at join points ([`Communicator::admit_joins`]); every
    /// rank passes the same value.
    pub fn join_points(mut self, yes: bool) -> Self {
        self.config.join_points = yes;
        self
    }
    /// Which ring links checksum frame payloads (default: links to other hosts only); every
    /// rank passes the same value.
    pub fn checksum(mut self, checksum: super::Checksum) -> Self {
        self.config.checksum = checksum;
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self.host_set = true;
        self
    }
    /// Joins the ring.
    ///
    /// # Errors
    /// See [`Communicator::connect`].
    pub fn connect(self) -> Result<Communicator, Error> {
        Communicator::connect(self.config)
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, Error> {
    addr.to_socket_addrs()
        .map_err(|e| Error::Config(format!("coordinator address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("coordinator address {addr:?} resolves to nothing")))
}

fn host_name() -> String {
    std::env::var("RINGCC_HOST")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "localhost".into())
}

/// Job id shared by every rank of one job when the launcher set none: a hash of the
/// coordinator address (FNV-1a).
fn job_id_for(coordinator: &str) -> u64 {
    coordinator.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Refuses to listen beyond loopback without a secret unless `insecure` is set: an open
/// port without authentication lets anyone on the network inject data into the sums.
fn check_exposure(ip: IpAddr, config: &Config) -> Result<(), Error> {
    if ip.is_loopback() || config.secret.is_some() {
        return Ok(());
    }
    if config.insecure {
        tracing::warn!(%ip, "listening beyond loopback without a secret (insecure mode): anyone who can reach this port can join the ring");
        return Ok(());
    }
    Err(Error::Config(format!(
        "refusing to listen on {ip} (beyond loopback) without a secret: set RINGCC_SECRET or RINGCC_SECRET_FILE \
         (ringrun does this), or RINGCC_INSECURE=1 / Config::insecure"
    )))
}

impl Communicator {
    /// A builder with defaults (coordinator `127.0.0.1:29500`, rank 0 hosting it).
    pub fn builder() -> CommunicatorBuilder {
        CommunicatorBuilder { config: Config::new(0, 0), host_set: false }
    }

    /// Joins the ring using the environment a launcher set (see [`Config::from_env`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a missing or contradictory variable, then as
    /// [`Communicator::connect`].
    pub fn from_env() -> Result<Communicator, Error> {
        Communicator::connect(Config::from_env()?)
    }

    /// Joins the ring: hosts the coordinator if asked, registers, connects to both
    /// neighbours and starts the event loop.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings, [`Error::CoordinatorUnreachable`] after
    /// `connect_timeout`, [`Error::ConfigMismatch`] if ranks disagree on a fingerprint field,
    /// [`Error::Rendezvous`] if a rank never shows up within `rendezvous_timeout`, and
    /// [`Error::Io`] if a neighbour cannot be reached.
    pub fn connect(mut config: Config) -> Result<Communicator, Error> {
        config.validate()?;
        // The coordinator assigns the job id; a rank checks it only if it was given one.
        let explicit_job = config.job_id != 0;
        if !explicit_job {
            config.job_id = job_id_for(&config.coordinator);
        }
        let secret: Vec<u8> = config.secret.as_ref().map(|s| s.0.clone()).unwrap_or_default();
        let server = if config.host_coordinator {
            let addr = resolve(&config.coordinator)?;
            check_exposure(addr.ip(), &config)?;
            let listener = crate::net::listen(addr)
                .map_err(|e| Error::Config(format!("cannot host the coordinator at {addr}: {e}")))?;
            let mut options = ServerOptions::new(config.world_size, config.job_id, config.rendezvous_timeout);
            options.secret = secret.clone();
            options.heartbeat_timeout = config.heartbeat_timeout;
            options.min_world = config.min_world;
            Some(Server::start(listener, options).map_err(|e| Error::Config(format!("coordinator at {addr}: {e}")))?)
        } else {
            None
        };
        let mut client = Client::connect(&config.coordinator, config.connect_timeout, &secret, config.rank)?;
        let local = client
            .local_addr()
            .map_err(|e| Error::Config(format!("local address of the coordinator connection: {e}")))?;
        let ip = config.bind.unwrap_or(local.ip());
        check_exposure(ip, &config)?;
        let listener = crate::net::listen(SocketAddr::new(ip, 0))
            .map_err(|e| Error::Config(format!("cannot listen on {ip} for ring connections: {e}")))?;
        let listen = listener.local_addr().map_err(|e| Error::Config(format!("listener address: {e}")))?;
        let registration = Registration {
            rank: config.rank,
            world_size: config.world_size,
            incarnation: config.incarnation,
            listen,
            host: host_name(),
            fingerprint: config.fingerprint(),
        };
        let view = client.register(&registration, config.rendezvous_timeout + Duration::from_secs(5))?;
        if explicit_job && view.job != config.job_id {
            return Err(Error::Rendezvous {
                reason: format!(
                    "rank {} was started for job {:#x} but the coordinator at {} runs job {:#x}",
                    config.rank, config.job_id, config.coordinator, view.job
                ),
            });
        }
        // A rank admitted into a running job starts at the call its view names.
        let joined_at = view.start_seq;
        let start = joined_at.unwrap_or(0);
        let ring = establish_ring(
            view,
            config.rank,
            config.incarnation,
            (start, start),
            &listener,
            config.connect_timeout,
            &secret,
        )?;
        let shared = Arc::new(Shared::default());
        let driver = Driver::start(ring, &config, Some(client.into_stream()), listener, shared.clone())?;
        Ok(Communicator {
            rank: config.rank,
            world_size: config.world_size,
            shared,
            driver,
            detector: std::sync::Mutex::default(),
            joined_at,
            _server: server,
        })
    }

    /// For a process that joined a running job (a restarted rank): the number of the first
    /// call it takes part in. `None` for a rank that started with the job. A joiner's first
    /// call must match the others' next call (same collective and length); its report lists
    /// the joiner in [`Report::joined`], the moment to send it the model (see
    /// `examples/train_mlp.rs`).
    pub fn joined_at(&self) -> Option<u64> {
        self.joined_at
    }

    /// A join point (with `Config::join_points`): every member calls it at the same place
    /// of its program (say, each epoch or every N steps), with no call of its own in flight.
    /// It waits for the calls queued before it, then for every member to reach it, and
    /// returns the ranks admitted there, empty if none. Their first call is the next one:
    /// typically a `broadcast` of the model and the loop position, which each joiner makes
    /// right after connecting ([`Communicator::joined_at`] is then `Some`). Costs one
    /// coordinator round trip after the last member arrives; no ring traffic.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if join points are off or another thread waits at one;
    /// the terminal error ([`Error::Evicted`], [`Error::QuorumLost`]) of a rank that can no
    /// longer take part; [`Error::Shutdown`] if the communicator is closing.
    pub fn admit_joins(&self) -> Result<Vec<Rank>, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.driver.join_point(tx)?;
        rx.recv().map_err(|_| Error::Shutdown("event loop ended".into()))?
    }

    /// This process's rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }

    /// Number of ranks the job was started with.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Ranks of the current view, ascending: all ranks until a failure shrinks the ring.
    pub fn members(&self) -> Vec<Rank> {
        self.shared.view().1
    }

    /// Epoch of the current view (1 after rendezvous; grows with every membership change).
    pub fn epoch(&self) -> u64 {
        self.shared.view().0
    }

    fn run_borrowed(&self, spec: JobSpec, bytes: &mut [u8]) -> Result<Report, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        // SAFETY: this function blocks on `rx` until the loop replies or is gone, and holds
        // the only borrow of `bytes` meanwhile.
        let buf = unsafe { JobBuf::borrowed(bytes) };
        let outcome = self.driver.run_blocking(Job { spec, buf, reply: tx, submitted: Instant::now() }, &rx)?;
        outcome.result.map(|(_, report)| report)
    }

    fn spec(&self, coll: CollKind, op: ReduceOp, dtype: DataType, len_elems: usize, root: Rank) -> JobSpec {
        JobSpec { coll, op, dtype, len_elems, root, epoch: self.epoch(), stats_exchange: false }
    }

    /// Reduces `buf` across all ranks in place; every rank ends with the same bits.
    ///
    /// # Errors
    /// See [`Error`]: a peer closed, ranks disagree on the call, a stall past
    /// `progress_timeout`. On error `buf` holds unspecified data.
    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<Report, Error> {
        let spec = self.spec(CollKind::AllReduce, op, T::DTYPE, buf.len(), 0);
        self.run_borrowed(spec, bytemuck::cast_slice_mut(buf))
    }

    /// Reduces `input` across ranks and leaves rank r's share (block r of `world_size`
    /// equal blocks) in `output`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `input.len() == output.len() * world_size`;
    /// otherwise as [`Communicator::all_reduce`].
    pub fn reduce_scatter<T: Element>(&self, input: &[T], output: &mut [T], op: ReduceOp) -> Result<Report, Error> {
        let (epoch, members) = self.shared.view();
        let world = members.len();
        if input.len() != output.len() * world {
            return Err(Error::InvalidArgument {
                op: "reduce_scatter",
                reason: format!(
                    "input has {} elements, expected output ({}) x world ({world})",
                    input.len(),
                    output.len()
                ),
            });
        }
        let mut work = input.to_vec();
        let mut spec = self.spec(CollKind::ReduceScatter, op, T::DTYPE, work.len(), 0);
        spec.epoch = epoch;
        let report = self.run_borrowed(spec, bytemuck::cast_slice_mut(&mut work))?;
        let block = members.binary_search(&self.rank).unwrap_or(0);
        output.copy_from_slice(&work[chunk_range(input.len(), world, block)]);
        Ok(report)
    }

    /// Gathers every rank's `input` into `output` in rank order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `output.len() == input.len() * world_size`;
    /// otherwise as [`Communicator::all_reduce`].
    pub fn all_gather<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<Report, Error> {
        let (epoch, members) = self.shared.view();
        let world = members.len();
        if output.len() != input.len() * world {
            return Err(Error::InvalidArgument {
                op: "all_gather",
                reason: format!(
                    "output has {} elements, expected input ({}) x world ({world})",
                    output.len(),
                    input.len()
                ),
            });
        }
        let block = members.binary_search(&self.rank).unwrap_or(0);
        let range = chunk_range(output.len(), world, block);
        output[range].copy_from_slice(input);
        let mut spec = self.spec(CollKind::AllGather, ReduceOp::Sum, T::DTYPE, output.len(), 0);
        spec.epoch = epoch;
        self.run_borrowed(spec, bytemuck::cast_slice_mut(output))
    }

    /// Copies `root`'s `buf` to every rank.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `root` is not a member; otherwise as
    /// [`Communicator::all_reduce`].
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: Rank) -> Result<Report, Error> {
        let (epoch, members) = self.shared.view();
        if members.binary_search(&root).is_err() {
            return Err(Error::InvalidArgument {
                op: "broadcast",
                reason: format!("root {root} is not a member {members:?}"),
            });
        }
        let mut spec = self.spec(CollKind::Broadcast, ReduceOp::Sum, T::DTYPE, buf.len(), root);
        spec.epoch = epoch;
        self.run_borrowed(spec, bytemuck::cast_slice_mut(buf))
    }

    /// Returns once every rank has entered the barrier.
    ///
    /// # Errors
    /// As [`Communicator::all_reduce`].
    pub fn barrier(&self) -> Result<Report, Error> {
        let spec = self.spec(CollKind::Barrier, ReduceOp::Sum, DataType::U8, 0, 0);
        self.run_borrowed(spec, &mut [])
    }

    /// Compares this rank's statistics with every other rank's and returns them, with the
    /// straggler verdict. A collective: every rank must call it at the same point in its
    /// sequence of calls, like [`Communicator::barrier`] (for instance once per epoch).
    ///
    /// Each call closes a *window*: the collectives since the previous call. Every rank
    /// contributes what it waited for in that window (a few hundred bytes, on the latency
    /// path); all ranks then judge the same data and reach the same verdict, logged once as
    /// a warning when a rank is first named (see `docs/ARCHITECTURE.md`, "Statistics and
    /// stragglers"). A window needs 8 collectives to be judged; a shorter one keeps the
    /// previous verdict.
    ///
    /// # Errors
    /// As [`Communicator::barrier`].
    pub fn stats(&self) -> Result<Stats, Error> {
        let slots = self.world_size * WINDOW_SLOTS;
        let mut buf = vec![0.0f64; slots];
        let mut spec = self.spec(CollKind::AllReduce, ReduceOp::Sum, DataType::F64, slots, 0);
        spec.stats_exchange = true;
        let report = self.run_borrowed(spec, bytemuck::cast_slice_mut(&mut buf))?;
        // Each rank wrote only its own slots and the others sent zeros: the sum is exact.
        let windows: Vec<_> =
            read_windows(&buf, self.world_size).into_iter().filter(|(r, _)| report.members.contains(r)).collect();
        self.lock_detector().observe(&windows);
        Ok(self.local_stats())
    }

    /// This rank's statistics without communicating: its links and collectives as of the
    /// last completed call, and the verdict and summaries of the last
    /// [`Communicator::stats`] window.
    pub fn local_stats(&self) -> Stats {
        let (epoch, _) = self.shared.view();
        let mut stats = self.shared.stats().unwrap_or_else(|| Stats {
            rank: self.rank,
            epoch,
            links: Vec::new(),
            collectives: Vec::new(),
            active: Duration::ZERO,
            idle: Duration::ZERO,
            ranks: Vec::new(),
            windows: 0,
            straggler: None,
        });
        let detector = self.lock_detector();
        stats.ranks = detector.last();
        stats.windows = detector.windows();
        stats.straggler = detector.verdict();
        stats
    }

    fn lock_detector(&self) -> std::sync::MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an all-reduce of `buf` in the background; [`Work::wait`] returns the buffer
    /// with the result. Several may be in flight; they complete in submission order.
    ///
    /// # Errors
    /// Submission cannot fail; errors (including a shut-down communicator) come from
    /// [`Work::wait`].
    pub fn all_reduce_async<T: Element>(&self, buf: Vec<T>, op: ReduceOp) -> Work<Vec<T>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spec = self.spec(CollKind::AllReduce, op, T::DTYPE, buf.len(), 0);
        let job = Job { spec, buf: JobBuf::owned(buf), reply: tx.clone(), submitted: Instant::now() };
        if let Err(e) = self.driver.submit(job) {
            let _ = tx.send(JobOutcome { result: Err(e) });
        }
        Work::new(rx)
    }
}
