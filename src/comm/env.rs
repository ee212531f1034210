//! Reading a [`Config`] from the variables a launcher sets (`docs/LAUNCHERS.md`).
//!
//! Whose variables count: `RINGCC_*` and torchrun's names (`RANK`, `WORLD_SIZE`, ...) both
//! describe this process, so every one of them that is set must agree. Open MPI's and then
//! Slurm's are read only when neither `RINGCC_RANK` nor `RANK` is set, because `mpirun` and
//! `srun` often enclose another launcher (torchrun in an sbatch script, ringrun inside an
//! allocation) and their variables then describe the enclosing job, not this process.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use super::Config;
use crate::codec::CodecChoice;
use crate::core::collective::Algorithm;
use crate::limits::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WORLD_MAX};
use crate::Error;

type Get<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Longest timeout accepted from the environment: a day is beyond any sensible wait, and
/// small enough that `Instant::now() + timeout` can never overflow.
const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Coordinator port when only `MASTER_ADDR` is set (torchrun's default `MASTER_PORT`).
const MASTER_PORT_DEFAULT: u16 = 29500;

/// Each launcher's names for rank, world size, local rank and local size (`""`: none), in
/// order of preference: ringcc, torchrun, Open MPI, Slurm.
const LAUNCHERS: [[&str; 4]; 4] = [
    ["RINGCC_RANK", "RINGCC_WORLD_SIZE", "RINGCC_LOCAL_RANK", "RINGCC_LOCAL_SIZE"],
    ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
    ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"],
    ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ""],
];
const RANK: usize = 0;
const WORLD: usize = 1;
const LOCAL_RANK: usize = 2;
const LOCAL_SIZE: usize = 3;

/// A set variable: its name and trimmed value. An empty value counts as unset.
struct Var {
    name: &'static str,
    text: String,
}

fn var(get: Get<'_>, name: &'static str) -> Option<Var> {
    let text = get(name)?.trim().to_string();
    (!text.is_empty()).then_some(Var { name, text })
}

fn err<T>(message: String) -> Result<T, Error> {
    Err(Error::Config(message))
}

impl Var {
    fn bad<T>(&self, why: &str) -> Result<T, Error> {
        err(format!("{}={:?} {why}", self.name, self.text))
    }
}

/// The first set variable among `names` as a number, after checking that every other set
/// one holds the same number.
fn agreed(get: Get<'_>, names: &[&'static str]) -> Result<Option<(usize, &'static str)>, Error> {
    let mut found: Option<(usize, &'static str)> = None;
    for v in names.iter().filter_map(|&n| var(get, n)) {
        let Ok(n) = v.text.parse::<usize>() else { return v.bad("is not a non-negative integer") };
        match found {
            Some((m, first)) if m != n => {
                return err(format!("{first}={m} contradicts {}={n}: unset one or make them agree", v.name))
            }
            Some(_) => {}
            None => found = Some((n, v.name)),
        }
    }
    Ok(found)
}

/// Builds a config from environment lookups (`get(name)`), in this order of preference:
/// `RINGCC_*`, torchrun, Open MPI, Slurm. `docs/LAUNCHERS.md` lists every variable.
///
/// # Errors
/// [`Error::Config`] naming a missing, malformed or contradictory variable.
pub(crate) fn config_from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
    let [ringcc, torchrun, ompi, slurm] = LAUNCHERS;
    let mut sources = vec![ringcc, torchrun];
    if var(get, ringcc[RANK]).is_none() && var(get, torchrun[RANK]).is_none() {
        sources.extend([ompi, slurm].into_iter().find(|s| var(get, s[RANK]).is_some()));
    }
    let pick = |i: usize| sources.iter().map(|s| s[i]).filter(|n| !n.is_empty()).collect::<Vec<_>>();
    let Some((rank, rank_var)) = agreed(get, &pick(RANK))? else {
        return err("rank unknown: set RINGCC_RANK and RINGCC_WORLD_SIZE, or start under ringrun, \
                    torchrun (RANK), mpirun (OMPI_COMM_WORLD_RANK) or srun (SLURM_PROCID)"
            .into());
    };
    let world_names = pick(WORLD);
    let Some((world, world_var)) = agreed(get, &world_names)? else {
        return err(format!("{rank_var} is set but the world size is not: set {}", world_names.join(" or ")));
    };
    if world == 0 || world > WORLD_MAX {
        return err(format!("{world_var}={world} is outside 1..={WORLD_MAX}"));
    }
    if rank >= world {
        return err(format!("{rank_var}={rank} is not below {world_var}={world}"));
    }
    let mut c = Config::new(rank, world);
    let local_rank = agreed(get, &pick(LOCAL_RANK))?;
    let local_size = agreed(get, &pick(LOCAL_SIZE))?;
    if let Some((size, size_var)) = local_size {
        if size == 0 || size > world {
            return err(format!("{size_var}={size} is outside 1..={world_var}={world}"));
        }
        if let Some((r, r_var)) = local_rank.filter(|&(r, _)| r >= size) {
            return err(format!("{r_var}={r} is not below {size_var}={size}"));
        }
    }
    c.local_rank = local_rank.map(|(r, _)| r);
    c.local_size = local_size.map(|(s, _)| s);
    (c.coordinator, c.host_coordinator) = coordinator(get, rank)?;
    if let Some(v) = var(get, "RINGCC_HOST_COORDINATOR") {
        c.host_coordinator = match v.text.to_ascii_lowercase().as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => return v.bad("is not one of 1, 0, true, false"),
        };
    }
    options(get, &mut c)?;
    c.validate()?;
    Ok(c)
}

fn is_ipv6(host: &str) -> bool {
    let addr = host.split_once('%').map_or(host, |(a, _zone)| a);
    addr.parse::<Ipv6Addr>().is_ok()
}

/// A host name or IPv4 address: nothing that would make `host:port` ambiguous.
fn is_name(host: &str) -> bool {
    !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || "[]:/@".contains(c))
}

/// The coordinator's `host:port` and whether this rank hosts it.
fn coordinator(get: Get<'_>, rank: usize) -> Result<(String, bool), Error> {
    if let Some(v) = var(get, "RINGCC_COORDINATOR") {
        let ok = v.text.rsplit_once(':').is_some_and(|(host, port)| {
            let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
            let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(h) => is_ipv6(h),
                None => is_name(host),
            };
            port_ok && host_ok
        });
        if !ok {
            return v.bad("is not host:port (port 1..=65535, IPv6 in brackets as in [::1]:29500)");
        }
        return Ok((v.text, false));
    }
    let port_var = var(get, "MASTER_PORT");
    let Some(addr) = var(get, "MASTER_ADDR") else {
        return err(match port_var {
            Some(p) => format!("MASTER_PORT={} is set but MASTER_ADDR is not", p.text),
            None => "no coordinator address: set RINGCC_COORDINATOR=host:port (a launcher hosts the \
                     coordinator there), or MASTER_ADDR and optionally MASTER_PORT (rank 0 hosts it)"
                .into(),
        });
    };
    let mut port = match &port_var {
        Some(p) => match p.text.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return p.bad("is not a port (1..=65535)"),
        },
        None => MASTER_PORT_DEFAULT,
    };
    // torchrun's agent keeps its own store listening on MASTER_PORT when it sets this, so
    // rank 0 cannot bind that port; every rank derives the same neighbour instead.
    if var(get, "TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.text.eq_ignore_ascii_case("true")) {
        let Some(next) = port.checked_add(1) else {
            return err(format!("MASTER_PORT={port} leaves no port after torchrun's store for the coordinator"));
        };
        port = next;
    }
    let a = addr.text.as_str();
    let joined = match a.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) if is_ipv6(h) => format!("[{h}]:{port}"),
        None if is_ipv6(a) => format!("[{a}]:{port}"),
        None if is_name(a) => format!("{a}:{port}"),
        _ => return addr.bad("is not a host name or IP address (the port goes in MASTER_PORT)"),
    };
    Ok((joined, rank == 0))
}

/// The optional knobs: job id, bind address, segment size, algorithm, codec, timeouts.
fn options(get: Get<'_>, c: &mut Config) -> Result<(), Error> {
    if let Some(v) = var(get, "RINGCC_JOB_ID") {
        let t = v.text.as_str();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => t.parse(),
        };
        c.job_id = match parsed {
            Ok(0) => return v.bad("is reserved (0 means: derive the job id from the coordinator address)"),
            Ok(id) => id,
            Err(_) => return v.bad("is not a 64-bit job id (decimal or 0x-hex)"),
        };
    }
    if let Some(v) = var(get, "RINGCC_BIND") {
        let t = v.text.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&v.text);
        c.bind = match t.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => return v.bad("is the unspecified address: give the one peers reach"),
            Ok(ip) => Some(ip),
            Err(_) => return v.bad("is not an IP address"),
        };
    }
    if let Some(v) = var(get, "RINGCC_SEGMENT_BYTES") {
        c.segment_bytes = segment_bytes(&v)?;
    }
    if let Some(v) = var(get, "RINGCC_ALGO") {
        let Some(a) = Algorithm::from_name(&v.text) else {
            return v.bad(&format!("is not an algorithm (accepted: {})", Algorithm::names()));
        };
        c.algorithm = a;
    }
    if let Some(v) = var(get, "RINGCC_CODEC") {
        c.codec = match CodecChoice::parse(&v.text) {
            Ok(choice) => choice,
            Err(_) => {
                let names: Vec<&str> = CodecChoice::ALL.iter().map(|c| c.name()).collect();
                return v.bad(&format!("is not a codec (accepted: {})", names.join(", ")));
            }
        };
    }
    if let Some(v) = var(get, "RINGCC_CODEC_LEVEL") {
        let levels = crate::codec::zstd_levels();
        c.codec_level = match v.text.parse::<i32>() {
            Ok(l) if levels.contains(&l) => l,
            _ => return v.bad(&format!("is not a zstd level in {}..={}", levels.start(), levels.end())),
        };
    }
    let timeouts = [
        ("RINGCC_CONNECT_TIMEOUT", &mut c.connect_timeout),
        ("RINGCC_RENDEZVOUS_TIMEOUT", &mut c.rendezvous_timeout),
        ("RINGCC_PROGRESS_TIMEOUT", &mut c.progress_timeout),
    ];
    for (name, field) in timeouts {
        if let Some(v) = var(get, name) {
            *field = match v.text.parse::<f64>().map(Duration::try_from_secs_f64) {
                Ok(Ok(d)) if !d.is_zero() && d <= TIMEOUT_MAX => d,
                _ => return v.bad(&format!("is not a number of seconds in (0, {}]", TIMEOUT_MAX.as_secs())),
            };
        }
    }
    Ok(())
}

/// Bytes with an optional binary suffix: `65536`, `512K`, `1M` (K = 1024, M = 1024²).
fn segment_bytes(v: &Var) -> Result<usize, Error> {
    let t = v.text.as_str();
    let (digits, shift) = match t.strip_suffix(['K', 'k']) {
        Some(d) => (d, 10),
        None => t.strip_suffix(['M', 'm']).map_or((t, 0), |d| (d, 20)),
    };
    let Some(n) = digits.parse::<usize>().ok().and_then(|n| n.checked_mul(1 << shift)) else {
        return v.bad("is not a byte count (like 65536, 512K or 1M)");
    };
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&n) {
        return v.bad(&format!("is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} bytes"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// `"A=1 B=2"` as pairs.
    fn vars(text: &str) -> Vec<(&str, &str)> {
        text.split_whitespace().map(|kv| kv.split_once('=').unwrap()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config_from_vars(&|k| map.get(k).cloned())
    }

    fn ok(text: &str) -> Config {
        env(&vars(text)).unwrap()
    }

    fn message(pairs: &[(&str, &str)]) -> String {
        match env(pairs) {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error for {pairs:?}, got {other:?}"),
        }
    }

    fn fails(text: &str, needles: &[&str]) {
        let m = message(&vars(text));
        assert!(needles.iter().all(|n| m.contains(n)), "{text}: {m:?} should name {needles:?}");
    }

    const RINGRUN: &str = "RINGCC_RANK=1 RINGCC_WORLD_SIZE=4 RINGCC_COORDINATOR=10.0.0.1:4000";
    const TORCHRUN: &str = "RANK=1 WORLD_SIZE=4 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 MASTER_ADDR=node0 MASTER_PORT=29400";
    const SBATCH: &str = "SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0";

    #[test]
    fn each_launchers_variables_alone() {
        let c = ok(&format!("{RINGRUN} RINGCC_LOCAL_RANK=1 RINGCC_LOCAL_SIZE=2"));
        assert_eq!((c.rank, c.world_size, c.local_rank, c.local_size), (1, 4, Some(1), Some(2)));
        assert_eq!((c.coordinator.as_str(), c.host_coordinator), ("10.0.0.1:4000", false));
        let c = ok(TORCHRUN);
        assert_eq!((c.rank, c.world_size, c.local_rank, c.local_size), (1, 4, Some(1), Some(2)));
        assert_eq!((c.coordinator.as_str(), c.host_coordinator), ("node0:29400", false));
        assert!(ok(&format!("{TORCHRUN} RANK=0 LOCAL_RANK=0")).host_coordinator, "rank 0 hosts");
        let ompi = "OMPI_COMM_WORLD_RANK=2 OMPI_COMM_WORLD_SIZE=3 OMPI_COMM_WORLD_LOCAL_RANK=0 \
                    OMPI_COMM_WORLD_LOCAL_SIZE=1";
        let c = ok(&format!("{ompi} MASTER_ADDR=10.0.0.1"));
        assert_eq!((c.rank, c.world_size, c.local_rank, c.local_size), (2, 3, Some(0), Some(1)));
        assert_eq!(c.coordinator, "10.0.0.1:29500");
        let slurm = "SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_LOCALID=0";
        let c = ok(&format!("{slurm} RINGCC_COORDINATOR=h:1"));
        assert_eq!(
            (c.rank, c.world_size, c.local_rank, c.local_size, c.host_coordinator),
            (0, 2, Some(0), None, false)
        );
        fails(ompi, &["RINGCC_COORDINATOR", "MASTER_ADDR"]);
        fails(slurm, &["RINGCC_COORDINATOR", "MASTER_ADDR"]);
        fails(&format!("{slurm} MASTER_PORT=1"), &["MASTER_PORT=1", "MASTER_ADDR is not"]);
    }

    #[test]
    fn coordinator_moves_one_port_up_when_torchruns_agent_holds_master_port() {
        let c = ok(&format!("{TORCHRUN} TORCHELASTIC_USE_AGENT_STORE=True"));
        assert_eq!(c.coordinator, "node0:29401");
        assert_eq!(ok(&format!("{TORCHRUN} TORCHELASTIC_USE_AGENT_STORE=False")).coordinator, "node0:29400");
        fails(&format!("{TORCHRUN} MASTER_PORT=65535 TORCHELASTIC_USE_AGENT_STORE=True"), &["MASTER_PORT=65535"]);
    }

    #[test]
    fn inner_launcher_wins_over_the_enclosing_mpirun_or_srun() {
        assert_eq!(ok(&format!("{SBATCH} {TORCHRUN}")).rank, 1);
        let c = ok(&format!("{SBATCH} {RINGRUN}"));
        assert_eq!((c.rank, c.world_size, c.local_rank), (1, 4, None));
        assert_eq!(ok(&format!("{SBATCH} OMPI_COMM_WORLD_RANK=5 OMPI_COMM_WORLD_SIZE=6 MASTER_ADDR=h")).rank, 5);
        assert_eq!(ok(&format!("{RINGRUN} RANK=01 WORLD_SIZE=4")).rank, 1, "equal numbers agree");
    }

    #[test]
    fn contradictions_name_both_variables_and_values() {
        fails(&format!("{RINGRUN} RANK=2"), &["RINGCC_RANK=1", " RANK=2"]);
        fails(&format!("{TORCHRUN} RINGCC_LOCAL_SIZE=3"), &["RINGCC_LOCAL_SIZE=3", "LOCAL_WORLD_SIZE=2"]);
        let ompi = "OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=6 RINGCC_WORLD_SIZE=5";
        fails(ompi, &["RINGCC_WORLD_SIZE=5", "OMPI_COMM_WORLD_SIZE=6"]);
    }

    #[test]
    fn missing_and_out_of_range_values_name_their_variables() {
        fails("", &["RINGCC_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"]);
        fails("RANK=0 MASTER_ADDR=h", &["RANK is set", "WORLD_SIZE"]);
        fails("RINGCC_RANK= RINGCC_WORLD_SIZE=2", &["rank unknown"]); // empty counts as unset
        fails(&format!("{RINGRUN} RINGCC_RANK=4"), &["RINGCC_RANK=4", "RINGCC_WORLD_SIZE=4"]);
        fails(&format!("{RINGRUN} RINGCC_WORLD_SIZE=0"), &["RINGCC_WORLD_SIZE=0"]);
        fails(&format!("{RINGRUN} RINGCC_WORLD_SIZE=4097"), &["RINGCC_WORLD_SIZE=4097"]);
        fails(&format!("{RINGRUN} RINGCC_RANK=one"), &["RINGCC_RANK=\"one\""]);
        fails(&format!("{TORCHRUN} LOCAL_RANK=2"), &["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"]);
        fails(&format!("{TORCHRUN} LOCAL_WORLD_SIZE=5"), &["LOCAL_WORLD_SIZE=5", "WORLD_SIZE=4"]);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        for (addr, want) in [("::1", "[::1]:7"), ("[fe80::1]", "[fe80::1]:7"), ("fe80::1%eth0", "[fe80::1%eth0]:7")] {
            assert_eq!(ok(&format!("RANK=0 WORLD_SIZE=1 MASTER_PORT=7 MASTER_ADDR={addr}")).coordinator, want);
        }
        for bad in ["h:29500", "[::1", "[h]", "a b"] {
            assert!(message(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", bad)]).contains("MASTER_ADDR"));
        }
        assert_eq!(ok(&format!("{RINGRUN} RINGCC_COORDINATOR=[::1]:9")).coordinator, "[::1]:9");
        for bad in ["::1:9", "h", "h:0", ":9", "[h]:9", "h:port", "h:1:2"] {
            fails(&format!("{RINGRUN} RINGCC_COORDINATOR={bad}"), &["RINGCC_COORDINATOR", bad]);
        }
    }

    #[test]
    fn host_coordinator_override() {
        assert!(ok(&format!("{RINGRUN} RINGCC_HOST_COORDINATOR=1")).host_coordinator);
        assert!(!ok(&format!("{TORCHRUN} RANK=0 RINGCC_HOST_COORDINATOR=False")).host_coordinator);
        fails(&format!("{RINGRUN} RINGCC_HOST_COORDINATOR=yes"), &["RINGCC_HOST_COORDINATOR=\"yes\""]);
    }

    #[test]
    fn options_parse_with_suffixes_and_units() {
        let c = ok(&format!(
            "{RINGRUN} RINGCC_SEGMENT_BYTES=512K RINGCC_JOB_ID=0xFF RINGCC_BIND=[::1] RINGCC_ALGO=bidir \
             RINGCC_CODEC=Shuffle+ZSTD RINGCC_CODEC_LEVEL=-5 RINGCC_CONNECT_TIMEOUT=2.5 RINGCC_RENDEZVOUS_TIMEOUT=90 RINGCC_PROGRESS_TIMEOUT=0.25"
        ));
        assert_eq!((c.segment_bytes, c.job_id, c.bind), (512 << 10, 255, Some("::1".parse().unwrap())));
        assert_eq!((c.algorithm, c.codec), (Algorithm::Bidir, CodecChoice::Fixed(crate::codec::Codec::ShuffleZstd)));
        assert_eq!(c.codec_level, -5);
        assert_eq!(ok(&format!("{RINGRUN} RINGCC_CODEC=auto+bf16")).codec, CodecChoice::Auto { lossy: true });
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));
        assert_eq!((c.rendezvous_timeout, c.progress_timeout), (Duration::from_secs(90), Duration::from_millis(250)));
        for (text, bytes) in [("1m", 1 << 20), ("64", 64), ("16M", 16 << 20)] {
            assert_eq!(ok(&format!("{RINGRUN} RINGCC_SEGMENT_BYTES={text}")).segment_bytes, bytes);
        }
        assert_eq!(ok(&format!("{RINGRUN} RINGCC_JOB_ID=42 RINGCC_ALGO=Ring")).job_id, 42);
    }

    #[test]
    fn malformed_options_name_their_variable_and_value() {
        let cases = [
            ("RINGCC_SEGMENT_BYTES", &["1G", "17M", "63", "99999999999999999999K", "K"][..]),
            ("RINGCC_JOB_ID", &["0", "0x", "-1", "0x10000000000000000"]),
            ("RINGCC_BIND", &["0.0.0.0", "host", "[::]"]),
            ("RINGCC_ALGO", &["tree"]),
            ("RINGCC_CODEC", &["lz4", "auto+f16"]),
            ("RINGCC_CODEC_LEVEL", &["23", "fast", "1.5"]),
            ("RINGCC_CONNECT_TIMEOUT", &["0", "-1", "nan", "inf", "1e9", "2s"]),
            ("RINGCC_RENDEZVOUS_TIMEOUT", &["x"]),
            ("RINGCC_PROGRESS_TIMEOUT", &["0.0"]),
        ];
        for (name, values) in cases {
            for value in values {
                fails(&format!("{RINGRUN} {name}={value}"), &[name, value]);
            }
        }
        fails(&format!("{RINGRUN} RINGCC_CODEC=lz4"), &["RINGCC_CODEC=\"lz4\"", "accepted: raw, zstd", "auto+bf16"]);
    }

    const NAMES: &str = "RINGCC_RANK RINGCC_WORLD_SIZE RINGCC_LOCAL_RANK RINGCC_LOCAL_SIZE RINGCC_COORDINATOR \
        RINGCC_HOST_COORDINATOR RINGCC_JOB_ID RINGCC_BIND RINGCC_SEGMENT_BYTES RINGCC_ALGO RINGCC_CODEC \
        RINGCC_CODEC_LEVEL RINGCC_CONNECT_TIMEOUT RINGCC_RENDEZVOUS_TIMEOUT RINGCC_PROGRESS_TIMEOUT RANK WORLD_SIZE LOCAL_RANK \
        LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT OMPI_COMM_WORLD_RANK SLURM_PROCID";

    proptest! {
        #[test]
        fn any_value_is_accepted_or_an_error_naming_its_variable(
            index in 0..23usize,
            value in prop_oneof![any::<String>(), "[0-9a-fxXkKmM.:+-]{0,12}"],
            torchrun in any::<bool>(),
        ) {
            let name = NAMES.split_whitespace().nth(index).unwrap();
            // MASTER_ADDR/PORT matter under torchrun's variables, not under ringrun's.
            let mut pairs = vars(if torchrun { TORCHRUN } else { RINGRUN });
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, &value));
            if let Err(e) = env(&pairs) {
                prop_assert!(e.to_string().contains(name), "{name}={value:?}: {e}");
            }
        }
    }
}
