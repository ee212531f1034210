//! Unit tests of `membership` (kept apart to keep the module short).
use super::*;

fn setup(n: usize, min_world: usize) -> (Membership<()>, Instant) {
    let now = Instant::now();
    let config = MembershipConfig { heartbeat_timeout: Duration::from_secs(3), min_world, join_points: false };
    (Membership::new(config, 1, (0..n).map(|r| (r, ())).collect(), now), now)
}

fn ranks(m: &Membership<()>) -> Vec<Rank> {
    m.members().iter().map(|(r, _)| *r).collect()
}

#[test]
fn a_crash_is_one_eviction_and_one_new_view() {
    let (mut m, now) = setup(4, 1);
    m.handle_disconnect(2, now);
    assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 2, epoch: 2, .. })));
    assert_eq!(
        m.poll_event(),
        Some(MembershipEvent::ViewInstalled { epoch: 2, members: vec![(0, ()), (1, ()), (3, ())] })
    );
    assert_eq!(m.poll_event(), None);
    m.handle_suspect(1, 2, 1, false, now);
    assert_eq!(m.poll_event(), None, "a stale suspicion changes nothing");
}

#[test]
fn silence_evicts_after_the_timeout_not_before() {
    let (mut m, now) = setup(3, 1);
    let later = now + Duration::from_secs(2);
    for r in [0, 2] {
        m.handle_heartbeat(r, later);
    }
    m.handle_timeout(later);
    assert_eq!(m.poll_event(), None);
    m.handle_timeout(now + Duration::from_secs(3));
    assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
    assert_eq!(ranks(&m), vec![0, 2]);
}

#[test]
fn a_closed_link_to_a_live_rank_reforms_the_ring_and_waits_for_evidence() {
    let (mut m, now) = setup(3, 1);
    m.handle_suspect(0, 1, 1, false, now);
    assert_eq!(m.poll_event(), None, "a grace period for evidence of a crash first");
    m.handle_timeout(now + REFORM_GRACE);
    assert_eq!(
        m.poll_event(),
        Some(MembershipEvent::ViewInstalled { epoch: 2, members: vec![(0, ()), (1, ()), (2, ())] })
    );
    m.handle_suspect(1, 0, 1, false, now);
    assert_eq!(m.poll_event(), None, "the other end's report of the same break is stale");
    m.handle_disconnect(1, now + Duration::from_millis(10));
    assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
}

#[test]
fn a_link_broken_again_after_reforming_evicts_and_a_healed_one_lapses() {
    let (mut m, now) = setup(3, 1);
    let later = now + Duration::from_secs(3);
    m.handle_suspect(0, 1, 1, false, now);
    m.handle_timeout(now + REFORM_GRACE);
    while m.poll_event().is_some() {}
    for r in 0..3 {
        m.handle_heartbeat(r, later);
    }
    m.handle_timeout(later);
    assert_eq!(m.poll_event(), None, "healed: not reported again in epoch 2");
    m.handle_suspect(0, 1, 2, false, later);
    m.handle_timeout(later + REFORM_GRACE);
    while m.poll_event().is_some() {}
    let (later2, later3) = (later + Duration::from_millis(10), later + Duration::from_secs(3));
    m.handle_suspect(0, 1, 3, false, later2 + REFORM_GRACE);
    for r in 0..3 {
        m.handle_heartbeat(r, later3);
    }
    m.handle_timeout(later3);
    assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
}

#[test]
fn a_stall_evicts_after_the_grace_and_quorum_is_enforced() {
    let (mut m, now) = setup(2, 2);
    m.handle_suspect(0, 1, 1, true, now);
    assert_eq!(m.poll_event(), None);
    assert_eq!(m.poll_timeout(), Some(now + STALL_GRACE));
    m.handle_timeout(now + STALL_GRACE);
    assert!(matches!(m.poll_event(), Some(MembershipEvent::Evicted { rank: 1, .. })));
    assert!(matches!(m.poll_event(), Some(MembershipEvent::QuorumLost { alive: 1, required: 2, .. })));
    assert!(m.is_lost());
}

#[test]
fn a_chain_of_stalls_evicts_only_its_head() {
    let (mut m, now) = setup(5, 1);
    // Rank 2 is stuck: 3 waits on 2, 4 on 3, 0 on 4, 1 on 0; the reports come out of order.
    for (reporter, suspect) in [(0, 4), (4, 3), (1, 0), (3, 2)] {
        m.handle_suspect(reporter, suspect, 1, true, now);
    }
    m.handle_timeout(now + STALL_GRACE);
    let evicted: Vec<Rank> = drain(&mut m)
        .into_iter()
        .filter_map(|e| if let MembershipEvent::Evicted { rank, .. } = e { Some(rank) } else { None })
        .collect();
    assert_eq!(evicted, vec![2]);
    // A full cycle (everyone waits on everyone): the first one reported goes.
    let (mut m, now) = setup(3, 1);
    for (reporter, suspect) in [(1, 0), (2, 1), (0, 2)] {
        m.handle_suspect(reporter, suspect, 1, true, now);
    }
    m.handle_timeout(now + STALL_GRACE);
    assert!(matches!(drain(&mut m).first(), Some(MembershipEvent::Evicted { rank: 0, .. })));
}

fn report(completed: u64, holds: bool, attempt_epoch: u64) -> ResyncReport {
    ResyncReport { completed, holds, attempt_epoch, handed: None }
}

fn handed(mut r: ResyncReport, seq: u64, attempt: u64) -> ResyncReport {
    r.handed = Some((seq, attempt));
    r
}

/// `decide` over reports of ranks 0, 1, ...: (seq, finish, source, takers).
fn verdict(reports: &[ResyncReport]) -> (u64, bool, Option<usize>, Vec<usize>) {
    let all: Vec<(usize, ResyncReport)> = reports.iter().copied().enumerate().collect();
    let v = decide(&all);
    (v.seq, v.finish, v.source, v.takers)
}

#[test]
fn decide_finishes_only_what_someone_returned_or_everyone_holds() {
    // Nobody started call 5 yet, or some lack its data: redo.
    assert_eq!(verdict(&[report(5, false, 1), report(5, false, 1)]), (5, false, None, vec![]));
    assert_eq!(verdict(&[report(5, true, 1), report(5, false, 1)]), (5, false, None, vec![]));
    // Everyone holds the result of one attempt: finish.
    assert_eq!(verdict(&[report(5, true, 1), report(5, true, 1)]), (5, true, None, vec![]));
    // Held results of different attempts are not the same result: redo.
    assert_eq!(verdict(&[report(5, true, 1), report(5, true, 2)]), (5, false, None, vec![]));
    // Someone returned call 5 (with completion tokens): the others finish it.
    assert_eq!(verdict(&[report(6, false, 1), report(5, true, 1)]), (5, true, None, vec![]));
    assert_eq!(verdict(&[]), (0, false, None, vec![]));
}

#[test]
fn decide_finishes_from_a_handed_over_result_those_who_lack_it() {
    // Rank 0 returned call 5 (no tokens) and retains it; ranks 1 and 2 lack it: they take
    // rank 0's copy, and rank 0 redoes its call 6.
    let got = verdict(&[handed(report(6, false, 2), 5, 1), report(5, false, 1), report(5, false, 1)]);
    assert_eq!(got, (5, true, Some(0), vec![1, 2]));
    // A holder that has not returned yet hands it too; a rank holding the same attempt
    // keeps its own.
    let got = verdict(&[report(5, false, 1), handed(report(5, true, 1), 5, 1), report(5, true, 1)]);
    assert_eq!(got, (5, true, Some(1), vec![0]));
    // A retained copy of an older call (everyone is past it) decides nothing.
    let got = verdict(&[handed(report(6, false, 2), 5, 1), report(6, false, 2)]);
    assert_eq!(got, (6, false, None, vec![]));
    // Several copies: the latest attempt, then the lowest rank; a holder of another
    // attempt takes it as well.
    let got = verdict(&[report(5, true, 1), handed(report(6, false, 3), 5, 2), handed(report(6, false, 3), 5, 2)]);
    assert_eq!(got, (5, true, Some(1), vec![0]));
    let got = verdict(&[handed(report(5, true, 1), 5, 1), handed(report(5, true, 1), 5, 1)]);
    assert_eq!(got, (5, true, Some(0), vec![]), "everyone holds it: nobody takes a copy");
}

#[test]
fn a_decision_comes_once_every_survivor_reported_for_the_current_view() {
    let (mut m, now) = setup(3, 1);
    m.handle_resync(0, 1, report(0, false, 1), now);
    m.handle_disconnect(2, now);
    while m.poll_event().is_some() {}
    m.handle_resync(0, 1, report(3, true, 1), now);
    assert_eq!(m.poll_event(), None, "a report for the old view is ignored");
    m.handle_resync(0, 2, report(3, true, 1), now);
    assert_eq!(m.poll_event(), None, "rank 1 has not reported");
    m.handle_resync(1, 2, report(4, false, 1), now);
    assert_eq!(
        m.poll_event(),
        Some(MembershipEvent::Decision { epoch: 2, seq: 3, finish: true, source: None, takers: vec![] })
    );
    m.handle_resync(1, 2, report(4, false, 1), now);
    assert_eq!(m.poll_event(), None, "one decision per view");
    // A failure before everyone reported restarts the collection for the next view.
    m.handle_disconnect(1, now);
    while m.poll_event().is_some() {}
    m.handle_resync(0, 3, report(3, false, 2), now);
    assert_eq!(
        m.poll_event(),
        Some(MembershipEvent::Decision { epoch: 3, seq: 3, finish: false, source: None, takers: vec![] })
    );
}

#[test]
fn a_clean_leave_is_not_a_failure() {
    let (mut m, now) = setup(3, 1);
    m.handle_leave(2);
    m.handle_disconnect(2, now);
    m.handle_timeout(now + Duration::from_secs(10));
    // Ranks 0 and 1 went silent too and are evicted; rank 2 left cleanly and is not.
    let mut evicted = Vec::new();
    while let Some(e) = m.poll_event() {
        if let MembershipEvent::Evicted { rank, .. } = e {
            evicted.push(rank);
        }
    }
    assert!(!evicted.contains(&2), "{evicted:?}");
}

fn drain(m: &mut Membership<()>) -> Vec<MembershipEvent<()>> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn a_restarted_rank_is_admitted_at_a_boundary_in_its_old_place() {
    let (mut m, now) = setup(4, 1);
    m.handle_disconnect(1, now);
    drain(&mut m);
    // No join while the failure is being resolved.
    m.handle_join(1, (), now).unwrap();
    assert_eq!(drain(&mut m), vec![]);
    for r in [0, 2, 3] {
        m.handle_resync(r, 2, report(10, false, 1), now);
    }
    let events = drain(&mut m);
    assert_eq!(events[0], MembershipEvent::Decision { epoch: 2, seq: 10, finish: false, source: None, takers: vec![] });
    assert_eq!(events[1], MembershipEvent::JoinPrepare { epoch: 2 });
    m.handle_join_ack(0, 2, 11, now);
    m.handle_join_ack(2, 2, 11, now);
    assert_eq!(drain(&mut m), vec![]);
    m.handle_join_ack(3, 2, 10, now);
    let events = drain(&mut m);
    let MembershipEvent::Admitted { epoch, members, joined, start_seq } = &events[0] else { panic!("{events:?}") };
    assert_eq!((*epoch, joined.as_slice(), *start_seq), (3, &[1][..], 11));
    assert_eq!(members.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(!m.is_joining(1));
    assert!(m.handle_join(1, (), now).is_err(), "a member cannot join again");
}

#[test]
fn a_failure_during_a_join_puts_it_off_and_a_vanished_joiner_releases_the_members() {
    let (mut m, now) = setup(4, 1);
    m.handle_disconnect(3, now);
    for r in [0, 1, 2] {
        m.handle_resync(r, 2, report(0, false, 1), now);
    }
    m.handle_join(3, (), now).unwrap();
    assert_eq!(drain(&mut m).last(), Some(&MembershipEvent::JoinPrepare { epoch: 2 }));
    m.handle_join_ack(0, 2, 5, now);
    m.handle_disconnect(2, now);
    assert!(m.is_joining(3), "put off, not forgotten");
    drain(&mut m);
    for r in [0, 1] {
        m.handle_resync(r, 3, report(5, false, 2), now);
    }
    assert_eq!(drain(&mut m).last(), Some(&MembershipEvent::JoinPrepare { epoch: 3 }));
    m.handle_disconnect(3, now);
    assert_eq!(drain(&mut m), vec![MembershipEvent::JoinCancel { epoch: 3 }]);
    assert!(!m.is_joining(3));
    assert_eq!(ranks(&m), vec![0, 1]);
}

#[test]
fn with_join_points_a_joiner_waits_for_every_member_at_one() {
    let (mut m, now) = setup(3, 1);
    m.config.join_points = true;
    m.handle_disconnect(2, now);
    for r in [0, 1] {
        m.handle_resync(r, 2, report(4, false, 1), now);
    }
    drain(&mut m);
    m.handle_join(2, (), now).unwrap();
    assert_eq!(drain(&mut m), vec![], "no JoinPrepare with join points");
    m.handle_join_point(0, 2, 9, now);
    assert_eq!(drain(&mut m), vec![]);
    m.handle_join_point(1, 1, 9, now);
    assert_eq!(drain(&mut m), vec![], "a point of an older view does not count");
    m.handle_join_point(1, 2, 9, now);
    let events = drain(&mut m);
    assert!(
        matches!(&events[..], [MembershipEvent::Admitted { epoch: 3, start_seq: 9, joined, .. }] if joined == &[2]),
        "{events:?}"
    );
    for r in [0, 1, 2] {
        m.handle_join_point(r, 3, 20, now);
    }
    assert_eq!(drain(&mut m), vec![MembershipEvent::JoinPointDone { epoch: 3, seq: 20 }]);
}

#[test]
fn a_view_after_a_failure_leaves_out_the_ranks_that_left() {
    let (mut m, now) = setup(4, 1);
    m.handle_leave(3);
    m.handle_disconnect(0, now);
    let mut views = Vec::new();
    while let Some(e) = m.poll_event() {
        if let MembershipEvent::ViewInstalled { members, .. } = e {
            views.push(members.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        }
    }
    assert_eq!(views, vec![vec![1, 2]]);
    // Only the two that are still in the ring have to report for a decision.
    m.handle_resync(1, 2, report(0, true, 1), now);
    assert_eq!(m.poll_event(), None);
    m.handle_resync(2, 2, report(0, true, 1), now);
    assert_eq!(
        m.poll_event(),
        Some(MembershipEvent::Decision { epoch: 2, seq: 0, finish: true, source: None, takers: vec![] })
    );
}
