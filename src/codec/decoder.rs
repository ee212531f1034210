//! The receiving side: a peer's payload to raw segment bytes of a size the receiver knows.

use zstd::zstd_safe::{self, DCtx};

use super::pack::{PackDecoder, Sink};
use super::{check_args, lossy, Codec, CodecError};
use crate::core::reduce::reduce_into;
use crate::core::{DataType, ReduceOp};

/// The four bytes that open a standard zstd frame (`ZSTD_MAGICNUMBER`, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decodes payloads from peers, reusing its zstd context and scratch buffers.
///
/// One `Decoder` per receiving thread. After the first segment of a given size, decoding
/// another of at most that size allocates nothing. Every method takes the decoded size
/// from the caller's buffer, never from the payload.
pub struct Decoder {
    dctx: DCtx<'static>,
    /// Planes (and bitmap) of the pack being decoded.
    pack: PackDecoder,
    /// Decoded segment before [`Decoder::decode_reduce`] folds it in.
    decoded: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder with a fresh zstd context.
    ///
    /// # Errors
    /// [`CodecError::Zstd`] if zstd cannot allocate its context.
    pub fn new() -> Result<Decoder, CodecError> {
        let dctx = DCtx::try_create().ok_or(CodecError::Zstd { op: "create context", reason: "out of memory" })?;
        Ok(Decoder { dctx, pack: PackDecoder::default(), decoded: Vec::new() })
    }

    /// Decodes `payload`, encoded with `codec` from elements of `dtype`, into `out`, whose
    /// length is the exact decoded size the receiver expects (the segment's size from its
    /// own schedule, never a length sent by the peer).
    ///
    /// Lossy codecs widen to f32 exactly, so the caller reduces in f32.
    ///
    /// # Errors
    /// [`CodecError::SizeMismatch`] if the payload is not, or does not decode to, exactly
    /// `out.len()` bytes; [`CodecError::Corrupt`] if it is not a valid encoding;
    /// [`CodecError::Unsupported`] / [`CodecError::PartialElement`] for arguments no sender
    /// could have encoded. On error `out` holds unspecified bytes.
    pub fn decode(&mut self, codec: Codec, dtype: DataType, payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        check_args(codec, dtype, out.len())?;
        match codec {
            Codec::Raw => {
                expect_payload_len(payload, out.len())?;
                out.copy_from_slice(payload);
            }
            Codec::Bf16 | Codec::F16 => {
                expect_payload_len(payload, out.len() / 2)?;
                if codec == Codec::Bf16 {
                    lossy::decode_bf16(payload, out);
                } else {
                    lossy::decode_f16(payload, out);
                }
            }
            Codec::Zstd => decompress(&mut self.dctx, payload, out)?,
            Codec::ShuffleZstd => {
                let sink = Sink::Elems { elem_bytes: dtype.size(), out };
                self.pack.decode(&mut self.dctx, payload, sink)?;
            }
            Codec::Bf16Zstd => self.pack.decode(&mut self.dctx, payload, Sink::WidenBf16(out))?,
        }
        Ok(())
    }

    /// Decodes `payload` as [`Decoder::decode`] would into a buffer of `dst.len()` bytes,
    /// then reduces it into `dst`: `dst[i] = op(dst[i], decoded[i])` (the reduce-scatter
    /// receive step). `Avg` accumulates like `Sum`. With a lossy codec the reduction is in
    /// f32 (the lossy codecs carry only f32).
    ///
    /// `raw` payloads are reduced straight from the payload, without a copy.
    ///
    /// # Errors
    /// As [`Decoder::decode`]. On error `dst` is unchanged.
    pub fn decode_reduce(
        &mut self,
        codec: Codec,
        dtype: DataType,
        op: ReduceOp,
        payload: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CodecError> {
        check_args(codec, dtype, dst.len())?;
        if codec == Codec::Raw {
            expect_payload_len(payload, dst.len())?;
            reduce_into(dtype, op, dst, payload);
            return Ok(());
        }
        if dtype == DataType::F32 && matches!(op, ReduceOp::Sum | ReduceOp::Avg) {
            if let Some(()) = self.decode_add_f32(codec, payload, dst)? {
                return Ok(());
            }
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.resize(dst.len(), 0);
        let result = self.decode(codec, dtype, payload, &mut decoded);
        if result.is_ok() {
            reduce_into(dtype, op, dst, &decoded);
        }
        self.decoded = decoded;
        result
    }
}

impl Decoder {
    /// The f32 sum paths of [`Decoder::decode_reduce`] that widen or unshuffle straight
    /// into `dst` while adding (one pass instead of decoding into scratch and reducing
    /// that): `Ok(None)` for codecs without one. Checks and decompression come first, so on
    /// error `dst` is unchanged.
    fn decode_add_f32(&mut self, codec: Codec, payload: &[u8], dst: &mut [u8]) -> Result<Option<()>, CodecError> {
        match codec {
            Codec::Bf16 => {
                expect_payload_len(payload, dst.len() / 2)?;
                lossy::add_bf16(payload, dst);
            }
            Codec::Bf16Zstd => self.pack.decode(&mut self.dctx, payload, Sink::AddBf16(dst))?,
            Codec::ShuffleZstd => self.pack.decode(&mut self.dctx, payload, Sink::AddF32(dst))?,
            _ => return Ok(None),
        }
        Ok(Some(()))
    }
}

fn expect_payload_len(payload: &[u8], expected: usize) -> Result<(), CodecError> {
    if payload.len() == expected {
        Ok(())
    } else {
        Err(CodecError::SizeMismatch { what: "payload", expected, got: payload.len() })
    }
}

/// Decompresses `payload`, which must be exactly one standard zstd frame declaring a
/// content size of `dst.len()`, into `dst`.
///
/// The frame is checked before any decompression: a legacy or skippable frame, trailing
/// bytes or a second frame, or a declared size other than `dst.len()` is refused. zstd then
/// writes at most `dst.len()` bytes and fails if the blocks decode to another size than
/// the frame declares.
pub(super) fn decompress(dctx: &mut DCtx<'static>, payload: &[u8], dst: &mut [u8]) -> Result<(), CodecError> {
    let expected = dst.len();
    if payload.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(CodecError::Corrupt { reason: "not a zstd frame" });
    }
    match zstd_safe::find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => {}
        Ok(_) => return Err(CodecError::Corrupt { reason: "bytes after the zstd frame" }),
        Err(code) => return Err(CodecError::Corrupt { reason: zstd_safe::get_error_name(code) }),
    }
    match zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n == expected as u64 => {}
        Ok(Some(n)) => {
            let got = usize::try_from(n).unwrap_or(usize::MAX);
            return Err(CodecError::SizeMismatch { what: "decoded", expected, got });
        }
        Ok(None) => return Err(CodecError::Corrupt { reason: "zstd frame without a content size" }),
        Err(_) => return Err(CodecError::Corrupt { reason: "bad zstd frame header" }),
    }
    match dctx.decompress(dst, payload) {
        Ok(n) if n == expected => Ok(()),
        Ok(n) => Err(CodecError::SizeMismatch { what: "decoded", expected, got: n }),
        Err(code) => Err(CodecError::Corrupt { reason: zstd_safe::get_error_name(code) }),
    }
}
