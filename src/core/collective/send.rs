//! What a collective sends: data frames in schedule order (encoded when polled, so a
//! driver that polls as its socket drains paces the encoding), then completion tokens.

use super::{Collective, Link, Status, Transmit};
use crate::codec::{Codec, PooledBytes};
use crate::core::schedule::segment_range;
use crate::wire::{FrameKind, Phase, HEADER_LEN};

impl Collective {
    /// Next frame to send, if any. `buf` must be the buffer passed to every other call.
    ///
    /// A segment is encoded (with the call's codec) when it is polled, so a driver that
    /// polls only as its socket drains (see [`Collective::poll_transmit_where`]) encodes
    /// segment k while segment k-1 is being written.
    pub fn poll_transmit(&mut self, buf: &[u8]) -> Option<Transmit> {
        self.poll_transmit_where(buf, |_| true)
    }

    /// Like [`Collective::poll_transmit`], but only a frame for a link `may_send` accepts:
    /// the driver paces encoding by refusing links whose write queue is already deep.
    pub fn poll_transmit_where(&mut self, buf: &[u8], may_send: impl Fn(Link) -> bool) -> Option<Transmit> {
        struct Paced<F>(F);
        impl<F: Fn(Link) -> bool> Outlet for Paced<F> {
            fn may_send(&self, link: Link) -> bool {
                (self.0)(link)
            }
            fn send_now(&mut self, _: Link, _: &[u8; HEADER_LEN], _: &[u8]) -> bool {
                false
            }
        }
        self.poll_transmit_into(buf, &mut Paced(may_send))
    }

    /// Like [`Collective::poll_transmit_where`] with [`Outlet::may_send`], and each
    /// latency-path frame offered to [`Outlet::send_now`] as it is made: the frames the
    /// outlet takes there are not returned (nor copied: the outlet copied them).
    pub fn poll_transmit_into(&mut self, buf: &[u8], out: &mut impl Outlet) -> Option<Transmit> {
        if matches!(self.status, Status::Failed(_)) {
            return None;
        }
        // Latency-path frames and FINs are small and never encoded: nothing to pace. A FIN
        // goes only after every data frame, so pacing cannot put one ahead of data.
        let data = if self.latency.is_some() {
            self.poll_latency(buf, out)
        } else {
            self.poll_parts(buf, &|link| out.may_send(link))
        };
        data.or_else(|| self.poll_fin())
    }

    pub(super) fn poll_parts(&mut self, buf: &[u8], may_send: &impl Fn(Link) -> bool) -> Option<Transmit> {
        let i =
            (0..self.parts.len()).find(|&i| !self.parts[i].ready.is_empty() && may_send(self.parts[i].send_link))?;
        let cur = self.parts[i].ready.pop_front()?;
        let (block, chunk) = self.chunk_elems_range(i, cur.phase, cur.step, true);
        let seg = segment_range(chunk.len(), self.seg_elems, cur.segment as usize);
        let esize = self.spec.dtype.size();
        let payload = (chunk.start + seg.start) * esize..(chunk.start + seg.end) * esize;
        let link = self.parts[i].send_link;
        let raw = &buf[payload.clone()];
        let encoded = if self.parts[i].passes_on(cur) {
            // Forwarded exactly as it came: its kept payload if it came encoded, else raw
            // from the buffer. Encoding it again could round what this rank already holds
            // (a lossy codec where the owner sent raw) and its copies would then differ.
            let kept = self.parts[i].forwards.front().is_some_and(|(c, ..)| *c == cur);
            match kept.then(|| self.parts[i].forwards.pop_front()).flatten() {
                Some((_, codec, Some(bytes))) => {
                    self.forwards_kept_bytes -= bytes.len();
                    Some((codec, bytes))
                }
                Some((_, codec, None)) => {
                    self.codecs.as_deref_mut().and_then(|c| c.reencode(codec, self.spec.dtype, raw))
                }
                None => None,
            }
        } else {
            match self.codecs.as_deref_mut() {
                Some(c) if self.plan.encodes() => c.encode_segment(&self.plan, link, self.spec.dtype, raw),
                _ => None,
            }
        };
        let (codec, wire) = match &encoded {
            Some((codec, bytes)) => (*codec, &bytes[..]),
            None => (Codec::Raw, raw),
        };
        let at = (cur.step, block as u32, cur.segment);
        let header = self.spec.encode_coded_header(link, FrameKind::Data, cur.phase, at, (codec, raw.len()), wire);
        self.bytes_sent += (HEADER_LEN + wire.len()) as u64;
        self.bytes_saved += raw.len().saturating_sub(wire.len()) as u64;
        let t = match encoded {
            Some((_, bytes)) => Transmit { link, header, payload: 0..0, owned: Some(bytes) },
            None => Transmit { link, header, payload, owned: None },
        };
        if self.parts.iter().all(|p| p.ready.is_empty()) {
            self.update_status_no_time();
        }
        Some(t)
    }

    /// The next completion token, once this rank holds the result and sent all its data.
    pub(super) fn poll_fin(&mut self) -> Option<Transmit> {
        if !self.holds_result() || !self.data_sent() {
            return None;
        }
        let fins = self.fins.as_mut()?;
        fins.send_own();
        let (link, origin, hop) = fins.next_send()?;
        let header = self.spec.encode_header(link, FrameKind::Fin, Phase::AllGather, (hop, origin, 0), &[]);
        self.bytes_sent += HEADER_LEN as u64;
        let t = Transmit { link, header, payload: 0..0, owned: None };
        self.update_status_no_time();
        Some(t)
    }

    pub(super) fn poll_latency(&mut self, buf: &[u8], out: &mut impl Outlet) -> Option<Transmit> {
        loop {
            let d = self.latency.as_mut()?;
            let phase = d.phase();
            let (link, step, chunk, bytes) = d.next_send(buf)?;
            let s = &self.spec;
            // Every payload leaves from a copy taken now (the outlet's, or below), never by
            // reference to the caller's buffer: the latency path changes that buffer as
            // soon as the next value arrives, possibly before this frame has been written
            // (the simulator's hazard check found it).
            let header = s.encode_header(link, FrameKind::Data, phase, (step, chunk as u32, 0), bytes);
            self.bytes_sent += (HEADER_LEN + bytes.len()) as u64;
            if out.send_now(link, &header, bytes) {
                self.update_status_no_time();
                continue;
            }
            let owned = match &self.codecs {
                Some(c) => c.keep(bytes),
                None => PooledBytes::from(bytes.to_vec()),
            };
            let t = Transmit { link, header, payload: 0..0, owned: Some(owned) };
            self.update_status_no_time();
            return Some(t);
        }
    }
}

/// Where a driver sends what a collective makes (see [`Collective::poll_transmit_into`]).
pub trait Outlet {
    /// Whether a ring frame for `link` may be made now: a driver paces encoding by refusing
    /// links whose write queue is already deep.
    fn may_send(&self, link: Link) -> bool;

    /// Offered each latency-path frame as it is made: returns true if the outlet has sent
    /// `header` and `payload` (copied them out) already, so the collective keeps no copy
    /// and does not return the frame.
    fn send_now(&mut self, link: Link, header: &[u8; HEADER_LEN], payload: &[u8]) -> bool;
}
