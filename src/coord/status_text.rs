//! The status table and its diagnosis, as text.
//!
//! The diagnosis follows "waits for" from every stuck rank (one whose report has not
//! changed for [`QUIET_AFTER`] while it waits for a frame) through other stuck ranks to the
//! first rank that is not itself stuck waiting: the one holding the others up. It then
//! says what that rank is doing: silent (frozen, or its event loop blocked), gone, idle
//! (its program has not made the call), in another call, or still moving (slow).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::{Activity, JobStatus, Presence, RankStatus, Stage, QUIET_AFTER};
use crate::Rank;

/// `2.6s`, `75.0s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `rank 2`, `ranks 0, 2`.
fn ranks(list: &[Rank]) -> String {
    let names: Vec<String> = list.iter().map(Rank::to_string).collect();
    match list.len() {
        1 => format!("rank {}", names.join("")),
        _ => format!("ranks {}", names.join(", ")),
    }
}

pub(super) fn render(s: &JobStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header(s));
    let _ = writeln!(
        out,
        "{:>5}  {:<14} {:>5} {:>6} {:>6}  {:<14} {:<14} {:>4}  {:<9} {:>8}  heard",
        "rank", "state", "epoch", "done", "call", "collective", "phase", "step", "waits for", "same for"
    );
    for r in &s.ranks {
        let _ = writeln!(out, "{}", row(r));
    }
    for line in diagnose(s) {
        let _ = writeln!(out, "diagnosis: {line}");
    }
    out
}

fn header(s: &JobStatus) -> String {
    let job = format!("job {:#x}", s.job);
    match &s.stage {
        Stage::Rendezvous { deadline_in } => {
            let registered = s.ranks.iter().filter(|r| r.presence == Presence::Registered).count();
            format!(
                "{job}, rendezvous: {registered} of {} ranks registered, deadline in {}",
                s.world_size,
                secs(*deadline_in)
            )
        }
        Stage::Running { epoch, quorum_lost } => {
            let members =
                s.ranks.iter().filter(|r| matches!(r.presence, Presence::Member | Presence::Disconnected)).count();
            let lost = if *quorum_lost { ", QUORUM LOST" } else { "" };
            format!(
                "{job}, epoch {epoch}, {members} of {} ranks in the view, heartbeat timeout {}{lost}",
                s.world_size,
                secs(s.heartbeat_timeout)
            )
        }
        Stage::Refused { reason } => format!("{job}, refused by the coordinator: {reason}"),
    }
}

fn row(r: &RankStatus) -> String {
    let dash = || "-".to_string();
    // A silent rank's row is its last report, which may be long out of date.
    let state = match (&r.presence, &r.report) {
        _ if silent(r) => "silent".to_string(),
        (Presence::Member, Some(p)) => p.activity.name().to_string(),
        (presence, _) => presence.name().to_string(),
    };
    let p = r.report.as_ref();
    let call = p.and_then(|p| p.call.as_ref());
    let heard = r.heard_ago.map_or_else(|| "never".into(), |d| format!("{} ago", secs(d)));
    format!(
        "{:>5}  {:<14} {:>5} {:>6} {:>6}  {:<14} {:<14} {:>4}  {:<9} {:>8}  {heard}",
        r.rank,
        state,
        p.map_or_else(dash, |p| p.epoch.to_string()),
        p.map_or_else(dash, |p| p.completed.to_string()),
        call.map_or_else(dash, |c| c.seq.to_string()),
        call.map_or_else(dash, |c| c.coll.name().to_string()),
        call.map_or_else(dash, |c| c.phase.clone()),
        call.map_or_else(dash, |c| c.step.to_string()),
        call.and_then(|c| c.waits_for).map_or_else(dash, |w| format!("rank {w}")),
        r.unchanged_for.map_or_else(dash, secs),
    )
}

/// A member the coordinator has not heard from for [`QUIET_AFTER`].
fn silent(r: &RankStatus) -> bool {
    r.presence == Presence::Member && r.heard_ago.is_some_and(|d| d >= QUIET_AFTER)
}

/// The rank `r` has been waiting for, unchanged, for [`QUIET_AFTER`] (None if it is not
/// stuck waiting, or is silent: its report may be stale).
fn stuck_on(r: &RankStatus) -> Option<Rank> {
    if silent(r) || r.presence != Presence::Member || r.unchanged_for.is_none_or(|d| d < QUIET_AFTER) {
        return None;
    }
    let p = r.report.as_ref().filter(|p| p.activity == Activity::Running)?;
    p.call.as_ref()?.waits_for
}

/// Where following "waits for" from a stuck rank ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// At this rank, which is not stuck waiting itself.
    At(Rank),
    /// In a cycle of stuck ranks, listed from its lowest rank in waiting order.
    Cycle(Vec<Rank>),
}

/// Follows "waits for" from `start`; `through` gets the stuck ranks passed on the way.
fn follow(start: Rank, by_rank: &BTreeMap<Rank, &RankStatus>, through: &mut Vec<Rank>) -> End {
    let mut path = vec![start];
    let mut at = start;
    while let Some(next) = by_rank.get(&at).and_then(|r| stuck_on(r)) {
        if let Some(i) = path.iter().position(|&p| p == next) {
            let mut cycle = path.split_off(i);
            let low = cycle.iter().enumerate().min_by_key(|(_, r)| **r).map_or(0, |(i, _)| i);
            cycle.rotate_left(low);
            return End::Cycle(cycle);
        }
        if by_rank.get(&next).and_then(|r| stuck_on(r)).is_none() {
            return End::At(next);
        }
        through.push(next);
        path.push(next);
        at = next;
    }
    End::At(at)
}

/// One line per rank holding others up (or per cycle), then silent ranks nobody waits for.
fn diagnose(s: &JobStatus) -> Vec<String> {
    if let Stage::Rendezvous { .. } = s.stage {
        let missing: Vec<Rank> =
            s.ranks.iter().filter(|r| r.presence == Presence::Unregistered).map(|r| r.rank).collect();
        return vec![format!("waiting for {} to register", ranks(&missing))];
    }
    let by_rank: BTreeMap<Rank, &RankStatus> = s.ranks.iter().map(|r| (r.rank, r)).collect();
    // End -> [(waiting rank, the stuck ranks it waits through)].
    let mut groups: BTreeMap<End, Vec<(Rank, Vec<Rank>)>> = BTreeMap::new();
    for r in s.ranks.iter().filter(|r| stuck_on(r).is_some()) {
        let mut through = Vec::new();
        let end = follow(r.rank, &by_rank, &mut through);
        groups.entry(end).or_default().push((r.rank, through));
    }
    for waiters in groups.values_mut() {
        waiters.sort_by_key(|(w, through)| (through.len(), *w));
    }
    let mut lines = Vec::new();
    for (end, waiters) in &groups {
        match end {
            End::At(x) => {
                let who: Vec<String> = waiters
                    .iter()
                    .map(|(w, through)| match through.last() {
                        None => format!("{w}"),
                        Some(_) => {
                            let via: Vec<String> = through.iter().map(Rank::to_string).collect();
                            format!("{w} (through {})", via.join(", "))
                        }
                    })
                    .collect();
                let seq = waiters.first().and_then(|(w, _)| call_seq(by_rank.get(w).copied()));
                let what = by_rank.get(x).map_or_else(|| "is not in the job".into(), |r| what_holds(r, seq));
                lines.push(format!("rank {x} {what}; waiting for it: {}", who.join(", ")));
            }
            End::Cycle(cycle) => {
                let ring: Vec<String> = cycle.iter().chain(cycle.first()).map(Rank::to_string).collect();
                lines.push(format!(
                    "ranks {} wait for each other and no frame moves (a lost frame, or calls that do not match)",
                    ring.join(" -> ")
                ));
            }
        }
    }
    for r in s.ranks.iter().filter(|r| silent(r)) {
        if !groups.contains_key(&End::At(r.rank)) {
            lines.push(format!("rank {} {}", r.rank, what_holds(r, None)));
        }
    }
    if lines.is_empty() {
        lines.push(format!("no rank has waited without progress for {} or more", secs(QUIET_AFTER)));
    }
    lines
}

fn call_seq(r: Option<&RankStatus>) -> Option<u64> {
    r?.report.as_ref()?.call.as_ref().map(|c| c.seq)
}

/// What rank `r`, which others wait for in call `seq`, is doing (a phrase after "rank N").
fn what_holds(r: &RankStatus, seq: Option<u64>) -> String {
    match &r.presence {
        Presence::Evicted { reason } => return format!("was evicted ({reason})"),
        Presence::Left => return "left the job".into(),
        Presence::Disconnected => return "lost its connection to the coordinator".into(),
        Presence::Unregistered | Presence::Registered | Presence::Member => {}
    }
    let Some(p) = r.report.as_ref() else { return "has not reported its progress yet".into() };
    if silent(r) {
        let ago = r.heard_ago.map_or_else(String::new, |d| format!(" for {}", secs(d)));
        return format!("has sent nothing{ago} (stopped, frozen, or its event loop is blocked)");
    }
    match (p.activity, p.call.as_ref()) {
        (Activity::Idle, _) => {
            let call = seq.map_or_else(|| "the call".into(), |s| format!("call {s}"));
            format!("is idle after {} calls: its program has not started {call}", p.completed)
        }
        (Activity::Running, Some(c)) if seq.is_some_and(|s| s != c.seq) => {
            format!("is in call {} ({}), not in the call the others wait in", c.seq, c.phase)
        }
        (Activity::Running, Some(c)) if c.waits_for.is_none() => {
            format!("is in call {}, sending (its frames leave slowly)", c.seq)
        }
        (Activity::Running, Some(c)) => {
            format!("is in call {} ({} step {}) and still moving (slow)", c.seq, c.phase, c.step)
        }
        (activity, _) => format!("is {}", describe(activity)),
    }
}

fn describe(a: Activity) -> &'static str {
    match a {
        Activity::Idle => "idle",
        Activity::Running => "running",
        Activity::AwaitingView => "waiting for a new view after a link broke",
        Activity::AwaitingDecision => "waiting for the coordinator's decision on the interrupted call",
        Activity::Rebuilding => "connecting to the neighbours of a new view",
        Activity::Stopped => "stopped (evicted, quorum lost, or out of step)",
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::report;
    use super::super::{Activity, JobStatus, Presence, RankStatus, Stage};
    use super::*;

    fn rank(rank: Rank, p: Option<crate::coord::status::Progress>, heard: f64, same: f64) -> RankStatus {
        RankStatus {
            rank,
            presence: Presence::Member,
            report: p,
            heard_ago: Some(Duration::from_secs_f64(heard)),
            unchanged_for: Some(Duration::from_secs_f64(same)),
        }
    }

    fn job(ranks: Vec<RankStatus>) -> JobStatus {
        JobStatus {
            job: 0x2a,
            world_size: ranks.len(),
            stage: Stage::Running { epoch: 1, quorum_lost: false },
            heartbeat_timeout: Duration::from_secs(5),
            ranks,
        }
    }

    fn diagnosis(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("diagnosis: ")).collect()
    }

    #[test]
    fn a_frozen_rank_is_named_with_every_rank_held_up_behind_it() {
        // Ring 0 -> 1 -> 2 -> 0: rank 1 froze; 2 waits for 1, 0 waits for 2.
        let s = job(vec![
            rank(0, Some(report(0, 3, "reduce-scatter", Some(2))), 0.2, 2.0),
            rank(1, Some(report(1, 3, "reduce-scatter", Some(0))), 2.6, 2.6),
            rank(2, Some(report(2, 3, "reduce-scatter", Some(1))), 0.3, 2.4),
        ]);
        let text = s.render();
        assert!(text.starts_with("job 0x2a, epoch 1, 3 of 3 ranks in the view, heartbeat timeout 5.0s\n"), "{text}");
        let row2 = text.lines().find(|l| l.trim_start().starts_with("2 ")).unwrap();
        assert!(row2.contains("running") && row2.contains("reduce-scatter") && row2.contains("rank 1"), "{row2}");
        let row1: Vec<&str> =
            text.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap().split_whitespace().collect();
        assert_eq!((row1[1], row1[row1.len() - 2]), ("silent", "2.6s"), "{text}");
        assert_eq!(
            diagnosis(&text),
            ["rank 1 has sent nothing for 2.6s (stopped, frozen, or its event loop is blocked); \
              waiting for it: 2, 0 (through 2)"]
        );
    }

    #[test]
    fn an_idle_rank_and_an_evicted_rank_are_told_apart() {
        let mut idle = report(1, 0, "x", None);
        idle.activity = Activity::Idle;
        idle.call = None;
        idle.completed = 3;
        let s = job(vec![rank(0, Some(report(0, 3, "all-gather", Some(1))), 0.1, 4.0), rank(1, Some(idle), 0.1, 4.0)]);
        assert_eq!(
            diagnosis(&s.render()),
            ["rank 1 is idle after 3 calls: its program has not started call 3; waiting for it: 0"]
        );
        let mut s = job(vec![
            rank(0, Some(report(0, 3, "all-gather", Some(1))), 0.1, 4.0),
            rank(1, Some(report(1, 3, "all-gather", Some(0))), 9.0, 9.0),
        ]);
        s.ranks[1].presence = Presence::Evicted { reason: "no heartbeat for 5s".into() };
        let text = s.render();
        assert_eq!(diagnosis(&text), ["rank 1 was evicted (no heartbeat for 5s); waiting for it: 0"]);
        assert!(text.contains("1 of 2 ranks in the view"), "{text}");
    }

    #[test]
    fn cycles_moving_ranks_and_quiet_jobs_have_their_own_words() {
        let s = job(vec![
            rank(0, Some(report(0, 5, "fin", Some(1))), 0.1, 3.0),
            rank(1, Some(report(1, 5, "fin", Some(0))), 0.1, 3.0),
        ]);
        assert_eq!(
            diagnosis(&s.render()),
            ["ranks 0 -> 1 -> 0 wait for each other and no frame moves (a lost frame, or calls that do not match)"]
        );
        let s = job(vec![
            rank(0, Some(report(0, 5, "reduce-scatter", Some(1))), 0.1, 3.0),
            rank(1, Some(report(1, 5, "reduce-scatter", Some(0))), 0.1, 0.2),
        ]);
        assert_eq!(
            diagnosis(&s.render()),
            ["rank 1 is in call 5 (reduce-scatter step 1) and still moving (slow); waiting for it: 0"]
        );
        let mut s =
            job(vec![rank(0, Some(report(0, 5, "reduce-scatter", Some(1))), 0.1, 0.3), rank(1, None, 0.1, 0.1)]);
        (s.ranks[1].heard_ago, s.ranks[1].unchanged_for) = (None, None);
        let text = s.render();
        assert_eq!(diagnosis(&text), ["no rank has waited without progress for 1.5s or more"]);
        assert!(text.lines().nth(3).unwrap().ends_with("never"), "{text}");
    }

    #[test]
    fn rendezvous_names_the_missing_ranks() {
        let mut s = job(vec![rank(0, None, 0.0, 0.0), rank(1, None, 0.0, 0.0), rank(2, None, 0.0, 0.0)]);
        s.stage = Stage::Rendezvous { deadline_in: Duration::from_secs(55) };
        s.ranks[0].presence = Presence::Registered;
        s.ranks[1].presence = Presence::Unregistered;
        s.ranks[2].presence = Presence::Unregistered;
        let text = s.render();
        assert!(text.starts_with("job 0x2a, rendezvous: 1 of 3 ranks registered, deadline in 55.0s\n"), "{text}");
        assert_eq!(diagnosis(&text), ["waiting for ranks 1, 2 to register"]);
    }
}
