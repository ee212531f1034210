//! Corruption above TCP: a proxy inserted as one ring hop flips one bit of one frame (in its
//! header or its payload, either direction) after the handshake. Every flip must be
//! detected (the receiver's CRC32C or header checks fail the link, or a frame whose header
//! was bent far into the future stalls the collective past its progress deadline), and no
//! rank may ever return a wrong sum as `Ok`.
//!
//! How the hop is inserted without any test hook in the library: rank 0 reaches the
//! coordinator through a second proxy that rewrites, in the views it forwards, the address
//! of rank 0's next neighbour to the ring proxy's. (The views travel after the handshake and
//! are not authenticated message by message: an on-path attacker can always redirect or
//! alter traffic, which is why the guarantee is detection, not prevention; see
//! `docs/SECURITY.md`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcc::comm::Checksum;
use ringcc::coord::{Server, ServerOptions};
use ringcc::core::collective::Algorithm;
use ringcc::wire::control::Control;
use ringcc::wire::header::{set_flags, FLAG_LANE};
use ringcc::wire::hello::HELLO_LEN;
use ringcc::wire::{FrameKind, HEADER_LEN};
use ringcc::{Communicator, Config, ReduceOp};

const WORLD: usize = 3;
const SECRET: &str = "corrupt-proxy-test-secret-0123456789";
/// Bytes each side sends before its first frame: a hello and a MAC.
const HANDSHAKE_BYTES: usize = HELLO_LEN + 32;
/// Calls each rank makes per round (it stops at its first error).
const CALLS: usize = 6;
const LENGTHS: [usize; 2] = [3001, 40_000];
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the ranks log (WARN and up), to see which check caught each flip.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn take_log() -> String {
    String::from_utf8_lossy(&std::mem::take(&mut *LOG.lock().unwrap_or_else(|p| p.into_inner()))).into_owned()
}

/// Which bit of which frame to flip: `dir` 0 is rank 0 to its next neighbour, 1 the way
/// back; `bit` counts from the first header bit (`in_payload`: from the first payload bit).
#[derive(Debug, Clone, Copy)]
struct Plan {
    dir: usize,
    frame: usize,
    in_payload: bool,
    bit: usize,
    /// Instead of a bit flip: rewrites the first frame (header and payload) for which it
    /// returns true, whatever its index.
    rewrite: Option<fn(&mut [u8]) -> bool>,
}

impl Plan {
    fn flip(dir: usize, frame: usize, in_payload: bool, bit: usize) -> Plan {
        Plan { dir, frame, in_payload, bit, rewrite: None }
    }
}

/// What the ring proxy did.
#[derive(Debug, Default)]
struct Flip {
    /// (byte offset in the frame, field name) of the flipped bit.
    done: Option<(usize, &'static str)>,
    /// A frame seen before the flip did not start with the frame magic (proxy out of step).
    desync: bool,
    /// Frames forwarded each way (on the first connection).
    frames: [usize; 2],
}

fn field(offset: usize) -> &'static str {
    const FIELDS: [(usize, &str); 21] = [
        (4, "magic"),
        (5, "version"),
        (6, "kind"),
        (7, "codec"),
        (8, "phase"),
        (9, "coll"),
        (10, "op"),
        (11, "dtype"),
        (12, "flags"),
        (16, "step"),
        (24, "job"),
        (32, "epoch"),
        (40, "seq"),
        (48, "len_elems"),
        (52, "chunk"),
        (56, "segment"),
        (60, "payload_len"),
        (64, "raw_len"),
        (68, "sender"),
        (72, "crc"),
        (usize::MAX, "payload"),
    ];
    FIELDS.iter().find(|(end, _)| offset < *end).map_or("payload", |(_, name)| name)
}

/// Forwards exactly `n` bytes as they arrive (the handshake is a conversation: the
/// initiator sends its MAC only after the answer to its hello).
fn forward_exactly(src: &mut TcpStream, dst: &mut TcpStream, mut n: usize) -> std::io::Result<()> {
    let mut buf = [0u8; HANDSHAKE_BYTES];
    while n > 0 {
        let got = src.read(&mut buf[..n.min(HANDSHAKE_BYTES)])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        dst.write_all(&buf[..got])?;
        n -= got;
    }
    Ok(())
}

/// Copies `src` to `dst`: the handshake as it is, then frame by frame, flipping the planned
/// bit once. Ends when either side closes; then closes both.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    dir: usize,
    plan: Option<Plan>,
    armed: Arc<AtomicBool>,
    flip: Arc<Mutex<Flip>>,
) {
    let _ = (|| -> std::io::Result<()> {
        forward_exactly(&mut src, &mut dst, HANDSHAKE_BYTES)?;
        let mut index = 0;
        loop {
            let mut frame = vec![0u8; HEADER_LEN];
            src.read_exact(&mut frame)?;
            let len = u32::from_le_bytes([frame[56], frame[57], frame[58], frame[59]]) as usize;
            if frame[..4] != *b"RGCC" {
                flip.lock().unwrap_or_else(|p| p.into_inner()).desync = true;
            }
            frame.resize(HEADER_LEN + len, 0);
            src.read_exact(&mut frame[HEADER_LEN..])?;
            if let Some(rewrite) = plan.and_then(|p| p.rewrite) {
                if armed.load(Ordering::SeqCst) && rewrite(&mut frame) {
                    armed.store(false, Ordering::SeqCst);
                    flip.lock().unwrap_or_else(|p| p.into_inner()).done = Some((0, "rewrite"));
                }
            } else if let Some(p) = plan.filter(|p| p.frame == index) {
                if armed.swap(false, Ordering::SeqCst) {
                    let bit = if p.in_payload && len > 0 {
                        HEADER_LEN * 8 + p.bit % (len * 8)
                    } else {
                        p.bit % (HEADER_LEN * 8)
                    };
                    frame[bit / 8] ^= 1 << (bit % 8);
                    flip.lock().unwrap_or_else(|p| p.into_inner()).done = Some((bit / 8, field(bit / 8)));
                }
            }
            dst.write_all(&frame)?;
            index += 1;
            let mut f = flip.lock().unwrap_or_else(|p| p.into_inner());
            f.frames[dir] = f.frames[dir].max(index);
        }
    })();
    let _ = src.shutdown(std::net::Shutdown::Both);
    let _ = dst.shutdown(std::net::Shutdown::Both);
}

/// Accepts connections on `listener` until `stop`, handing each with a fresh connection to
/// `target()` to `serve`.
fn proxy(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    target: impl Fn() -> Option<SocketAddr> + Send + 'static,
    serve: impl Fn(TcpStream, TcpStream) + Send + 'static,
) {
    listener.set_nonblocking(true).expect("nonblocking listener");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => {
                    let upstream = target().and_then(|t| TcpStream::connect(t).ok());
                    match (client.set_nonblocking(false), upstream) {
                        (Ok(()), Some(up)) => serve(client, up),
                        _ => continue,
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
}

/// Forwards the coordinator's messages to rank 0, pointing rank 0's next neighbour at the
/// ring proxy in every view (and noting the real address for the ring proxy).
fn rewrite_views(
    mut from_coord: TcpStream,
    mut to_rank: TcpStream,
    ring_proxy: SocketAddr,
    next: Arc<Mutex<Option<SocketAddr>>>,
) {
    let _ = (|| -> std::io::Result<()> {
        forward_exactly(&mut from_coord, &mut to_rank, HANDSHAKE_BYTES)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = from_coord.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some((msg, used))) = Control::decode(&buf) {
                match msg {
                    Control::View(mut v) => {
                        let pos = v.members.iter().position(|m| m.rank == 0).unwrap_or(0);
                        let i = (pos + 1) % v.members.len();
                        *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(v.members[i].addr);
                        v.members[i].addr = ring_proxy;
                        to_rank.write_all(&Control::View(v).encode())?;
                    }
                    _ => to_rank.write_all(&buf[..used])?,
                }
                buf.drain(..used);
            }
        }
    })();
    let _ = from_coord.shutdown(std::net::Shutdown::Both);
    let _ = to_rank.shutdown(std::net::Shutdown::Both);
}

fn duplex(
    a: TcpStream,
    b: TcpStream,
    forward: impl FnOnce(TcpStream, TcpStream) + Send + 'static,
    back: impl FnOnce(TcpStream, TcpStream) + Send + 'static,
) {
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    std::thread::spawn(move || forward(a, b));
    std::thread::spawn(move || back(b2, a2));
}

fn value(rank: usize, i: usize, call: usize) -> f32 {
    ((i * 5 + rank * 11 + call) % 32) as f32
}

/// What one rank saw: per call, `Ok(true)` (exact), `Ok(false)` (WRONG) or the error.
fn rank_calls(comm: &Communicator) -> Vec<Result<bool, String>> {
    let rank = comm.rank();
    let mut seen = Vec::new();
    for call in 0..CALLS {
        let len = LENGTHS[call % LENGTHS.len()];
        let mut v: Vec<f32> = (0..len).map(|i| value(rank, i, call)).collect();
        match comm.all_reduce(&mut v, ReduceOp::Sum) {
            Ok(report) => {
                let exact = (0..len).all(|i| v[i] == report.members.iter().map(|&r| value(r, i, call)).sum::<f32>());
                seen.push(Ok(exact));
            }
            Err(e) => {
                seen.push(Err(e.to_string()));
                break;
            }
        }
    }
    seen
}

/// One job with the proxy in place; returns each rank's calls, what the proxy flipped and
/// the ranks' log.
fn round(
    checksum: Checksum,
    algorithm: Algorithm,
    plan: Option<Plan>,
) -> (Vec<Vec<Result<bool, String>>>, Flip, String) {
    // Lanes off: with them, ranks on one host move most frames whole through shared memory,
    // which the proxy cannot touch, and how many still cross the socket depends on timing;
    // the hop under attack here is TCP. (The lane tests below turn them on.)
    round_with(checksum, algorithm, plan, false)
}

/// [`round`] with same-host lanes (`Config::lanes`) on or off in every rank.
fn round_with(
    checksum: Checksum,
    algorithm: Algorithm,
    plan: Option<Plan>,
    lanes: bool,
) -> (Vec<Vec<Result<bool, String>>>, Flip, String) {
    let mut options = ServerOptions::new(WORLD, 42, Duration::from_secs(20));
    options.secret = SECRET.as_bytes().to_vec();
    let server = Server::start(TcpListener::bind("127.0.0.1:0").expect("bind"), options).expect("coordinator");
    let coord = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let next: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let flip: Arc<Mutex<Flip>> = Arc::default();
    let armed = Arc::new(AtomicBool::new(plan.is_some()));

    let ring_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ring_addr = ring_listener.local_addr().expect("addr");
    let (n2, f2) = (next.clone(), flip.clone());
    proxy(
        ring_listener,
        stop.clone(),
        move || *n2.lock().unwrap_or_else(|p| p.into_inner()),
        move |client, up| {
            let (fwd, back) = (plan.filter(|p| p.dir == 0), plan.filter(|p| p.dir == 1));
            let (a1, a2, f1, f3) = (armed.clone(), armed.clone(), f2.clone(), f2.clone());
            duplex(client, up, move |s, d| pump(s, d, 0, fwd, a1, f1), move |s, d| pump(s, d, 1, back, a2, f3));
        },
    );
    let coord_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let coord_proxy = coord_listener.local_addr().expect("addr");
    proxy(
        coord_listener,
        stop.clone(),
        move || Some(coord),
        move |client, up| {
            let n3 = next.clone();
            duplex(
                client,
                up,
                |mut s, mut d| {
                    let _ = std::io::copy(&mut s, &mut d);
                    let _ = d.shutdown(std::net::Shutdown::Both);
                },
                move |s, d| rewrite_views(s, d, ring_addr, n3),
            );
        },
    );

    let (tx, rx) = std::sync::mpsc::channel();
    for rank in 0..WORLD {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut config = Config::new(rank, WORLD);
            config.coordinator = if rank == 0 { coord_proxy } else { coord }.to_string();
            config.host_coordinator = false;
            config.job_id = 42;
            config.secret = Some(ringcc::comm::Secret(SECRET.as_bytes().to_vec()));
            config.segment_bytes = 1024;
            config.progress_timeout = PROGRESS_TIMEOUT;
            config.algorithm = algorithm;
            config.checksum = checksum;
            config.lanes = lanes;
            let seen = match Communicator::connect(config) {
                Ok(comm) => rank_calls(&comm),
                Err(e) => vec![Err(format!("connect: {e}"))],
            };
            let _ = tx.send((rank, seen));
        });
    }
    let mut out = vec![Vec::new(); WORLD];
    for _ in 0..WORLD {
        let (rank, seen) = rx.recv_timeout(Duration::from_secs(60)).expect("a rank hung");
        out[rank] = seen;
    }
    stop.store(true, Ordering::SeqCst);
    drop(server);
    let flip = std::mem::take(&mut *flip.lock().unwrap_or_else(|p| p.into_inner()));
    (out, flip, take_log())
}

/// The check that caught a flip sent by `sender`: a link failure logged against `sender`
/// naming the check, or a collective that stalled past its progress deadline.
fn detection(log: &str, calls: &[Vec<Result<bool, String>>], sender: usize) -> Option<&'static str> {
    const CHECKS: [(&str, &str); 7] = [
        ("checksum mismatch", "crc32c"),
        ("bad header", "header decode"),
        ("frame of job", "job id"),
        ("exceeds the agreed segment size", "length cap"),
        ("further ahead than a neighbour can be", "seq/epoch window"),
        // A flipped lane flag (`docs/PROTOCOL.md`, same-host lanes) names a payload that
        // is not in the lane.
        ("before its payload was written", "lane slot"),
        ("without an accepted lane", "lane flag"),
    ];
    let from_sender = format!("peer={sender} ");
    let failed = |needle: &str| log.lines().any(|l| l.contains(needle) && l.contains(&from_sender));
    if let Some((_, name)) = CHECKS.iter().find(|(needle, _)| failed(needle)) {
        return Some(name);
    }
    let stalled = log.contains("stalled")
        || calls.iter().flatten().any(|c| c.as_ref().err().is_some_and(|e| e.contains("stalled")));
    stalled.then_some("progress deadline")
}

/// The tests read one process-wide log, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init();
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Auto, Algorithm::Bidir];

/// Control rounds: through the proxy, untouched, every call is exact. The one-way ring (the
/// default here) sends nothing back over the hop; the two-way ring does. Returns the frames
/// seen each way.
fn control(checksum: Checksum) -> [usize; 2] {
    let mut frames = [0usize; 2];
    for (dir, algorithm) in ALGORITHMS.into_iter().enumerate() {
        let (calls, flip, log) = round(checksum, algorithm, None);
        assert!(!flip.desync, "the proxy lost track of frames");
        for (rank, c) in calls.iter().enumerate() {
            assert_eq!(c.len(), CALLS, "rank {rank} without corruption: {c:?}\n{log}");
            assert!(c.iter().all(|r| r == &Ok(true)), "rank {rank} without corruption: {c:?}\n{log}");
        }
        println!("control round, {algorithm:?}: {:?} frames through the proxy each way, every call exact", flip.frames);
        frames[dir] = flip.frames[dir];
        assert!(frames[dir] > 0, "no frames through the proxy in direction {dir} with {algorithm:?}");
    }
    frames
}

/// `rounds` rounds of one random flip each, alternating direction; payload bits too if
/// `payloads`. Every flip must be detected and no rank may return a wrong sum.
fn random_flips(checksum: Checksum, frames: [usize; 2], rounds: usize, payloads: bool) {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    let mut caught: std::collections::BTreeMap<&str, usize> = Default::default();
    let started = Instant::now();
    for r in 0..rounds {
        let dir = r % 2;
        let plan = Plan::flip(dir, next() % frames[dir], payloads && r % 4 >= 2, next());
        let (calls, hit, log) = round(checksum, ALGORITHMS[dir], Some(plan));
        let (offset, name) = hit.done.unwrap_or_else(|| panic!("round {r}: {plan:?} never reached its frame"));
        assert!(!hit.desync, "round {r}: the proxy lost track of frames");
        for (rank, c) in calls.iter().enumerate() {
            assert!(
                !c.contains(&Ok(false)),
                "round {r} {plan:?} ({name} byte {offset}): rank {rank} returned a WRONG sum: {c:?}"
            );
        }
        // Rank 0's next neighbour is rank 1 (ring order is rank order on one host).
        let sender = if dir == 0 { 0 } else { 1 };
        let how = detection(&log, &calls, sender).unwrap_or_else(|| {
            panic!("round {r}: flip of {name} byte {offset} ({plan:?}) went undetected: {calls:?}\n{log}")
        });
        println!("round {r}: flipped {name} (byte {offset}), dir {}: caught by {how}", plan.dir);
        *caught.entry(how).or_insert(0) += 1;
    }
    println!("{rounds} flips, all detected in {:.1} s: {caught:?}", started.elapsed().as_secs_f64());
}

/// A header bent into a nearby later call (the lowest bits of seq or epoch: seq + 1 is
/// what an honest neighbour one call ahead sends) is parked as a frame of that call, but
/// its payload is read ahead and its CRC checked at once: the CRC must catch it, not the
/// progress deadline. (Bent the other way, it is a stale frame, also CRC checked before it
/// is dropped.)
fn bent_headers(checksum: Checksum, frames: [usize; 2]) {
    let seq_epoch = [(0, 1, 32 * 8), (1, 2, 32 * 8), (0, 4, 32 * 8 + 1), (1, 3, 24 * 8), (0, 2, 24 * 8 + 1)];
    for (dir, frame, bit) in seq_epoch {
        let plan = Plan::flip(dir, frame % frames[dir], false, bit);
        let (calls, hit, log) = round(checksum, ALGORITHMS[dir], Some(plan));
        let (offset, name) = hit.done.unwrap_or_else(|| panic!("{plan:?} never reached its frame"));
        for (rank, c) in calls.iter().enumerate() {
            assert!(
                !c.contains(&Ok(false)),
                "{plan:?} ({name} byte {offset}): rank {rank} returned a WRONG sum: {c:?}"
            );
        }
        let how = detection(&log, &calls, dir);
        println!("flipped {name} bit {} (byte {offset}), dir {dir}: caught by {how:?}", bit % 8);
        // seq + 2 and beyond are refused at once by the window check instead.
        let at_once = matches!(how, Some("crc32c" | "seq/epoch window"));
        assert!(at_once, "{plan:?} ({name} byte {offset}) caught by {how:?}: {calls:?}\n{log}");
    }
}

/// With payloads checksummed on every link (`Checksum::All`: the proxy is a plain TCP relay
/// on loopback, the case that setting is for), every flipped bit, header or payload, is caught.
#[test]
fn every_flipped_bit_is_detected_and_no_rank_returns_a_wrong_sum() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    init_log();
    let frames = control(Checksum::All);
    let rounds: usize = std::env::var("RINGCC_CORRUPT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    random_flips(Checksum::All, frames, rounds, true);
    bent_headers(Checksum::All, frames);
}

/// With the default (`Checksum::Remote`), links within one host leave payloads out of the
/// CRC, but every header is still covered: a flipped header bit is still caught.
#[test]
fn header_flips_are_detected_on_links_within_one_host_by_default() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    init_log();
    let frames = control(Checksum::Remote);
    random_flips(Checksum::Remote, frames, 8, false);
    bent_headers(Checksum::Remote, frames);
}

/// Sets the lane flag, CRC fixed up, on the first data frame: a frame that says its payload
/// is in a same-host lane on a link that has none.
fn flag_first_data_frame(frame: &mut [u8]) -> bool {
    if frame[5] != FrameKind::Data as u8 {
        return false;
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&frame[..HEADER_LEN]);
    set_flags(&mut header, FLAG_LANE, 0);
    frame[..HEADER_LEN].copy_from_slice(&header);
    true
}

/// Points the lane offer at another file (the last hex digit of its name changed).
fn offer_another_file(frame: &mut [u8]) -> bool {
    if frame[5] != FrameKind::LaneOffer as u8 || frame.len() <= HEADER_LEN + 8 {
        return false;
    }
    let last = frame.len() - 1;
    frame[last] = if frame[last] == b'0' { b'1' } else { b'0' };
    true
}

/// Offers one slot more than the lane has (the file's size no longer matches).
fn offer_wrong_size(frame: &mut [u8]) -> bool {
    if frame[5] != FrameKind::LaneOffer as u8 || frame.len() <= HEADER_LEN + 8 {
        return false;
    }
    frame[HEADER_LEN] = frame[HEADER_LEN].wrapping_add(1);
    true
}

/// A data frame flagged as carried by a same-host lane, on a link without one (lanes off),
/// fails the link with a typed error naming it, never a panic, a hang or a wrong sum.
#[test]
fn a_lane_flag_on_a_link_without_a_lane_fails_the_link() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    init_log();
    let plan = Plan { rewrite: Some(flag_first_data_frame), ..Plan::flip(0, 0, false, 0) };
    let (calls, hit, log) = round_with(Checksum::Remote, Algorithm::Auto, Some(plan), false);
    assert!(hit.done.is_some(), "no data frame went through the proxy");
    for (rank, c) in calls.iter().enumerate() {
        assert!(!c.contains(&Ok(false)), "rank {rank} returned a WRONG sum: {c:?}");
    }
    let named = log.lines().any(|l| l.contains("without an accepted lane") && l.contains("peer=0 "));
    assert!(named, "the receiver did not fail the link naming the lane flag: {calls:?}\n{log}");
}

/// A lane offer naming another file, or the wrong size, is refused: the link stays on TCP
/// and every call is exact; the offered file is removed.
#[test]
fn bad_lane_offers_are_refused_and_the_link_keeps_to_tcp() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    init_log();
    for rewrite in [offer_another_file as fn(&mut [u8]) -> bool, offer_wrong_size] {
        let plan = Plan { rewrite: Some(rewrite), ..Plan::flip(0, 0, false, 0) };
        let (calls, hit, log) = round_with(Checksum::Remote, Algorithm::Auto, Some(plan), true);
        assert!(hit.done.is_some(), "no lane offer went through the proxy");
        for (rank, c) in calls.iter().enumerate() {
            assert_eq!(c.len(), CALLS, "rank {rank}: {c:?}\n{log}");
            assert!(c.iter().all(|r| r == &Ok(true)), "rank {rank}: {c:?}\n{log}");
        }
        assert!(log.contains("refused a same-host lane"), "{log}");
        assert!(log.contains("peer refused the same-host lane"), "{log}");
        let left = std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("ringcc-lane-000000000000002a-"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(left, 0, "lane files of the job left behind");
    }
}
