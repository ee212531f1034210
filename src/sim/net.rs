//! The network: virtual clock, event queue and the directed channels between positions.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use super::{AlignedBytes, LinkModel, SimRng};
use crate::core::collective::Link;
use crate::core::doubling::partner_positions;
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

/// One direction of one connection (a ring link or a partner link).
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
    /// By position, the positions it has partner links to (ascending; empty without
    /// partner links).
    partners: Vec<Vec<usize>>,
    /// By sender position, by link slot ([`Net::slot`]): the outgoing direction of each of
    /// its connections.
    channels: Vec<Vec<Channel>>,
    /// Per sender position, when its shared serializer is free.
    egress_free: Vec<Duration>,
    pub(super) traffic: BTreeMap<u64, Traffic>,
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
    /// A network of `world` positions joined in a ring, and with `partner_links` also by
    /// a partner link between each pair that recursive doubling pairs and that are not
    /// ring neighbours (`core::doubling::partner_positions`: fewer than log2(world) + 2
    /// per position, none for worlds of up to 4).
    pub(super) fn new(world: usize, model: LinkModel, rng: SimRng, partner_links: bool) -> Net {
        let partners: Vec<Vec<usize>> =
            (0..world).map(|p| if partner_links { partner_positions(world, p) } else { Vec::new() }).collect();
        let channels = partners.iter().map(|qs| (0..2 + qs.len()).map(|_| Channel::default()).collect()).collect();
        Net {
            base: Instant::now(),
            now: Duration::ZERO,
            rng,
            queue: BinaryHeap::new(),
            order: 0,
            model,
            world,
            partners,
            channels,
            egress_free: vec![Duration::ZERO; world],
            traffic: BTreeMap::new(),
        }
    }

    /// The links of position `pos` in slot order, as the real driver keeps them: 0 `Prev`,
    /// 1 `Next`, then its partner links in `partner_positions` order.
    pub(super) fn links(&self, pos: usize) -> Vec<Link> {
        let partners = self.partners[pos].iter().map(|&q| Link::Partner(q as u32));
        [Link::Prev, Link::Next].into_iter().chain(partners).collect()
    }

    /// Slot of `link` among position `pos`'s links ([`Net::links`]).
    ///
    /// # Panics
    /// If `link` is a partner link `pos` does not have (a simulator or core bug: the core
    /// sends on partner links only with `Spec::partner_links`, to `partner_positions`).
    pub(super) fn slot(&self, pos: usize, link: Link) -> usize {
        match link {
            Link::Prev => 0,
            Link::Next => 1,
            Link::Partner(q) => match self.partners[pos].binary_search(&(q as usize)) {
                Ok(k) => 2 + k,
                Err(_) => panic!("position {pos} has no partner link to position {q}"),
            },
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

    /// Adds a partition or delay window to the channels from position `from` to `to`: the
    /// ring links between them and the partner link, whichever exist.
    pub(super) fn add_window(&mut self, from: usize, to: usize, window: Window) {
        if self.world < 2 {
            return;
        }
        for (slot, link) in self.links(from).into_iter().enumerate() {
            if peer_of(from, link, self.world).0 == to {
                self.channels[from][slot].windows.push(window);
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
        let slot = self.slot(from, link);
        let free = if self.model.shared_egress { self.egress_free[from] } else { self.channels[from][slot].free_at };
        let depart = self.now.max(free);
        let sent = depart + ser;
        if self.model.shared_egress {
            self.egress_free[from] = sent;
        } else {
            self.channels[from][slot].free_at = sent;
        }
        let jitter =
            if self.model.jitter.is_zero() { Duration::ZERO } else { self.rng.duration_up_to(self.model.jitter) };
        let mut arrive = sent + self.model.latency + jitter;
        let channel = &mut self.channels[from][slot];
        for w in &channel.windows {
            match w.extra {
                Some(extra) if (w.start..w.end).contains(&depart) => arrive += extra,
                None if (w.start..w.end).contains(&arrive) => arrive = w.end + self.model.latency,
                _ => {}
            }
        }
        let arrive = arrive.max(channel.last_arrival);
        channel.last_arrival = arrive;
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
        let mut net = Net::new(3, model(), SimRng::new(1), false);
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
        let mut net = Net::new(3, LinkModel { shared_egress: true, ..model() }, SimRng::new(1), false);
        net.send(0, Link::Next, frame(928), 0);
        assert_eq!(net.send(0, Link::Prev, frame(928), 0), Duration::from_micros(1));
    }

    #[test]
    fn partition_holds_frames_until_it_heals_and_delay_adds() {
        let mut net = Net::new(2, model(), SimRng::new(1), false);
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

    #[test]
    fn partner_links_reach_the_partner_share_the_egress_and_take_windows() {
        let mut net = Net::new(8, LinkModel { shared_egress: true, ..model() }, SimRng::new(1), true);
        let q = partner_positions(8, 0)[0];
        assert!(q != 1 && q != 7, "a partner is never a ring neighbour");
        assert_eq!(net.links(0).len(), 2 + partner_positions(8, 0).len());
        assert_eq!(net.links(0)[2], Link::Partner(q as u32));
        assert_eq!(net.slot(0, Link::Partner(q as u32)), 2);
        // One NIC: the partner frame waits for the ring frame ahead of it.
        net.send(0, Link::Next, frame(928), 0);
        assert_eq!(net.send(0, Link::Partner(q as u32), frame(928), 0), Duration::from_micros(1));
        let mut arrivals = Vec::new();
        while let Some(e) = net.pop() {
            if let EventKind::Deliver { to, link, from, .. } = e.kind {
                arrivals.push((e.at, to, link, from));
            }
        }
        assert_eq!(
            arrivals,
            vec![(Duration::from_micros(11), 1, Link::Prev, 0), (Duration::from_micros(12), q, Link::Partner(0), 0),]
        );
        // A partition from q to 0 holds q's partner frames and leaves its ring links alone.
        let hold = Window { start: net.now, end: net.now + Duration::from_millis(5), extra: None };
        net.add_window(q, 0, hold);
        net.send(q, Link::Next, frame(0), 0);
        net.send(q, Link::Partner(0), frame(0), 0);
        let first = net.pop().unwrap();
        assert!(matches!(first.kind, EventKind::Deliver { to, .. } if to == (q + 1) % 8));
        let second = net.pop().unwrap();
        assert!(matches!(second.kind, EventKind::Deliver { to: 0, link: Link::Partner(p), .. } if p as usize == q));
        assert_eq!(second.at, hold.end + Duration::from_micros(10));
        // Without partner links a position has its two ring links only.
        assert_eq!(Net::new(8, model(), SimRng::new(1), false).links(0), vec![Link::Prev, Link::Next]);
    }
}
