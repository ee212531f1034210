//! Payload codecs. The codec id travels in every frame header.
//!
//! This build encodes `raw` only; the other ids are reserved so that the header format does
//! not change when they land, and a peer sending one is refused by the collective.

use crate::wire::WireError;

/// How a segment's payload is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Codec {
    /// The elements' bytes as they are.
    #[default]
    Raw = 0,
    /// zstd over the raw bytes.
    Zstd = 1,
    /// Byte planes (all byte 0s, then all byte 1s, ...) then zstd.
    ShuffleZstd = 2,
    /// f32 rounded to bfloat16 (lossy).
    Bf16 = 3,
    /// f32 rounded to binary16 (lossy).
    F16 = 4,
    /// bfloat16, byte planes, zstd (lossy).
    Bf16Zstd = 5,
}

impl Codec {
    /// Decodes a wire id.
    ///
    /// # Errors
    /// [`WireError::UnknownId`] for an unknown id.
    pub fn from_u8(id: u8) -> Result<Codec, WireError> {
        Ok(match id {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            2 => Codec::ShuffleZstd,
            3 => Codec::Bf16,
            4 => Codec::F16,
            5 => Codec::Bf16Zstd,
            _ => return Err(WireError::UnknownId { field: "codec", value: id.into() }),
        })
    }

    /// Name as accepted by `RINGCC_CODEC` and `ringbench --codec`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::ShuffleZstd => "shuffle+zstd",
            Codec::Bf16 => "bf16",
            Codec::F16 => "f16",
            Codec::Bf16Zstd => "bf16+zstd",
        }
    }
}
