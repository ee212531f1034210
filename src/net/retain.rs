//! Results kept for recovery of calls that run without completion tokens
//! (`core::fin::tokens_needed`; the contract is in `docs/FAILURES.md`).
//!
//! Such a call returns as soon as this rank holds its result, possibly before its
//! neighbours do. So this rank keeps a copy of the result until its next call returns
//! (that call needed every member's input, so by then every member had returned this
//! one). When a new view arrives, the copy (or the result of the running call, if this
//! rank holds it) goes to the coordinator with the report; the coordinator hands it to the
//! survivors that lack it, and they finish the call with it.

use crate::core::collective::Spec;
use crate::wire::control::HandedResult;
use crate::Rank;

/// A copy of one call's result.
#[derive(Debug, Default)]
struct Copy {
    seq: u64,
    /// Epoch of the attempt that computed it, and its members ascending.
    attempt_epoch: u64,
    members: Vec<Rank>,
    /// Reused from call to call (capacity kept).
    bytes: Vec<u8>,
    valid: bool,
}

/// What one rank keeps and receives for recovery without completion tokens.
#[derive(Debug, Default)]
pub(super) struct Results {
    /// `Config::exact_retry`: without it nothing is kept and every call runs without tokens.
    exact_retry: bool,
    retained: Copy,
    /// A copy the coordinator handed over for the view being installed.
    handed: Option<HandedResult>,
}

impl Results {
    pub(super) fn new(exact_retry: bool) -> Results {
        Results { exact_retry, ..Results::default() }
    }

    /// Whether a call needs completion tokens (`Spec::fin`).
    pub(super) fn tokens_needed(&self, spec: &crate::net::JobSpec) -> bool {
        self.exact_retry && crate::core::fin::tokens_needed(spec.coll, spec.len_elems * spec.dtype.size())
    }

    /// Call `seq` returned `result` here, computed in the attempt of `attempt_epoch` over
    /// `members`: keep a copy if it ran without tokens; otherwise (every member held it)
    /// the older copy is no longer needed either.
    pub(super) fn returned(&mut self, spec: &Spec, attempt_epoch: u64, members: &[Rank], result: &[u8]) {
        let c = &mut self.retained;
        c.valid = self.exact_retry && !spec.fin;
        if c.valid {
            c.seq = spec.seq;
            c.attempt_epoch = attempt_epoch;
            c.members.clear();
            c.members.extend_from_slice(members);
            c.bytes.clear();
            c.bytes.extend_from_slice(result);
        }
    }

    /// The result this rank hands over with its report on the view of `epoch`: the running
    /// call's if it ran without tokens and this rank holds its result (`running`: spec,
    /// attempt epoch, members, buffer), else the retained copy of the last call returned.
    pub(super) fn offer(
        &self,
        rank: Rank,
        epoch: u64,
        running: Option<(&Spec, u64, &[Rank], &[u8])>,
    ) -> Option<HandedResult> {
        if !self.exact_retry {
            return None;
        }
        let handed = |seq, attempt_epoch, members: &[Rank], bytes: &[u8]| HandedResult {
            rank: rank as u32,
            epoch,
            seq,
            attempt_epoch,
            members: members.to_vec(),
            bytes: bytes.to_vec(),
        };
        match running {
            Some((spec, attempt, members, buf)) if !spec.fin => Some(handed(spec.seq, attempt, members, buf)),
            _ => {
                let c = &self.retained;
                c.valid.then(|| handed(c.seq, c.attempt_epoch, &c.members, &c.bytes))
            }
        }
    }

    /// The coordinator handed over a copy for the view of `h.epoch`.
    pub(super) fn receive(&mut self, h: HandedResult) {
        self.handed = Some(h);
    }

    /// A new view is being installed: a copy handed over for an older one is void.
    pub(super) fn new_view(&mut self) {
        self.handed = None;
    }

    /// The copy handed over for call `seq` in the view of `epoch`, if any.
    pub(super) fn take_handed(&mut self, epoch: u64, seq: u64) -> Option<HandedResult> {
        self.handed.take().filter(|h| h.epoch == epoch && h.seq == seq)
    }
}
