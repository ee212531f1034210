//! Turning the command line into a checked plan before anything starts: hosts, placement,
//! program, exports, remote shell, coordinator address, output. Every error here is a
//! usage error (one line, exit 2, nothing started).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::args::{self, Args};
use super::hosts::{self, HostSlots};
use super::output::OutputMode;
use super::spawn::{self, JobSecret, Launch, MANAGED_VARS};
use crate::limits::WORLD_MAX;

/// A host with ranks placed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlacedHost {
    /// Name as given (`RINGCC_HOST`, and the argument to `--rsh`).
    pub(crate) name: String,
    /// Whether ranks on it are spawned directly rather than through `--rsh`.
    pub(crate) local: bool,
    /// How many ranks it runs (`RINGCC_LOCAL_SIZE`).
    pub(crate) local_size: usize,
}

/// A checked job description.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Hosts in the order given (including hosts that received no rank).
    pub(crate) hosts: Vec<PlacedHost>,
    /// `placement[rank] = (host index, local rank)`.
    pub(crate) placement: Vec<(usize, usize)>,
    /// What every rank runs.
    pub(crate) launch: Launch,
    /// Where ranks' output goes.
    pub(crate) output: OutputMode,
    /// Address the coordinator listens on and advertises.
    pub(crate) coordinator_ip: IpAddr,
    /// Port for the coordinator (0: any free port).
    pub(crate) port: u16,
    /// `--timeout`.
    pub(crate) timeout: Option<Duration>,
    /// `--elastic --min-np K`: the job goes on while K ranks run.
    pub(crate) elastic_min: Option<usize>,
    /// `--max-restarts R`: restarts allowed per rank (elastic jobs only).
    pub(crate) max_restarts: u32,
}

impl Plan {
    /// Where rank `local_rank` of host `host` stands among all ranks this machine runs
    /// (every local host name counts: `-H localhost:2,127.0.0.1:2` is four ranks of one
    /// machine): (index, count), for CPU binding.
    pub(crate) fn machine_slot(&self, host: usize, local_rank: usize) -> (usize, usize) {
        let before: usize = self.hosts.iter().take(host).filter(|h| h.local).map(|h| h.local_size).sum();
        let count = self.hosts.iter().filter(|h| h.local).map(|h| h.local_size).sum();
        (before + local_rank, count)
    }

    /// Number of ranks.
    pub(crate) fn world_size(&self) -> usize {
        self.placement.len()
    }
}

/// Checks the arguments and builds the plan, reading the hostfile, the environment (for
/// `-x VAR` and PATH) and the file system (program, `--rsh`, output directory).
///
/// # Errors
/// A one-line message saying what is wrong.
pub(crate) fn plan(args: Args) -> Result<Plan, String> {
    let host_slots = host_slots(&args)?;
    let world = match (args.np, host_slots.as_ref()) {
        (Some(0), _) => return Err("-n 0: a job needs at least one rank".into()),
        (Some(n), _) if n > WORLD_MAX => return Err(format!("-n {n}: at most {WORLD_MAX} ranks")),
        (Some(n), _) => n,
        (None, Some(h)) => h.iter().map(|h| h.slots).sum::<usize>().min(WORLD_MAX),
        (None, None) => return Err("give the number of ranks with -n (or hosts with -H or --hostfile)".into()),
    };
    let host_slots = host_slots.unwrap_or_else(|| vec![HostSlots { name: "localhost".into(), slots: world }]);
    let placement = hosts::place(&host_slots, world, args.oversubscribe)?;
    let hostname = hosts::local_hostname();
    let hosts: Vec<PlacedHost> = host_slots
        .iter()
        .enumerate()
        .map(|(i, h)| PlacedHost {
            name: h.name.clone(),
            local: hosts::is_local(&h.name, &hostname),
            local_size: placement.iter().filter(|&&(host, _)| host == i).count(),
        })
        .collect();
    let first_remote = hosts.iter().find(|h| !h.local && h.local_size > 0).map(|h| h.name.as_str());
    let coordinator_ip = hosts::coordinator_ip(args.bind, first_remote)?;
    let launch = launch(&args, first_remote.is_some())?;
    let output = match (&args.output_filename, args.tag_output) {
        (Some(dir), _) => OutputMode::Files(dir.clone()),
        (None, true) => OutputMode::Tagged,
        (None, false) => OutputMode::Inherit,
    };
    let elastic_min = match (args.elastic, args.min_np) {
        (false, _) => None,
        (true, Some(k)) if k == 0 || k > world => {
            return Err(format!("--min-np {k}: must be between 1 and the number of ranks ({world})"))
        }
        (true, k) => Some(k.unwrap_or(1)),
    };
    output.prepare()?;
    Ok(Plan {
        hosts,
        placement,
        launch,
        output,
        coordinator_ip,
        port: args.port,
        timeout: args.timeout,
        elastic_min,
        max_restarts: args.max_restarts.unwrap_or(0),
    })
}

fn host_slots(args: &Args) -> Result<Option<Vec<HostSlots>>, String> {
    if let Some(file) = &args.hostfile {
        let text = std::fs::read_to_string(file).map_err(|e| format!("--hostfile {}: {e}", file.display()))?;
        return hosts::parse_hostfile(&text).map(Some).map_err(|e| format!("--hostfile {}: {e}", file.display()));
    }
    if args.hosts.is_empty() {
        return Ok(None);
    }
    hosts::parse_host_list(&args.hosts).map(Some)
}

fn launch(args: &Args, any_remote: bool) -> Result<Launch, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let path_var = std::env::var_os("PATH");
    let self_dir: Option<PathBuf> = std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from));
    let (name, program_args) = args.command.split_first().ok_or("no program given")?;
    let program = spawn::resolve_program(name, path_var.as_deref(), self_dir.as_deref(), &cwd)?;
    let exports = args::exports(&args.export, &MANAGED_VARS, |k| std::env::var_os(k))?;
    let rsh: Vec<String> = args.rsh.split_whitespace().map(String::from).collect();
    if any_remote {
        let first = rsh.first().ok_or("--rsh is empty but some hosts are remote")?;
        spawn::resolve_program(first.as_ref(), path_var.as_deref(), None, &cwd)
            .map_err(|e| format!("--rsh {first}: {e}"))?;
    }
    let program_args: Vec<OsString> = program_args.to_vec();
    let secret = new_secret()?;
    let bind_cpus = match args.bind_to {
        super::bind::BindTo::Core => super::sys::allowed_cpus(),
        super::bind::BindTo::None => Vec::new(),
    };
    Ok(Launch { program, args: program_args, exports, rsh, cwd, secret, bind_cpus })
}

/// 32 random bytes.
fn new_secret() -> Result<JobSecret, String> {
    let mut bytes = vec![0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("cannot draw a job secret: {e}"))?;
    Ok(JobSecret(bytes))
}
