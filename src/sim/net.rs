//! The network: virtual clock, event queue and the directed channels between positions.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use super::{AlignedBytes, LinkModel, SimRng};
use crate::core::collective::Link;
use crate::wire::HEADER_LEN;

/// A frame on the wire: the encoded header and a copy of the payload.
#[derive(Debug)]
pub(super) struct SimFrame {
    pub(super) header: [u8; HEADER_LEN],
    pub(super) payload: AlignedBytes,
}

/// What arrives on a link: a frame, or the end of the stream (the sender's process died
/// and its kernel closed the connection).
#[derive(Debug)]
pub(super) enum Arrival {
    Frame(SimFrame),
    Eof,
}

/// Something that happens at a virtual time.
#[derive(Debug)]
pub(super) enum EventKind {
    /// `item` arrives at position `to` on its `link`, sent by position `from`.
    Deliver { to: usize, link: Link, from: usize, item: Arrival },
    /// The caller of position `pos` makes call number `call` of the batch.
    Submit { pos: usize, call: usize },
    /// The progress deadline position `pos` armed has come.
    Timer { pos: usize },
    /// Position `pos` waits for its sent frames to leave before returning a call.
    Wake { pos: usize },
    /// Position `pos` crashes (`silent`: host lost) or is killed.
    Crash { pos: usize, silent: bool },
    /// Position `pos` stops until `until`.
    Pause { pos: usize, until: Duration },
    /// Position `pos` continues after a pause.
    Resume { pos: usize },
}

/// An event and its place in the total order (time, then insertion).
#[derive(Debug)]
pub(super) struct Event {
    pub(super) at: Duration,
    order: u64,
    pub(super) kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Event) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Event) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// A window during which a channel holds or slows frames.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Duration,
    pub(super) end: Duration,
    /// `None`: nothing arrives during the window (partition); `Some(d)`: frames sent in
    /// it take `d` longer.
    pub(super) extra: Option<Duration>,
}

/// One direction of one connection.
#[derive(Debug, Default)]
struct Channel {
    /// When the serializer is free again (unless the rank's egress is shared).
    free_at: Duration,
    /// Arrival time of the last frame sent: later frames never overtake it.
    last_arrival: Duration,
    windows: Vec<Window>,
}

/// Frames and bytes sent for one call.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Traffic {
    pub(super) frames: u64,
    pub(super) bytes: u64,
}

/// The clock, the event queue and the channels.
#[derive(Debug)]
pub(super) struct Net {
    base: Instant,
    /// Virtual time since `base`.
    pub(super) now: Duration,
    pub(super) rng: SimRng,
    queue: BinaryHeap<Reverse<Event>>,
    order: u64,
    model: LinkModel,
    world: usize,
    /// Indexed by `sender position * 2 + link index`.
    channels: Vec<Channel>,
    /// Per sender position, when its shared serializer is free.
    egress_free: Vec<Duration>,
    pub(super) traffic: BTreeMap<u64, Traffic>,
}

/// Index of a link in per-link arrays: `Prev` 0, `Next` 1 (as the real driver).
pub(super) fn idx(link: Link) -> usize {
    match link {
        Link::Prev => 0,
        Link::Next => 1,
        // The simulator runs without partner links (`Spec::partner_links` false).
        Link::Partner(_) => unreachable!("the simulator has no partner links"),
    }
}

/// The link of an index.
pub(super) fn link_of(i: usize) -> Link {
    if i == 0 {
        Link::Prev
    } else {
        Link::Next
    }
}

/// The position at the other end of `pos`'s `link`, and the link it arrives on there.
pub(super) fn peer_of(pos: usize, link: Link, world: usize) -> (usize, Link) {
    match link {
        Link::Next => ((pos + 1) % world, Link::Prev),
        Link::Prev => ((pos + world - 1) % world, Link::Next),
        Link::Partner(q) => (q as usize, Link::Partner(pos as u32)),
    }
}

impl Net {
    pub(super) fn new(world: usize, model: LinkModel, rng: SimRng) -> Net {
        Net {
            base: Instant::now(),
            now: Duration::ZERO,
            rng,
            queue: BinaryHeap::new(),
            order: 0,
            model,
            world,
            channels: (0..world * 2).map(|_| Channel::default()).collect(),
            egress_free: vec![Duration::ZERO; world],
            traffic: BTreeMap::new(),
        }
    }

    /// The virtual now as an `Instant` for the core.
    pub(super) fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// An `Instant` from the core as a virtual offset.
    pub(super) fn offset(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.base)
    }

    /// Queues an event at `at` (not before now).
    pub(super) fn push(&mut self, at: Duration, kind: EventKind) {
        self.order += 1;
        self.queue.push(Reverse(Event { at: at.max(self.now), order: self.order, kind }));
    }

    /// Takes the next event and moves the clock to it.
    pub(super) fn pop(&mut self) -> Option<Event> {
        let Reverse(ev) = self.queue.pop()?;
        self.now = ev.at;
        Some(ev)
    }

    /// Time of the next event, if any.
    pub(super) fn peek_time(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse(e)| e.at)
    }

    /// Adds a partition or delay window to the channels from position `from` to `to`.
    pub(super) fn add_window(&mut self, from: usize, to: usize, window: Window) {
        for link in [Link::Prev, Link::Next] {
            if self.world > 1 && peer_of(from, link, self.world).0 == to {
                self.channels[from * 2 + idx(link)].windows.push(window);
            }
        }
    }

    fn serialization(&self, bytes: usize) -> Duration {
        if self.model.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let nanos = (bytes as u128 * 1_000_000_000).div_ceil(u128::from(self.model.bytes_per_sec));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Sends `item` from position `from` on `link`; returns when it leaves (starts
    /// serialization). Call-level traffic is counted under `seq`.
    pub(super) fn send(&mut self, from: usize, link: Link, item: Arrival, seq: u64) -> Duration {
        let bytes = match &item {
            Arrival::Frame(f) => HEADER_LEN + f.payload.len(),
            Arrival::Eof => 0,
        };
        let ser = self.serialization(bytes);
        let c = from * 2 + idx(link);
        let free = if self.model.shared_egress { self.egress_free[from] } else { self.channels[c].free_at };
        let depart = self.now.max(free);
        let sent = depart + ser;
        if self.model.shared_egress {
            self.egress_free[from] = sent;
        } else {
            self.channels[c].free_at = sent;
        }
        let jitter =
            if self.model.jitter.is_zero() { Duration::ZERO } else { self.rng.duration_up_to(self.model.jitter) };
        let mut arrive = sent + self.model.latency + jitter;
        for w in &self.channels[c].windows {
            match w.extra {
                Some(extra) if (w.start..w.end).contains(&depart) => arrive += extra,
                None if (w.start..w.end).contains(&arrive) => arrive = w.end + self.model.latency,
                _ => {}
            }
        }
        let arrive = arrive.max(self.channels[c].last_arrival);
        self.channels[c].last_arrival = arrive;
        if let Arrival::Frame(_) = item {
            let t = self.traffic.entry(seq).or_default();
            t.frames += 1;
            t.bytes += bytes as u64;
        }
        let (to, to_link) = peer_of(from, link, self.world);
        self.push(arrive, EventKind::Deliver { to, link: to_link, from, item });
        depart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize) -> Arrival {
        Arrival::Frame(SimFrame { header: [0; HEADER_LEN], payload: AlignedBytes::zeroed(payload) })
    }

    fn model() -> LinkModel {
        LinkModel {
            latency: Duration::from_micros(10),
            bytes_per_sec: 1_000_000_000,
            jitter: Duration::ZERO,
            shared_egress: false,
        }
    }

    #[test]
    fn frames_serialize_then_travel_and_stay_in_order() {
        let mut net = Net::new(3, model(), SimRng::new(1));
        // 928 + 72 bytes at 1 GB/s = 1 us on the wire.
        assert_eq!(net.send(0, Link::Next, frame(928), 0), Duration::ZERO);
        assert_eq!(net.send(0, Link::Next, frame(928), 0), Duration::from_micros(1));
        // The other direction is an independent channel.
        assert_eq!(net.send(0, Link::Prev, frame(928), 0), Duration::ZERO);
        let arrivals: Vec<(Duration, usize)> = std::iter::from_fn(|| net.pop())
            .map(|e| match e.kind {
                EventKind::Deliver { to, .. } => (e.at, to),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            arrivals,
            vec![(Duration::from_micros(11), 1), (Duration::from_micros(11), 2), (Duration::from_micros(12), 1)]
        );
        assert_eq!(net.traffic[&0].frames, 3);
        assert_eq!(net.traffic[&0].bytes, 3000);
    }

    #[test]
    fn shared_egress_serializes_both_links() {
        let mut net = Net::new(3, LinkModel { shared_egress: true, ..model() }, SimRng::new(1));
        net.send(0, Link::Next, frame(928), 0);
        assert_eq!(net.send(0, Link::Prev, frame(928), 0), Duration::from_micros(1));
    }

    #[test]
    fn partition_holds_frames_until_it_heals_and_delay_adds() {
        let mut net = Net::new(2, model(), SimRng::new(1));
        let hold = Window { start: Duration::ZERO, end: Duration::from_millis(5), extra: None };
        net.add_window(0, 1, hold);
        net.send(0, Link::Next, frame(0), 0);
        net.send(1, Link::Next, frame(0), 0);
        let first = net.pop().unwrap();
        assert!(matches!(first.kind, EventKind::Deliver { to: 0, .. }));
        let second = net.pop().unwrap();
        assert_eq!(second.at, Duration::from_millis(5) + Duration::from_micros(10));
        let slow = Window { start: Duration::ZERO, end: Duration::from_secs(1), extra: Some(Duration::from_millis(1)) };
        net.add_window(1, 0, slow);
        let t0 = net.now;
        net.send(1, Link::Prev, frame(0), 0);
        assert!(net.pop().unwrap().at >= t0 + Duration::from_millis(1));
    }
}
