//! The fixed 72-byte frame header carried before every payload.
//!
//! Layout (little-endian), also in `docs/PROTOCOL.md`:
//!
//! | bytes  | field       | meaning                                               |
//! |--------|-------------|-------------------------------------------------------|
//! | 0..4   | magic       | `RGCC`                                                |
//! | 4      | version     | [`super::PROTOCOL_VERSION`]                           |
//! | 5      | kind        | [`FrameKind`]                                         |
//! | 6      | codec       | [`crate::codec::Codec`] of the payload                |
//! | 7      | phase       | [`Phase`]                                             |
//! | 8      | coll        | [`CollKind`]: which collective (fingerprint)          |
//! | 9      | op          | [`crate::ReduceOp`] (fingerprint)                     |
//! | 10     | dtype       | [`crate::DataType`] (fingerprint)                     |
//! | 11     | flags       | [`FLAG_LANE`] or zero; other bits are refused         |
//! | 12..16 | step        | step within the phase                                 |
//! | 16..24 | job         | job id: frames of another job are refused             |
//! | 24..32 | epoch       | membership view the frame was sent in                 |
//! | 32..40 | seq         | collective sequence number on the communicator        |
//! | 40..48 | len_elems   | element count of the whole collective (fingerprint)   |
//! | 48..52 | chunk       | chunk index                                           |
//! | 52..56 | segment     | segment index within the chunk                        |
//! | 56..60 | payload_len | bytes of payload that follow the header               |
//! | 60..64 | raw_len     | bytes of the payload once decoded                     |
//! | 64..68 | sender      | rank of the sender                                    |
//! | 68..72 | crc         | CRC32C of bytes 0..68 followed by the payload         |

use super::{WireError, FRAME_MAGIC, PROTOCOL_VERSION};
use crate::codec::Codec;
use crate::core::{DataType, ReduceOp};
use crate::limits::SEGMENT_BYTES_MAX;

/// Size of the encoded header in bytes.
pub const HEADER_LEN: usize = 72;

/// Offset of the CRC field; the CRC covers the bytes before it and then the payload.
const CRC_OFFSET: usize = 68;

/// Offset of the flags byte.
const FLAGS_OFFSET: usize = 11;

/// Header flag: the payload is not in the stream after the header but in the next slot of
/// the link's same-host lane (`net::lane`; `docs/PROTOCOL.md`). `payload_len` still says
/// how many bytes it has, and the CRC covers them if the link checks payloads.
pub const FLAG_LANE: u8 = 1;

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($(#[$vm:meta])* $v:ident = $id:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $id),* }
        impl $name {
            /// Decodes a wire id.
            ///
            /// # Errors
            /// [`WireError::UnknownId`] for an id this build does not know.
            pub fn from_u8(id: u8) -> Result<Self, WireError> {
                match id { $($id => Ok($name::$v),)* _ => Err(WireError::UnknownId { field: $field, value: id.into() }) }
            }
        }
    };
}

wire_enum!(
    /// What a frame carries.
    FrameKind, "kind" {
        /// A segment of a collective's data.
        Data = 1,
        /// The sender abandons collective `seq`; the payload is a UTF-8 reason.
        Abort = 2,
        /// Completion token (`core::fin`): the position in `chunk` holds the result of
        /// call `seq`; `step` counts the hops it travelled. No payload.
        Fin = 3,
        /// Connection-level, never seen by a collective: the sender offers a same-host
        /// lane for its frames on this connection (`net::lane`); the payload names it.
        LaneOffer = 4,
        /// Connection-level: the answer to a [`FrameKind::LaneOffer`]; the payload's first
        /// byte is 1 (accepted) or 0 (refused, a UTF-8 reason follows).
        LaneReply = 5,
        /// Connection-level: the receiver of a lane has freed half its slots while the
        /// sender waited for one (`net::lane`). No payload.
        LaneCredit = 6,
        /// Connection-level: the sender put whole frames into its lane (`net::lane`) while
        /// the receiver's loop said it might be asleep; they come before this frame. No
        /// payload.
        LaneBell = 7,
    }
);

wire_enum!(
    /// Phase of a collective a data frame belongs to.
    Phase, "phase" {
        /// Partial reductions travelling towards each chunk's owner.
        ReduceScatter = 1,
        /// Final chunks travelling from their owner to everyone.
        AllGather = 2,
        /// Data travelling down the ring from the root.
        Broadcast = 3,
        /// Whole inputs travelling both ways round the ring (the small all-reduce path).
        Gather = 4,
        /// Running values swapped between partners (recursive doubling, the small
        /// all-reduce path on worlds of up to four).
        Doubling = 5,
    }
);

wire_enum!(
    /// Which collective a frame belongs to; part of the call's fingerprint.
    CollKind, "collective" {
        /// `all_reduce`.
        AllReduce = 1,
        /// `reduce_scatter`.
        ReduceScatter = 2,
        /// `all_gather`.
        AllGather = 3,
        /// `broadcast`.
        Broadcast = 4,
        /// `barrier`.
        Barrier = 5,
    }
);

impl CollKind {
    /// Name as users call it.
    pub fn name(self) -> &'static str {
        match self {
            CollKind::AllReduce => "all_reduce",
            CollKind::ReduceScatter => "reduce_scatter",
            CollKind::AllGather => "all_gather",
            CollKind::Broadcast => "broadcast",
            CollKind::Barrier => "barrier",
        }
    }
}

/// A decoded frame header. Decoding checks ids and hard caps; checking fields against
/// what the receiver expects is the collective's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Codec of the payload.
    pub codec: Codec,
    /// Phase of the collective.
    pub phase: Phase,
    /// Which collective.
    pub coll: CollKind,
    /// Reduction operator (Sum for collectives without one).
    pub op: ReduceOp,
    /// Element type.
    pub dtype: DataType,
    /// Step within the phase.
    pub step: u32,
    /// Job id.
    pub job: u64,
    /// Membership epoch the frame was sent in.
    pub epoch: u64,
    /// Collective sequence number.
    pub seq: u64,
    /// Element count of the whole collective.
    pub len_elems: u64,
    /// Chunk index.
    pub chunk: u32,
    /// Segment index within the chunk.
    pub segment: u32,
    /// Payload bytes following the header.
    pub payload_len: u32,
    /// Payload bytes once decoded.
    pub raw_len: u32,
    /// Rank of the sender.
    pub sender: u32,
}

impl Header {
    /// Encodes the header, with the CRC32C computed over it and `payload`.
    ///
    /// # Panics
    /// If `payload.len()` differs from `payload_len` (caller bug).
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        assert_eq!(payload.len(), self.payload_len as usize, "payload length");
        let mut b = self.fields();
        let mut crc = FrameCrc::start(&b);
        crc.update(payload);
        b[CRC_OFFSET..].copy_from_slice(&crc.0.to_le_bytes());
        b
    }

    /// Encodes the header with the CRC32C computed over the header bytes only, for a link
    /// whose payloads are not checksummed (`Config::checksum`: links within one host, by
    /// default). The receiver of such a link checks the header the same way and leaves the
    /// payload out ([`FrameCrc`] without `update`).
    pub fn encode_header_only(&self) -> [u8; HEADER_LEN] {
        let mut b = self.fields();
        let crc = FrameCrc::start(&b);
        b[CRC_OFFSET..].copy_from_slice(&crc.0.to_le_bytes());
        b
    }

    /// The header's bytes, with the CRC field still zero.
    fn fields(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4] = PROTOCOL_VERSION;
        b[5] = self.kind as u8;
        b[6] = self.codec as u8;
        b[7] = self.phase as u8;
        b[8] = self.coll as u8;
        b[9] = self.op as u8;
        b[10] = self.dtype as u8;
        b[12..16].copy_from_slice(&self.step.to_le_bytes());
        b[16..24].copy_from_slice(&self.job.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..40].copy_from_slice(&self.seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.len_elems.to_le_bytes());
        b[48..52].copy_from_slice(&self.chunk.to_le_bytes());
        b[52..56].copy_from_slice(&self.segment.to_le_bytes());
        b[56..60].copy_from_slice(&self.payload_len.to_le_bytes());
        b[60..64].copy_from_slice(&self.raw_len.to_le_bytes());
        b[64..68].copy_from_slice(&self.sender.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, version, every id, and the payload caps.
    /// Returns the header and the CRC it carries (check it with [`verify_crc`] once the
    /// payload has arrived).
    ///
    /// # Errors
    /// A [`WireError`] naming the first bad field.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<(Header, u32), WireError> {
        if b[FLAGS_OFFSET] != 0 {
            return Err(WireError::UnknownId { field: "flags", value: b[FLAGS_OFFSET].into() });
        }
        Header::decode_fields(b)
    }

    /// Like [`Header::decode`] for a receiver that knows the flags of this build: also
    /// returns the flags byte, which may hold [`FLAG_LANE`] (whether the link allows it is
    /// the receiver's check).
    ///
    /// # Errors
    /// As [`Header::decode`]; an unknown flag bit is [`WireError::UnknownId`].
    pub fn decode_flagged(b: &[u8; HEADER_LEN]) -> Result<(Header, u32, u8), WireError> {
        let flags = b[FLAGS_OFFSET];
        if flags & !FLAG_LANE != 0 {
            return Err(WireError::UnknownId { field: "flags", value: flags.into() });
        }
        let (h, crc) = Header::decode_fields(b)?;
        Ok((h, crc, flags))
    }

    /// Every field but the flags byte.
    fn decode_fields(b: &[u8; HEADER_LEN]) -> Result<(Header, u32), WireError> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != FRAME_MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if b[4] != PROTOCOL_VERSION {
            return Err(WireError::BadVersion { found: b[4], expected: PROTOCOL_VERSION });
        }
        let h = Header {
            kind: FrameKind::from_u8(b[5])?,
            codec: Codec::from_u8(b[6])?,
            phase: Phase::from_u8(b[7])?,
            coll: CollKind::from_u8(b[8])?,
            op: ReduceOp::from_u8(b[9]).ok_or(WireError::UnknownId { field: "op", value: b[9].into() })?,
            dtype: DataType::from_u8(b[10]).ok_or(WireError::UnknownId { field: "dtype", value: b[10].into() })?,
            step: u32_at(12),
            job: u64_at(16),
            epoch: u64_at(24),
            seq: u64_at(32),
            len_elems: u64_at(40),
            chunk: u32_at(48),
            segment: u32_at(52),
            payload_len: u32_at(56),
            raw_len: u32_at(60),
            sender: u32_at(64),
        };
        let cap = SEGMENT_BYTES_MAX as u64;
        for (field, value) in [("payload_len", h.payload_len), ("raw_len", h.raw_len)] {
            if u64::from(value) > cap {
                return Err(WireError::TooLong { field, value: value.into(), limit: cap });
            }
        }
        Ok((h, u32_at(CRC_OFFSET)))
    }
}

/// Sets `flags` in an encoded header and updates its CRC to match, without a pass over the
/// payload: `covered_len` is how many payload bytes the CRC covers (the payload length on a
/// link that checks payloads, else 0). CRC32C is linear, so the change of the header's
/// bytes is carried across the payload by `crc32c_combine` (a few dozen operations).
pub fn set_flags(header: &mut [u8; HEADER_LEN], flags: u8, covered_len: usize) {
    let before = crc32c::crc32c(&header[..CRC_OFFSET]);
    header[FLAGS_OFFSET] = flags;
    if cfg!(feature = "unchecked") {
        return;
    }
    let after = crc32c::crc32c(&header[..CRC_OFFSET]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[CRC_OFFSET..]);
    let old = u32::from_le_bytes(crc);
    let new = old ^ crc32c::crc32c_combine(before ^ after, 0, covered_len);
    header[CRC_OFFSET..].copy_from_slice(&new.to_le_bytes());
}

/// Checks the CRC32C carried in an encoded header against the header bytes and payload.
/// (Always passes in a build with the test-only `unchecked` feature.)
///
/// # Errors
/// [`WireError::BadChecksum`] on a mismatch.
pub fn verify_crc(header: &[u8; HEADER_LEN], expected: u32, payload: &[u8]) -> Result<(), WireError> {
    if cfg!(feature = "unchecked") {
        return Ok(());
    }
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header[..CRC_OFFSET]), payload);
    if computed == expected {
        Ok(())
    } else {
        Err(WireError::BadChecksum { expected, computed })
    }
}

/// The CRC32C of a frame being received, computed piece by piece as its payload arrives:
/// each piece is checksummed right after the read that brought it in, while it is still in
/// cache, instead of in a second pass over the whole payload once it is complete. Start it
/// from the frame's encoded header, [`FrameCrc::update`] it with every payload byte in
/// order, then [`FrameCrc::verify`] it against the CRC the header carries before any
/// payload byte is used. (A no-op in a build with the test-only `unchecked` feature.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCrc(u32);

impl FrameCrc {
    /// Starts the CRC over the header bytes it covers.
    pub fn start(header: &[u8; HEADER_LEN]) -> FrameCrc {
        if cfg!(feature = "unchecked") {
            return FrameCrc(0);
        }
        FrameCrc(crc32c::crc32c(&header[..CRC_OFFSET]))
    }

    /// Extends the CRC with the next payload bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        if !cfg!(feature = "unchecked") {
            self.0 = crc32c::crc32c_append(self.0, bytes);
        }
    }

    /// Compares the CRC of the header and every byte passed to `update` with `expected`.
    ///
    /// # Errors
    /// [`WireError::BadChecksum`] on a mismatch.
    pub fn verify(&self, expected: u32) -> Result<(), WireError> {
        if cfg!(feature = "unchecked") || self.0 == expected {
            Ok(())
        } else {
            Err(WireError::BadChecksum { expected, computed: self.0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload_len: u32) -> Header {
        Header {
            kind: FrameKind::Data,
            codec: Codec::Raw,
            phase: Phase::AllGather,
            coll: CollKind::AllReduce,
            op: ReduceOp::Max,
            dtype: DataType::Bf16,
            step: 7,
            job: 0xdead_beef_0102,
            epoch: 3,
            seq: 99,
            len_elems: 1 << 40,
            chunk: 5,
            segment: 11,
            payload_len,
            raw_len: payload_len,
            sender: 4,
        }
    }

    #[test]
    fn round_trip_and_crc() {
        let payload = vec![7u8; 100];
        let h = sample(100);
        let b = h.encode(&payload);
        let (d, crc) = Header::decode(&b).unwrap();
        assert_eq!(d, h);
        verify_crc(&b, crc, &payload).unwrap();
        let mut bad = payload.clone();
        bad[50] ^= 1;
        assert!(matches!(verify_crc(&b, crc, &bad), Err(WireError::BadChecksum { .. })));
    }

    /// The piecewise CRC of the receive path agrees with the one-pass check, however the
    /// payload is cut into reads, and catches a flipped bit in any piece.
    #[test]
    fn frame_crc_in_pieces() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let b = sample(5000).encode(&payload);
        let (_, crc) = Header::decode(&b).unwrap();
        for cut in [1usize, 7, 64, 1000, 4999, 5000] {
            let mut c = FrameCrc::start(&b);
            payload.chunks(cut).for_each(|p| c.update(p));
            c.verify(crc).unwrap();
            let mut bad = payload.clone();
            bad[cut - 1] ^= 0x10;
            let mut c = FrameCrc::start(&b);
            bad.chunks(cut).for_each(|p| c.update(p));
            assert!(matches!(c.verify(crc), Err(WireError::BadChecksum { .. })));
        }
        let mut hb = b;
        hb[40] ^= 1;
        let mut c = FrameCrc::start(&hb);
        c.update(&payload);
        assert!(c.verify(crc).is_err(), "a flipped header bit is covered");
    }

    /// A header-only CRC still covers every header byte, and differs from the full one
    /// (a receiver checking payloads refuses a frame sent without, and the other way round).
    #[test]
    fn header_only_crc_covers_the_header_alone() {
        let payload = vec![7u8; 300];
        let h = sample(300);
        let b = h.encode_header_only();
        let (d, crc) = Header::decode(&b).unwrap();
        assert_eq!(d, h);
        FrameCrc::start(&b).verify(crc).unwrap();
        let mut full = FrameCrc::start(&b);
        full.update(&payload);
        assert!(full.verify(crc).is_err(), "a payload-checking receiver refuses it");
        let (_, full_crc) = Header::decode(&h.encode(&payload)).unwrap();
        assert!(FrameCrc::start(&b).verify(full_crc).is_err(), "and the other way round");
        for byte in 0..CRC_OFFSET {
            let mut hb = b;
            hb[byte] ^= 0x04;
            assert!(FrameCrc::start(&hb).verify(crc).is_err(), "header byte {byte} is covered");
        }
    }

    /// Setting the lane flag keeps the CRC right with and without the payload covered, and
    /// only `decode_flagged` accepts the flag; unknown bits are refused by both.
    #[test]
    fn set_flags_keeps_the_crc_and_unknown_flags_are_refused() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut full = sample(3000).encode(&payload);
        set_flags(&mut full, FLAG_LANE, payload.len());
        let (h, crc, flags) = Header::decode_flagged(&full).unwrap();
        assert_eq!((h, flags), (sample(3000), FLAG_LANE));
        verify_crc(&full, crc, &payload).unwrap();
        let mut only = sample(3000).encode_header_only();
        set_flags(&mut only, FLAG_LANE, 0);
        let (_, crc, _) = Header::decode_flagged(&only).unwrap();
        FrameCrc::start(&only).verify(crc).unwrap();
        assert!(matches!(Header::decode(&only), Err(WireError::UnknownId { field: "flags", .. })));
        for bad in [2u8, 0x80, 3] {
            let mut b = only;
            b[FLAGS_OFFSET] = bad;
            assert!(matches!(Header::decode_flagged(&b), Err(WireError::UnknownId { field: "flags", .. })));
        }
    }

    #[test]
    fn oversized_payload_is_refused_before_any_allocation() {
        let mut b = sample(0).encode(&[]);
        b[56..60].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Header::decode(&b), Err(WireError::TooLong { field: "payload_len", .. })));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&bytes);
            let _ = Header::decode(&b);
            b[0..4].copy_from_slice(&FRAME_MAGIC);
            b[4] = PROTOCOL_VERSION;
            if let Ok((h, _)) = Header::decode(&b) {
                prop_assert!(h.payload_len as usize <= SEGMENT_BYTES_MAX);
            }
        }

        #[test]
        fn a_flipped_bit_anywhere_is_detected(bit in 0usize..(HEADER_LEN + 32) * 8) {
            let payload = [0x5au8; 32];
            let b = sample(32).encode(&payload);
            let mut frame = b.to_vec();
            frame.extend_from_slice(&payload);
            frame[bit / 8] ^= 1 << (bit % 8);
            let mut hb = [0u8; HEADER_LEN];
            hb.copy_from_slice(&frame[..HEADER_LEN]);
            let ok = match Header::decode(&hb) {
                Err(_) => false,
                Ok((h, crc)) => h.payload_len == 32 && verify_crc(&hb, crc, &frame[HEADER_LEN..]).is_ok(),
            };
            prop_assert!(!ok, "flip of bit {} went unnoticed", bit);
        }
    }
}
