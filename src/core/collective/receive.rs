//! What a collective receives: every header checked against the one frame the schedule
//! expects next, payloads reduced or copied into place, forwards queued, FINs counted.

use std::ops::Range;
use std::time::Instant;

use super::{Collective, Cursor, Link, ProtocolError, Status};
use crate::codec::{Codec, CodecError};
use crate::core::schedule::segment_count;
use crate::core::{reduce, ReduceOp};
use crate::limits::FORWARDS_KEPT_BYTES_MAX;
use crate::wire::{CollKind, FrameKind, Header, Phase};

impl Collective {
    /// Feeds one received data frame (CRC already verified by the caller) from `link`.
    ///
    /// Frames of another sequence number or epoch must be routed elsewhere by the caller;
    /// this checks everything else against the schedule.
    ///
    /// # Errors
    /// A [`ProtocolError`] if the frame is not the one expected next; the collective is
    /// then failed and stays failed.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        payload: &[u8],
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        self.handle(now, link, header, Some(payload), buf)
    }

    /// Like [`Collective::handle_frame`] for a payload already read into the range
    /// [`Collective::recv_target`] returned for this header.
    ///
    /// # Errors
    /// As [`Collective::handle_frame`].
    pub fn handle_frame_in_place(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        self.handle(now, link, header, None, buf)
    }

    /// Where the payload of `header` may be read straight into the caller's buffer:
    /// `Some(byte range)` for the expected all-gather or broadcast frame, whose payload is
    /// copied unchanged. After reading it there (and checking its CRC), call
    /// [`Collective::handle_frame_in_place`]. `None` means: read it elsewhere and call
    /// [`Collective::handle_frame`].
    pub fn recv_target(&self, link: Link, h: &Header) -> Option<Range<usize>> {
        if h.kind != FrameKind::Data || self.status != Status::Running || self.check_fingerprint(h).is_err() {
            return None;
        }
        let i = self.parts.iter().position(|p| p.send_link.opposite() == link)?;
        let cur = self.parts[i].expect?;
        if !matches!(cur.phase, Phase::AllGather | Phase::Broadcast) || h.codec != Codec::Raw {
            return None;
        }
        let (block, bytes) = self.expected_bytes(i, cur);
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.payload_len as usize, h.raw_len as usize);
        (got == (cur.phase, cur.step, block, cur.segment, bytes.len(), bytes.len())).then_some(bytes)
    }

    pub(super) fn handle(
        &mut self,
        now: Instant,
        link: Link,
        header: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if let Status::Failed(e) = &self.status {
            return Err(e.clone());
        }
        let result = self.apply_frame(link, header, payload, buf);
        match result {
            Ok(()) => {
                self.last_progress = now;
                self.update_status(now);
                Ok(())
            }
            Err(e) => {
                self.status = Status::Failed(e.clone());
                Err(e)
            }
        }
    }

    pub(super) fn apply_frame(
        &mut self,
        link: Link,
        h: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if h.kind == FrameKind::Abort {
            return Err(ProtocolError::Aborted {
                peer: h.sender,
                seq: h.seq,
                reason: String::from_utf8_lossy(payload.unwrap_or_default()).into_owned(),
            });
        }
        self.check_fingerprint(h)?;
        if h.kind == FrameKind::Fin {
            return self.apply_fin(link, h);
        }
        if self.latency.is_some() {
            return self.apply_latency(link, h, payload, buf);
        }
        let i = self
            .parts
            .iter()
            .position(|p| p.send_link.opposite() == link)
            .ok_or_else(|| self.unexpected(h, "a frame on a link this collective does not receive on".into()))?;
        let Some(cur) = self.parts[i].expect else {
            return Err(self.unexpected(h, "no more frames".into()));
        };
        let (block, bytes) = self.expected_bytes(i, cur);
        let chunk_len = self.chunk_elems_range(i, cur.phase, cur.step, false).1.len();
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.raw_len as usize);
        let want = (cur.phase, cur.step, block, cur.segment, bytes.len());
        if got != want {
            return Err(
                self.unexpected(h, format!("expected (phase, step, chunk, segment, bytes) = {want:?}, got {got:?}"))
            );
        }
        if let Err(detail) = self.plan.check_frame(h.codec, h.payload_len as usize, bytes.len()) {
            return Err(self.unexpected(h, detail));
        }
        self.save_input(i, block, cur.segment, bytes.clone(), buf);
        let dst = &mut buf[bytes];
        let w = self.spec.world as u32;
        let last_rs = cur.phase == Phase::ReduceScatter && cur.step + 2 == w;
        match (cur.phase, payload) {
            (Phase::ReduceScatter, Some(payload)) => {
                self.take_payload(h, true, payload, dst)?;
                if last_rs && self.spec.op == ReduceOp::Avg {
                    reduce::divide(self.spec.dtype, dst, self.spec.contributors);
                }
                if last_rs {
                    self.plan.round_final(self.spec.dtype, dst);
                }
            }
            (Phase::ReduceScatter, None) => {
                return Err(self.unexpected(h, "reduce-scatter payload delivered in place".into()));
            }
            (_, Some(payload)) => self.take_payload(h, false, payload, dst)?,
            (_, None) => {}
        }
        // What this receipt makes sendable, and what comes next on this link.
        let forward = match (cur.phase, self.spec.coll) {
            (Phase::ReduceScatter, CollKind::ReduceScatter) if last_rs => None,
            (Phase::ReduceScatter, _) if last_rs => {
                Some(Cursor { phase: Phase::AllGather, step: 0, segment: cur.segment })
            }
            (Phase::ReduceScatter, _) => Some(Cursor { step: cur.step + 1, ..cur }),
            (Phase::AllGather, _) if cur.step + 2 < w => Some(Cursor { step: cur.step + 1, ..cur }),
            (Phase::AllGather, _) => None,
            (Phase::Gather | Phase::Doubling, _) => None,
            (Phase::Broadcast, _) => {
                let part = &self.parts[i];
                (crate::core::schedule::next_pos(part.pos, self.spec.world) != part.root_pos).then_some(cur)
            }
        };
        if let Some(f) = forward {
            // A frame that is only passed on is forwarded as it came, from a copy of its
            // payload. Every rank holds all chunks but its own for about a chunk's time
            // before it passes them on (it sends its own chunk first), so past a bound no
            // copy is kept: the frame is then encoded again, with its codec, from the
            // decoded bytes this rank holds, which gives back exactly those values
            // (`Codecs::reencode`).
            if let (Phase::AllGather | Phase::Broadcast, Some(p), Some(c)) = (cur.phase, payload, &self.codecs) {
                if h.codec != Codec::Raw {
                    let fits = self.forwards_kept_bytes + p.len() <= FORWARDS_KEPT_BYTES_MAX;
                    let kept = fits.then(|| c.keep(p));
                    self.forwards_kept_bytes += kept.as_ref().map_or(0, |k| k.len());
                    self.parts[i].forwards.push_back((f, h.codec, kept));
                }
            }
            self.parts[i].ready.push_back(f);
        }
        let nsegs = segment_count(chunk_len, self.seg_elems) as u32;
        let next = if cur.segment + 1 < nsegs {
            Some(Cursor { segment: cur.segment + 1, ..cur })
        } else {
            match (cur.phase, self.spec.coll) {
                (Phase::ReduceScatter, CollKind::ReduceScatter) if last_rs => None,
                (Phase::ReduceScatter, _) if last_rs => Some(Cursor { phase: Phase::AllGather, step: 0, segment: 0 }),
                (Phase::ReduceScatter, _) | (Phase::AllGather, _) if cur.step + 2 < w => {
                    Some(Cursor { step: cur.step + 1, segment: 0, ..cur })
                }
                _ => None,
            }
        };
        self.parts[i].expect = next;
        Ok(())
    }

    /// Reduces (`reduces`) or copies a checked payload into `dst`, the segment the schedule
    /// expects: raw payloads straight from the frame, encoded ones through the lent codecs.
    pub(super) fn take_payload(
        &mut self,
        h: &Header,
        reduces: bool,
        payload: &[u8],
        dst: &mut [u8],
    ) -> Result<(), ProtocolError> {
        let (dtype, op) = (self.spec.dtype, self.spec.op);
        let decoded = match (h.codec, self.codecs.as_deref_mut()) {
            (Codec::Raw, _) if reduces => {
                reduce::reduce_into(dtype, op, dst, payload);
                Ok(())
            }
            (Codec::Raw, _) => {
                dst.copy_from_slice(payload);
                Ok(())
            }
            (codec, Some(c)) if reduces => c.decode_reduce(codec, dtype, op, payload, dst),
            (codec, Some(c)) => c.decode(codec, dtype, payload, dst),
            // `check_frame` accepts only raw frames when no codecs were lent.
            (codec, None) => Err(CodecError::Unsupported { codec, dtype }),
        };
        decoded.map_err(|source| ProtocolError::Payload { peer: h.sender, codec: h.codec.name(), source })
    }

    pub(super) fn apply_fin(&mut self, link: Link, h: &Header) -> Result<(), ProtocolError> {
        let data_pending = self.data_expects_on(link);
        let Some(fins) = self.fins.as_mut().filter(|_| !data_pending && h.payload_len == 0) else {
            let why = if data_pending { "a FIN before the data it follows" } else { "an unexpected FIN" };
            return Err(ProtocolError::Unexpected { peer: h.sender, detail: why.into() });
        };
        fins.accept(link, h.chunk, h.step).map_err(|m| ProtocolError::Unexpected {
            peer: h.sender,
            detail: format!("expected FIN (origin, hop) = {:?}, got {:?}", m.want, m.got),
        })
    }

    pub(super) fn apply_latency(
        &mut self,
        link: Link,
        h: &Header,
        payload: Option<&[u8]>,
        buf: &mut [u8],
    ) -> Result<(), ProtocolError> {
        let Some(d) = self.latency.as_mut() else { return Ok(()) };
        let Some((step, origin)) = d.expected(link) else {
            return Err(ProtocolError::Unexpected { peer: h.sender, detail: format!("no more frames on {link:?}") });
        };
        let got = (h.phase, h.step, h.chunk as usize, h.segment, h.payload_len as usize, h.raw_len as usize, h.codec);
        let want = (d.phase(), step, origin, 0, d.bytes(), d.bytes(), Codec::Raw);
        let Some(payload) = payload.filter(|_| got == want) else {
            return Err(ProtocolError::Unexpected {
                peer: h.sender,
                detail: format!("expected (phase, step, chunk, segment, bytes, raw, codec) = {want:?}, got {got:?}"),
            });
        };
        d.accept(link, payload, (self.spec.dtype, self.spec.op, self.spec.contributors), buf);
        Ok(())
    }

    /// Compares the frame's fingerprint with this call's; strings are built only for a
    /// mismatch (this runs for every frame).
    pub(super) fn check_fingerprint(&self, h: &Header) -> Result<(), ProtocolError> {
        let s = &self.spec;
        let op = s.wire_op();
        let mismatch = |field: &'static str, local: String, remote: String| {
            Err(ProtocolError::Mismatch { field, local, remote, peer: h.sender, seq: s.seq })
        };
        if h.coll != s.coll {
            return mismatch("collective", s.coll.name().into(), h.coll.name().into());
        }
        if h.dtype != s.dtype {
            return mismatch("dtype", s.dtype.name().into(), h.dtype.name().into());
        }
        if h.len_elems != s.len_elems as u64 {
            return mismatch("length", s.len_elems.to_string(), h.len_elems.to_string());
        }
        if h.op != op {
            return mismatch("op", op.name().into(), h.op.name().into());
        }
        Ok(())
    }

    pub(super) fn unexpected(&self, h: &Header, detail: String) -> ProtocolError {
        ProtocolError::Unexpected { peer: h.sender, detail }
    }
}
