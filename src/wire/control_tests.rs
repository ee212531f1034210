//! Unit tests of `control` (kept apart to keep the module short).
use super::*;
use proptest::prelude::*;

fn samples() -> Vec<Control> {
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    vec![
        Control::Register(Registration {
            rank: 3,
            world_size: 4,
            incarnation: 1,
            listen: addr,
            host: "h1".into(),
            fingerprint: vec![("world_size".into(), "4".into())],
        }),
        Control::View(View {
            job: 7,
            epoch: 1,
            world_size: 2,
            members: vec![Member { rank: 0, addr, host: "a".into() }, Member { rank: 1, addr, host: "b".into() }],
            start_seq: None,
            joined: Vec::new(),
        }),
        Control::Refused(Refusal::ConfigMismatch {
            field: "segment_bytes".into(),
            rank: 0,
            value: "1".into(),
            other_rank: 2,
            other_value: "2".into(),
        }),
        Control::Refused(Refusal::Rendezvous { reason: "rank 3 missing".into() }),
        Control::Leave { rank: 9 },
        Control::Heartbeat { rank: 2, epoch: 5 },
        Control::Suspect { rank: 1, suspect: 2, epoch: 3, stalled: true, reason: "no frame for 30s".into() },
        Control::Evicted { epoch: 4, reason: "heartbeat timeout".into() },
        Control::QuorumLost { epoch: 6, alive: 1, required: 2 },
        Control::Resync { rank: 2, epoch: 7, completed: 41, holds: true, attempt_epoch: 6 },
        Control::Decision { epoch: 7, seq: 41, finish: false },
        Control::Progress(Progress {
            rank: 2,
            epoch: 3,
            completed: 17,
            activity: Activity::Running,
            queued: 2,
            received_bytes: 1 << 40,
            call: Some(CallProgress {
                seq: 17,
                coll: CollKind::AllReduce,
                phase: "reduce-scatter".into(),
                step: 4,
                waits_for: Some(1),
                running: Duration::from_millis(2500),
            }),
        }),
        Control::Progress(Progress {
            rank: 0,
            epoch: 1,
            completed: 0,
            activity: Activity::Idle,
            queued: 0,
            received_bytes: 0,
            call: None,
        }),
        Control::View(View {
            job: 7,
            epoch: 9,
            world_size: 3,
            members: vec![Member { rank: 2, addr, host: "a".into() }],
            start_seq: Some(120),
            joined: vec![2],
        }),
        Control::JoinPrepare { epoch: 8 },
        Control::JoinAck { rank: 1, epoch: 8, next_seq: 120 },
        Control::JoinCancel { epoch: 8 },
        Control::JoinPoint { rank: 3, epoch: 8, seq: 300 },
        Control::JoinPointDone { epoch: 8, seq: 300 },
        Control::Result(HandedResult {
            rank: 2,
            epoch: 9,
            seq: 41,
            attempt_epoch: 7,
            members: vec![0, 2, 3],
            bytes: vec![1, 2, 3, 250],
        }),
        Control::Result(HandedResult {
            rank: 0,
            epoch: 9,
            seq: 0,
            attempt_epoch: 1,
            members: vec![0],
            bytes: vec![0xab; crate::limits::RESULT_RETAIN_BYTES_MAX],
        }),
    ]
}

#[test]
fn a_result_beyond_the_retain_limit_is_refused_before_any_allocation() {
    let mut msg = Control::Result(HandedResult {
        rank: 1,
        epoch: 2,
        seq: 3,
        attempt_epoch: 1,
        members: vec![1],
        bytes: vec![7; 8],
    })
    .encode();
    // The byte count sits after the head, rank, three u64s and the one-member list.
    let at = CONTROL_HEAD_LEN + 4 + 24 + 4 + 4;
    msg[at..at + 4].copy_from_slice(&(crate::limits::RESULT_RETAIN_BYTES_MAX as u32 + 1).to_le_bytes());
    assert!(matches!(Control::decode(&msg), Err(WireError::TooLong { field: "result bytes", .. })));
}

#[test]
fn round_trip_and_partial() {
    for m in samples() {
        let b = m.encode();
        assert_eq!(Control::decode(&b).unwrap(), Some((m.clone(), b.len())));
        for cut in 0..b.len() {
            assert_eq!(Control::decode(&b[..cut]).unwrap(), None, "prefix {cut} of {m:?}");
        }
    }
}

#[test]
fn huge_declared_length_is_refused_without_waiting() {
    let mut b = Control::Leave { rank: 1 }.encode();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Control::decode(&b), Err(WireError::TooLong { .. })));
}

/// The encoded progress report with a call. Body offsets: rank 0..4, epoch 4..12,
/// completed 12..20, activity 20, queued 21..25, received 25..33, call flag 33, seq
/// 34..42, collective 42, phase length 43..45, phase from 45, then step, wait flag,
/// waited-for rank and running time (the last 8 bytes).
fn progress_message() -> Vec<u8> {
    samples()[11].encode()
}

#[test]
fn progress_reports_refuse_bad_ids_phases_and_ranks_and_never_send_them() {
    let activity = CONTROL_HEAD_LEN + 20;
    let mut b = progress_message();
    b[activity] = 6;
    assert!(matches!(Control::decode(&b), Err(WireError::UnknownId { field: "activity", .. })));
    let (coll, phase) = (CONTROL_HEAD_LEN + 42, CONTROL_HEAD_LEN + 45);
    let mut b = progress_message();
    b[coll] = 0;
    assert!(matches!(Control::decode(&b), Err(WireError::UnknownId { field: "collective", .. })));
    let mut b = progress_message();
    b[phase] = b'\x1b';
    assert_eq!(Control::decode(&b), Err(WireError::Malformed { what: "phase name" }));
    let mut b = progress_message();
    b[CONTROL_HEAD_LEN..CONTROL_HEAD_LEN + 4].copy_from_slice(&(WORLD_MAX as u32).to_le_bytes());
    assert!(matches!(Control::decode(&b), Err(WireError::Malformed { .. })));
    // A waited-for rank beyond the world limit.
    let mut b = progress_message();
    let at = b.len() - 8 - 4;
    b[at..at + 4].copy_from_slice(&(WORLD_MAX as u32).to_le_bytes());
    assert!(matches!(Control::decode(&b), Err(WireError::Malformed { .. })));
    // A bad name on the sending side goes out as "unknown", which decodes.
    let Control::Progress(mut p) = samples()[11].clone() else { panic!("sample 11 is a progress report") };
    if let Some(c) = p.call.as_mut() {
        c.phase = "Bad Phase\n".into();
    }
    let (decoded, _) = Control::decode(&Control::Progress(p).encode()).unwrap().unwrap();
    let Control::Progress(d) = decoded else { panic!("decoded {decoded:?}") };
    assert_eq!(d.call.map(|c| c.phase), Some("unknown".to_string()));
}

proptest! {
    #[test]
    fn any_bytes_give_message_need_more_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Control::decode(&bytes);
        let mut framed = CONTROL_MAGIC.to_vec();
        framed.push(PROTOCOL_VERSION);
        framed.extend_from_slice(&bytes);
        if let Ok(Some((_, used))) = Control::decode(&framed) {
            prop_assert!(used <= framed.len());
        }
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics(which in 0usize..19, cut in 0usize..200) {
        let b = samples()[which].encode();
        let body_len = b.len() - CONTROL_HEAD_LEN;
        let keep = cut.min(body_len);
        let mut t = b[..CONTROL_HEAD_LEN + keep].to_vec();
        t[8..12].copy_from_slice(&(keep as u32).to_le_bytes());
        let r = Control::decode(&t);
        if keep < body_len {
            prop_assert!(r.is_err());
        }
    }
}
