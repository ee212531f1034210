//! Rank mode: all-reduces in a loop, each result checked exactly against a reference over
//! the members its report names, one line per event on stdout for the driver:
//!
//! ```text
//! start FIRST                                   connected; FIRST: its first call (joiners: joined_at)
//! done IDX EPOCH START_US END_US MEMBERS WRONG SEQ JOINED
//!                                                a call returned Ok (MEMBERS: 0,1,3; SEQ: the
//!                                                report's; JOINED: 2,5 or - if none)
//! err IDX TIME_US KIND MESSAGE                   a call returned Err
//! end KIND DONE                                  the last line (KIND: ok evicted quorum error)
//! ```
//!
//! A restarted rank (`RINGCC_INCARNATION` > 0) joins the running job: its first call is
//! `Communicator::joined_at`, and its inputs and references use that call index on, so its
//! results are checked exactly like everybody's.
//!
//! The driver ends a round early by writing `stop K` on stdin: no call with an index at or
//! past K starts. It announces a K well past every call it has seen complete, so all ranks
//! stop after the same call.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ringcc::{Communicator, Error, ReduceOp};

use crate::procs::now_us;

/// Calls retried after a retryable error before the rank gives up (exact retry makes any
/// retry a finding; the bound keeps a broken build from looping).
const RETRIES_MAX: usize = 20;

/// Element `i` of `rank`'s input to call `idx`: a small integer, so every summation order
/// is exact; it depends on `(i + idx) % 16` only, so the reference is a 16-entry table.
fn value(rank: usize, idx: usize, i: usize) -> f32 {
    (((i + idx) % 16 * 7 + rank * 3) % 16) as f32
}

/// The exact result of call `idx` at element residue `k` = `(i + idx) % 16`.
fn reference(op: ReduceOp, members: &[usize], k: usize) -> f32 {
    let sum: usize = members.iter().map(|&r| (k * 7 + r * 3) % 16).sum();
    match op {
        ReduceOp::Avg => sum as f32 / members.len() as f32,
        _ => sum as f32,
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::PeerClosed { .. } => "peer_closed",
        Error::Interrupted { .. } => "interrupted",
        Error::Protocol { .. } => "protocol",
        Error::Evicted { .. } => "evicted",
        Error::QuorumLost { .. } => "quorum",
        Error::Desynchronized { .. } => "desynchronized",
        _ => "other",
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The driver reading this pipe is gone: nothing left to tell.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Lowers `limit` to each `stop K` read from stdin, until stdin ends.
fn watch_stdin(limit: Arc<AtomicUsize>) {
    let spawned = std::thread::Builder::new().name("chaos-stdin".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if let Some(k) = line.strip_prefix("stop ").and_then(|k| k.trim().parse().ok()) {
                limit.fetch_min(k, Ordering::SeqCst);
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("ringchaos: rank cannot watch stdin ({e}): it runs all its calls");
    }
}

/// Runs up to `calls` all-reduces of `elems` f32 (Sum and Avg alternating), fewer if told
/// to stop. Returns the exit status: 0 after every call, 1 after an error it could not retry.
pub fn run(calls: usize, elems: usize) -> i32 {
    let limit = Arc::new(AtomicUsize::new(calls));
    watch_stdin(limit.clone());
    let comm = match ringcc::Config::from_env().and_then(Communicator::connect) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("err 0 {} {} {}", now_us(), kind(&e), e));
            say("end error 0");
            return 1;
        }
    };
    let rank = comm.rank();
    let mut v = vec![0f32; elems];
    let mut retries = 0;
    let mut idx = comm.joined_at().and_then(|k| usize::try_from(k).ok()).unwrap_or(0);
    say(&format!("start {idx}"));
    while idx < limit.load(Ordering::SeqCst) {
        let op = if idx % 2 == 0 { ReduceOp::Sum } else { ReduceOp::Avg };
        let (start_us, report) = loop {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = value(rank, idx, i));
            let start_us = now_us();
            match comm.all_reduce(&mut v, op) {
                Ok(report) => break (start_us, report),
                Err(e) => {
                    say(&format!("err {idx} {} {} {e}", now_us(), kind(&e)));
                    let retry =
                        matches!(e, Error::PeerClosed { .. } | Error::Interrupted { .. } | Error::Protocol { .. });
                    retries += 1;
                    if !retry || retries > RETRIES_MAX {
                        let end = match e {
                            Error::Evicted { .. } => "evicted",
                            Error::QuorumLost { .. } => "quorum",
                            _ => "error",
                        };
                        say(&format!("end {end} {idx}"));
                        return 1;
                    }
                }
            }
        };
        let end_us = now_us();
        let table: Vec<f32> = (0..16).map(|k| reference(op, &report.members, k)).collect();
        let wrong = v.iter().enumerate().filter(|&(i, x)| *x != table[(i + idx) % 16]).count();
        let list = |rs: &[usize]| rs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
        let joined = if report.joined.is_empty() { "-".to_string() } else { list(&report.joined) };
        let (epoch, members, seq) = (report.epoch, list(&report.members), report.seq);
        say(&format!("done {idx} {epoch} {start_us} {end_us} {members} {wrong} {seq} {joined}"));
        idx += 1;
    }
    say(&format!("end ok {idx}"));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table_is_the_sum_of_the_inputs() {
        let members = [0, 2, 5];
        for idx in [0, 1, 17] {
            for i in 0..40 {
                let sum: f32 = members.iter().map(|&r| value(r, idx, i)).sum();
                assert_eq!(reference(ReduceOp::Sum, &members, (i + idx) % 16), sum);
                assert_eq!(reference(ReduceOp::Avg, &members, (i + idx) % 16), sum / 3.0);
            }
        }
    }
}
