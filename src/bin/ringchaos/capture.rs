//! Captures the in-process coordinator's decisions (evictions, views, decisions on
//! interrupted calls, quorum loss, admissions of joining ranks) with the wall-clock time they were logged, so detection
//! times are measured on the coordinator's own clock rather than parsed from stderr.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::procs::now_us;

/// One decision of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordEvent {
    /// `rank` is out from view `epoch` on.
    Evicted { rank: usize, epoch: u64, reason: String },
    /// View `epoch` with these members was sent out.
    View { epoch: u64, members: Vec<usize> },
    /// The interrupted call `seq` is finished with its result (`finish`) or redone.
    Decision { epoch: u64, seq: u64, finish: bool },
    /// Fewer than `min_world` ranks remain.
    QuorumLost { epoch: u64 },
    /// View `epoch` admits `joined` from call `start_seq` on.
    Admitted { epoch: u64, start_seq: u64, joined: Vec<usize> },
}

/// Events with the time (microseconds since the Unix epoch) they were logged.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<(u64, CoordEvent)>>>);

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, CoordEvent)>> {
        // A panic while holding the lock leaves a Vec that is still valid: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every event captured so far.
    pub fn drain(&self) -> Vec<(u64, CoordEvent)> {
        std::mem::take(&mut *self.lock())
    }
}

/// Installs the global subscriber: the capture layer on the coordinator's events, and a
/// stderr log filtered by `RINGCC_LOG` (default off: evictions and the quorum lost as the
/// last ranks of a round exit are what a chaos run is made of).
pub fn install() -> Captured {
    let captured = Captured::default();
    let layer = CaptureLayer(captured.clone())
        .with_filter(Targets::new().with_target("ringcc::coord::server", tracing::Level::INFO));
    let filter = EnvFilter::try_from_env("RINGCC_LOG").unwrap_or_else(|_| EnvFilter::new("off"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).with(log).try_init();
    captured
}

struct CaptureLayer(Captured);

impl<S: tracing::Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let parsed = match f.message.as_str() {
            "rank evicted" => CoordEvent::Evicted { rank: f.rank as usize, epoch: f.epoch, reason: f.reason },
            "new view" => CoordEvent::View { epoch: f.epoch, members: parse_list(&f.members) },
            "interrupted call decided" => CoordEvent::Decision { epoch: f.epoch, seq: f.seq, finish: f.finish },
            "quorum lost" => CoordEvent::QuorumLost { epoch: f.epoch },
            "ranks admitted" => {
                CoordEvent::Admitted { epoch: f.epoch, start_seq: f.start_seq, joined: parse_list(&f.joined) }
            }
            _ => return,
        };
        self.0.lock().push((now_us(), parsed));
    }
}

/// `[0, 1, 5]` as numbers (the coordinator logs members with `Debug`).
fn parse_list(text: &str) -> Vec<usize> {
    text.trim_matches(|c| c == '[' || c == ']').split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

#[derive(Default)]
struct Fields {
    message: String,
    rank: u64,
    epoch: u64,
    seq: u64,
    start_seq: u64,
    finish: bool,
    reason: String,
    members: String,
    joined: String,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "rank" => self.rank = value,
            "epoch" => self.epoch = value,
            "seq" => self.seq = value,
            "start_seq" => self.start_seq = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.record_u64(field, v);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "finish" {
            self.finish = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "reason" => self.reason = text,
            "members" => self.members = text,
            "joined" => self.joined = text,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_parse_as_logged() {
        assert_eq!(parse_list("[0, 1, 5]"), vec![0, 1, 5]);
        assert_eq!(parse_list("[]"), Vec::<usize>::new());
    }
}
