//! The command line: clap definitions, mpirun's `-np`, and turning clap's errors into the
//! one-line messages ringrun prints.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};

const ABOUT: &str = "Start a ringcc job: N ranks of PROGRAM on this machine or on remote hosts, \
with ringrun hosting the job's coordinator.";

const AFTER_HELP: &str = "\
Every rank gets RINGCC_RANK, RINGCC_WORLD_SIZE, RINGCC_LOCAL_RANK, RINGCC_LOCAL_SIZE,
RINGCC_COORDINATOR (host:port), RINGCC_JOB_ID, RINGCC_HOST and RINGCC_INCARNATION, plus the -x
variables, and RINGCC_SECRET (a random per-job secret; remote ranks read it from the stdin
of RSH, never from a command line). Remote ranks run as
`RSH HOST 'read -r RINGCC_SECRET; ...; cd DIR; export ...; exec PROGRAM ARGS'`.

When a rank exits non-zero or is killed, ringrun names it, sends SIGTERM to the other ranks,
SIGKILL after 3 s, and exits with that rank's status (128+N for signal N). SIGINT, SIGTERM
and SIGHUP sent to ringrun are forwarded to every rank. Exit status 2: wrong usage (nothing
was started); 124: --timeout expired.

Status of a running job: `ringrun status [PID]` (from another shell) prints, per rank, its
state, epoch, calls done, the running call with its phase and step, the rank it waits for,
and a diagnosis naming the rank that holds the others up. SIGUSR1 to ringrun prints the same
on its stderr, and so does an expiring --timeout, before the ranks are stopped.

Examples:
  ringrun -n 4 ringbench -b 1K -e 64M
  ringrun -np 8 -H node1:4,node2:4 --bind 10.0.0.1 -x OMP_NUM_THREADS=1 --tag-output -- ./train
  ringrun -n 3 -H ns0,ns1,ns2 --bind 10.77.0.1 --rsh ./netns-rsh -- ./probe";

/// ringrun's command line as clap parses it.
#[derive(Debug, Parser)]
#[command(name = "ringrun", version, about = ABOUT, after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Number of ranks (also -np). Default: the total slots of -H or --hostfile.
    #[arg(short = 'n', long = "np", value_name = "N")]
    pub(crate) np: Option<usize>,

    /// Hosts as HOST[:SLOTS],... (repeatable). Hosts are filled with ranks in order.
    /// localhost, 127.0.0.1 and this machine's name run ranks directly; others via --rsh.
    /// Default: every rank on this machine.
    #[arg(short = 'H', long = "host", value_name = "HOST:SLOTS,...", value_delimiter = ',')]
    pub(crate) hosts: Vec<String>,

    /// File of hosts, one per line as `HOST [slots=N]`; `#` starts a comment.
    #[arg(long, value_name = "FILE", conflicts_with = "hosts")]
    pub(crate) hostfile: Option<PathBuf>,

    /// Export VAR to every rank: `-x VAR` copies ringrun's value, `-x VAR=VALUE` sets it.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    pub(crate) export: Vec<String>,

    /// Prefix every line of every rank's stdout and stderr with `[rank N] `.
    #[arg(long)]
    pub(crate) tag_output: bool,

    /// Remote shell that runs a command on a host: called as `RSH... HOST COMMAND`.
    /// Split on whitespace.
    #[arg(long, value_name = "CMD", default_value = "ssh")]
    pub(crate) rsh: String,

    /// Address the coordinator listens on and ranks connect to. Default: 127.0.0.1 when
    /// every rank is local, else this machine's address toward the first remote host
    /// (which must then be a resolvable name).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<IpAddr>,

    /// Port the coordinator listens on (default: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub(crate) port: u16,

    /// Stop the job after SECS seconds (fractions allowed) and exit with status 124.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,

    /// Write rank N's output to DIR/rank.N.out and DIR/rank.N.err instead of the terminal.
    #[arg(long, value_name = "DIR")]
    pub(crate) output_filename: Option<PathBuf>,

    /// Bind each rank on this machine to its share of the CPUs ringrun may use (`core`: a
    /// block of CPUs per rank, or with more ranks than CPUs CPU `local rank % CPUs`, so
    /// ring neighbours run on different CPUs), or not at all (`none`). Ranks started
    /// through --rsh are not bound.
    #[arg(long, value_name = "core|none", value_enum, default_value = "core")]
    pub(crate) bind_to: super::bind::BindTo,

    /// Allow more ranks than slots (extra ranks are spread over the hosts).
    #[arg(long)]
    pub(crate) oversubscribe: bool,

    /// Keep the job running when ranks fail, as long as --min-np ranks remain: the
    /// survivors rebuild the ring and go on (ringcc finishes or redoes the interrupted call).
    /// Without it, the first failure stops the job (mpirun's policy).
    #[arg(long)]
    pub(crate) elastic: bool,

    /// With --elastic: fewest ranks the job goes on with (default 1). Below it, the
    /// coordinator tells every rank the quorum is lost and ringrun stops the job.
    #[arg(long, value_name = "K", requires = "elastic")]
    pub(crate) min_np: Option<usize>,

    /// With --elastic: restart a failed rank up to R times (default 0). The new process
    /// (same rank, next incarnation) rejoins the running ring at a call boundary; the
    /// coordinator holds back a rank that keeps failing with a growing backoff.
    #[arg(long, value_name = "R", requires = "elastic")]
    pub(crate) max_restarts: Option<u32>,

    /// The program every rank runs, and its arguments.
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true)]
    pub(crate) command: Vec<OsString>,
}

/// What parsing the command line produced.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Run a job.
    Run(Box<Args>),
    /// Print this (help or version) to stdout and exit 0.
    Print(String),
    /// Wrong usage: this one-line message, exit 2.
    Usage(String),
}

/// Parses ringrun's arguments (without the program name).
pub(crate) fn parse(args: Vec<OsString>) -> Parsed {
    let argv = std::iter::once(OsString::from("ringrun")).chain(rewrite_np(args));
    match Args::try_parse_from(argv) {
        Ok(a) => Parsed::Run(Box::new(a)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Parsed::Print(e.render().to_string())
            }
            _ => Parsed::Usage(one_line(&e.render().to_string())),
        },
    }
}

/// Rewrites mpirun's single-dash `-np N` / `-np=N` to `--np`, only among ringrun's own
/// options (never in the program's arguments).
fn rewrite_np(args: Vec<OsString>) -> Vec<OsString> {
    let takes_value: Vec<String> = Args::command()
        .get_arguments()
        .filter(|a| a.get_action().takes_values() && !a.is_positional())
        .flat_map(|a| {
            let short = a.get_short().map(|c| format!("-{c}"));
            let long = a.get_long().map(|l| format!("--{l}"));
            short.into_iter().chain(long)
        })
        .collect();
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_str().unwrap_or("");
        if text == "-np" {
            out.push(OsString::from("--np"));
            out.extend(iter.next());
            continue;
        }
        if let Some(value) = text.strip_prefix("-np=") {
            out.push(OsString::from(format!("--np={value}")));
            continue;
        }
        if text == "--" || !text.starts_with('-') {
            // The program starts here: everything after it is its own.
            out.push(arg);
            out.extend(iter);
            break;
        }
        let value_follows = takes_value.iter().any(|f| f == text);
        out.push(arg);
        if value_follows {
            out.extend(iter.next());
        }
    }
    out
}

/// Folds a clap error into one line: its message and what it names, without the usage
/// block, plus where to look.
fn one_line(rendered: &str) -> String {
    let body: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let text = body.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see ringrun --help)")
}

/// Seconds as a positive decimal number.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 1e9) {
        return Err(format!("{s} is not a number of seconds in (0, 1e9]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Splits `-x` items into (name, value): `VAR` takes `lookup(VAR)`, `VAR=VALUE` takes VALUE.
///
/// # Errors
/// A message for a name that is not a shell variable name, one ringrun sets itself, or a
/// `-x VAR` whose VAR is not set.
pub(crate) fn exports(
    items: &[String],
    managed: &[&str],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, OsString)>, String> {
    let mut out: Vec<(String, OsString)> = Vec::with_capacity(items.len());
    for item in items {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(OsString::from(v))),
            None => (item.as_str(), None),
        };
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("-x {item:?}: {name:?} is not a variable name"));
        }
        if managed.contains(&name) {
            return Err(format!("-x {name}: ringrun sets {name} for each rank"));
        }
        let value = match value {
            Some(v) => v,
            None => lookup(name).ok_or_else(|| format!("-x {name}: {name} is not set in ringrun's environment"))?,
        };
        out.retain(|(n, _)| n != name);
        out.push((name.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn run(v: &[&str]) -> Args {
        match parse(os(v)) {
            Parsed::Run(a) => *a,
            other => panic!("{v:?} did not parse: {other:?}"),
        }
    }

    #[test]
    fn np_works_like_mpirun_but_not_inside_the_program_arguments() {
        let a = run(&["-np", "4", "prog", "-np", "7"]);
        assert_eq!(a.np, Some(4));
        assert_eq!(a.command, os(&["prog", "-np", "7"]));
        assert_eq!(run(&["-np=3", "--", "prog"]).np, Some(3));
        assert_eq!(run(&["-x", "A=1", "-np", "2", "prog"]).np, Some(2));
        assert_eq!(run(&["--tag-output", "-n", "2", "prog", "-n", "5"]).command, os(&["prog", "-n", "5"]));
    }

    #[test]
    fn hosts_split_on_commas_and_repeat() {
        let a = run(&["-H", "a:2,b:1", "-H", "c", "--", "prog"]);
        assert_eq!(a.hosts, vec!["a:2", "b:1", "c"]);
    }

    #[test]
    fn usage_errors_are_one_line() {
        for bad in [&["-n", "2"][..], &["-n", "x", "prog"], &["--timeout", "-1", "prog"], &["--bogus"]] {
            match parse(os(bad)) {
                Parsed::Usage(m) => assert!(!m.contains('\n') && m.ends_with("(see ringrun --help)"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(matches!(parse(os(&["--version"])), Parsed::Print(v) if v.contains("ringrun")));
        assert!(matches!(parse(os(&["--help"])), Parsed::Print(h) if h.contains("--tag-output")));
    }

    #[test]
    fn exports_copy_set_and_refuse_bad_names() {
        let look = |k: &str| (k == "HOME").then(|| OsString::from("/root"));
        let got = exports(&["HOME".into(), "A=1=2".into(), "A=3".into()], &["RINGCC_RANK"], look);
        assert_eq!(got, Ok(vec![("HOME".into(), "/root".into()), ("A".into(), "3".into())]));
        assert!(exports(&["NOPE".into()], &[], look).is_err());
        assert!(exports(&["1X=2".into()], &[], look).is_err());
        assert!(exports(&["A-B=2".into()], &[], look).is_err());
        assert!(exports(&["RINGCC_RANK=2".into()], &["RINGCC_RANK"], look).is_err());
    }
}
