//! Payload codecs: pure functions from a segment's raw bytes to its wire payload and back.
//!
//! The codec id travels in every frame header. [`Encoder`] and [`Decoder`] hold the
//! reusable state (zstd contexts, a byte-plane scratch buffer): after the first call of a
//! given segment size neither allocates.
//!
//! | codec | payload | exact? |
//! |---|---|---|
//! | `raw` | the element bytes as they are | yes |
//! | `zstd` | one zstd frame over the raw bytes | yes |
//! | `shuffle+zstd` | a plane pack of the elements (byte planes, zstd where it pays, zeros as bits; see `pack`) | yes |
//! | `bf16` | each f32 rounded to bfloat16, 2 bytes little-endian | no, f32 only |
//! | `f16` | each f32 rounded to IEEE binary16, 2 bytes little-endian | no, f32 only |
//! | `bf16+zstd` | a plane pack of the bfloat16 values | no, f32 only |
//!
//! Element bytes are read in host order, as the `raw` codec sends them.
//!
//! # Rounding of the lossy codecs
//!
//! f32 to bf16 and to f16 round to nearest, ties to even. f16 overflows to infinity above
//! 65504 (exactly: from 65520 up) and loses precision below 2^-14 (subnormals), so it
//! suits values of known range; bf16 keeps f32's range. NaN stays NaN (quiet), infinities
//! stay infinities, the sign of zero is kept. Decoding widens back to f32 exactly, so
//! **reduction still happens in f32**: a lossy codec changes only what crosses the wire.
//!
//! A rank that owns a chunk's final value sends it rounded; it must then store exactly
//! what the others decode, which [`round_in_place`] does. That keeps every rank
//! bit-identical. [`ErrorFeedback`] carries each rank's rounding error into its next call.
//!
//! # Hostile payloads
//!
//! A decoder is always given the exact decoded size it expects (from its own schedule,
//! never from the peer), writes only into the caller's buffer of that size, and returns an
//! error for any payload that decodes to another size. Every zstd frame (a `zstd` payload,
//! a compressed section of a plane pack) must be exactly one standard zstd frame that
//! declares the content size the receiver expects; nothing is allocated from a size read in
//! the payload, so a decompression bomb is an error, not an allocation.

pub mod auto;
mod choice;
pub mod cpu_share;
mod decoder;
mod encoder;
mod feedback;
mod lossy;
mod pack;
pub mod planes;
pub mod pool;
mod simd;
#[cfg(test)]
mod tests;
mod zeros;
mod zeros2;
mod zeros4;

pub use auto::AutoPolicy;
pub use choice::CodecChoice;
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use feedback::ErrorFeedback;
pub use pool::{BufferPool, PooledBytes};

use crate::core::DataType;
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
    /// Byte planes (all byte 0s, then all byte 1s, ...), zstd on the planes that compress.
    ShuffleZstd = 2,
    /// f32 rounded to bfloat16 (lossy).
    Bf16 = 3,
    /// f32 rounded to binary16 (lossy).
    F16 = 4,
    /// bfloat16, byte planes, zstd on the planes that compress (lossy).
    Bf16Zstd = 5,
}

/// Every codec, in id order (for tests, benchmarks and `--codec` help).
pub const ALL_CODECS: [Codec; 6] =
    [Codec::Raw, Codec::Zstd, Codec::ShuffleZstd, Codec::Bf16, Codec::F16, Codec::Bf16Zstd];

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

    /// True for codecs that round values (bf16, f16, bf16+zstd).
    pub fn is_lossy(self) -> bool {
        matches!(self, Codec::Bf16 | Codec::F16 | Codec::Bf16Zstd)
    }

    /// True for codecs whose payload is a zstd frame.
    pub fn uses_zstd(self) -> bool {
        matches!(self, Codec::Zstd | Codec::ShuffleZstd | Codec::Bf16Zstd)
    }

    /// The codec [`Encoder::encode`] falls back to when zstd does not shrink a segment: same
    /// rounding, no compression (`raw` for the lossless codecs, `bf16` for `bf16+zstd`).
    pub fn fallback(self) -> Codec {
        match self {
            Codec::Zstd | Codec::ShuffleZstd => Codec::Raw,
            Codec::Bf16Zstd => Codec::Bf16,
            other => other,
        }
    }

    /// Whether this codec can carry elements of `dtype`: the lossy codecs take only f32.
    pub fn supports(self, dtype: DataType) -> bool {
        !self.is_lossy() || dtype == DataType::F32
    }

    /// Largest payload [`Encoder::encode`] writes for `raw_len` bytes: `raw_len` for the
    /// lossless codecs, `raw_len / 2` for the lossy ones (compressed output that would be
    /// larger is replaced by the [`Codec::fallback`]). A receiver may refuse anything longer.
    pub fn payload_len_max(self, raw_len: usize) -> usize {
        if self.is_lossy() {
            raw_len / 2
        } else {
            raw_len
        }
    }
}

/// Why a payload could not be encoded or decoded. After a decode error the payload is
/// unusable (the frame is dropped and the peer reported); the output buffer holds
/// unspecified bytes, but nothing outside it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The codec cannot carry this element type (the lossy codecs take only f32).
    #[error("codec {} cannot carry {} elements", codec.name(), dtype.name())]
    Unsupported {
        /// The codec asked for.
        codec: Codec,
        /// The element type asked for.
        dtype: DataType,
    },
    /// A buffer length is not a whole number of elements.
    #[error("{len_bytes} bytes is not a whole number of {elem_bytes}-byte elements")]
    PartialElement {
        /// Length of the buffer in bytes.
        len_bytes: usize,
        /// Size of one element in bytes.
        elem_bytes: usize,
    },
    /// A payload is not, or does not decode to, the size the receiver expects.
    #[error("{what} is {got} bytes, expected {expected}")]
    SizeMismatch {
        /// Which size: `payload` (uncompressed codecs) or `decoded` (zstd content).
        what: &'static str,
        /// The size the receiver knows it must be.
        expected: usize,
        /// The size found (saturated at `usize::MAX`).
        got: usize,
    },
    /// The payload is not a valid encoding (zstd's reason, or ours).
    #[error("corrupt payload: {reason}")]
    Corrupt {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A zstd level outside zstd's range.
    #[error("zstd level {level} outside {min}..={max}")]
    Level {
        /// The level asked for.
        level: i32,
        /// zstd's fastest level.
        min: i32,
        /// zstd's strongest level.
        max: i32,
    },
    /// zstd failed on our side (out of memory creating or growing a context).
    #[error("zstd {op} failed: {reason}")]
    Zstd {
        /// What was being done.
        op: &'static str,
        /// zstd's reason.
        reason: &'static str,
    },
}

/// The zstd levels [`Encoder::new`] accepts (zstd's own range: negative levels are its
/// fast modes, 0 its default).
pub fn zstd_levels() -> std::ops::RangeInclusive<i32> {
    zstd::zstd_safe::min_c_level()..=zstd::zstd_safe::max_c_level()
}

/// Checks that `codec` can carry `dtype` and that `len_bytes` is whole elements.
pub(crate) fn check_args(codec: Codec, dtype: DataType, len_bytes: usize) -> Result<(), CodecError> {
    if !codec.supports(dtype) {
        return Err(CodecError::Unsupported { codec, dtype });
    }
    let elem_bytes = dtype.size();
    if len_bytes % elem_bytes != 0 {
        return Err(CodecError::PartialElement { len_bytes, elem_bytes });
    }
    Ok(())
}

/// Applies `codec`'s rounding to `bytes` in place: each f32 becomes exactly the value a
/// receiver decodes from `encode(codec, ...)`. Lossless codecs leave `bytes` unchanged.
///
/// The owner of a chunk calls this on its final chunk when it sends that chunk with a
/// lossy codec, so it ends with the same bits as every rank that decodes it. Idempotent.
///
/// # Errors
/// [`CodecError::Unsupported`] for a lossy codec and a dtype other than f32;
/// [`CodecError::PartialElement`] if `bytes` is not whole elements.
pub fn round_in_place(codec: Codec, dtype: DataType, bytes: &mut [u8]) -> Result<(), CodecError> {
    check_args(codec, dtype, bytes.len())?;
    if let Some(format) = lossy::Format::of(codec) {
        lossy::round_bytes(format, bytes);
    }
    Ok(())
}
