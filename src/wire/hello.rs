//! The fixed-size hello each side of a ring connection sends first.
//!
//! Layout (little-endian, 72 bytes): magic `RGHL` (4), version (1), role (1), reserved (2),
//! job (8), epoch (8), sender rank (4), target rank (4), incarnation (8), nonce (16),
//! completed (8), next_seq (8). The last two let neighbours of a rebuilt ring check that
//! they agree on how many collectives completed and started. Nothing else is read from a connection before its hello has been checked.

use super::{WireError, PROTOCOL_VERSION};

/// Size of an encoded hello in bytes.
pub const HELLO_LEN: usize = 72;

const HELLO_MAGIC: [u8; 4] = *b"RGHL";

/// Why a connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The sender is the receiver's previous neighbour in the ring (initiator).
    RingPrev = 1,
    /// The sender is the receiver's next neighbour in the ring (answering a `RingPrev`).
    RingNext = 2,
    /// The sender is a rank opening its coordinator session.
    Rank = 3,
    /// The sender is the coordinator answering a rank.
    Coordinator = 4,
    /// The sender opens a partner link to the receiver (recursive doubling's non-neighbour
    /// partner; the lower ring position opens it).
    PartnerOpen = 5,
    /// The sender answers a `PartnerOpen`.
    PartnerAnswer = 6,
}

/// A decoded hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Why the connection is opened.
    pub role: Role,
    /// Job id.
    pub job: u64,
    /// Epoch of the view the connection is for.
    pub epoch: u64,
    /// Rank of the side that sends this hello.
    pub rank: u32,
    /// Rank the sender means to reach.
    pub target: u32,
    /// Incarnation of the sending process.
    pub incarnation: u64,
    /// Fresh random bytes (bound into the authentication once it lands).
    pub nonce: [u8; 16],
    /// Collectives the sender completed successfully so far.
    pub completed: u64,
    /// Sequence number the sender's next collective will use.
    pub next_seq: u64,
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4] = PROTOCOL_VERSION;
        b[5] = self.role as u8;
        b[8..16].copy_from_slice(&self.job.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..28].copy_from_slice(&self.rank.to_le_bytes());
        b[28..32].copy_from_slice(&self.target.to_le_bytes());
        b[32..40].copy_from_slice(&self.incarnation.to_le_bytes());
        b[40..56].copy_from_slice(&self.nonce);
        b[56..64].copy_from_slice(&self.completed.to_le_bytes());
        b[64..72].copy_from_slice(&self.next_seq.to_le_bytes());
        b
    }

    /// Decodes and checks a hello.
    ///
    /// # Errors
    /// A [`WireError`] for a wrong magic, version, role or non-zero reserved bytes.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, WireError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != HELLO_MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        if b[4] != PROTOCOL_VERSION {
            return Err(WireError::BadVersion { found: b[4], expected: PROTOCOL_VERSION });
        }
        let role = match b[5] {
            1 => Role::RingPrev,
            2 => Role::RingNext,
            3 => Role::Rank,
            4 => Role::Coordinator,
            5 => Role::PartnerOpen,
            6 => Role::PartnerAnswer,
            v => return Err(WireError::UnknownId { field: "role", value: v.into() }),
        };
        if b[6..8] != [0, 0] {
            return Err(WireError::Malformed { what: "hello reserved bytes" });
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[40..56]);
        Ok(Hello {
            role,
            job: u64_at(8),
            epoch: u64_at(16),
            rank: u32_at(24),
            target: u32_at(28),
            incarnation: u64_at(32),
            nonce,
            completed: u64_at(56),
            next_seq: u64_at(64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let h = Hello {
            role: Role::RingPrev,
            job: 9,
            epoch: 2,
            rank: 3,
            target: 4,
            incarnation: 7,
            nonce: [5; 16],
            completed: 11,
            next_seq: 12,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&[0xff; HELLO_LEN]).is_err());
        let mut b = h.encode();
        b[6] = 1;
        assert!(Hello::decode(&b).is_err());
    }
}
