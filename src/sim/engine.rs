//! The simulator: ranks, network, faults and the event loop that runs batches of calls.

use std::time::Duration;

use super::net::{Arrival, Event, EventKind, Net, Window};
use super::rank::{Ctx, Job, JobBuf, RankSim};
use super::{AlignedBytes, BufferMode, Call, Fault, HangError, RankStatus, SimConfig, SimOutcome, SimRng};
use crate::core::schedule::chunk_range;
use crate::limits::WORLD_MAX;
use crate::wire::CollKind;
use crate::Rank;

/// Job id carried in every simulated frame header.
const SIM_JOB_ID: u64 = 0x5349_4d5f_4a4f_4221;

/// Most unsettled ranks described in a [`HangError`].
const HANG_REPORT_RANKS_MAX: usize = 16;

/// A simulated job: `world` ranks in a ring on an in-memory network in virtual time.
///
/// Calls run in batches ([`Sim::run`], [`Sim::run_batch`]); each rank's caller makes the
/// batch's calls one after another (blocking calls, seeded gaps in between), with
/// sequence numbers continuing across batches. Faults ([`Sim::inject`]) take effect at
/// their virtual time, whichever batch is running then.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    /// Rank at each ring position.
    ring: Vec<Rank>,
    net: Net,
    /// By position.
    ranks: Vec<RankSim>,
    shared: AlignedBytes,
    next_seq: u64,
    calls: Vec<Call>,
    /// `[call][rank]`, taken when the rank makes the call.
    inputs: Vec<Vec<Vec<u8>>>,
    seq_base: u64,
    /// By position: true once the rank has returned from every call of the batch or died.
    settled: Vec<bool>,
    unsettled: usize,
}

impl Sim {
    /// A job of `config.world` ranks at virtual time zero.
    ///
    /// # Panics
    /// If `world` is 0 or above [`WORLD_MAX`], or `segment_bytes` is 0 (caller bug).
    pub fn new(config: SimConfig) -> Sim {
        assert!((1..=WORLD_MAX).contains(&config.world), "world {} outside 1..={WORLD_MAX}", config.world);
        assert!(config.segment_bytes > 0, "segment_bytes must be positive");
        let mut rng = SimRng::new(config.seed);
        let mut ring: Vec<Rank> = (0..config.world).collect();
        if config.shuffle_ring {
            rng.shuffle(&mut ring);
        }
        let net = Net::new(config.world, config.link, rng, config.partner_links);
        let ranks = ring.iter().enumerate().map(|(pos, &rank)| RankSim::new(pos, rank, net.links(pos))).collect();
        Sim {
            net,
            settled: vec![true; config.world],
            config,
            ring,
            ranks,
            shared: AlignedBytes::default(),
            next_seq: 0,
            calls: Vec::new(),
            inputs: Vec::new(),
            seq_base: 0,
            unsettled: 0,
        }
    }

    /// Virtual time since the simulator was created.
    pub fn now(&self) -> Duration {
        self.net.now
    }

    /// Rank at each ring position.
    pub fn ring(&self) -> &[Rank] {
        &self.ring
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Frames of finished calls that arrived and were dropped, over all ranks.
    pub fn stale_frames(&self) -> u64 {
        self.ranks.iter().map(|r| r.stale_frames).sum()
    }

    /// Frames that arrived at a rank before it started their call (parked until it did),
    /// over all ranks.
    pub fn early_frames(&self) -> u64 {
        self.ranks.iter().map(|r| r.early_frames).sum()
    }

    /// Every send hazard seen (see [`SimConfig::check_send_hazards`]); empty when the core
    /// never changes bytes it has handed out before they leave.
    pub fn send_hazards(&self) -> Vec<String> {
        self.ranks.iter().flat_map(|r| r.hazards.iter().cloned()).collect()
    }

    /// Schedules a fault. Times in the past mean "now".
    ///
    /// # Panics
    /// If a rank is not in `0..world` (caller bug).
    pub fn inject(&mut self, fault: Fault) {
        let pos_of = |rank: Rank| -> usize {
            self.ring.iter().position(|&r| r == rank).unwrap_or_else(|| panic!("rank {rank} is not in the job"))
        };
        match fault {
            Fault::Crash { rank, at } => self.net.push(at, EventKind::Crash { pos: pos_of(rank), silent: true }),
            Fault::Kill { rank, at } => self.net.push(at, EventKind::Crash { pos: pos_of(rank), silent: false }),
            Fault::Pause { rank, at, duration } => {
                self.net.push(at, EventKind::Pause { pos: pos_of(rank), until: at + duration })
            }
            Fault::Partition { from, to, at, duration } => {
                let (from, to) = (pos_of(from), pos_of(to));
                self.net.add_window(from, to, Window { start: at, end: at + duration, extra: None });
            }
            Fault::Delay { from, to, at, duration, extra } => {
                let (from, to) = (pos_of(from), pos_of(to));
                self.net.add_window(from, to, Window { start: at, end: at + duration, extra: Some(extra) });
            }
        }
    }

    /// Runs one call on every rank; see [`Sim::run_batch`].
    ///
    /// # Errors
    /// [`HangError`] as [`Sim::run_batch`].
    ///
    /// # Panics
    /// As [`Sim::run_batch`].
    pub fn run(&mut self, call: Call, inputs: Vec<Vec<u8>>) -> Result<SimOutcome, HangError> {
        let mut outcomes = self.run_batch(vec![(call, inputs)])?;
        Ok(outcomes.remove(0))
    }

    /// Runs calls back to back on every rank until every rank has returned from all of
    /// them (or died). `inputs[r]` is rank r's input: the whole buffer, or for all_gather
    /// its block ([`Call::input_bytes`]); with [`BufferMode::Shared`] inputs are ignored.
    ///
    /// # Errors
    /// [`HangError`] if the batch does not settle within `batch_deadline` or `max_events`,
    /// or if no event is left while a rank still waits.
    ///
    /// # Panics
    /// If an input has the wrong length (caller bug).
    pub fn run_batch(&mut self, batch: Vec<(Call, Vec<Vec<u8>>)>) -> Result<Vec<SimOutcome>, HangError> {
        self.load(batch);
        let start = self.net.now;
        let mut events = 0u64;
        while self.unsettled > 0 {
            let reason = match self.net.peek_time() {
                None => Some("no event left".to_string()),
                Some(t) if t > start + self.config.batch_deadline => {
                    Some(format!("batch deadline {:?} passed", self.config.batch_deadline))
                }
                Some(_) if events >= self.config.max_events => Some(format!("{events} events")),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                return Err(self.hang(events, reason));
            }
            let Some(ev) = self.net.pop() else { continue };
            events += 1;
            self.dispatch(ev);
        }
        Ok(self.outcomes())
    }

    fn load(&mut self, batch: Vec<(Call, Vec<Vec<u8>>)>) {
        let world = self.config.world;
        let per_rank = self.config.buffers == BufferMode::PerRank;
        let (calls, inputs): (Vec<Call>, Vec<Vec<Vec<u8>>>) = batch.into_iter().unzip();
        for (call, inputs) in calls.iter().zip(&inputs) {
            if per_rank {
                assert_eq!(inputs.len(), world, "{} inputs for {world} ranks", inputs.len());
                for (rank, input) in inputs.iter().enumerate() {
                    assert_eq!(input.len(), call.input_bytes(world, rank), "input length of rank {rank} for {call:?}");
                }
            } else {
                self.shared.grow_to(call.len_elems * call.dtype.size());
            }
        }
        self.seq_base = self.next_seq;
        self.next_seq += calls.len() as u64;
        self.net.traffic.retain(|&seq, _| seq >= self.seq_base);
        self.calls = calls;
        self.inputs = inputs;
        self.unsettled = 0;
        for pos in 0..world {
            self.ranks[pos].finished.clear();
            self.settled[pos] = self.ranks[pos].crashed.is_some() || self.calls.is_empty();
            if !self.settled[pos] {
                self.unsettled += 1;
                let gap = self.net.rng.duration_up_to(self.config.start_skew_max);
                self.net.push(self.net.now + gap, EventKind::Submit { pos, call: 0 });
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        let now = self.net.now;
        let pos = match ev.kind {
            EventKind::Deliver { to, link, from, item } => {
                if self.ranks[from].crashed == Some(true) || self.ranks[to].crashed.is_some() {
                    return;
                }
                self.ranks[to].arrive(link, item);
                to
            }
            EventKind::Submit { pos, call } => {
                if self.ranks[pos].crashed.is_some() {
                    return;
                }
                let buf = self.job_buf(pos, call);
                self.ranks[pos].jobs.push_back(Job { call, buf });
                pos
            }
            EventKind::Timer { pos } => {
                let r = &mut self.ranks[pos];
                r.timer_at = r.timer_at.filter(|&t| t != now);
                pos
            }
            EventKind::Wake { pos } => {
                let r = &mut self.ranks[pos];
                r.wake_at = r.wake_at.filter(|&t| t != now);
                pos
            }
            EventKind::Crash { pos, silent } => {
                self.crash(pos, silent);
                pos
            }
            EventKind::Pause { pos, until } => {
                let r = &mut self.ranks[pos];
                r.paused_until = Some(r.paused_until.map_or(until, |u| u.max(until)));
                self.net.push(until, EventKind::Resume { pos });
                pos
            }
            EventKind::Resume { pos } => {
                let r = &mut self.ranks[pos];
                r.paused_until = r.paused_until.filter(|&u| u > now);
                pos
            }
        };
        self.drive(pos);
        if !self.settled[pos] {
            let r = &self.ranks[pos];
            if r.crashed.is_some() || r.finished.len() == self.calls.len() {
                self.settled[pos] = true;
                self.unsettled -= 1;
            }
        }
    }

    fn crash(&mut self, pos: usize, silent: bool) {
        if self.ranks[pos].crashed.is_some() {
            return;
        }
        self.ranks[pos].crash(silent);
        if !silent && self.config.world > 1 {
            // The kernel closes every connection of the process, partner links included.
            for &link in self.ranks[pos].links() {
                self.net.send(pos, link, Arrival::Eof, 0);
            }
        }
    }

    fn job_buf(&mut self, pos: usize, call_index: usize) -> JobBuf {
        if self.config.buffers == BufferMode::Shared {
            return JobBuf::Shared;
        }
        let call = self.calls[call_index];
        let rank = self.ring[pos];
        let input = std::mem::take(&mut self.inputs[call_index][rank]);
        if call.coll == CollKind::AllGather {
            // As `Communicator::all_gather`: the caller places its input in its own block.
            let esize = call.dtype.size();
            let block = chunk_range(call.len_elems, self.config.world, rank);
            let mut buf = AlignedBytes::zeroed(call.len_elems * esize);
            buf.as_bytes_mut()[block.start * esize..block.end * esize].copy_from_slice(&input);
            JobBuf::Own(buf)
        } else {
            JobBuf::Own(AlignedBytes::from_slice(&input))
        }
    }

    fn drive(&mut self, pos: usize) {
        let c = &self.config;
        let ctx = Ctx {
            world: c.world,
            ring: &self.ring,
            job: SIM_JOB_ID,
            epoch: 0,
            segment_bytes: c.segment_bytes,
            algorithm: c.algorithm,
            codec: c.codec,
            codec_level: c.codec_level,
            link_bytes_per_sec: c.link.bytes_per_sec,
            progress_timeout: c.progress_timeout,
            fin: c.fin,
            partner_links: c.partner_links,
            in_place_percent: c.in_place_percent,
            check_hazards: c.check_send_hazards && c.buffers == BufferMode::PerRank,
            skew_max: c.start_skew_max,
            calls: &self.calls,
            seq_base: self.seq_base,
        };
        self.ranks[pos].drive(&mut self.net, &ctx, &mut self.shared);
    }

    fn hang(&self, events: u64, reason: String) -> HangError {
        let waiting = (0..self.config.world)
            .filter(|&p| !self.settled[p])
            .take(HANG_REPORT_RANKS_MAX)
            .map(|p| self.ranks[p].describe())
            .collect();
        HangError { at: self.net.now, events, reason, waiting }
    }

    fn outcomes(&mut self) -> Vec<SimOutcome> {
        let world = self.config.world;
        let mut out = Vec::with_capacity(self.calls.len());
        for (k, call) in self.calls.iter().enumerate() {
            let seq = self.seq_base + k as u64;
            let mut o = SimOutcome {
                call: *call,
                seq,
                outputs: vec![Vec::new(); world],
                statuses: vec![RankStatus::Crashed; world],
                started: vec![None; world],
                finished: vec![None; world],
                virtual_elapsed: Duration::ZERO,
                frames: 0,
                bytes: 0,
            };
            for r in &mut self.ranks {
                if let Some(f) = r.finished.iter_mut().find(|f| f.call == k) {
                    o.outputs[r.rank] = std::mem::take(&mut f.output);
                    o.statuses[r.rank] = f.status.clone();
                    o.started[r.rank] = Some(f.started);
                    o.finished[r.rank] = Some(f.ended);
                }
            }
            let first = o.started.iter().flatten().min();
            let last = o.finished.iter().flatten().max();
            if let (Some(&a), Some(&b)) = (first, last) {
                o.virtual_elapsed = b.saturating_sub(a);
            }
            if let Some(t) = self.net.traffic.get(&seq) {
                (o.frames, o.bytes) = (t.frames, t.bytes);
            }
            out.push(o);
        }
        out
    }
}
