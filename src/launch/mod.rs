//! The `ringrun` launcher: placement, process table, output, failure policy.
//!
//! `ringrun -n N [-H host:slots,... | --hostfile F] [-x VAR[=v]]... [--tag-output]
//! [--output-filename DIR] [--rsh CMD] [--bind ADDR] [--port P] [--timeout SECS]
//! [--oversubscribe] -- PROGRAM ARGS...` starts N ranks of PROGRAM and hosts the job's
//! coordinator (rendezvous and membership authority) in its own process, so the death of
//! any rank never takes the coordinator with it.
//!
//! # What happens, in order
//! 1. The command line is checked completely (`plan.rs`): hosts, placement, program, `-x`
//!    values, `--rsh`, coordinator address. Any problem is one line on stderr and exit
//!    status 2, before anything is started.
//! 2. The coordinator listens on `--bind` (or 127.0.0.1 when every rank is local, or the
//!    address of the route toward the first remote host). A random job id and a random
//!    32-byte job secret are drawn; the coordinator and every rank prove the secret to
//!    each other (`RINGCC_SECRET`, never on a command line: remote ranks read it from
//!    the `--rsh` process's stdin).
//! 3. Ranks start in rank order: local ones directly, remote ones as
//!    `RSH HOST 'cd DIR; export VAR=value ...; exec PROGRAM ARGS'`. Each runs in its own
//!    process group; local ranks die with SIGKILL when ringrun dies.
//! 4. The supervisor waits. The first rank that fails (non-zero exit or signal) ends the
//!    job: ringrun names the rank, how it ended and its host, sends SIGTERM to every
//!    rank's group, SIGKILL after [`GRACE_PERIOD`], and exits with the rank's status
//!    (128+N for signal N). SIGINT/SIGTERM/SIGHUP to ringrun are forwarded the same way
//!    (exit 128+N); `--timeout` stops the job the same way (exit 124).
//! 5. At the end, whatever the ranks left in their process groups is killed.
//!
//! # Status of a running job
//! Ranks send the coordinator a progress report with every heartbeat (see
//! [`crate::coord::status`]). `ringrun status [PID]`, run from another shell, reads the
//! job's table from a Unix socket in a private per-user directory; SIGUSR1 to ringrun
//! prints it on stderr; an expiring `--timeout` prints it before stopping the ranks
//! (`status.rs`). ringrun's coordinator evicts a silent rank after the
//! `RINGCC_HEARTBEAT_TIMEOUT` its ranks see (`-x`, else ringrun's environment), so both
//! sides of the heartbeat use one timeout.
//!
//! # Remote ranks and network namespaces
//! `--rsh` is called as `RSH... HOST COMMAND` and must run COMMAND with a POSIX shell on
//! HOST, as ssh does, and pass its stdin on (so not `ssh -n`). The command carries the
//! rank's whole environment except the secret, so it does not matter what the remote side
//! inherits. A remote rank's local process is the `--rsh`
//! process: signals reach the remote program only if the remote shell forwards them
//! (`ip netns exec` does, since it execs; ssh does not without a tty). A remote rank whose
//! ssh was killed must notice on its own that the coordinator went away: that is the job
//! of the coordinator heartbeat in the library, not of ringrun.
//!
//! Ranks in network namespaces (the tests, and `scripts/`) use a wrapper as `--rsh`:
//! `exec ip netns exec "$1" sh -c "$2"`, with host names being namespace names. Those
//! names are not resolvable, so `--bind` must name the coordinator's address, and ringrun
//! itself runs inside one of the namespaces (`ip netns exec ns0 ringrun -H ns0,ns1,ns2
//! --bind 10.77.0.1 --rsh ./wrapper ...`) so that every rank can reach it.
//!
//! # Later: elastic jobs
//! The process table keeps, per rank, its host, incarnation, restart count and state, and
//! the policy (`policy.rs`) is a pure decision over it. An elastic mode (`--elastic --min-np K
//! --max-restarts R`) is a new policy that keeps going while K ranks run and restarts a
//! failed rank in the same slot with the next incarnation (`RINGCC_INCARNATION`); the
//! restarted process rejoins through the coordinator this process already hosts.

/// Prints one `ringrun: ...` line to stderr in a single `write` (below `PIPE_BUF`, so it
/// stays whole): ranks without `--tag-output` share that stderr, and `eprintln!` writes each
/// formatted piece separately, so a rank's log line could land in the middle of ours.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::launch::write_stderr(&format!("ringrun: {}\n", format_args!($($arg)*)))
    };
}

mod args;
mod bind;
mod hosts;
mod output;
mod plan;
mod policy;
mod spawn;
mod status;
mod supervise;
pub mod sys;
mod table;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::coord::{Server, ServerOptions};

/// ringrun's exit status for wrong usage or a setup failure before any rank started.
pub const USAGE_EXIT_CODE: i32 = 2;

/// Time ranks get between the first signal and SIGKILL when a job is stopped.
pub const GRACE_PERIOD: Duration = supervise::GRACE;

/// Runs ringrun with `args` (the command line without the program name) and returns its
/// exit status: 0 when every rank exited 0; the failing rank's status (128+N for signal
/// N); 128+N when ringrun was stopped by signal N; 124 on `--timeout`; 2 for wrong usage;
/// 1 when a rank could not be started. `--help` and `--version` print to stdout and
/// return 0.
///
/// Contract: call once, from the main thread (it installs signal handlers for SIGINT,
/// SIGTERM and SIGHUP, and local ranks die when the calling thread ends).
pub fn run(args: Vec<OsString>) -> i32 {
    if args.first().is_some_and(|a| a == "status") {
        return status::client(&args[1..]);
    }
    let parsed = match args::parse(args) {
        args::Parsed::Run(a) => a,
        args::Parsed::Print(text) => {
            print!("{text}");
            return 0;
        }
        args::Parsed::Usage(message) => return usage_error(&message),
    };
    let plan = match plan::plan(*parsed) {
        Ok(p) => p,
        Err(message) => return usage_error(&message),
    };
    let (server, job_id, coordinator) = match host_coordinator(&plan) {
        Ok(s) => s,
        Err(message) => return usage_error(&message),
    };
    if let Err(e) = sys::install_signal_handlers() {
        return usage_error(&format!("cannot install signal handlers: {e}"));
    }
    let program = plan.launch.program.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let status = status::StatusService::start(server.status_handle(), program);
    let on_timeout = || write_stderr(&status.table());
    let code = supervise::run_job(&plan, job_id, coordinator.to_string(), &on_timeout);
    // A rank killed between creating a same-host lane and its peer mapping it leaves the
    // file behind (`net::lane`); the job is over, so all of its lane files can go.
    crate::net::lane::remove_leftovers(job_id);
    drop(status);
    drop(server);
    code
}

/// Writes `text` to stderr with one `write_all` on the locked handle (see `say!`).
pub(crate) fn write_stderr(text: &str) {
    use std::io::Write;
    // Nothing to do if stderr is gone; ringrun's exit status still tells.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn usage_error(message: &str) -> i32 {
    say!("{message}");
    USAGE_EXIT_CODE
}

/// Listens where the plan says, draws the job id and starts the coordinator. Returns the
/// server, the job id, and the address ranks are told.
fn host_coordinator(plan: &plan::Plan) -> Result<(Server, u64, SocketAddr), String> {
    let bind = SocketAddr::new(plan.coordinator_ip, plan.port);
    let listener = TcpListener::bind(bind).map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("cannot read the coordinator address: {e}"))?;
    let job = random_job_id()?;
    let rendezvous_timeout = crate::Config::new(0, plan.world_size()).rendezvous_timeout;
    let mut options = ServerOptions::new(plan.world_size(), job, rendezvous_timeout);
    options.secret = plan.launch.secret.0.clone();
    if let Some(k) = plan.elastic_min {
        options.min_world = k;
    }
    if let Some(timeout) = heartbeat_timeout(&plan.launch.exports)? {
        options.heartbeat_timeout = timeout;
    }
    let server = Server::start(listener, options).map_err(|e| format!("cannot start the coordinator: {e}"))?;
    Ok((server, job, addr))
}

/// The `RINGCC_HEARTBEAT_TIMEOUT` ranks will see (`-x` first, then ringrun's own
/// environment), so that the coordinator evicts a silent rank after the same time as the
/// ranks give up a silent coordinator. Same format as the library's: seconds in 0.1..=3600.
fn heartbeat_timeout(exports: &[(String, OsString)]) -> Result<Option<Duration>, String> {
    const VAR: &str = "RINGCC_HEARTBEAT_TIMEOUT";
    let value = match exports.iter().rev().find(|(k, _)| k == VAR) {
        Some((_, v)) => Some(v.clone()),
        None => std::env::var_os(VAR),
    };
    let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    let text = value.to_string_lossy();
    match text.trim().parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(Some(Duration::from_secs_f64(secs))),
        _ => Err(format!("{VAR}={text} is not a number of seconds in 0.1..=3600")),
    }
}

/// A random non-zero job id (0 means "derive one" to the library).
fn random_job_id() -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("cannot draw a job id: {e}"))?;
    Ok(u64::from_le_bytes(bytes).max(1))
}
