//! Every bound in one place: each constant states its unit and why it has that value.
//!
//! Knobs a user may want to change live in [`crate::Config`]; these are the limits that
//! protect the process from peers and from itself.

use std::time::Duration;

/// Largest world size accepted anywhere (ranks, views, control messages). A view larger
/// than this is refused before any allocation sized by it.
pub const WORLD_MAX: usize = 4096;

/// Largest segment payload in bytes a peer may send. Segments are the pipelining unit;
/// anything larger than this in a header is a protocol error, never an allocation.
pub const SEGMENT_BYTES_MAX: usize = 16 << 20;

/// Smallest segment size in bytes a config may ask for (tests shrink segments this far to
/// cover many segments with small inputs).
pub const SEGMENT_BYTES_MIN: usize = 64;

/// Largest control message body in bytes (rendezvous, views, errors). A view of
/// `WORLD_MAX` ranks with their addresses fits well below it.
pub const CONTROL_BYTES_MAX: usize = 256 << 10;

/// How many collectives may wait in a communicator's queue before `*_async` blocks the
/// caller: bounds memory held by in-flight work.
pub const QUEUE_DEPTH_MAX: usize = 64;

/// How many connections may wait for their hello at once on any listener; more are closed
/// at once (flood protection).
pub const PENDING_CONNECTIONS_MAX: usize = 64;

/// Time a new connection has to deliver its complete hello before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// First delay between attempts to reach the coordinator; doubles up to
/// [`CONNECT_RETRY_DELAY_MAX`] until `Config::connect_timeout` runs out.
pub const CONNECT_RETRY_DELAY_MIN: Duration = Duration::from_millis(10);

/// Time the first connect attempt to a ring neighbour is given before it is started again
/// (each later attempt gets twice as long): a SYN dropped by a neighbour's full backlog is
/// resent soon after the neighbour drains it, instead of after the kernel's 1 s timer.
pub const CONNECT_ATTEMPT_MIN: Duration = Duration::from_millis(50);

/// Longest delay between attempts to reach the coordinator or a peer.
pub const CONNECT_RETRY_DELAY_MAX: Duration = Duration::from_millis(500);

/// Socket send and receive buffer size asked of the kernel, in bytes. Large buffers keep a
/// fast link busy while the event loop reduces the previous segment.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Unsent bytes a ring connection's socket takes before it reports itself full
/// (`TCP_NOTSENT_LOWAT`, `net::sockbuf`): the bytes in flight are still bounded only by the
/// send buffer and the congestion window, but the backlog queued behind them stays short,
/// so the event loop writes a little at a time instead of megabytes in one system call
/// that holds a core while a neighbour waits for its turn. Measured at N=4 over 1 Gbit/s
/// cables, 64 MiB, medians of 3 launches: the one-way ring 844.9 -> 842.9 ms per call (the
/// TCP ceiling is 842.0) and the bidirectional ring 447.2 -> 432.9 ms (1.80x -> 1.86x the
/// link); 256 KiB measured the same, 1 MiB in between (843.5 and 437.7 ms).
pub const SOCKET_NOTSENT_LOWAT_BYTES: u32 = 512 << 10;

/// Most iovecs passed to one vectored write (Linux's IOV_MAX is 1024).
pub const IOVECS_MAX: usize = 64;

/// Longest string (address, field name, message) accepted in a control message.
pub const CONTROL_STRING_MAX: usize = 1024;

/// Default interval between heartbeats (rank to coordinator and back).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Default silence after which the coordinator evicts a rank, or a rank gives its
/// coordinator up: ten missed heartbeats, a few seconds, not the 10-30 minutes others use.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most epochs a neighbour's frame may be ahead of this rank's view. Views come from one
/// coordinator over one connection per rank, so an honest neighbour is at most a few views
/// ahead; a frame further ahead (a corrupted epoch) fails the link at once instead of
/// waiting parked for the progress timeout.
pub const FRAME_EPOCH_AHEAD_MAX: u64 = 1024;

/// Longest time a rank spends connecting to its new neighbours after a view change (at
/// most half the heartbeat timeout: the event loop sends no heartbeats meanwhile).
pub const REBUILD_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest one attempt at connecting to the neighbours of a new view blocks the event loop.
/// Attempts resume where the last one stopped (`net::establish::RingBuilder`), so a short
/// one costs nothing; between attempts the loop hears the coordinator (a newer view) and
/// sends heartbeats.
pub const REBUILD_ATTEMPT_MAX: Duration = Duration::from_millis(250);

/// Backoff before a rank evicted twice is admitted again; it doubles with every further
/// eviction (a rank that keeps failing is held back; see `core::joins`).
pub const JOIN_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest backoff before a rank that keeps failing is admitted again.
pub const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Longest abort reason sent or accepted, in bytes (a diagnostic string, not data).
pub const ABORT_REASON_MAX: usize = 1024;

/// Most payload buffers a communicator's pool keeps between uses. Encoded segments are
/// written from pooled buffers that return to the pool once written; the pool keeps at
/// most the number in use at the busiest moment, and never more than this, so memory
/// held between calls stays bounded even with tiny segments.
pub const POOL_BUFFERS_MAX: usize = 256;

/// Most encoded frames queued on one link before the driver asks the collective for the
/// next one. Segments are encoded when the driver takes them, so this keeps encoding just
/// ahead of the socket: segment k is compressed while k-1 is being written, instead of
/// every segment of a chunk being compressed before the first byte leaves.
pub const ENCODED_FRAMES_QUEUED_MAX: usize = 4;

/// Most bytes of encoded all-gather and broadcast frames one call keeps to forward them as
/// they came. A rank sends its own chunk before it passes on the others, so it holds about
/// a chunk's worth of frames at once: at 256 MiB and N=4 with bf16, 64 MiB (0.25x the
/// buffer on top of buffer and backup). Past this bound a frame is encoded again from the
/// decoded bytes when it leaves (same values; costs an encode instead of memory).
pub const FORWARDS_KEPT_BYTES_MAX: usize = 16 << 20;

/// Largest blocking collective (bytes of the caller's buffer) that the caller's own thread
/// runs instead of handing it to the event-loop thread (`net::handoff`): below it the two
/// thread wake-ups of a hand-off cost as much as the ring exchange. Matches the size up to
/// which the loop spins.
pub const INLINE_BYTES_MAX: usize = 256 << 10;

/// How long the event-loop thread leaves the loop to callers after a caller drove it: long
/// enough that back-to-back small calls (a benchmark, bucketed gradients) find the loop
/// free, short against every deadline the loop keeps (heartbeats every 500 ms).
pub const HANDBACK_LINGER: Duration = Duration::from_millis(2);

/// Longest `Config::spin`: spinning longer than this burns a core for nothing.
pub const SPIN_MAX: Duration = Duration::from_millis(10);

/// Largest result (bytes of the caller's buffer) of an `all_reduce` or barrier that runs
/// without completion tokens (`core::fin`): the rank returns as soon as it holds the
/// result and keeps a copy of it until its next call completes (`net::retain`); after a
/// failure that copy goes to the coordinator with the rank's report, which hands it to the
/// survivors that lack it (`docs/FAILURES.md`). Bounded so that copy, its member list and
/// the message head fit one control message (`CONTROL_BYTES_MAX`) and the per-call copy
/// stays small against the two token hops it saves (measured in `docs/BENCHMARKS.md`).
pub const RESULT_RETAIN_BYTES_MAX: usize = 128 << 10;

/// Bytes a ring link receives ahead of what the frame decoder asked for (`net::read_ahead`):
/// one `recv` then serves several small frames (headers, latency-path payloads of a few
/// KiB). Two per link; reads beyond a quarter of it go straight to their destination.
pub const READ_AHEAD_BYTES: usize = 64 << 10;

/// Most slots of a same-host lane (`net::lane`), each one segment (`Config::segment_bytes`):
/// how many payloads the sender may copy ahead of the receiver before its frames wait for
/// a credit. 8 segments of the default 512 KiB are 4 MiB per lane; a rank touches four
/// lanes (two links, both directions), 16 MiB. Measured at 256 MiB, N=4 on loopback
/// (alternating builds): 8 slots 1.07-1.12 GB/s against 16 slots 0.99-1.14, and peak RSS
/// 2.08x the buffer against 2.14x (2.15x against 2.22x with bf16, over the 2.2x goal).
pub const LANE_SLOTS: usize = 8;

/// Most bytes of slots in one lane: with large segments a lane gets fewer slots (at least
/// two), so the shared memory a rank maps stays at most 2 x 2 x 16 MiB (two links, both
/// directions) however large `Config::segment_bytes` is.
pub const LANE_BYTES_MAX: usize = 16 << 20;
