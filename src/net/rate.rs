//! A link's drain rate, measured only while the link is the bottleneck.
//!
//! A socket that refuses bytes (`WouldBlock`) has a full send buffer: from then until the
//! write queue runs empty, every byte the socket accepts is a byte the link drained, so
//! bytes written over that time is the link's rate. A link that never fills its buffer is
//! faster than this rank feeds it and yields no sample: `auto` then treats it as fast.
//!
//! A link to a peer on the same host yields no sample either: there the "link" is the
//! kernel copying memory and the peer's CPU, however slow the peer is, and zstd can only
//! slow it down (it adds more CPU work to both ends than the copy it saves costs). The
//! driver tells `auto` such links are local instead ([`RateMeter::same_host`]).

use std::time::{Duration, Instant};

/// Shortest busy period that yields a sample: shorter ones are dominated by scheduling.
const SAMPLE_TIME_MIN: Duration = Duration::from_millis(2);

/// Fewest bytes that yield a sample (a few segments).
const SAMPLE_BYTES_MIN: u64 = 1 << 20;

/// True if a connection between the addresses `a` and `b` stays within one host: either is
/// a loopback address, or both are the same address (a host reaching its own address goes
/// through the kernel's loopback path). Symmetric, so both ends of a connection agree.
pub(crate) fn same_host(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.is_loopback() || b.is_loopback() || a == b
}

/// Drain-rate meter of one outgoing link.
#[derive(Debug, Default)]
pub(super) struct RateMeter {
    /// The peer is on this host: never sample.
    same_host: bool,
    /// When the socket first refused bytes in the current busy period.
    blocked_since: Option<Instant>,
    /// Bytes the socket accepted since then.
    bytes_since_blocked: u64,
    /// The latest sample, in bytes per second, not yet taken.
    sample: Option<f64>,
}

impl RateMeter {
    /// A meter for a link between `local` and `peer`: links within one host
    /// ([`same_host`]) are never sampled.
    pub(super) fn new(local: Option<std::net::IpAddr>, peer: std::net::IpAddr) -> RateMeter {
        let same_host = peer.is_loopback() || local.is_some_and(|l| same_host(l, peer));
        RateMeter { same_host, ..RateMeter::default() }
    }

    /// The socket accepted `n` bytes.
    pub(super) fn wrote(&mut self, n: usize) {
        if self.blocked_since.is_some() {
            self.bytes_since_blocked += n as u64;
        }
    }

    /// The socket refused bytes at `now`.
    pub(super) fn blocked(&mut self, now: Instant) {
        if self.blocked_since.is_none() && !self.same_host {
            self.blocked_since = Some(now);
            self.bytes_since_blocked = 0;
        }
    }

    /// The write queue ran empty at `now`: ends the busy period.
    pub(super) fn idle(&mut self, now: Instant) {
        let Some(since) = self.blocked_since.take() else { return };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= SAMPLE_TIME_MIN && self.bytes_since_blocked >= SAMPLE_BYTES_MIN {
            self.sample = Some(self.bytes_since_blocked as f64 / elapsed.as_secs_f64());
        }
    }

    /// True if the peer is on this host (loopback, or this host's own address).
    pub(super) fn same_host(&self) -> bool {
        self.same_host
    }

    /// True while a busy period is being measured (the caller then reports `idle`).
    pub(super) fn measuring(&self) -> bool {
        self.blocked_since.is_some()
    }

    /// The latest sample in bytes per second, once.
    pub(super) fn take_sample(&mut self) -> Option<f64> {
        self.sample.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RateMeter {
        RateMeter::new(Some([10, 0, 0, 1].into()), [10, 0, 0, 2].into())
    }

    #[test]
    fn only_bytes_after_a_refusal_count_and_short_periods_yield_nothing() {
        let t0 = Instant::now();
        let mut m = remote();
        m.wrote(10 << 20);
        m.idle(t0 + Duration::from_secs(1));
        assert_eq!(m.take_sample(), None, "never blocked: the link kept up");
        m.blocked(t0);
        m.wrote(4 << 20);
        m.blocked(t0 + Duration::from_millis(10));
        m.wrote(4 << 20);
        m.idle(t0 + Duration::from_millis(80));
        let rate = m.take_sample().expect("a sample");
        assert!((rate - (8 << 20) as f64 / 0.08).abs() < 1.0, "{rate}");
        assert_eq!(m.take_sample(), None, "taken once");
        m.blocked(t0);
        m.wrote(1 << 10);
        m.idle(t0 + Duration::from_millis(50));
        assert_eq!(m.take_sample(), None, "too few bytes");
    }

    #[test]
    fn links_within_one_host_are_never_sampled() {
        let t0 = Instant::now();
        for mut m in [
            RateMeter::new(Some([127, 0, 0, 1].into()), [127, 0, 0, 1].into()),
            RateMeter::new(Some([10, 0, 0, 1].into()), [10, 0, 0, 1].into()),
            RateMeter::new(None, std::net::Ipv6Addr::LOCALHOST.into()),
        ] {
            m.blocked(t0);
            m.wrote(8 << 20);
            m.idle(t0 + Duration::from_millis(80));
            assert_eq!(m.take_sample(), None);
        }
        let mut m = remote();
        m.blocked(t0);
        m.wrote(8 << 20);
        m.idle(t0 + Duration::from_millis(80));
        assert!(m.take_sample().is_some());
    }
}
