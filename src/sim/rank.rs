//! One rank's driver: `net::event_loop` with channels instead of sockets.
//!
//! Each method names the event-loop function it mirrors. Differences, all deliberate:
//! arriving frames are whole (no partial reads); a frame the core handed out is copied at
//! once (the send-hazard check covers the difference); frames already queued on a link are
//! delivered even if the call fails afterwards (as if the kernel had them already).

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use super::net::{peer_of, Arrival, EventKind, Net, SimFrame};
use super::{AlignedBytes, Call, RankStatus, SimError};
use crate::codec::CodecChoice;
use crate::core::collective::{Algorithm, Collective, Link, Spec, Status};
use crate::core::payload::Codecs;
use crate::core::schedule::chunk_range;
use crate::core::ReduceOp;
use crate::wire::header::verify_crc;
use crate::wire::{CollKind, Header};
use crate::Rank;

use crate::limits::ABORT_REASON_MAX;

/// What every rank driver shares: the job's constants and the current batch.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    pub(super) world: usize,
    /// Rank at each ring position.
    pub(super) ring: &'a [Rank],
    pub(super) job: u64,
    pub(super) epoch: u64,
    pub(super) segment_bytes: usize,
    pub(super) algorithm: Algorithm,
    pub(super) codec: CodecChoice,
    pub(super) codec_level: i32,
    /// The link model's bandwidth (0: unlimited), fed to `auto` as each link's rate.
    pub(super) link_bytes_per_sec: u64,
    pub(super) progress_timeout: Duration,
    /// Completion tokens (`Spec::fin`) on every call that needs them
    /// (`core::fin::tokens_needed`).
    pub(super) fin: bool,
    /// Every rank has its partner links (`Spec::partner_links`).
    pub(super) partner_links: bool,
    pub(super) in_place_percent: u64,
    pub(super) check_hazards: bool,
    pub(super) skew_max: Duration,
    pub(super) calls: &'a [Call],
    pub(super) seq_base: u64,
}

/// A call's buffer.
#[derive(Debug)]
pub(super) enum JobBuf {
    Own(AlignedBytes),
    Shared,
}

/// A call submitted on a rank.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) call: usize,
    pub(super) buf: JobBuf,
}

/// How a call ended on this rank.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) call: usize,
    pub(super) status: RankStatus,
    pub(super) output: Vec<u8>,
    pub(super) started: Duration,
    pub(super) ended: Duration,
}

/// A frame handed out but not yet departed: its bytes must not change before it leaves.
#[derive(Debug)]
struct PendingSend {
    depart: Duration,
    range: Range<usize>,
    crc: u32,
}

#[derive(Debug)]
struct Active {
    job: Job,
    coll: Collective,
    seq: u64,
    started: Duration,
    error: Option<SimError>,
    /// Per link slot, in departure order.
    sends: Vec<VecDeque<PendingSend>>,
    last_depart: Duration,
}

/// One rank at one ring position.
#[derive(Debug)]
pub(super) struct RankSim {
    pub(super) pos: usize,
    pub(super) rank: Rank,
    pub(super) jobs: VecDeque<Job>,
    active: Option<Active>,
    /// This position's links by slot, as the real driver keeps them: `Prev`, `Next`, then
    /// its partner links (`Net::links`). The arrays below are indexed by slot.
    links: Vec<Link>,
    /// Arrived and not yet read.
    pub(super) inbox: Vec<VecDeque<Arrival>>,
    closed: Vec<bool>,
    broken: Option<(Rank, String)>,
    next_seq: u64,
    /// `Some(silent)` once crashed or killed.
    pub(super) crashed: Option<bool>,
    pub(super) paused_until: Option<Duration>,
    pub(super) timer_at: Option<Duration>,
    pub(super) wake_at: Option<Duration>,
    pub(super) finished: Vec<Finished>,
    pub(super) stale_frames: u64,
    /// Frames that arrived for a call this rank had not started yet.
    pub(super) early_frames: u64,
    pub(super) hazards: Vec<String>,
    /// This rank's codecs, lent to each call as the event loop lends its own.
    codecs: Option<Box<Codecs>>,
}

fn job_bytes<'b>(buf: &'b mut JobBuf, shared: &'b mut AlignedBytes, call: &Call) -> &'b mut [u8] {
    match buf {
        JobBuf::Own(b) => b.as_bytes_mut(),
        JobBuf::Shared => &mut shared.as_bytes_mut()[..call.len_elems * call.dtype.size()],
    }
}

impl RankSim {
    /// The rank `rank` at ring position `pos`, with its `links` in slot order.
    pub(super) fn new(pos: usize, rank: Rank, links: Vec<Link>) -> RankSim {
        RankSim {
            pos,
            rank,
            jobs: VecDeque::new(),
            active: None,
            inbox: links.iter().map(|_| VecDeque::new()).collect(),
            closed: vec![false; links.len()],
            links,
            broken: None,
            next_seq: 0,
            crashed: None,
            paused_until: None,
            timer_at: None,
            wake_at: None,
            finished: Vec::new(),
            stale_frames: 0,
            early_frames: 0,
            hazards: Vec::new(),
            codecs: None,
        }
    }

    /// The rank dies: it holds nothing and will do nothing.
    pub(super) fn crash(&mut self, silent: bool) {
        self.crashed = Some(silent);
        self.active = None;
        self.jobs.clear();
        self.inbox.iter_mut().for_each(VecDeque::clear);
    }

    /// This position's links in slot order.
    pub(super) fn links(&self) -> &[Link] {
        &self.links
    }

    /// Queues an arrival on `link`, counting frames that will be parked.
    pub(super) fn arrive(&mut self, link: Link, item: Arrival) {
        let i = slot_of(&self.links, link);
        if let Arrival::Frame(f) = &item {
            if let Ok((h, _)) = Header::decode(&f.header) {
                let started = self.active.as_ref().map_or(self.next_seq.checked_sub(1), |a| Some(a.seq));
                if started.is_none_or(|s| h.seq > s) {
                    self.early_frames += 1;
                }
            }
        }
        self.inbox[i].push_back(item);
    }

    /// What this rank waits for, for hang reports.
    pub(super) fn describe(&self) -> String {
        match &self.active {
            Some(a) => format!(
                "rank {} pos {}: seq {} {:?} waiting on {:?}, inbox {}",
                self.rank,
                self.pos,
                a.seq,
                a.coll.status(),
                a.coll.waiting_on(),
                self.inbox.iter().map(|q| q.len().to_string()).collect::<Vec<_>>().join("+")
            ),
            None => format!("rank {} pos {}: idle, {} calls queued", self.rank, self.pos, self.jobs.len()),
        }
    }

    /// Mirrors `EventLoop::drive`: all progress possible now, then the progress deadline.
    pub(super) fn drive(&mut self, net: &mut Net, ctx: &Ctx, shared: &mut AlignedBytes) {
        if self.crashed.is_some() || self.paused_until.is_some() {
            return;
        }
        loop {
            loop {
                let mut progressed = false;
                if self.active.is_none() {
                    progressed |= self.start_next(net, ctx, shared);
                }
                for i in 0..self.links.len() {
                    progressed |= self.pump(i, net, ctx, shared);
                }
                progressed |= self.check_active(net, ctx, shared);
                if !progressed {
                    break;
                }
            }
            if let Some(a) = self.active.as_mut() {
                a.coll.handle_timeout(net.instant());
            }
            if !self.check_active(net, ctx, shared) {
                break;
            }
        }
        self.arm_timer(net);
    }

    fn arm_timer(&mut self, net: &mut Net) {
        let Some(deadline) = self.active.as_ref().and_then(|a| a.coll.poll_timeout()) else { return };
        let at = net.offset(deadline);
        // Deadlines only move later, so an armed timer that has not fired fires first and
        // re-arms.
        if self.timer_at.is_some_and(|t| t >= net.now && t <= at) {
            return;
        }
        self.timer_at = Some(at);
        net.push(at, EventKind::Timer { pos: self.pos });
    }

    /// Mirrors `EventLoop::start_next`, including how it builds the `Spec`.
    fn start_next(&mut self, net: &mut Net, ctx: &Ctx, shared: &mut AlignedBytes) -> bool {
        let Some(mut job) = self.jobs.pop_front() else { return false };
        let seq = self.next_seq;
        self.next_seq += 1;
        debug_assert_eq!(seq, ctx.seq_base + job.call as u64, "every rank runs every call in order");
        let call = &ctx.calls[job.call];
        let spec = self.spec(ctx, call, seq);
        let coll = Collective::start_with(spec, net.instant(), job_bytes(&mut job.buf, shared, call), self.lend(ctx));
        let error =
            self.broken.as_ref().map(|(peer, reason)| SimError::LinkFailed { peer: *peer, reason: reason.clone() });
        let sends = self.links.iter().map(|_| VecDeque::new()).collect();
        self.active = Some(Active { job, coll, seq, started: net.now, error, sends, last_depart: net.now });
        self.drain(net, ctx, shared);
        true
    }

    /// Mirrors how `EventLoop::start_next` lends its codecs, with the modelled bandwidth
    /// standing in for the measured link rates.
    fn lend(&mut self, ctx: &Ctx) -> Option<Box<Codecs>> {
        if self.codecs.is_none() {
            self.codecs = Codecs::new(ctx.codec_level, None).ok().map(Box::new);
        }
        let mut codecs = self.codecs.take()?;
        if ctx.link_bytes_per_sec > 0 {
            for link in [Link::Prev, Link::Next] {
                codecs.observe_link(link, ctx.link_bytes_per_sec as f64);
            }
        }
        Some(codecs)
    }

    fn spec(&self, ctx: &Ctx, call: &Call, seq: u64) -> Spec {
        let world = ctx.world;
        // Ranks are 0..world, so a rank's index among the sorted members is the rank.
        let block_of_pos: Vec<usize> = match call.coll {
            CollKind::AllGather | CollKind::ReduceScatter => ctx.ring.to_vec(),
            _ => (0..world).collect(),
        };
        let no_op = matches!(call.coll, CollKind::AllGather | CollKind::Broadcast | CollKind::Barrier);
        Spec {
            coll: call.coll,
            op: if no_op { ReduceOp::Sum } else { call.op },
            dtype: call.dtype,
            codec: ctx.codec,
            job: ctx.job,
            epoch: ctx.epoch,
            seq,
            len_elems: call.len_elems,
            world,
            pos: self.pos,
            rank: self.rank as u32,
            block_of_pos,
            root_pos: ctx.ring.iter().position(|&r| r == call.root).unwrap_or(0),
            segment_bytes: ctx.segment_bytes,
            contributors: world,
            algorithm: ctx.algorithm,
            progress_timeout: ctx.progress_timeout,
            // As `EventLoop::spec_for`: small all-reduces and barriers go without tokens.
            fin: ctx.fin && crate::core::fin::tokens_needed(call.coll, call.len_elems * call.dtype.size()),
            payload_crc: [true, true, true],
            partner_links: ctx.partner_links,
        }
    }

    /// Mirrors `EventLoop::drain_transmits`, copying each payload as a kernel write would.
    fn drain(&mut self, net: &mut Net, ctx: &Ctx, shared: &mut AlignedBytes) {
        let Some(a) = self.active.as_mut() else { return };
        let buf = job_bytes(&mut a.job.buf, shared, &ctx.calls[a.job.call]);
        while let Some(t) = a.coll.poll_transmit(buf) {
            let i = slot_of(&self.links, t.link);
            if ctx.world == 1 || self.closed[i] {
                continue;
            }
            let payload: &[u8] = match &t.owned {
                Some(bytes) => bytes,
                None => &buf[t.payload.clone()],
            };
            let crc = if ctx.check_hazards { crc32c::crc32c(payload) } else { 0 };
            let frame = SimFrame { header: t.header, payload: AlignedBytes::from_slice(payload) };
            let depart = net.send(self.pos, t.link, Arrival::Frame(frame), a.seq);
            if ctx.check_hazards && t.owned.is_none() {
                a.sends[i].push_back(PendingSend { depart, range: t.payload, crc });
            }
            a.last_depart = a.last_depart.max(depart);
        }
    }

    /// Mirrors `EventLoop::pump_read` and `route_header`: reads arrivals on link `i` in
    /// order until the link is empty, closed, or parked on a frame of a later call.
    fn pump(&mut self, i: usize, net: &mut Net, ctx: &Ctx, shared: &mut AlignedBytes) -> bool {
        let mut progressed = false;
        loop {
            if self.closed[i] {
                return progressed;
            }
            let header_bytes = match self.inbox[i].front() {
                None => return progressed,
                Some(Arrival::Eof) => {
                    self.fail_link(i, "connection closed".into(), ctx);
                    return true;
                }
                Some(Arrival::Frame(f)) => f.header,
            };
            let (header, crc) = match Header::decode(&header_bytes) {
                Ok(v) => v,
                Err(e) => {
                    self.fail_link(i, format!("bad header: {e}"), ctx);
                    return true;
                }
            };
            if header.job != ctx.job {
                self.fail_link(i, format!("frame of job {:#x}, this job is {:#x}", header.job, ctx.job), ctx);
                return true;
            }
            let here = (ctx.epoch, self.active.as_ref().map_or(self.next_seq, |a| a.seq));
            let order = (header.epoch, header.seq).cmp(&here);
            if order == std::cmp::Ordering::Greater || (self.active.is_none() && order.is_eq()) {
                return progressed; // parked until this rank starts that call
            }
            let Some(Arrival::Frame(frame)) = self.inbox[i].pop_front() else { return progressed };
            progressed = true;
            let result = if order.is_lt() {
                self.stale_frames += 1;
                scratch_check(&header, &frame, ctx).and_then(|()| crc_check(&frame, crc, frame.payload.as_bytes()))
            } else {
                self.complete(i, &header, crc, &frame, net, ctx, shared)
            };
            if let Err(reason) = result {
                self.fail_link(i, reason, ctx);
                return true;
            }
            self.drain(net, ctx, shared);
        }
    }

    /// Mirrors `EventLoop::complete_frame` for a frame of the active call: in place when
    /// the core offers a target and the seeded coin says so, through scratch otherwise.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        i: usize,
        header: &Header,
        crc: u32,
        frame: &SimFrame,
        net: &mut Net,
        ctx: &Ctx,
        shared: &mut AlignedBytes,
    ) -> Result<(), String> {
        let link = self.links[i];
        let Some(a) = self.active.as_mut() else { return Ok(()) };
        let now = net.instant();
        let target = a.coll.recv_target(link, header);
        let in_place = target.filter(|_| net.rng.percent(ctx.in_place_percent));
        let buf = job_bytes(&mut a.job.buf, shared, &ctx.calls[a.job.call]);
        if ctx.check_hazards {
            check_departed(&mut a.sends, net.now, buf, &mut self.hazards, self.rank, a.seq);
        }
        let payload = frame.payload.as_bytes();
        if payload.len() != header.payload_len as usize {
            return Err(format!("frame carries {} payload bytes, header says {}", payload.len(), header.payload_len));
        }
        match in_place {
            Some(range) => {
                let dst = buf.get_mut(range).ok_or("receive target outside the buffer")?;
                if dst.len() != payload.len() {
                    return Err("receive target length differs from the payload".into());
                }
                dst.copy_from_slice(payload);
                crc_check(frame, crc, dst)?;
                let _ = a.coll.handle_frame_in_place(now, link, header, buf);
            }
            None => {
                scratch_check(header, frame, ctx)?;
                crc_check(frame, crc, payload)?;
                let _ = a.coll.handle_frame(now, link, header, payload, buf);
            }
        }
        Ok(())
    }

    /// Mirrors `EventLoop::fail_link`: the link is closed and never read again; the
    /// active call fails only if it still expects frames on it; later calls fail at once.
    fn fail_link(&mut self, i: usize, reason: String, ctx: &Ctx) {
        if self.closed[i] {
            return;
        }
        self.closed[i] = true;
        self.inbox[i].clear();
        let peer = ctx.ring[peer_of(self.pos, self.links[i], ctx.world).0];
        self.broken.get_or_insert((peer, reason.clone()));
        if let Some(a) = self.active.as_mut() {
            if a.coll.expects_on(self.links[i]) {
                a.error.get_or_insert(SimError::LinkFailed { peer, reason });
            }
        }
    }

    /// Mirrors `EventLoop::check_active`: returns the call once it is done and all its
    /// frames have left, or failed (then tells every peer it has an open link to with an
    /// abort).
    fn check_active(&mut self, net: &mut Net, ctx: &Ctx, shared: &mut AlignedBytes) -> bool {
        let Some(a) = self.active.as_mut() else { return false };
        let result = match a.error.take() {
            Some(e) => Err(e),
            None => match a.coll.status() {
                Status::Running => return false,
                Status::Done if a.last_depart > net.now => {
                    if self.wake_at != Some(a.last_depart) {
                        self.wake_at = Some(a.last_depart);
                        net.push(a.last_depart, EventKind::Wake { pos: self.pos });
                    }
                    return false;
                }
                Status::Done => Ok(()),
                Status::Failed(pe) => Err(SimError::Protocol(pe.clone())),
            },
        };
        let Some(mut a) = self.active.take() else { return false };
        self.codecs = a.coll.take_codecs().or(self.codecs.take());
        let call = &ctx.calls[a.job.call];
        let (status, output) = match result {
            Ok(()) => {
                let buf = job_bytes(&mut a.job.buf, shared, call);
                if ctx.check_hazards {
                    check_departed(&mut a.sends, net.now, buf, &mut self.hazards, self.rank, a.seq);
                }
                let output = match (&a.job.buf, call.coll) {
                    (JobBuf::Shared, _) => Vec::new(),
                    (JobBuf::Own(b), CollKind::ReduceScatter) => {
                        let r = chunk_range(call.len_elems, ctx.world, self.rank);
                        let esize = call.dtype.size();
                        b.as_bytes()[r.start * esize..r.end * esize].to_vec()
                    }
                    (JobBuf::Own(b), _) => b.as_bytes().to_vec(),
                };
                (RankStatus::Done, output)
            }
            Err(e) => {
                self.send_abort(net, ctx, a.coll.spec(), &e.to_string());
                (RankStatus::Failed(e), Vec::new())
            }
        };
        let call_index = a.job.call;
        self.finished.push(Finished { call: call_index, status, output, started: a.started, ended: net.now });
        if call_index + 1 < ctx.calls.len() {
            let gap = net.rng.duration_up_to(ctx.skew_max);
            net.push(net.now + gap, EventKind::Submit { pos: self.pos, call: call_index + 1 });
        }
        true
    }

    /// Mirrors `EventLoop::send_abort`: on every open link, partner links included.
    fn send_abort(&mut self, net: &mut Net, ctx: &Ctx, spec: &Spec, reason: &str) {
        for (&link, &closed) in self.links.iter().zip(&self.closed) {
            if ctx.world > 1 && !closed {
                let (header, payload) = spec.abort_frame(link, reason);
                let frame = SimFrame { header, payload: AlignedBytes::from_slice(&payload) };
                net.send(self.pos, link, Arrival::Frame(frame), spec.seq);
            }
        }
    }
}

/// Slot of `link` in a position's `links`.
///
/// # Panics
/// If the position has no such link (a simulator or core bug: the net delivers only on
/// links it built, and the core sends on partner links only to `partner_positions`).
fn slot_of(links: &[Link], link: Link) -> usize {
    match links.iter().position(|&l| l == link) {
        Some(i) => i,
        None => panic!("no {link:?} among this position's links {links:?}"),
    }
}

/// The real driver reads scratch-path payloads into a buffer of
/// `max(segment_bytes, ABORT_REASON_MAX)` bytes rounded up to whole words; a larger one
/// fails the link.
fn scratch_check(header: &Header, frame: &SimFrame, ctx: &Ctx) -> Result<(), String> {
    let cap = ctx.segment_bytes.max(ABORT_REASON_MAX).div_ceil(8) * 8;
    let len = header.payload_len as usize;
    if len > cap {
        return Err(format!("payload of {len} bytes exceeds the agreed segment size {cap}"));
    }
    if frame.payload.len() != len {
        return Err(format!("frame carries {} payload bytes, header says {len}", frame.payload.len()));
    }
    Ok(())
}

fn crc_check(frame: &SimFrame, crc: u32, payload: &[u8]) -> Result<(), String> {
    verify_crc(&frame.header, crc, payload).map_err(|e| e.to_string())
}

/// Checks the frames that left by `now`: their bytes must still be what the core handed
/// out (the real driver writes them from the buffer when the socket takes them).
fn check_departed(
    sends: &mut [VecDeque<PendingSend>],
    now: Duration,
    buf: &[u8],
    hazards: &mut Vec<String>,
    rank: Rank,
    seq: u64,
) {
    for q in sends.iter_mut() {
        while q.front().is_some_and(|s| s.depart <= now) {
            let Some(s) = q.pop_front() else { break };
            if crc32c::crc32c(&buf[s.range.clone()]) != s.crc {
                hazards.push(format!(
                    "rank {rank} call #{seq}: bytes {:?} changed after the core handed them out, before they left at {:?}",
                    s.range, s.depart
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_changed_before_their_frame_left_are_a_hazard() {
        let us = Duration::from_micros;
        let mut buf = vec![1u8; 16];
        let pending = |depart, range: Range<usize>, buf: &[u8]| PendingSend {
            depart,
            crc: crc32c::crc32c(&buf[range.clone()]),
            range,
        };
        let mut sends = [VecDeque::new(), VecDeque::new()];
        sends[1].push_back(pending(us(5), 4..8, &buf));
        sends[1].push_back(pending(us(9), 8..12, &buf));
        let mut hazards = Vec::new();
        check_departed(&mut sends, us(4), &buf, &mut hazards, 3, 0);
        assert_eq!(sends[1].len(), 2, "nothing has left at 4 us");
        buf[4] = 2; // written at 4 us: the first frame, leaving at 5 us, would carry it
        check_departed(&mut sends, us(6), &buf, &mut hazards, 3, 0);
        assert_eq!(hazards.len(), 1, "{hazards:?}");
        buf[12] = 2; // outside every pending frame
        check_departed(&mut sends, us(10), &buf, &mut hazards, 3, 0);
        assert_eq!(hazards.len(), 1, "{hazards:?}");
        assert!(sends.iter().all(VecDeque::is_empty));
    }
}
