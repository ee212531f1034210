//! Every knob of a communicator, with its default, unit and when to change it.

use std::net::IpAddr;
use std::time::Duration;

use crate::codec::CodecChoice;
use crate::core::collective::Algorithm;
use crate::Rank;

/// Configuration of one rank's communicator. Build it with [`crate::Communicator::builder`]
/// or read it with [`Config::from_env`]. Fields marked *fingerprint* must be equal on every
/// rank; rendezvous stops with [`crate::Error::ConfigMismatch`] naming the field otherwise.
#[derive(Debug, Clone)]
pub struct Config {
    /// This process's rank, `0..world_size`. No default.
    pub rank: Rank,
    /// Number of ranks in the job (*fingerprint*). No default.
    pub world_size: usize,
    /// Rank among the processes on this host (informational; ring order groups hosts).
    pub local_rank: Option<usize>,
    /// Number of ranks on this host.
    pub local_size: Option<usize>,
    /// `host:port` of the coordinator. Default `127.0.0.1:29500` (torchrun's default port).
    pub coordinator: String,
    /// Whether this process runs the coordinator in a background thread. Default: rank 0
    /// does, unless a launcher (ringrun) hosts it. The hosting rank is then a single point
    /// of failure for membership changes.
    pub host_coordinator: bool,
    /// Job id carried in every frame; frames of another job are refused. Default: derived
    /// from the coordinator address.
    pub job_id: u64,
    /// Address this rank listens on for ring connections. Default: the local address of
    /// the route to the coordinator (loopback when the coordinator is on loopback).
    pub bind: Option<IpAddr>,
    /// Largest segment payload in bytes (*fingerprint*). Segments pipeline: one is reduced
    /// while the next is on the wire. Default 512 KiB, measured best on loopback and 1 Gbit/s.
    pub segment_bytes: usize,
    /// Ring algorithm for all_reduce (*fingerprint*). Default `Auto`.
    pub algorithm: Algorithm,
    /// Payload codec setting (*fingerprint*). Default `raw`.
    ///
    /// - `zstd`, `shuffle+zstd`: lossless; results are bit-identical to `raw`. They pay on
    ///   links slower than the codec (about 1 Gbit/s and below); on loopback they cost.
    /// - `bf16`, `f16`, `bf16+zstd`: lossy, for f32 `all_reduce` and `reduce_scatter` only
    ///   (other calls and types are sent exactly): half the bytes or less, reduction in f32,
    ///   every rank still ends with the same bits. See [`crate::codec::ErrorFeedback`].
    /// - `auto`: `raw` or `shuffle+zstd` per segment, whichever measures faster on each
    ///   link; `auto+bf16` may also round f32 reductions to bf16 where that pays.
    ///
    /// Each frame names its codec; a segment that does not compress is sent raw.
    pub codec: CodecChoice,
    /// zstd level of the zstd codecs: negative levels are zstd's fast modes (down to
    /// -131072), 1 to 3 its usual fast levels, up to 22. Only the sender uses it, so ranks
    /// may differ. Default 1: on `benches/data/grads.f32`, shuffle+zstd at level 3
    /// compressed no better (1.44x against 1.45x) at 0.16 GB/s against 0.41; level -5 ran at
    /// 0.92 GB/s for 1.17x.
    pub codec_level: i32,
    /// How long to keep trying to reach the coordinator and peers. Default 30 s.
    pub connect_timeout: Duration,
    /// How long the coordinator waits for every rank to register. Default 60 s.
    pub rendezvous_timeout: Duration,
    /// Longest time a collective may go without receiving a frame before it fails as
    /// stalled (*fingerprint*). Default 30 s; raise it for very slow links with huge segments.
    pub progress_timeout: Duration,
    /// Per-job secret every connection proves knowledge of (HMAC-SHA256 handshake).
    /// `ringrun` generates one per job. Default none: allowed on loopback only.
    pub secret: Option<Secret>,
    /// Allows listening beyond loopback without a secret (logs a warning). Default false.
    pub insecure: bool,
    /// Silence after which the coordinator evicts this rank, or this rank gives up the
    /// coordinator. Default 5 s (`limits::HEARTBEAT_TIMEOUT`).
    pub heartbeat_timeout: std::time::Duration,
    /// Fewest ranks with which the job goes on after failures (the hosting rank passes it
    /// to its coordinator). Default 1.
    pub min_world: usize,
    /// Exit the process if the launcher's coordinator is lost (ringrun sets it through
    /// `RINGCC_ORPHAN_EXIT=1`), so no rank outlives its launcher. Default false.
    pub orphan_exit: bool,
    /// Exact retry (*fingerprint*): keep a copy of each call's input (one buffer's worth of
    /// memory) and return only once every member holds the result, so that a call
    /// interrupted by a failure is redone over the survivors and returns `Ok` with them as
    /// members (`docs/FAILURES.md`). Off, an interrupted call fails with
    /// `Error::Interrupted` on every survivor, and calls save the copy and `world / 2`
    /// tiny completion hops. Default true; `RINGCC_EXACT_RETRY=0` turns it off.
    pub exact_retry: bool,
    /// Incarnation of this process of its rank: 0 for the first, one more for each restart
    /// (`ringrun --max-restarts` sets `RINGCC_INCARNATION`). A process registering while the
    /// job runs joins it, and the coordinator refuses an incarnation not newer than the one
    /// it knows. Default 0.
    pub incarnation: u64,
    /// Admit restarted ranks only at the application's join points
    /// ([`crate::Communicator::admit_joins`]), where it can hand them its state, instead of
    /// at any call boundary (*fingerprint*). Training loops whose calls differ from step to
    /// step need it: a joiner cannot know which call the others make next. Default false;
    /// `RINGCC_JOIN_POINTS=1` turns it on.
    pub join_points: bool,
    /// How long a thread waiting on a small collective (up to 256 KiB) keeps polling its
    /// sockets without sleeping after the last frame moved: a sleeping thread's wake-up
    /// costs tens of microseconds on a busy host, more than a loopback hop. Zero never
    /// spins. At most `limits::SPIN_MAX`. Default 100 us; between calls nothing spins.
    /// `RINGCC_SPIN_US` sets it in microseconds.
    pub spin: Duration,
    /// Test hook: this rank's event loop sleeps this long after every frame it receives,
    /// making it a straggler (the straggler tests use it). `RINGCC_TEST_SLOW=RANK:MICROS`
    /// sets it on rank RANK only. Default zero: never set it in production.
    pub test_frame_delay: Duration,
    /// Which ring links' frame payloads the CRC32C covers (*fingerprint*); headers are
    /// always covered. Default [`Checksum::Remote`]; `RINGCC_CHECKSUM=all|remote`.
    pub checksum: Checksum,
    /// Move the payloads of ring links between ranks of one host through shared memory
    /// (`/dev/shm`) instead of the socket: one copy per byte instead of the kernel's two,
    /// far fewer syscalls (`docs/ARCHITECTURE.md`, "Same-host lanes"). Each link offers
    /// and accepts its lane on its own, so this is not a fingerprint field: a rank with it
    /// off refuses its peers' offers and everything goes over TCP. Default on;
    /// `RINGCC_LANES=0` turns it off.
    pub lanes: bool,
}

/// Which ring links checksum frame payloads (`Config::checksum`). Every frame header is
/// covered by a CRC32C on every link, whatever the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// Only links to another host. A link whose two ends are one host (a loopback address,
    /// or the same address at both ends) never crosses a wire, a NIC or a middlebox, so
    /// nothing can flip its bits in transit; checksumming its payloads would only cost CPU
    /// (about 10-25% of loopback bus bandwidth on a 2-core machine). Set [`Checksum::All`]
    /// if loopback ports are forwarded to other hosts by a plain TCP relay.
    #[default]
    Remote,
    /// Every link, including links within one host.
    All,
}

impl Checksum {
    /// The name `RINGCC_CHECKSUM` takes.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Remote => "remote",
            Checksum::All => "all",
        }
    }

    /// Whether payloads on a connection between the socket addresses `local` and `peer`
    /// are checksummed (an unknown address counts as another host). Both ends of a
    /// connection reach the same answer: each one's `local` is the other's `peer`.
    pub fn covers(self, local: Option<std::net::IpAddr>, peer: Option<std::net::IpAddr>) -> bool {
        let one_host = match (local, peer) {
            (Some(l), Some(p)) => crate::net::same_host(l, p),
            _ => false,
        };
        self == Checksum::All || !one_host
    }
}

/// Longest `RINGCC_TEST_SLOW` delay per frame: a second per frame is already a stall.
const TEST_FRAME_DELAY_MAX: Duration = Duration::from_secs(1);

/// Parses `RINGCC_TEST_SLOW=RANK:MICROS`: the delay for `rank` if it is RANK.
fn test_slow_for(v: &str, rank: Rank) -> Result<Option<Duration>, crate::Error> {
    let bad = || crate::Error::Config(format!("RINGCC_TEST_SLOW={v} is not RANK:MICROS (e.g. 2:3000)"));
    let (r, us) = v.split_once(':').ok_or_else(bad)?;
    let (r, us): (Rank, u64) = (r.trim().parse().map_err(|_| bad())?, us.trim().parse().map_err(|_| bad())?);
    let delay = Duration::from_micros(us);
    if delay > TEST_FRAME_DELAY_MAX {
        return Err(crate::Error::Config(format!("RINGCC_TEST_SLOW={v}: at most {TEST_FRAME_DELAY_MAX:?} per frame")));
    }
    Ok((r == rank).then_some(delay))
}

/// Parses `RINGCC_SPIN_US`: microseconds up to `limits::SPIN_MAX`.
fn spin_from(v: &str) -> Result<Duration, crate::Error> {
    let max = crate::limits::SPIN_MAX;
    match v.trim().parse::<u64>().map(Duration::from_micros) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(crate::Error::Config(format!("RINGCC_SPIN_US={v} is not microseconds in 0..={}", max.as_micros()))),
    }
}

/// A job secret; its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Shortest secret accepted, in bytes: shorter ones are guessable.
const SECRET_BYTES_MIN: usize = 16;

impl Secret {
    /// Parses a secret: 64 hex digits are decoded to 32 bytes; anything else is taken as
    /// its UTF-8 bytes.
    ///
    /// # Errors
    /// [`crate::Error::Config`] if shorter than 16 bytes; `what` names the source.
    pub fn parse(text: &str, what: &str) -> Result<Secret, crate::Error> {
        let t = text.trim();
        let hex = t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
        let bytes = if hex {
            (0..32).map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
        } else {
            t.as_bytes().to_vec()
        };
        if bytes.len() < SECRET_BYTES_MIN {
            return Err(crate::Error::Config(format!(
                "{what} is {} bytes; at least {SECRET_BYTES_MIN} are required",
                bytes.len()
            )));
        }
        Ok(Secret(bytes))
    }

    /// Reads `RINGCC_SECRET` or the file named by `RINGCC_SECRET_FILE` (which must not be
    /// readable by group or others).
    ///
    /// # Errors
    /// [`crate::Error::Config`] if both are set, the file is unreadable or too open, or the
    /// secret is too short.
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Secret>, crate::Error> {
        match (get("RINGCC_SECRET"), get("RINGCC_SECRET_FILE")) {
            (Some(_), Some(_)) => {
                Err(crate::Error::Config("both RINGCC_SECRET and RINGCC_SECRET_FILE are set; set one".into()))
            }
            (Some(s), None) => Secret::parse(&s, "RINGCC_SECRET").map(Some),
            (None, Some(path)) => {
                use std::os::unix::fs::PermissionsExt;
                let err = |e: std::io::Error| crate::Error::Config(format!("RINGCC_SECRET_FILE={path}: {e}"));
                let mode = std::fs::metadata(&path).map_err(err)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(crate::Error::Config(format!(
                        "RINGCC_SECRET_FILE={path} is readable by group or others (mode {:o}); chmod 600 it",
                        mode & 0o777
                    )));
                }
                let text = std::fs::read_to_string(&path).map_err(err)?;
                Secret::parse(&text, "RINGCC_SECRET_FILE").map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

impl Config {
    /// A config with defaults for everything but rank and world size.
    pub fn new(rank: Rank, world_size: usize) -> Config {
        Config {
            rank,
            world_size,
            local_rank: None,
            local_size: None,
            coordinator: "127.0.0.1:29500".into(),
            host_coordinator: rank == 0,
            job_id: 0,
            bind: None,
            segment_bytes: 512 << 10,
            algorithm: Algorithm::Auto,
            codec: CodecChoice::default(),
            codec_level: 1,
            connect_timeout: Duration::from_secs(30),
            rendezvous_timeout: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(30),
            secret: None,
            insecure: false,
            heartbeat_timeout: crate::limits::HEARTBEAT_TIMEOUT,
            min_world: 1,
            orphan_exit: false,
            exact_retry: true,
            incarnation: 0,
            join_points: false,
            spin: Duration::from_micros(100),
            test_frame_delay: Duration::ZERO,
            checksum: Checksum::Remote,
            lanes: true,
        }
    }

    /// Reads the configuration a launcher left in the environment: `RINGCC_*` first, then
    /// torchrun's, Open MPI's and Slurm's variables (see the README).
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming a missing, malformed or contradictory variable.
    pub fn from_env() -> Result<Config, crate::Error> {
        let get = |k: &str| std::env::var(k).ok();
        let mut config = super::env::config_from_vars(&get)?;
        config.secret = Secret::from_vars(&get)?;
        config.insecure |= matches!(get("RINGCC_INSECURE").as_deref(), Some("1" | "true"));
        config.orphan_exit |= matches!(get("RINGCC_ORPHAN_EXIT").as_deref(), Some("1" | "true"));
        match get("RINGCC_EXACT_RETRY").as_deref() {
            None => {}
            Some("1" | "true") => config.exact_retry = true,
            Some("0" | "false") => config.exact_retry = false,
            Some(v) => return Err(crate::Error::Config(format!("RINGCC_EXACT_RETRY={v} is not 0 or 1"))),
        }
        if let Some(v) = get("RINGCC_MIN_WORLD") {
            config.min_world =
                v.parse().map_err(|_| crate::Error::Config(format!("RINGCC_MIN_WORLD={v} is not a number")))?;
        }
        config.join_points |= matches!(get("RINGCC_JOIN_POINTS").as_deref(), Some("1" | "true"));
        if let Some(v) = get("RINGCC_INCARNATION") {
            config.incarnation =
                v.parse().map_err(|_| crate::Error::Config(format!("RINGCC_INCARNATION={v} is not a number")))?;
        }
        if let Some(v) = get("RINGCC_HEARTBEAT_TIMEOUT") {
            let secs: f64 =
                v.parse().map_err(|_| crate::Error::Config(format!("RINGCC_HEARTBEAT_TIMEOUT={v} is not seconds")))?;
            if !(0.1..=3600.0).contains(&secs) {
                return Err(crate::Error::Config(format!(
                    "RINGCC_HEARTBEAT_TIMEOUT={v} is outside 0.1..=3600 seconds"
                )));
            }
            config.heartbeat_timeout = std::time::Duration::from_secs_f64(secs);
        }
        match get("RINGCC_CHECKSUM").as_deref() {
            None => {}
            Some("all") => config.checksum = Checksum::All,
            Some("remote") => config.checksum = Checksum::Remote,
            Some(v) => return Err(crate::Error::Config(format!("RINGCC_CHECKSUM={v} is not all or remote"))),
        }
        match get("RINGCC_LANES").as_deref() {
            None => {}
            Some("1" | "true") => config.lanes = true,
            Some("0" | "false") => config.lanes = false,
            Some(v) => return Err(crate::Error::Config(format!("RINGCC_LANES={v} is not 0 or 1"))),
        }
        if let Some(v) = get("RINGCC_SPIN_US") {
            config.spin = spin_from(&v)?;
        }
        if let Some(v) = get("RINGCC_TEST_SLOW") {
            if let Some(delay) = test_slow_for(&v, config.rank)? {
                config.test_frame_delay = delay;
            }
        }
        Ok(config)
    }

    /// The fields every rank must agree on, as (name, value) pairs.
    pub fn fingerprint(&self) -> Vec<(String, String)> {
        vec![
            ("protocol_version".into(), crate::wire::PROTOCOL_VERSION.to_string()),
            ("world_size".into(), self.world_size.to_string()),
            ("segment_bytes".into(), self.segment_bytes.to_string()),
            ("algorithm".into(), self.algorithm.name().into()),
            ("codec".into(), self.codec.name().into()),
            ("progress_timeout".into(), format!("{:?}", self.progress_timeout)),
            ("exact_retry".into(), self.exact_retry.to_string()),
            ("join_points".into(), self.join_points.to_string()),
            ("checksum".into(), self.checksum.name().into()),
        ]
    }

    /// Checks values that make no sense on their own.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the field.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WORLD_MAX};
        let err = |m: String| Err(crate::Error::Config(m));
        if self.world_size == 0 || self.world_size > WORLD_MAX {
            return err(format!("world_size {} is outside 1..={WORLD_MAX}", self.world_size));
        }
        if self.rank >= self.world_size {
            return err(format!("rank {} is outside 0..{}", self.rank, self.world_size));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return err(format!(
                "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        let levels = crate::codec::zstd_levels();
        if !levels.contains(&self.codec_level) {
            return err(format!(
                "codec_level {} is outside zstd's {}..={}",
                self.codec_level,
                levels.start(),
                levels.end()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_slow_names_one_rank_and_a_bounded_delay() {
        assert_eq!(test_slow_for("2:3000", 2).unwrap(), Some(Duration::from_millis(3)));
        assert_eq!(test_slow_for(" 2 : 3000 ", 1).unwrap(), None);
        assert_eq!(test_slow_for("0:0", 0).unwrap(), Some(Duration::ZERO));
        for bad in ["2", "x:1", "2:-1", "2:3ms", "2:2000000"] {
            assert!(test_slow_for(bad, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn spin_is_bounded_microseconds() {
        assert_eq!(spin_from("0").unwrap(), Duration::ZERO);
        assert_eq!(spin_from("250").unwrap(), Duration::from_micros(250));
        assert_eq!(spin_from("10000").unwrap(), crate::limits::SPIN_MAX);
        for bad in ["", "-1", "1.5", "10001", "100us"] {
            assert!(spin_from(bad).is_err(), "{bad}");
        }
    }

    /// Payloads go unchecked only where both ends are one host, and both ends of any
    /// connection agree (each one's local address is the other's peer address).
    #[test]
    fn checksum_skips_payloads_only_within_one_host_and_both_ends_agree() {
        use std::net::IpAddr;
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            ("127.0.0.1", "127.0.0.1", false),
            ("127.0.0.1", "127.0.0.5", false),
            ("::1", "::1", false),
            ("10.0.0.1", "10.0.0.1", false),
            ("127.0.0.1", "10.0.0.1", false),
            ("10.77.0.1", "10.77.0.2", true),
            ("fe80::1", "fe80::2", true),
        ];
        for (a, b, remote) in cases {
            for (l, p) in [(a, b), (b, a)] {
                assert_eq!(Checksum::Remote.covers(ip(l), ip(p)), remote, "{l} -> {p}");
                assert!(Checksum::All.covers(ip(l), ip(p)), "{l} -> {p}");
            }
        }
        assert!(Checksum::Remote.covers(None, ip("127.0.0.1")), "an unknown address counts as remote");
        assert_eq!(Config::new(0, 2).checksum, Checksum::Remote);
        assert!(Config::new(0, 2).fingerprint().iter().any(|(k, v)| k == "checksum" && v == "remote"));
    }
}
