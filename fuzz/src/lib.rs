//! Entry points of the fuzz targets, one per decoder that reads peer bytes. Each feeds its
//! input to a decoder and checks structural properties, not only the absence of a panic:
//! accepted input round-trips, lengths stay within their caps, a checksum or MAC only
//! passes when it is right. `fuzz/fuzz_targets/*.rs` call them under libFuzzer;
//! `tests/fuzz_corpus.rs` in the main crate includes this file and replays the committed
//! corpus through them on the stable toolchain.

use std::cell::RefCell;

use ringcc::codec::{round_in_place, Codec, Decoder, Encoder, ALL_CODECS};
use ringcc::coord::{Member, Registration, View};
use ringcc::limits::{CONTROL_BYTES_MAX, SEGMENT_BYTES_MAX};
use ringcc::wire::auth::{self, Side, MAC_LEN};
use ringcc::wire::control::{Control, HandedResult, Refusal, CONTROL_HEAD_LEN};
use ringcc::wire::header::verify_crc;
use ringcc::wire::hello::{Hello, Role, HELLO_LEN};
use ringcc::wire::{CollKind, FrameKind, Header, Phase, HEADER_LEN};
use ringcc::{bf16, f16, DataType, ReduceOp};

/// A target's entry point: takes one input, panics if a property fails.
pub type Entry = fn(&[u8]);

/// Every target: its name (the corpus folder) and its entry point.
pub const TARGETS: [(&str, Entry); 4] =
    [("header", header), ("handshake", handshake), ("control", control), ("codec", codec)];

/// Payloads longer than this are not rebuilt by the header target (keeps each run fast).
const PAYLOAD_REBUILD_MAX: usize = 4096;
/// Largest decoded segment the codec target asks for, in bytes.
const CODEC_BYTES_MAX: usize = 64 << 10;

/// Frame header: `data` is a 72-byte header then payload bytes.
///
/// A header that decodes respects the payload caps and encodes back to the same bytes
/// (the CRC aside); its CRC verifies exactly when it matches the payload. Rebuilt with a
/// payload of its declared length, the frame verifies, and any single flipped bit in header
/// or payload is then caught by decoding or by the CRC.
pub fn header(data: &[u8]) {
    let Some((head, payload)) = data.split_first_chunk::<HEADER_LEN>() else { return };
    let Ok((h, crc)) = Header::decode(head) else { return };
    assert!(h.payload_len as usize <= SEGMENT_BYTES_MAX && h.raw_len as usize <= SEGMENT_BYTES_MAX);
    let len = h.payload_len as usize;
    if len > PAYLOAD_REBUILD_MAX {
        return;
    }
    let mut body: Vec<u8> = payload.iter().copied().cycle().take(len).collect();
    body.resize(len, 0);
    let again = h.encode(&body);
    assert_eq!(again[..HEADER_LEN - 4], head[..HEADER_LEN - 4], "decode then encode changed the header");
    assert_eq!(verify_crc(head, crc, &body).is_ok(), again[HEADER_LEN - 4..] == head[HEADER_LEN - 4..]);
    let (h2, crc2) = Header::decode(&again).expect("an encoded header decodes");
    assert_eq!(h2, h);
    verify_crc(&again, crc2, &body).expect("an encoded frame verifies");
    let bits = (HEADER_LEN + len) * 8;
    let flip = payload.first().map_or(0, |&b| usize::from(b) * 131) % bits;
    let mut frame = again.to_vec();
    frame.extend_from_slice(&body);
    frame[flip / 8] ^= 1 << (flip % 8);
    let (fh, fp) = frame.split_at(HEADER_LEN);
    let fh: &[u8; HEADER_LEN] = fh.try_into().expect("header length");
    let caught = match Header::decode(fh) {
        Err(_) => true,
        Ok((d, c)) => d.payload_len as usize != len || verify_crc(fh, c, fp).is_err(),
    };
    assert!(caught, "flip of bit {flip} went unnoticed");
}

/// Handshake: `data` is the initiator's hello, the responder's hello, a MAC, then a secret.
///
/// A hello that decodes encodes back to the same bytes. A MAC verifies only if it is
/// exactly the MAC for that secret, side and pair of hellos, never for the other side
/// (reflection) or with the hellos swapped.
pub fn handshake(data: &[u8]) {
    let Some((hello_i, rest)) = data.split_first_chunk::<HELLO_LEN>() else { return };
    if let Ok(h) = Hello::decode(hello_i) {
        assert_eq!(&h.encode(), hello_i, "decode then encode changed the hello");
    }
    let Some((hello_r, rest)) = rest.split_first_chunk::<HELLO_LEN>() else { return };
    let Some((tag, secret)) = rest.split_first_chunk::<MAC_LEN>() else { return };
    for side in [Side::Initiator, Side::Responder] {
        let right = auth::mac(secret, side, hello_i, hello_r);
        assert_eq!(auth::verify(secret, side, hello_i, hello_r, tag), tag == &right);
        assert!(auth::verify(secret, side, hello_i, hello_r, &right));
        assert!(!auth::verify(secret, side, hello_i, hello_r, &right[..MAC_LEN - 1]), "a truncated MAC verified");
        let other = if side == Side::Initiator { Side::Responder } else { Side::Initiator };
        assert!(!auth::verify(secret, other, hello_i, hello_r, &right), "a reflected MAC verified");
        if hello_i != hello_r {
            assert!(!auth::verify(secret, side, hello_r, hello_i, &right), "a MAC over swapped hellos verified");
        }
    }
}

/// Control messages: `data` is a byte stream from a peer.
///
/// Decoding never claims more bytes than it was given or than the caps allow; a decoded
/// message decodes the same from exactly its own bytes, is refused as incomplete from any
/// shorter prefix, and re-encodes to a message that decodes to itself.
pub fn control(data: &[u8]) {
    let Ok(found) = Control::decode(data) else { return };
    let Some((msg, used)) = found else {
        assert!(data.len() < CONTROL_HEAD_LEN + CONTROL_BYTES_MAX);
        return;
    };
    assert!(used <= data.len() && used <= CONTROL_HEAD_LEN + CONTROL_BYTES_MAX);
    assert_eq!(Control::decode(&data[..used]), Ok(Some((msg.clone(), used))));
    for cut in [0, used / 2, used - 1] {
        assert_eq!(Control::decode(&data[..cut]), Ok(None), "a {cut}-byte prefix of a {used}-byte message");
    }
    let again = msg.encode();
    assert_eq!(Control::decode(&again), Ok(Some((msg, again.len()))), "encode then decode changed it");
}

thread_local! {
    static CODECS: RefCell<Option<(Encoder, Decoder)>> = const { RefCell::new(None) };
}

/// Payload codecs: `data[0]` picks the codec, `data[1]` the element type, `data[2..4]` the
/// decoded element count the receiver expects; the rest is the payload.
///
/// A payload that decodes fills exactly the expected size, and `decode_reduce` (Sum into
/// zeros) agrees with it; `raw` copies the payload, `bf16`/`f16` widen each element exactly.
/// Used as raw elements instead, the rest round-trips through every codec: exactly for the
/// lossless ones, to the bits `round_in_place` gives for the lossy ones.
pub fn codec(data: &[u8]) {
    let [c, d, n0, n1, payload @ ..] = data else { return };
    let codec = ALL_CODECS[usize::from(*c) % ALL_CODECS.len()];
    let Some(dtype) = DataType::from_u8(d % 7 + 1) else { return };
    let size = dtype.size();
    let out_len = (usize::from(u16::from_le_bytes([*n0, *n1])) * size).min(CODEC_BYTES_MAX / size * size);
    CODECS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some((Encoder::new(1).expect("zstd encoder"), Decoder::new().expect("zstd decoder")));
        }
        let Some((enc, dec)) = cell.as_mut() else { return };
        let mut out = vec![0u8; out_len];
        let decoded = dec.decode(codec, dtype, payload, &mut out);
        let mut reduced = vec![0u8; out_len];
        let folded = dec.decode_reduce(codec, dtype, ReduceOp::Sum, payload, &mut reduced);
        assert_eq!(decoded.is_ok(), folded.is_ok(), "decode and decode_reduce disagree: {decoded:?} {folded:?}");
        if decoded.is_ok() {
            check_decoded(codec, dtype, payload, &out, &reduced);
        }
        let raw = &payload[..(payload.len().min(CODEC_BYTES_MAX) / size) * size];
        round_trip(enc, dec, codec, dtype, raw);
    });
}

fn check_decoded(codec: Codec, dtype: DataType, payload: &[u8], out: &[u8], reduced: &[u8]) {
    match codec {
        Codec::Raw => assert_eq!(payload, out),
        Codec::Bf16 | Codec::F16 => {
            assert_eq!(payload.len() * 2, out.len());
            for (p, o) in payload.chunks_exact(2).zip(out.chunks_exact(4)) {
                let bits = u16::from_le_bytes([p[0], p[1]]);
                let want =
                    if codec == Codec::Bf16 { bf16::from_bits(bits).to_f32() } else { f16::from_bits(bits).to_f32() };
                let got = f32::from_ne_bytes([o[0], o[1], o[2], o[3]]);
                assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{want} widened to {got}");
            }
        }
        _ => {}
    }
    // 0 + x is x bit for bit for integers; floats may turn -0 into +0 or quiet a NaN.
    if matches!(dtype, DataType::I32 | DataType::I64 | DataType::U8) {
        assert_eq!(out, reduced, "decode_reduce(Sum) into zeros differs from decode");
    }
}

fn round_trip(enc: &mut Encoder, dec: &mut Decoder, codec: Codec, dtype: DataType, raw: &[u8]) {
    let mut wire = Vec::new();
    let Ok(sent_as) = enc.encode(codec, dtype, raw, &mut wire) else {
        assert!(!codec.supports(dtype), "{} refused {} elements it supports", codec.name(), dtype.name());
        return;
    };
    assert!(wire.len() <= codec.payload_len_max(raw.len()), "{} payload longer than its cap", codec.name());
    let mut back = vec![0u8; raw.len()];
    dec.decode(sent_as, dtype, &wire, &mut back).expect("decoding what the encoder wrote");
    let mut want = raw.to_vec();
    round_in_place(codec, dtype, &mut want).expect("rounding a supported dtype");
    assert_eq!(back, want, "{} round trip of {} bytes", codec.name(), raw.len());
}

/// Seed inputs for each target (the committed corpus in `fuzz/corpus/<target>/`): valid
/// messages of every kind, so the fuzzer starts from inputs that reach deep into each
/// decoder.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let h = Header {
        kind: FrameKind::Data,
        codec: Codec::Raw,
        phase: Phase::ReduceScatter,
        coll: CollKind::AllReduce,
        op: ReduceOp::Sum,
        dtype: DataType::F32,
        step: 1,
        job: 42,
        epoch: 1,
        seq: 7,
        len_elems: 1000,
        chunk: 2,
        segment: 0,
        payload_len: 16,
        raw_len: 16,
        sender: 1,
    };
    let body: Vec<u8> = (0..16).collect();
    let mut frame = h.encode(&body).to_vec();
    frame.extend_from_slice(&body);
    out.push(("header", frame));
    let abort = Header { kind: FrameKind::Abort, phase: Phase::AllGather, payload_len: 5, raw_len: 5, ..h };
    let mut frame = abort.encode(b"stall").to_vec();
    frame.extend_from_slice(b"stall");
    out.push(("header", frame));
    let empty = Header { coll: CollKind::Barrier, phase: Phase::Gather, payload_len: 0, raw_len: 0, ..h };
    out.push(("header", empty.encode(&[]).to_vec()));

    let hello = |role, nonce| Hello {
        role,
        job: 42,
        epoch: 1,
        rank: 0,
        target: 1,
        incarnation: 3,
        nonce: [nonce; 16],
        completed: 5,
        next_seq: 6,
    };
    let (hi, hr) = (hello(Role::RingPrev, 1).encode(), hello(Role::RingNext, 2).encode());
    let secret = b"a-job-secret-of-some-length";
    for side in [Side::Responder, Side::Initiator] {
        let mut b = hi.to_vec();
        b.extend_from_slice(&hr);
        b.extend_from_slice(&auth::mac(secret, side, &hi, &hr));
        b.extend_from_slice(secret);
        out.push(("handshake", b));
    }
    out.push(("handshake", hello(Role::Rank, 9).encode().to_vec()));

    for m in control_samples() {
        out.push(("control", m.encode()));
    }
    let raw: Vec<u8> = (0..256u32).flat_map(|i| ((i % 7) as f32 * 0.5).to_ne_bytes()).collect();
    let mut enc = Encoder::new(1).expect("zstd encoder");
    for codec in ALL_CODECS {
        let mut wire = Vec::new();
        let Ok(sent_as) = enc.encode(codec, DataType::F32, &raw, &mut wire) else { continue };
        let mut b = vec![sent_as as u8, DataType::F32 as u8 - 1];
        b.extend_from_slice(&256u16.to_le_bytes());
        b.extend_from_slice(&wire);
        out.push(("codec", b));
    }
    // Plane packs without zeros left out (the values above are one-seventh zeros).
    let nonzero: Vec<u8> = (0..256u32).flat_map(|i| ((i % 7 + 1) as f32 * 0.5).to_ne_bytes()).collect();
    for codec in [Codec::ShuffleZstd, Codec::Bf16Zstd] {
        let mut wire = Vec::new();
        let Ok(sent_as) = enc.encode(codec, DataType::F32, &nonzero, &mut wire) else { continue };
        let mut b = vec![sent_as as u8, DataType::F32 as u8 - 1];
        b.extend_from_slice(&256u16.to_le_bytes());
        b.extend_from_slice(&wire);
        out.push(("codec", b));
    }
    out
}

fn control_samples() -> Vec<Control> {
    let addr = "127.0.0.1:4000".parse().expect("address");
    vec![
        Control::Register(Registration {
            rank: 3,
            world_size: 4,
            incarnation: 1,
            listen: addr,
            host: "h1".into(),
            fingerprint: vec![("world_size".into(), "4".into()), ("segment_bytes".into(), "524288".into())],
        }),
        Control::View(View {
            job: 7,
            epoch: 2,
            world_size: 3,
            members: vec![Member { rank: 0, addr, host: "a".into() }, Member { rank: 2, addr, host: "b".into() }],
            start_seq: Some(41),
            joined: vec![2],
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
        Control::JoinPrepare { epoch: 8 },
        Control::JoinAck { rank: 1, epoch: 8, next_seq: 120 },
        Control::JoinCancel { epoch: 8 },
        Control::JoinPoint { rank: 3, epoch: 8, seq: 300 },
        Control::JoinPointDone { epoch: 8, seq: 300 },
        Control::Result(HandedResult {
            rank: 1,
            epoch: 9,
            seq: 41,
            attempt_epoch: 8,
            members: vec![0, 1, 2, 3],
            bytes: (0..64u8).collect(),
        }),
    ]
}
