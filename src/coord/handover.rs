//! Results the members hand over with their reports on a new view (calls without
//! completion tokens, `docs/FAILURES.md`), kept until the decision: a decision that
//! finishes a call from one of them sends the copy to the members that lack the result.
//!
//! Only copies for the current view are kept, at most one per (call, attempt) and at most
//! [`KEPT_MAX`] of them: completed counts differ by at most one between members, so honest
//! offers name at most three calls (the running one, and the one before, of the members
//! at either count), each computed in one attempt.

use std::collections::BTreeMap;

use crate::core::membership::Rank;
use crate::wire::control::HandedResult;

/// Most copies kept for one view (see the module docs).
const KEPT_MAX: usize = 4;

/// The copies handed over for the current view.
#[derive(Debug, Default)]
pub(crate) struct Handovers {
    epoch: u64,
    /// What each member offered: (call, attempt epoch).
    offered: BTreeMap<Rank, (u64, u64)>,
    /// One copy per (call, attempt epoch).
    kept: BTreeMap<(u64, u64), HandedResult>,
}

impl Handovers {
    /// `rank` hands over `h` for the view of `epoch` (the current one). Returns false if it
    /// is refused (another view, another rank's name, too many copies).
    pub(crate) fn offer(&mut self, rank: Rank, epoch: u64, h: HandedResult) -> bool {
        if h.epoch != epoch || h.rank as usize != rank {
            return false;
        }
        if self.epoch != epoch {
            *self = Handovers { epoch, ..Handovers::default() };
        }
        let key = (h.seq, h.attempt_epoch);
        if !self.kept.contains_key(&key) {
            if self.kept.len() >= KEPT_MAX {
                return false;
            }
            self.kept.insert(key, h);
        }
        self.offered.insert(rank, key);
        true
    }

    /// What `rank` handed over for the view of `epoch` and is kept: (call, attempt epoch),
    /// for its report (`ResyncReport::handed`).
    pub(crate) fn handed_by(&self, rank: Rank, epoch: u64) -> Option<(u64, u64)> {
        (self.epoch == epoch).then(|| self.offered.get(&rank).copied()).flatten()
    }

    /// The copy `source` handed over for the view of `epoch`, readdressed for that view.
    pub(crate) fn copy_of(&self, source: Rank, epoch: u64) -> Option<HandedResult> {
        let key = self.handed_by(source, epoch)?;
        self.kept.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(rank: u32, epoch: u64, seq: u64, attempt: u64) -> HandedResult {
        HandedResult { rank, epoch, seq, attempt_epoch: attempt, members: vec![0, 1, 2], bytes: vec![rank as u8; 4] }
    }

    #[test]
    fn copies_are_kept_per_view_and_per_attempt_and_bounded() {
        let mut s = Handovers::default();
        assert!(s.offer(1, 5, h(1, 5, 9, 4)));
        assert!(s.offer(2, 5, h(2, 5, 9, 4)), "the same result again");
        assert_eq!(s.handed_by(2, 5), Some((9, 4)));
        assert_eq!(s.copy_of(2, 5).map(|c| c.bytes), Some(vec![1; 4]), "one copy per (call, attempt)");
        assert!(!s.offer(0, 5, h(3, 5, 9, 4)), "a copy under another rank's name");
        assert!(!s.offer(0, 5, h(0, 4, 9, 4)), "a copy for an older view");
        for seq in 10..13 {
            assert!(s.offer(0, 5, h(0, 5, seq, 4)));
        }
        assert!(!s.offer(0, 5, h(0, 5, 13, 4)), "beyond the bound");
        // The next view starts afresh.
        assert!(s.offer(0, 6, h(0, 6, 9, 5)));
        assert_eq!(s.handed_by(1, 6), None);
        assert_eq!(s.handed_by(1, 5), None);
    }
}
