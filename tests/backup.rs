//! Exact retry's backup: a collective saves each input segment just before it first
//! overwrites it, and `restore_input` gives back the exact input at every point of the call
//! (what a redo after a failure starts from). Rings of collectives routed in memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ringcc::codec::CodecChoice;
use ringcc::core::collective::{Algorithm, Collective, Link, Spec, Status};
use ringcc::wire::header::verify_crc;
use ringcc::wire::{CollKind, Header, HEADER_LEN};
use ringcc::{DataType, ReduceOp};

fn spec(world: usize, pos: usize, len_elems: usize, algorithm: Algorithm, op: ReduceOp) -> Spec {
    Spec {
        coll: CollKind::AllReduce,
        op,
        dtype: DataType::F32,
        codec: CodecChoice::default(),
        job: 1,
        epoch: 1,
        seq: 1,
        len_elems,
        world,
        pos,
        rank: pos as u32,
        block_of_pos: (0..world).collect(),
        root_pos: 0,
        segment_bytes: 256,
        contributors: world,
        algorithm,
        progress_timeout: Duration::from_secs(30),
        fin: true,
        payload_crc: [true, true, true],
        partner_links: false,
    }
}

/// Runs one all-reduce over `world` in-memory ranks; after every delivered frame, every
/// rank's restored input must equal its original input. Half the receivable frames take
/// the in-place path. Returns the number of checks made.
fn run(world: usize, len_elems: usize, algorithm: Algorithm, op: ReduceOp) -> usize {
    let now = Instant::now();
    let inputs: Vec<Vec<u8>> = (0..world)
        .map(|r| (0..len_elems).flat_map(|i| (((i * 7 + r * 3) % 16) as f32 + 0.5).to_le_bytes()).collect())
        .collect();
    let mut bufs = inputs.clone();
    let mut colls: Vec<Collective> = (0..world)
        .map(|p| {
            let mut c = Collective::start(spec(world, p, len_elems, algorithm, op), now, &mut bufs[p]);
            let handed_back = c.attach_backup(Vec::new(), len_elems * 4);
            let latency = matches!(algorithm, Algorithm::Direct | Algorithm::Doubling);
            assert_eq!(handed_back.is_some(), latency, "{algorithm:?}: only the latency path hands the buffer back");
            c
        })
        .collect();
    let mut wire: VecDeque<(usize, Link, Vec<u8>)> = VecDeque::new();
    let mut checks = 0;
    let mut flip = false;
    for _ in 0..1_000_000 {
        for p in 0..world {
            while let Some(t) = colls[p].poll_transmit(&bufs[p]) {
                let payload = match &t.owned {
                    Some(o) => o.to_vec(),
                    None => bufs[p][t.payload.clone()].to_vec(),
                };
                let mut frame = t.header.to_vec();
                frame.extend_from_slice(&payload);
                let (to, rx) = match t.link {
                    Link::Next => ((p + 1) % world, Link::Prev),
                    Link::Prev => ((p + world - 1) % world, Link::Next),
                    Link::Partner(q) => (q as usize, Link::Partner(p as u32)),
                };
                wire.push_back((to, rx, frame));
            }
        }
        let Some((to, rx, frame)) = wire.pop_front() else { break };
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&frame[..HEADER_LEN]);
        let (h, crc) = Header::decode(&head).expect("header");
        let payload = &frame[HEADER_LEN..];
        verify_crc(&head, crc, payload).expect("crc");
        flip = !flip;
        match colls[to].recv_target(rx, &h) {
            Some(range) if flip => {
                colls[to].before_in_place(rx, &h, &bufs[to]);
                bufs[to][range].copy_from_slice(payload);
                colls[to].handle_frame_in_place(now, rx, &h, &mut bufs[to]).expect("frame");
            }
            _ => colls[to].handle_frame(now, rx, &h, payload, &mut bufs[to]).expect("frame"),
        }
        let mut restored = bufs[to].clone();
        assert!(colls[to].restore_input(&mut restored));
        assert!(restored == inputs[to], "world {world} {algorithm:?}: rank {to} restored a wrong input");
        checks += 1;
    }
    for (p, c) in colls.iter().enumerate() {
        assert_eq!(*c.status(), Status::Done, "rank {p}");
    }
    assert!(bufs.windows(2).all(|w| w[0] == w[1]), "results differ");
    checks
}

#[test]
fn the_input_is_restorable_at_every_point_of_every_ring() {
    for world in [2, 3, 4, 5] {
        for algorithm in [Algorithm::Ring, Algorithm::Bidir, Algorithm::Direct, Algorithm::Doubling] {
            let len = if matches!(algorithm, Algorithm::Direct | Algorithm::Doubling) { 50 } else { 1000 };
            for op in [ReduceOp::Sum, ReduceOp::Avg] {
                assert!(run(world, len, algorithm, op) > 0);
            }
        }
    }
}

/// The backup buffer outlives calls: the latency path hands it back untouched, and a ring
/// call reuses a longer one whole instead of shrinking or reallocating it. (The event loop
/// used to drop it at every small call, so a training step's next large all-reduce
/// allocated and zeroed its backup again, and the freed buffer raised peak memory.)
#[test]
fn the_backup_buffer_is_handed_back_or_reused_never_reallocated() {
    let now = Instant::now();
    // Small enough for the latency path (one segment of the spec's 256 bytes).
    let mut tiny = vec![0u8; 50 * 4];
    let mut small = Collective::start(spec(4, 1, 50, Algorithm::Doubling, ReduceOp::Sum), now, &mut tiny);
    let spare: Vec<u8> = Vec::with_capacity(1 << 20);
    let back = small.attach_backup(spare, tiny.len()).expect("the latency path hands the buffer back");
    assert_eq!((back.len(), back.capacity()), (0, 1 << 20));
    assert!(small.take_backup().is_none());

    let mut buf = vec![0u8; 1000 * 4];

    let long = vec![7u8; 1 << 20];
    let addr = long.as_ptr();
    let mut ring = Collective::start(spec(4, 1, 1000, Algorithm::Ring, ReduceOp::Sum), now, &mut buf);
    assert!(ring.attach_backup(long, buf.len()).is_none(), "a ring call keeps the backup");
    let kept = ring.take_backup().expect("backup attached");
    assert_eq!((kept.as_ptr(), kept.len()), (addr, 1 << 20), "reused whole, not reallocated or shrunk");

    // A buffer too short grows to the call's length.
    let mut ring = Collective::start(spec(4, 1, 1000, Algorithm::Ring, ReduceOp::Sum), now, &mut buf);
    assert!(ring.attach_backup(vec![1u8; 16], buf.len()).is_none());
    assert_eq!(ring.take_backup().map(|b| b.len()), Some(buf.len()));
}
