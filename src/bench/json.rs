//! The `--json` record: every row plus what was run, on what, at which revision, when.
//!
//! Written by hand (the crate has no JSON dependency); `scripts/plot` and the peer
//! comparison read it. Row fields match the printed columns: `size`, `count`, `type`,
//! `redop`, `root`, `time` (us), `algbw`, `busbw` (GB/s), `wrong` (null without a check),
//! `p50`, `p99` (us), `ratio` (compression ratio). `stats` holds rank 0's [`crate::Stats`] over the whole run: its links
//! (bytes, of which through same-host lanes, GB/s, waits in seconds), its collectives' phase times (seconds, summed), every
//! rank's idle and waiting in the run, and the straggler (null if none).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Row;
use crate::comm::{Stats, StragglerCause};

/// The machine a run happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Host name (`/proc/sys/kernel/hostname`, else `unknown`).
    pub hostname: String,
    /// First `model name` in `/proc/cpuinfo`, else `unknown`.
    pub cpu_model: String,
    /// Cores available to this process.
    pub cores: usize,
}

impl Machine {
    /// Describes this machine.
    pub fn detect() -> Machine {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model_of(&s))
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { hostname, cpu_model, cores }
    }
}

/// The first `model name` value in the text of `/proc/cpuinfo`.
pub fn cpu_model_of(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// The source revision: `git rev-parse --short HEAD` in the current directory, else the
/// `RINGCC_GIT_REV` environment variable, else `unknown`.
pub fn git_revision() -> String {
    let from_git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    from_git
        .or_else(|| std::env::var("RINGCC_GIT_REV").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// `secs` since the Unix epoch as UTC ISO 8601 (`2024-05-01T12:34:56Z`).
pub fn iso8601_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, as [`iso8601_utc`].
pub fn now_utc() -> String {
    iso8601_utc(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// What a run measured, besides its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Legend label for plots.
    pub label: String,
    /// Collective name.
    pub collective: String,
    /// Number of ranks.
    pub ranks: usize,
    /// Element type, nccl name.
    pub dtype: String,
    /// Reduction name (`none` for collectives without one).
    pub op: String,
    /// Codec name.
    pub codec: String,
    /// all_reduce algorithm name.
    pub algorithm: String,
    /// Segment size in bytes.
    pub segment_bytes: usize,
    /// Timed iterations per size.
    pub iters: usize,
    /// Warm-up iterations per size.
    pub warmup_iters: usize,
    /// Whether results were checked.
    pub check: bool,
    /// The `--data` file the buffers were filled from, if any (else the check pattern).
    pub data: Option<String>,
    /// Source revision (see [`git_revision`]).
    pub git_rev: String,
    /// When the run ended, UTC ISO 8601.
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Peak resident memory of a rank in bytes (VmHWM, max over ranks), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A finite float as a JSON number, anything else as `null`.
fn number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn row_json(r: &Row) -> String {
    format!(
        "{{\"size\": {}, \"count\": {}, \"type\": {}, \"redop\": {}, \"root\": {}, \"time\": {}, \"algbw\": {}, \
         \"busbw\": {}, \"wrong\": {}, \"p50\": {}, \"p99\": {}, \"ratio\": {}}}",
        r.size_bytes,
        r.count_elems,
        quote(r.type_name),
        quote(r.redop),
        r.root,
        number(r.time_us),
        number(r.algbw_gbs),
        number(r.busbw_gbs),
        r.wrong.map_or_else(|| "null".into(), |w| w.to_string()),
        number(r.p50_us),
        number(r.p99_us),
        number(r.ratio),
    )
}

fn secs(d: std::time::Duration) -> String {
    number(d.as_secs_f64())
}

/// `items` as a JSON array of the strings `f` renders.
fn array<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
}

/// [`Stats`] as one JSON object (see the module docs).
pub fn stats_json(s: &Stats) -> String {
    let links = array(&s.links, |l| {
        format!(
            "{{\"side\": {}, \"peer\": {}, \"bytes_sent\": {}, \"bytes_received\": {}, \"frames_received\": {}, \
             \"send_gbps\": {}, \"recv_gbps\": {}, \"recv_wait\": {}, \"recv_transfer\": {}, \"send_blocked\": {}, \
             \"active\": {}, \"lane_bytes_sent\": {}, \"lane_bytes_received\": {}}}",
            quote(l.side.name()),
            l.peer,
            l.bytes_sent,
            l.bytes_received,
            l.frames_received,
            number(l.send_gbps()),
            number(l.recv_gbps()),
            secs(l.recv_wait),
            secs(l.recv_transfer),
            secs(l.send_blocked),
            secs(l.active),
            l.lane_bytes_sent,
            l.lane_bytes_received
        )
    });
    let collectives = array(&s.collectives, |c| {
        format!(
            "{{\"collective\": {}, \"calls\": {}, \"bytes\": {}, \"bytes_sent\": {}, \"reduce_scatter\": {}, \
             \"all_gather\": {}, \"queued\": {}, \"total\": {}, \"slowest\": {}}}",
            quote(c.collective),
            c.calls,
            c.bytes,
            c.bytes_sent,
            secs(c.reduce_scatter),
            secs(c.all_gather),
            secs(c.queued),
            secs(c.total),
            secs(c.slowest)
        )
    });
    let peer = |p: Option<usize>| p.map_or_else(|| "null".into(), |r| r.to_string());
    let ranks = array(&s.ranks, |r| {
        format!(
            "{{\"rank\": {}, \"collectives\": {}, \"active\": {}, \"idle_fraction\": {}, \"peers\": [{}, {}], \
             \"recv_wait\": [{}, {}], \"recv_transfer\": [{}, {}], \"send_blocked\": [{}, {}]}}",
            r.rank,
            r.collectives,
            secs(r.active),
            number(r.idle_fraction()),
            peer(r.peers[0]),
            peer(r.peers[1]),
            secs(r.recv_wait[0]),
            secs(r.recv_wait[1]),
            secs(r.recv_transfer[0]),
            secs(r.recv_transfer[1]),
            secs(r.send_blocked[0]),
            secs(r.send_blocked[1])
        )
    });
    let straggler = s.straggler.as_ref().map_or_else(
        || "null".into(),
        |g| {
            let cause = match g.cause {
                StragglerCause::Link { from, to } => format!("{{\"link_from\": {from}, \"link_to\": {to}}}"),
                _ => quote("rank"),
            };
            format!(
                "{{\"rank\": {}, \"cause\": {cause}, \"collectives_led\": {}, \"collectives_compared\": {}, \
                 \"evidence\": {}}}",
                g.rank,
                g.collectives_led,
                g.collectives_compared,
                quote(&g.evidence)
            )
        },
    );
    format!(
        "{{\"rank\": {}, \"epoch\": {}, \"active\": {}, \"idle\": {}, \"links\": {links}, \"collectives\": \
         {collectives}, \"windows\": {}, \"ranks\": {ranks}, \"straggler\": {straggler}}}",
        s.rank,
        s.epoch,
        secs(s.active),
        secs(s.idle),
        s.windows
    )
}

/// The whole record as pretty-printed JSON; `stats` (rank 0's, over the run) if gathered.
pub fn render(info: &RunInfo, rows: &[Row], wrong_total: u64, avg_busbw_gbs: f64, stats: Option<&Stats>) -> String {
    let m = &info.machine;
    let fields = [
        ("tool", quote("ringbench")),
        ("label", quote(&info.label)),
        ("collective", quote(&info.collective)),
        ("ranks", info.ranks.to_string()),
        ("dtype", quote(&info.dtype)),
        ("op", quote(&info.op)),
        ("codec", quote(&info.codec)),
        ("algorithm", quote(&info.algorithm)),
        ("segment_bytes", info.segment_bytes.to_string()),
        ("iters", info.iters.to_string()),
        ("warmup_iters", info.warmup_iters.to_string()),
        ("check", info.check.to_string()),
        ("data", info.data.as_deref().map_or_else(|| "null".into(), quote)),
        ("git_rev", quote(&info.git_rev)),
        ("date", quote(&info.date)),
        (
            "machine",
            format!(
                "{{\"hostname\": {}, \"cpu_model\": {}, \"cores\": {}}}",
                quote(&m.hostname),
                quote(&m.cpu_model),
                m.cores
            ),
        ),
        ("peak_rss_bytes", info.peak_rss_bytes.map_or_else(|| "null".into(), |b| b.to_string())),
        ("wrong_total", wrong_total.to_string()),
        ("avg_busbw", number(avg_busbw_gbs)),
        ("stats", stats.map_or_else(|| "null".into(), stats_json)),
    ];
    let mut out = String::from("{\n");
    for (k, v) in fields {
        let _ = writeln!(out, "  {}: {v},", quote(k));
    }
    out.push_str("  \"rows\": [");
    for (i, r) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n    " } else { ",\n    " });
        out.push_str(&row_json(r));
    }
    out.push_str(if rows.is_empty() { "]\n}\n" } else { "\n  ]\n}\n" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso8601() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601_utc(1_714_566_896), "2024-05-01T12:34:56Z");
        assert_eq!(iso8601_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) @ 2.20GHz\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model_of(info).as_deref(), Some("Intel(R) Xeon(R) @ 2.20GHz"));
        assert_eq!(cpu_model_of("processor : 0\n"), None);
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn record_holds_rows_and_machine() {
        let info = RunInfo {
            label: "ringcc".into(),
            collective: "all_reduce".into(),
            ranks: 4,
            dtype: "float".into(),
            op: "sum".into(),
            codec: "raw".into(),
            algorithm: "auto".into(),
            segment_bytes: 524_288,
            iters: 20,
            warmup_iters: 5,
            check: true,
            data: Some("benches/data/grads.f32".into()),
            git_rev: "abc1234".into(),
            date: iso8601_utc(0),
            machine: Machine { hostname: "h".into(), cpu_model: "cpu \"x\"".into(), cores: 2 },
            peak_rss_bytes: Some(600 << 20),
        };
        let row = Row {
            size_bytes: 4096,
            count_elems: 1024,
            type_name: "float",
            redop: "sum",
            root: -1,
            time_us: 70.5,
            algbw_gbs: f64::INFINITY,
            busbw_gbs: 0.25,
            wrong: None,
            p50_us: 69.75,
            p99_us: 75.0,
            ratio: 1.5,
        };
        let j = render(&info, &[row.clone(), row], 0, 0.25, None);
        assert!(
            j.contains("\"machine\": {\"hostname\": \"h\", \"cpu_model\": \"cpu \\\"x\\\"\", \"cores\": 2}"),
            "{j}"
        );
        assert!(j.contains("{\"size\": 4096, \"count\": 1024, \"type\": \"float\", \"redop\": \"sum\", \"root\": -1, \
                            \"time\": 70.5, \"algbw\": null, \"busbw\": 0.25, \"wrong\": null, \"p50\": 69.75, \"p99\": 75, \"ratio\": 1.5}"), "{j}");
        assert_eq!(j.matches("\"size\"").count(), 2);
        assert!(j.contains("\"data\": \"benches/data/grads.f32\","), "{j}");
        assert!(j.ends_with("}\n  ]\n}\n"));
        assert!(render(&info, &[], 0, 0.0, None).ends_with("\"rows\": []\n}\n"));
        assert!(j.contains("\"stats\": null,"), "{j}");
        assert!(j.contains("\"peak_rss_bytes\": 629145600,"), "{j}");
    }

    #[test]
    fn stats_carry_links_phases_ranks_and_the_straggler() {
        use crate::comm::{CollectiveStats, LinkStats, RankSummary, Side, Straggler};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let s = Stats {
            rank: 0,
            epoch: 1,
            links: vec![LinkStats {
                side: Side::Next,
                peer: 1,
                bytes_sent: 2_000_000,
                bytes_received: 1_000_000,
                frames_received: 4,
                recv_wait: ms(250),
                recv_transfer: ms(125),
                send_blocked: ms(0),
                active: ms(1000),
                lane_bytes_sent: 1_500_000,
                lane_bytes_received: 0,
            }],
            collectives: vec![CollectiveStats {
                collective: "all_reduce",
                calls: 2,
                bytes: 8,
                bytes_sent: 300,
                reduce_scatter: ms(500),
                all_gather: ms(250),
                queued: ms(0),
                total: ms(750),
                slowest: ms(500),
            }],
            active: ms(1000),
            idle: ms(500),
            ranks: vec![RankSummary {
                rank: 1,
                collectives: 9,
                active: ms(1000),
                idle: ms(125),
                peers: [Some(0), None],
                recv_wait: [ms(125), ms(0)],
                recv_transfer: [ms(0), ms(0)],
                send_blocked: [ms(0), ms(0)],
            }],
            windows: 1,
            straggler: Some(Straggler {
                rank: 1,
                cause: StragglerCause::Link { from: 1, to: 0 },
                collectives_led: 9,
                collectives_compared: 9,
                evidence: "slow \"link\"".into(),
            }),
        };
        let j = stats_json(&s);
        assert!(j.contains("\"side\": \"next\", \"peer\": 1, \"bytes_sent\": 2000000"), "{j}");
        assert!(
            j.contains("\"send_gbps\": 0.002, \"recv_gbps\": 0.001, \"recv_wait\": 0.25, \"recv_transfer\": 0.125"),
            "{j}"
        );
        assert!(j.contains("\"reduce_scatter\": 0.5, \"all_gather\": 0.25"), "{j}");
        assert!(j.contains("\"active\": 1, \"lane_bytes_sent\": 1500000, \"lane_bytes_received\": 0}"), "{j}");
        assert!(j.contains("\"idle_fraction\": 0.125, \"peers\": [0, null]"), "{j}");
        assert!(j.contains("\"straggler\": {\"rank\": 1, \"cause\": {\"link_from\": 1, \"link_to\": 0}"), "{j}");
        assert!(j.contains("\"evidence\": \"slow \\\"link\\\"\"}}"), "{j}");
    }
}
