//! Fault hooks for tests: `RINGCC_FAULT` makes a rank fail at an exact point of an exact
//! call, so failure tests cover every phase instead of hoping a random kill lands there.
//!
//! `RINGCC_FAULT="rank=2,seq=137,phase=allgather,step=3,action=exit"`:
//! * `rank`: the rank that fails (default: any rank that sees the variable).
//! * `seq`: the call (0-based count of collectives on the communicator). Required.
//! * `phase`: `start` (the call was just started), `reduce-scatter`/`rs`,
//!   `all-gather`/`ag`, `broadcast`, `gather` and `doubling` (the latency path's two
//!   algorithms), `fin` (waiting for completion tokens),
//!   `result` (the last frame it expects just arrived: it holds the result, and its own
//!   last frames may not have left yet), or `recovery` (installing the next new view after
//!   that call started). Default `start`.
//! * `step`: the step of the phase the rank waits for (default: any).
//! * `action`: `exit` (the process ends at once, as with `kill -9`: the kernel closes its
//!   sockets), `stall` (the event loop freezes: no frames, no heartbeats, as with
//!   `kill -STOP`), or `close` (both ring links are closed, the process lives on).
//!
//! Only a rank's first incarnation applies it: a restarted rank (`RINGCC_INCARNATION` above
//! 0) runs without faults, so a test can kill a rank once and watch it rejoin.

use crate::{Error, Rank};

/// What the failing rank does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultAction {
    /// End the process at once.
    Exit,
    /// Freeze the event loop.
    Stall,
    /// Close both ring links.
    Close,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    seq: u64,
    phase: String,
    step: Option<u32>,
    /// What to do when the point is reached.
    pub(crate) action: FaultAction,
}

impl FaultPlan {
    /// Reads `RINGCC_FAULT` for `rank`: `Ok(None)` if unset or meant for another rank.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed value.
    pub(crate) fn from_env(rank: Rank) -> Result<Option<FaultPlan>, Error> {
        match std::env::var("RINGCC_FAULT") {
            Ok(v) if !v.trim().is_empty() => FaultPlan::parse(&v, rank),
            _ => Ok(None),
        }
    }

    /// Parses a plan (see the module docs); `None` if it names another rank.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field.
    pub(crate) fn parse(text: &str, rank: Rank) -> Result<Option<FaultPlan>, Error> {
        let bad = |m: String| Error::Config(format!("RINGCC_FAULT={text}: {m}"));
        let (mut seq, mut phase, mut step, mut action, mut for_rank) = (None, "start".to_string(), None, None, None);
        for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (k, v) = field.split_once('=').ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad(format!("{k}={v} is not a number")));
            match k {
                "rank" => for_rank = Some(num(v)? as Rank),
                "seq" => seq = Some(num(v)?),
                "step" => step = Some(num(v)? as u32),
                "phase" => {
                    phase = match v {
                        "start" | "fin" | "gather" | "doubling" | "broadcast" | "recovery" | "result" => v.to_string(),
                        "rs" | "reduce-scatter" | "reducescatter" => "reduce-scatter".into(),
                        "ag" | "all-gather" | "allgather" => "all-gather".into(),
                        _ => return Err(bad(format!("unknown phase {v:?}"))),
                    }
                }
                "action" => {
                    action = Some(match v {
                        "exit" => FaultAction::Exit,
                        "stall" => FaultAction::Stall,
                        "close" => FaultAction::Close,
                        _ => return Err(bad(format!("unknown action {v:?}: use exit, stall or close"))),
                    })
                }
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        let seq = seq.ok_or_else(|| bad("seq is required".into()))?;
        let action = action.ok_or_else(|| bad("action is required".into()))?;
        if for_rank.is_some_and(|r| r != rank) {
            return Ok(None);
        }
        Ok(Some(FaultPlan { seq, phase, step, action }))
    }

    /// True when call `seq`, waiting for `phase` step `step`, is the planned point.
    pub(crate) fn due(&self, seq: u64, phase: &str, step: u32) -> bool {
        seq == self.seq && phase == self.phase && self.step.is_none_or(|s| s == step)
    }

    /// True for a plan that fires on the next view change after call `seq` started.
    pub(crate) fn due_in_recovery(&self, started_seq: u64) -> bool {
        self.phase == "recovery" && started_seq >= self.seq
    }
}

/// Carries out `action` on the calling (event-loop) thread. `Close` is the caller's job.
pub(crate) fn strike(rank: Rank, plan: &FaultPlan) {
    eprintln!("ringcc: rank {rank}: RINGCC_FAULT fires: {plan:?}");
    match plan.action {
        FaultAction::Exit => std::process::exit(137),
        FaultAction::Stall => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        FaultAction::Close => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_match_exactly() {
        let p = FaultPlan::parse("rank=2,seq=137,phase=allgather,step=3,action=exit", 2).unwrap().unwrap();
        assert!(p.due(137, "all-gather", 3));
        assert!(!p.due(137, "all-gather", 2) && !p.due(136, "all-gather", 3) && !p.due(137, "fin", 3));
        assert_eq!(FaultPlan::parse("rank=2,seq=1,action=stall", 1).unwrap(), None);
        let any_step = FaultPlan::parse("seq=4,phase=rs,action=close", 0).unwrap().unwrap();
        assert!(any_step.due(4, "reduce-scatter", 9) && any_step.action == FaultAction::Close);
        for bad in
            ["seq=1", "action=exit", "seq=x,action=exit", "seq=1,action=boom", "seq=1,phase=x,action=exit", "oops"]
        {
            assert!(matches!(FaultPlan::parse(bad, 0), Err(Error::Config(_))), "{bad}");
        }
    }
}
