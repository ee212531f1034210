//! ringrogue: the hostile-input test harness of `tests/rogue.rs` (not for production use).
//!
//! `ringrogue attack --coordinator ADDR --ring ADDR,...` hammers the given listening ports
//! with bad input (random bytes, valid magics with huge lengths, truncated hellos, a hello
//! then silence, a bounded connection flood, wrong magic and version, a wrong secret, a
//! replayed handshake, and, with the job secret, garbage after a genuine handshake) until
//! its stdin closes or `--seconds` pass, then prints one `rogue:` line per (target, attack)
//! with what the listener did. Only loopback addresses are accepted.
//!
//! `ringrogue victim --count N` is a rank (configured by the `RINGCC_*` environment) that
//! warms up, prints `ready`, waits for `go` on stdin, runs N small and medium all-reduces
//! checking each exactly, prints `done`, and waits for stdin to close before a last call.
//! Any error, wrong element or membership change makes it exit non-zero.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ringcc::wire::auth::{self, Side, MAC_LEN};
use ringcc::wire::control::CONTROL_HEAD_LEN;
use ringcc::wire::hello::{Hello, Role, HELLO_LEN};
use ringcc::wire::{CollKind, FrameKind, Header, Phase, HEADER_LEN};
use ringcc::{Communicator, ReduceOp};

#[derive(Parser, Debug)]
#[command(about = "Hostile-input test harness for ringcc (tests/rogue.rs)")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Attack listening ports until stdin closes or the time runs out.
    Attack {
        /// The coordinator's address.
        #[arg(long)]
        coordinator: SocketAddr,
        /// Ring listeners of the ranks.
        #[arg(long, value_delimiter = ',')]
        ring: Vec<SocketAddr>,
        /// Job id the ring runs (hellos carry it).
        #[arg(long, default_value_t = 7)]
        job: u64,
        /// Upper bound on the attack's length in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Connections per flood (bounded: the flood is one burst per round).
        #[arg(long, default_value_t = 200)]
        flood: usize,
    },
    /// A rank running `count` exact all-reduces (see the file's docs).
    Victim {
        /// All-reduces to run after `go` (at least).
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Keep calling past `count` until this many seconds have passed (every rank
        /// decides by the same rule on call boundaries: rank 0 broadcasts the decision).
        #[arg(long, default_value_t = 0.0)]
        min_seconds: f64,
    },
}

/// What a listener did with one attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The listener closed or reset the connection.
    Closed,
    /// Nothing came back and the connection stayed open until the rogue gave up.
    Silent,
    /// The connection could not be opened in time (backlog full).
    NoConnect,
    /// The handshake completed: only the replay probe's genuine run expects this.
    Authenticated,
    /// The listener answered with a hello whose MAC the rogue could not verify (it lacks
    /// the secret), then closed after the rogue's bad MAC.
    AnsweredThenClosed,
}

type Tally = Arc<Mutex<BTreeMap<(String, &'static str, Outcome), u64>>>;

fn main() -> ExitCode {
    let args = Args::parse();
    match args.mode {
        Mode::Attack { coordinator, ring, job, seconds, flood } => attack(coordinator, ring, job, seconds, flood),
        Mode::Victim { count, min_seconds } => match victim(count, Duration::from_secs_f64(min_seconds)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringrogue victim: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

// ---------------------------------------------------------------- attack side

/// One listening port under attack.
#[derive(Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    /// Role a genuine initiator would put in its hello.
    role: Role,
    job: u64,
    /// How long to wait for an answer before calling the connection silent.
    patience: Duration,
}

fn attack(coordinator: SocketAddr, ring: Vec<SocketAddr>, job: u64, seconds: u64, flood: usize) -> ExitCode {
    if !coordinator.ip().is_loopback() || ring.iter().any(|a| !a.ip().is_loopback()) {
        eprintln!("ringrogue: only loopback targets are allowed");
        return ExitCode::FAILURE;
    }
    let secret = std::env::var("RINGROGUE_SECRET").unwrap_or_default().into_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let tally: Tally = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut targets = vec![Target {
        name: "coordinator".into(),
        addr: coordinator,
        role: Role::Rank,
        job: 0,
        patience: Duration::from_secs(2),
    }];
    for (i, addr) in ring.into_iter().enumerate() {
        // Ring listeners accept only while a ring is being built: a short wait suffices.
        let patience = Duration::from_millis(300);
        targets.push(Target { name: format!("ring{i}"), addr, role: Role::RingPrev, job, patience });
    }
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let threads: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let (stop, tally, secret) = (stop.clone(), tally.clone(), secret.clone());
            let name = t.name.clone();
            (name, std::thread::spawn(move || hammer(&t, &secret, flood, deadline, &stop, &tally)))
        })
        .collect();
    println!("rogue: attacking");
    let _ = std::io::stdout().flush();
    let mut rounds = 0;
    for (name, t) in threads {
        let (r, held) = t.join().unwrap_or((0, 0));
        rounds += r;
        println!("rogue: {name} flood-held-max {held}");
    }
    let tally = tally.lock().map(|t| t.clone()).unwrap_or_default();
    for ((target, name, outcome), n) in tally {
        println!("rogue: {target} {name} {outcome:?} {n}");
    }
    println!("rogue: {rounds} rounds");
    ExitCode::SUCCESS
}

/// Attacks one target until told to stop, with three loops at once: the fast attacks, the
/// silent ones (each holds a connection for the listener's handshake deadline) and the
/// flood. Returns the fast rounds run and the most flood connections held open at once.
fn hammer(
    t: &Target,
    secret: &[u8],
    flood_count: usize,
    deadline: Instant,
    stop: &AtomicBool,
    tally: &Tally,
) -> (u64, usize) {
    let record = |name: &'static str, o: Outcome| {
        if let Ok(mut m) = tally.lock() {
            *m.entry((t.name.clone(), name, o)).or_insert(0) += 1;
        }
    };
    let going = || !stop.load(Ordering::SeqCst) && Instant::now() < deadline;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while going() {
                for (name, o) in silent_attacks(t) {
                    record(name, o);
                }
            }
        });
        let flood_loop = scope.spawn(|| {
            let mut held_max = 0;
            while going() {
                let outcomes = flood(t, flood_count);
                held_max = held_max.max(outcomes.iter().filter(|o| **o == Outcome::Silent).count());
                for o in outcomes {
                    record("connection-flood", o);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            held_max
        });
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(t.addr.port()) ^ u64::from(std::process::id()));
        let mut rounds = 0u64;
        while going() {
            fast_round(t, secret, &mut rng, &record);
            rounds += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (rounds, flood_loop.join().unwrap_or(0))
    })
}

/// One of each attack that gets its answer at once.
fn fast_round(t: &Target, secret: &[u8], rng: &mut Rng, record: &dyn Fn(&'static str, Outcome)) {
    let mut noise = vec![0u8; 4096];
    rng.fill(&mut noise);
    record("random-bytes", send_and_watch(t, &noise, true));
    record("huge-frame-length", send_and_watch(t, &huge_frame(t.job), true));
    record("huge-control-length", send_and_watch(t, &huge_control(), true));
    let hello = hello_for(t, rng).encode();
    record("truncated-hello", send_and_watch(t, &hello[..HELLO_LEN / 2], false));
    let mut bad = hello;
    bad[0..4].copy_from_slice(b"RGXX");
    record("wrong-magic", send_and_watch(t, &bad, true));
    let mut bad = hello;
    bad[4] = 99;
    record("wrong-version", send_and_watch(t, &bad, true));
    record("wrong-secret", wrong_secret(t, rng));
    if !secret.is_empty() {
        let (genuine, replayed) = replay(t, secret, rng);
        record("genuine-handshake", genuine);
        if let Some(replayed) = replayed {
            record("replayed-handshake", replayed);
        }
        record("garbage-after-handshake", garbage_after_auth(t, secret, rng));
    }
}

/// A tiny xorshift generator: the noise needs no quality, only variety.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn connect(t: &Target) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(1)).ok()?;
    s.set_nodelay(true).ok()?;
    Some(s)
}

/// Reads until the peer closes (or resets) or `patience` passes, discarding what arrives.
fn watch(s: &mut TcpStream, patience: Duration) -> Outcome {
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Outcome::Silent;
        }
        match s.read(&mut buf) {
            Ok(0) => return Outcome::Closed,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Outcome::Silent
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Closed,
        }
    }
}

/// Connects, sends `bytes`, optionally keeps the write side open, and watches.
fn send_and_watch(t: &Target, bytes: &[u8], keep_open: bool) -> Outcome {
    let Some(mut s) = connect(t) else { return Outcome::NoConnect };
    if s.write_all(bytes).is_err() {
        return Outcome::Closed;
    }
    if !keep_open {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    watch(&mut s, t.patience)
}

fn hello_for(t: &Target, rng: &mut Rng) -> Hello {
    let mut nonce = [0u8; 16];
    rng.fill(&mut nonce);
    Hello {
        role: t.role,
        job: t.job,
        epoch: if t.role == Role::Rank { 0 } else { 1 },
        rank: 0,
        target: if t.role == Role::Rank { u32::MAX } else { 1 },
        incarnation: 0,
        nonce,
        completed: 0,
        next_seq: 0,
    }
}

/// A frame header with the right magic and version claiming a 4 GiB payload.
fn huge_frame(job: u64) -> Vec<u8> {
    let h = Header {
        kind: FrameKind::Data,
        codec: ringcc::codec::Codec::Raw,
        phase: Phase::ReduceScatter,
        coll: CollKind::AllReduce,
        op: ReduceOp::Sum,
        dtype: ringcc::DataType::F32,
        step: 0,
        job,
        epoch: 1,
        seq: 0,
        len_elems: u64::MAX,
        chunk: 0,
        segment: 0,
        payload_len: 0,
        raw_len: 0,
        sender: 0,
    };
    let mut b = h.encode(&[]).to_vec();
    b[56..64].fill(0xff);
    b
}

/// A control-message head with the right magic and version declaring a 4 GiB body, padded
/// to a hello's length so a listener reading a fixed-size hello gets all of it.
fn huge_control() -> Vec<u8> {
    let mut b = vec![0u8; HELLO_LEN.max(CONTROL_HEAD_LEN)];
    b[0..4].copy_from_slice(b"RGCT");
    b[4] = ringcc::wire::PROTOCOL_VERSION;
    b[5] = 1;
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    b
}

/// Attacks that go quiet after a few bytes, run at once; the listener must close each at
/// its handshake deadline.
fn silent_attacks(t: &Target) -> Vec<(&'static str, Outcome)> {
    let mut rng = Rng(u64::from(t.addr.port()) | 1);
    let hello = hello_for(t, &mut rng).encode();
    let patience = if t.role == Role::Rank { Duration::from_secs(8) } else { t.patience };
    let attacks: [(&'static str, Vec<u8>); 4] = [
        ("truncated-hello-then-silence", hello[..HELLO_LEN / 2].to_vec()),
        ("hello-then-silence", hello.to_vec()),
        ("partial-header-then-silence", huge_frame(t.job)[..HEADER_LEN / 3].to_vec()),
        ("connect-then-silence", Vec::new()),
    ];
    let threads: Vec<_> = attacks
        .into_iter()
        .map(|(name, bytes)| {
            let t = t.clone();
            std::thread::spawn(move || {
                let Some(mut s) = connect(&t) else { return (name, Outcome::NoConnect) };
                if s.write_all(&bytes).is_err() {
                    return (name, Outcome::Closed);
                }
                (name, watch(&mut s, patience))
            })
        })
        .collect();
    threads.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// Reads the responder's hello and MAC (fixed size) within the target's patience. Without
/// an answer: `Silent` if time ran out, `Closed` if the listener closed first (at its
/// connection cap, the coordinator closes newcomers before reading anything).
fn read_answer(s: &mut TcpStream, t: &Target) -> Result<[u8; HELLO_LEN + MAC_LEN], Outcome> {
    let mut b = [0u8; HELLO_LEN + MAC_LEN];
    s.set_read_timeout(Some(t.patience)).map_err(|_| Outcome::Closed)?;
    s.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Outcome::Silent,
        _ => Outcome::Closed,
    })?;
    Ok(b)
}

fn split(b: &[u8; HELLO_LEN + MAC_LEN]) -> ([u8; HELLO_LEN], &[u8]) {
    let mut h = [0u8; HELLO_LEN];
    h.copy_from_slice(&b[..HELLO_LEN]);
    (h, &b[HELLO_LEN..])
}

/// A well-formed hello, then a MAC computed with a wrong secret. The responder's MAC must
/// not verify under the wrong secret either (the rogue cannot authenticate the listener).
fn wrong_secret(t: &Target, rng: &mut Rng) -> Outcome {
    let Some(mut s) = connect(t) else { return Outcome::NoConnect };
    let hello_i = hello_for(t, rng).encode();
    if s.write_all(&hello_i).is_err() {
        return Outcome::Closed;
    }
    let answer = match read_answer(&mut s, t) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let (hello_r, tag) = split(&answer);
    let wrong = b"not-the-job-secret-at-all-000000";
    if auth::verify(wrong, Side::Responder, &hello_i, &hello_r, tag) {
        return Outcome::Authenticated;
    }
    if s.write_all(&auth::mac(wrong, Side::Initiator, &hello_i, &hello_r)).is_err() {
        return Outcome::AnsweredThenClosed;
    }
    match watch(&mut s, t.patience) {
        Outcome::Closed => Outcome::AnsweredThenClosed,
        other => other,
    }
}

/// Runs a genuine handshake (the rogue was given the secret to capture one), then replays
/// the captured hello and MAC on a new connection. Returns both outcomes (the replay only
/// if the genuine run got an answer to capture): the genuine one must authenticate
/// (proving the rogue speaks the protocol), the replay must be answered, then closed.
fn replay(t: &Target, secret: &[u8], rng: &mut Rng) -> (Outcome, Option<Outcome>) {
    let Some(mut s) = connect(t) else { return (Outcome::NoConnect, None) };
    let hello_i = hello_for(t, rng).encode();
    if s.write_all(&hello_i).is_err() {
        return (Outcome::Closed, None);
    }
    let answer = match read_answer(&mut s, t) {
        Ok(a) => a,
        Err(o) => return (o, None),
    };
    let (hello_r, tag) = split(&answer);
    if !auth::verify(secret, Side::Responder, &hello_i, &hello_r, tag) {
        return (Outcome::AnsweredThenClosed, None);
    }
    let mac_i = auth::mac(secret, Side::Initiator, &hello_i, &hello_r);
    if s.write_all(&mac_i).is_err() {
        return (Outcome::AnsweredThenClosed, None);
    }
    // Authenticated and registered nowhere: the listener must keep the connection open.
    let genuine = match watch(&mut s, Duration::from_millis(100)) {
        Outcome::Silent => Outcome::Authenticated,
        _ => Outcome::AnsweredThenClosed,
    };
    drop(s);
    let Some(mut s) = connect(t) else { return (genuine, Some(Outcome::NoConnect)) };
    let mut captured = hello_i.to_vec();
    captured.extend_from_slice(&mac_i);
    if s.write_all(&captured).is_err() {
        return (genuine, Some(Outcome::Closed));
    }
    let replayed = match read_answer(&mut s, t) {
        Ok(_) => match watch(&mut s, t.patience) {
            Outcome::Closed => Outcome::AnsweredThenClosed,
            other => other,
        },
        Err(o) => o,
    };
    (genuine, Some(replayed))
}

/// An insider's garbage: a genuine handshake, then a control message declaring a 4 GiB
/// body. Bounded decoding must close the connection without waiting for the body.
fn garbage_after_auth(t: &Target, secret: &[u8], rng: &mut Rng) -> Outcome {
    let Some(mut s) = connect(t) else { return Outcome::NoConnect };
    let hello_i = hello_for(t, rng).encode();
    if s.write_all(&hello_i).is_err() {
        return Outcome::Closed;
    }
    let answer = match read_answer(&mut s, t) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let (hello_r, _) = split(&answer);
    let mut out = auth::mac(secret, Side::Initiator, &hello_i, &hello_r).to_vec();
    out.extend_from_slice(&huge_control()[..CONTROL_HEAD_LEN]);
    if s.write_all(&out).is_err() {
        return Outcome::Closed;
    }
    watch(&mut s, t.patience)
}

/// Opens up to `count` connections at once, holds them silent briefly, and reports for
/// each whether the listener closed it, kept it, or the connect itself failed. Stops
/// opening after three connects in a row fail (a full backlog drops SYNs).
fn flood(t: &Target, count: usize) -> Vec<Outcome> {
    let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(count);
    let mut failed_in_a_row = 0;
    while conns.len() < count && failed_in_a_row < 3 {
        let c = TcpStream::connect_timeout(&t.addr, Duration::from_millis(200)).ok();
        failed_in_a_row = if c.is_some() { 0 } else { failed_in_a_row + 1 };
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    conns
        .into_iter()
        .map(|c| match c {
            None => Outcome::NoConnect,
            Some(mut s) => watch(&mut s, Duration::from_millis(1)),
        })
        .collect()
}

// ---------------------------------------------------------------- victim side

const SIZES: [usize; 7] = [1, 3, 64, 1000, 4099, 16_384, 65_536];

fn value(rank: usize, i: usize, iteration: usize) -> i64 {
    ((i * 7 + rank * 3 + iteration) % 16) as i64
}

/// One exact all-reduce: f32 on even iterations, i64 on odd ones, over every rank.
fn checked_all_reduce(comm: &Communicator, iteration: usize) -> Result<(), String> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let len = SIZES[iteration % SIZES.len()];
    let everyone: Vec<usize> = (0..world).collect();
    let want = |i: usize| (0..world).map(|r| value(r, i, iteration)).sum::<i64>();
    let (members, wrong) = if iteration % 2 == 0 {
        let mut v: Vec<f32> = (0..len).map(|i| value(rank, i, iteration) as f32).collect();
        let report = comm.all_reduce(&mut v, ReduceOp::Sum).map_err(|e| format!("call {iteration}: {e}"))?;
        (report.members, (0..len).filter(|&i| v[i] != want(i) as f32).count())
    } else {
        let mut v: Vec<i64> = (0..len).map(|i| value(rank, i, iteration)).collect();
        let report = comm.all_reduce(&mut v, ReduceOp::Sum).map_err(|e| format!("call {iteration}: {e}"))?;
        (report.members, (0..len).filter(|&i| v[i] != want(i)).count())
    };
    if members != everyone {
        return Err(format!("call {iteration}: members changed to {members:?}"));
    }
    if wrong > 0 {
        return Err(format!("call {iteration}: {wrong} of {len} elements WRONG"));
    }
    Ok(())
}

fn victim(count: usize, min_time: Duration) -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| e.to_string())?;
    for i in 0..SIZES.len() * 2 {
        checked_all_reduce(&comm, i)?;
    }
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    println!("ready");
    let _ = std::io::stdout().flush();
    stdin.read_line(&mut line).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut calls = 0;
    loop {
        for _ in 0..count.clamp(1, 100) {
            checked_all_reduce(&comm, calls)?;
            calls += 1;
        }
        // Rank 0's clock decides for everyone, so all ranks stop after the same call.
        let mut more = [u8::from(calls < count || started.elapsed() < min_time)];
        comm.broadcast(&mut more, 0).map_err(|e| format!("broadcast after call {calls}: {e}"))?;
        if more[0] == 0 {
            break;
        }
    }
    println!("done {calls} in {:.2} s", started.elapsed().as_secs_f64());
    let _ = std::io::stdout().flush();
    // Stay up (idle) while the test measures memory and descriptors after the attack.
    while stdin.read_line(&mut line).map_err(|e| e.to_string())? > 0 {}
    checked_all_reduce(&comm, calls)?;
    println!("exit ok");
    Ok(())
}
