//! The sending side: raw segment bytes to a wire payload.

use zstd::zstd_safe::{self, CCtx, CParameter};

use super::pack::{PackEncoder, Source};
use super::{check_args, lossy, Codec, CodecError};
use crate::core::DataType;

/// zstd's hash log and minimum match length at level 1 (the default), in place of the
/// level's own 13 and 6 for sources above 256 KiB.
///
/// Float segments compress through zstd's entropy coding of literals far more than through
/// matches: the mantissa planes are noise, where a 6-byte match is a coincidence that costs
/// a sequence. Requiring 7 bytes and a 4096-entry table (16 KiB, inside L1 data cache) made
/// level 1 encode 15-30% faster on `benches/data/grads.f32` (byte planes of f32 and of
/// bf16) and decode about 10% faster, for 0.1-0.3% of ratio. Once packs left the zeros out
/// of the bf16 planes, what zstd compresses is mostly the sign and exponent plane of the
/// non-zero values, which is almost all literals: a 256-entry table (1 KiB) made bf16+zstd
/// encode 1.26 -> 1.72 GB/s per core and decode 3.6 -> 4.1 for 1% of ratio (3.82 -> 3.78),
/// shuffle+zstd encode 0.80 -> 0.91 for 0.4%, the zstd codec 0.38 -> 0.40 for 1.3% (hash
/// log 6 gained only 4% more speed on the exponent plane). Other levels keep zstd's
/// parameters (0 means "the level's default").
const FAST_LEVEL_TABLES: (u32, u32) = (8, 7);

/// Encodes segments for the wire, reusing its zstd context and plane buffer.
///
/// One `Encoder` per sending thread. After the first segment of a given size, encoding
/// another of at most that size allocates nothing (zstd keeps its workspace between
/// frames; the plane buffer and the caller's output keep their capacity).
///
/// # Examples
/// ```
/// use ringcc::codec::{Codec, Decoder, Encoder};
/// use ringcc::DataType;
/// # fn main() -> Result<(), ringcc::codec::CodecError> {
/// let grads = vec![1.0e-3f32; 1024];
/// let mut encoder = Encoder::new(1)?;
/// let mut payload = Vec::new();
/// let sent = encoder.encode(Codec::ShuffleZstd, DataType::F32, bytemuck::cast_slice(&grads), &mut payload)?;
/// assert_eq!(sent, Codec::ShuffleZstd); // it compressed, so no fallback to raw
///
/// let mut decoded = vec![0f32; grads.len()]; // the receiver knows the size
/// Decoder::new()?.decode(sent, DataType::F32, &payload, bytemuck::cast_slice_mut(&mut decoded))?;
/// assert_eq!(decoded, grads);
/// # Ok(()) }
/// ```
pub struct Encoder {
    cctx: CCtx<'static>,
    zstd_level: i32,
    /// Plane packs (shuffle+zstd, bf16+zstd): scratch and which planes compress.
    pack: PackEncoder,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("zstd_level", &self.zstd_level).finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder compressing at `zstd_level`: negative levels are zstd's fast modes (less
    /// ratio, more speed), 1 to 3 its usual fast levels, 0 zstd's default (3). The range is
    /// zstd's, about -131072..=22.
    ///
    /// # Errors
    /// [`CodecError::Level`] outside zstd's range; [`CodecError::Zstd`] if zstd cannot
    /// allocate its context.
    pub fn new(zstd_level: i32) -> Result<Encoder, CodecError> {
        let cctx = CCtx::try_create().ok_or(CodecError::Zstd { op: "create context", reason: "out of memory" })?;
        let mut encoder = Encoder { cctx, zstd_level, pack: PackEncoder::default() };
        encoder.set_zstd_level(zstd_level)?;
        Ok(encoder)
    }

    /// The zstd level in use.
    pub fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    /// Changes the zstd level for the next segments (see [`Encoder::new`]).
    ///
    /// # Errors
    /// [`CodecError::Level`] outside zstd's range (the level is then unchanged).
    pub fn set_zstd_level(&mut self, level: i32) -> Result<(), CodecError> {
        let (min, max) = (zstd_safe::min_c_level(), zstd_safe::max_c_level());
        if !(min..=max).contains(&level) {
            return Err(CodecError::Level { level, min, max });
        }
        let (hash_log, min_match) = if level == 1 { FAST_LEVEL_TABLES } else { (0, 0) };
        for param in
            [CParameter::CompressionLevel(level), CParameter::HashLog(hash_log), CParameter::MinMatch(min_match)]
        {
            self.cctx
                .set_parameter(param)
                .map_err(|code| CodecError::Zstd { op: "set level", reason: zstd_safe::get_error_name(code) })?;
        }
        self.zstd_level = level;
        Ok(())
    }

    /// Encodes the elements of `dtype` in `raw` with `codec` into `out` and returns the codec
    /// the payload is actually in, which goes in the frame header.
    ///
    /// `out` is cleared first and its capacity reused. The payload is never longer than
    /// [`Codec::payload_len_max`]: when zstd does not shrink the segment, the payload is
    /// written with [`Codec::fallback`] instead (same rounding, no compression) and that
    /// codec is returned. A lossy codec rounds as [`super::round_in_place`] does.
    ///
    /// # Errors
    /// [`CodecError::Unsupported`] for a lossy codec and a dtype other than f32;
    /// [`CodecError::PartialElement`] if `raw` is not whole elements; [`CodecError::Zstd`]
    /// if zstd cannot allocate. `out` is then empty.
    pub fn encode(
        &mut self,
        codec: Codec,
        dtype: DataType,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Codec, CodecError> {
        out.clear();
        check_args(codec, dtype, raw.len())?;
        let packed = match codec {
            Codec::Raw => {
                out.extend_from_slice(raw);
                return Ok(Codec::Raw);
            }
            Codec::Bf16 | Codec::F16 => {
                out.resize(raw.len() / 2, 0);
                if codec == Codec::Bf16 {
                    lossy::encode_bf16(raw, out);
                } else {
                    lossy::encode_f16(raw, out);
                }
                return Ok(codec);
            }
            Codec::Zstd => {
                if let Err(e) = compress(&mut self.cctx, raw, out) {
                    out.clear();
                    return Err(e);
                }
                if out.len() < raw.len() {
                    return Ok(codec);
                }
                Ok(false)
            }
            Codec::ShuffleZstd => {
                let limit = codec.payload_len_max(raw.len());
                let source = Source::Elems { elem_bytes: dtype.size(), bytes: raw };
                self.pack.encode(&mut self.cctx, source, limit, out)
            }
            Codec::Bf16Zstd => {
                let limit = codec.payload_len_max(raw.len());
                self.pack.encode(&mut self.cctx, Source::F32ToBf16(raw), limit, out)
            }
        };
        match packed {
            Ok(true) => return Ok(codec),
            Ok(false) => {}
            Err(e) => {
                out.clear();
                return Err(e);
            }
        }
        // Incompressible: send the uncompressed form, which a receiver decodes to the same bits.
        let fallback = codec.fallback();
        out.clear();
        match fallback {
            Codec::Bf16 => {
                out.resize(raw.len() / 2, 0);
                lossy::encode_bf16(raw, out);
            }
            _ => out.extend_from_slice(raw),
        }
        Ok(fallback)
    }
}

/// One zstd frame over `src` into `out` (empty on entry), with its content size declared.
pub(super) fn compress(cctx: &mut CCtx<'static>, src: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.reserve(zstd_safe::compress_bound(src.len()));
    match cctx.compress2(out, src) {
        Ok(_) => Ok(()),
        Err(code) => {
            // A failed compress2 leaves the frame open and zstd refuses most setters until
            // the session is reset; resetting only the session cannot fail.
            let _ = cctx.reset(zstd_safe::ResetDirective::SessionOnly);
            Err(CodecError::Zstd { op: "compress", reason: zstd_safe::get_error_name(code) })
        }
    }
}
