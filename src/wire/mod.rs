//! The bytes on the wire: frame header, handshake hello, control messages.
//!
//! Everything here treats input as hostile: decoders check every field and every length
//! before use and return [`WireError`] instead of panicking. The format is specified in
//! `docs/PROTOCOL.md`; bump [`PROTOCOL_VERSION`] with any change to it.

pub mod auth;
pub mod control;
pub mod header;
pub mod hello;

pub use header::{CollKind, FrameKind, Header, Phase, HEADER_LEN};

/// Version of the wire protocol spoken by this build. Peers with another version are
/// refused at the handshake, naming both versions.
pub const PROTOCOL_VERSION: u8 = 7;

/// Magic bytes at the start of every frame header.
pub const FRAME_MAGIC: [u8; 4] = *b"RGCC";

/// Bytes that can never form a valid frame or message. After one, the connection is
/// closed and the peer reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The first bytes are not the protocol's magic.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The four bytes received.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error("protocol version {found}, this build speaks {expected}")]
    BadVersion {
        /// Version in the frame.
        found: u8,
        /// Version of this build.
        expected: u8,
    },
    /// A field holds a value outside its enumeration.
    #[error("unknown {field} id {value}")]
    UnknownId {
        /// Name of the field.
        field: &'static str,
        /// The id received.
        value: u64,
    },
    /// A length exceeds its hard cap.
    #[error("{field} is {value} bytes, limit {limit}")]
    TooLong {
        /// Name of the field.
        field: &'static str,
        /// The length received.
        value: u64,
        /// The cap.
        limit: u64,
    },
    /// The CRC32C over header and payload does not match.
    #[error("checksum mismatch: header says {expected:08x}, computed {computed:08x}")]
    BadChecksum {
        /// CRC carried in the header.
        expected: u32,
        /// CRC computed over what arrived.
        computed: u32,
    },
    /// A message ended before its declared content.
    #[error("truncated {what}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
    },
    /// A message is well-formed bytes but says something impossible.
    #[error("malformed {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
}
