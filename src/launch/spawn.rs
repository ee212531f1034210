//! Starting one rank: its environment, program resolution, and the command that runs it
//! locally or through `--rsh`.
//!
//! A local rank is spawned directly with the launcher's environment plus the rank's
//! variables. A remote rank is
//! `RSH... HOST 'read -r RINGCC_SECRET; export RINGCC_SECRET; cd DIR; export VAR=value ...; exec PROGRAM ARGS'`:
//! everything the rank needs travels inside that one shell-quoted command line, because
//! nothing guarantees the remote side sees ringrun's environment (ssh does not). The one
//! exception is the job secret: command lines are visible to every user (`ps`), so the
//! secret is written as one line to the `--rsh` process's stdin, which ssh and
//! `ip netns exec` pass on to the remote shell's `read`.
//!
//! Every rank (or its `--rsh` process) gets its own process group, so ringrun can signal a
//! rank and everything it started, and a terminal's Ctrl-C reaches only ringrun, which
//! forwards it; and it dies with SIGKILL if ringrun dies. Remote processes behind a real
//! ssh do not die with their ssh client: they must notice the coordinator is gone
//! (heartbeats, in the library) to stop.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::sys;

/// Everything a rank is told through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RankEnv {
    /// `RINGCC_RANK`.
    pub(crate) rank: usize,
    /// `RINGCC_WORLD_SIZE`.
    pub(crate) world_size: usize,
    /// `RINGCC_LOCAL_RANK`.
    pub(crate) local_rank: usize,
    /// `RINGCC_LOCAL_SIZE`.
    pub(crate) local_size: usize,
    /// `RINGCC_COORDINATOR`, `host:port`.
    pub(crate) coordinator: String,
    /// `RINGCC_JOB_ID`.
    pub(crate) job_id: u64,
    /// `RINGCC_HOST`: the host name as placed, so the ring can group ranks of one host.
    pub(crate) host: String,
    /// `RINGCC_INCARNATION`: 0 for a first start, grows with every restart of the rank.
    pub(crate) incarnation: u64,
}

/// The job secret: random bytes, passed to ranks as hex digits (64 hex digits are how the
/// library reads a 32-byte `RINGCC_SECRET`). Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JobSecret(pub(crate) Vec<u8>);

impl JobSecret {
    /// The secret as lower-case hex digits.
    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(<redacted>)")
    }
}

/// Variables ringrun sets for every rank; `-x` may not set them. The secret variables are
/// listed so that neither can reach a rank beside the one ringrun generated.
pub(crate) const MANAGED_VARS: [&str; 11] = [
    "RINGCC_SECRET",
    "RINGCC_SECRET_FILE",
    "RINGCC_RANK",
    "RINGCC_WORLD_SIZE",
    "RINGCC_LOCAL_RANK",
    "RINGCC_LOCAL_SIZE",
    "RINGCC_COORDINATOR",
    "RINGCC_JOB_ID",
    "RINGCC_HOST",
    "RINGCC_INCARNATION",
    "RINGCC_ORPHAN_EXIT",
];

impl RankEnv {
    /// The variables, in [`MANAGED_VARS`] order, except the secret ones.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.rank.to_string(),
            self.world_size.to_string(),
            self.local_rank.to_string(),
            self.local_size.to_string(),
            self.coordinator.clone(),
            self.job_id.to_string(),
            self.host.clone(),
            self.incarnation.to_string(),
            // A rank whose launcher (and so its coordinator) is gone exits on its own.
            "1".to_string(),
        ];
        MANAGED_VARS[2..].iter().copied().zip(values).collect()
    }
}

/// What to run and where its output goes; the same for every rank of a job.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The resolved program (absolute path).
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// `-x` variables with their values.
    pub(crate) exports: Vec<(String, OsString)>,
    /// `--rsh` split into words.
    pub(crate) rsh: Vec<String>,
    /// Working directory remote ranks change to first (if it exists there).
    pub(crate) cwd: PathBuf,
    /// The job secret (`RINGCC_SECRET`).
    pub(crate) secret: JobSecret,
    /// CPUs ringrun may use, to share among local ranks (`--bind-to core`); empty: no
    /// binding.
    pub(crate) bind_cpus: Vec<usize>,
}

/// Where a rank runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site<'a> {
    /// On this machine, spawned directly.
    Local,
    /// Through `--rsh` on this host.
    Remote(&'a str),
}

/// Starts one rank with the given stdout and stderr. A local rank's stdin is /dev/null
/// (ringrun does not forward its input), and with `--bind-to core` it is bound to its share
/// of the CPUs as rank `machine_index` of the `machine_ranks` this machine runs; a remote
/// rank's stdin carries the job secret, then ends.
///
/// Contract: call from the supervisor's thread (see [`sys::die_with_parent`]).
///
/// # Errors
/// The spawn error (program or `--rsh` command cannot be executed).
pub(crate) fn start_rank(
    launch: &Launch,
    site: Site<'_>,
    env: &RankEnv,
    (machine_index, machine_ranks): (usize, usize),
    (stdout, stderr): (Stdio, Stdio),
) -> std::io::Result<Child> {
    let mut cmd = match site {
        Site::Local => {
            let mut cmd = Command::new(&launch.program);
            cmd.args(&launch.args);
            cmd.envs(env.vars());
            cmd.envs(launch.exports.iter().map(|(k, v)| (k, v)));
            cmd.env("RINGCC_SECRET", launch.secret.hex()).env_remove("RINGCC_SECRET_FILE");
            cmd.stdin(Stdio::null());
            sys::bind_to_cpus(&mut cmd, &super::bind::cpus_for(machine_index, machine_ranks, &launch.bind_cpus));
            cmd
        }
        Site::Remote(host) => {
            let (first, rest) = launch.rsh.split_first().ok_or_else(|| std::io::Error::other("empty --rsh"))?;
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(host).arg(remote_command_line(launch, env));
            cmd.stdin(Stdio::piped());
            cmd
        }
    };
    cmd.stdout(stdout).stderr(stderr).process_group(0);
    sys::die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // One line into an empty pipe never blocks. If the remote shell is already gone
        // the write fails, and its exit status will tell the supervisor.
        let _ = stdin.write_all(format!("{}\n", launch.secret.hex()).as_bytes());
    }
    Ok(child)
}

/// The shell command a remote rank runs: read the secret from stdin, change to ringrun's
/// working directory if it exists there, export the rank's variables, exec the program.
pub(crate) fn remote_command_line(launch: &Launch, env: &RankEnv) -> OsString {
    let mut line: Vec<u8> = b"read -r RINGCC_SECRET; export RINGCC_SECRET; unset RINGCC_SECRET_FILE; cd ".to_vec();
    line.extend(shell_quote(launch.cwd.as_os_str().as_bytes()));
    line.extend_from_slice(b" 2>/dev/null; export");
    let managed = env.vars().into_iter().map(|(k, v)| (k.to_string(), OsString::from(v)));
    for (key, value) in managed.chain(launch.exports.iter().cloned()) {
        line.push(b' ');
        line.extend_from_slice(key.as_bytes());
        line.push(b'=');
        line.extend(shell_quote(value.as_bytes()));
    }
    line.extend_from_slice(b"; exec ");
    line.extend(shell_quote(launch.program.as_os_str().as_bytes()));
    for arg in &launch.args {
        line.push(b' ');
        line.extend(shell_quote(arg.as_bytes()));
    }
    OsString::from_vec(line)
}

/// `bytes` as one POSIX shell word: single-quoted, each `'` written as `'\''`.
pub(crate) fn shell_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// Finds the program to run: a name with a slash is taken as a path (made absolute
/// against `cwd`); otherwise the first executable file of that name in `path_var`'s
/// directories, then in `self_dir` (ringrun's own directory, so `ringrun -n 4 ringbench`
/// works from `target/release`).
///
/// # Errors
/// A message saying the program was not found or is not an executable file.
pub(crate) fn resolve_program(
    name: &OsStr,
    path_var: Option<&OsStr>,
    self_dir: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, String> {
    let shown = Path::new(name).display();
    if name.is_empty() {
        return Err("empty program name".into());
    }
    if name.as_bytes().contains(&b'/') {
        let path = cwd.join(name);
        return if is_executable(&path) { Ok(path) } else { Err(format!("program {shown} is not an executable file")) };
    }
    let dirs = path_var.map(|p| std::env::split_paths(p).collect::<Vec<_>>()).unwrap_or_default();
    let found = dirs
        .iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| cwd.join(d))
        .chain(self_dir.map(Path::to_path_buf))
        .map(|d| d.join(name))
        .find(|p| is_executable(p));
    found.ok_or_else(|| format!("program {shown} not found in PATH or next to ringrun"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> RankEnv {
        RankEnv {
            rank: 2,
            world_size: 4,
            local_rank: 0,
            local_size: 2,
            coordinator: "10.0.0.1:4000".into(),
            job_id: 77,
            host: "n1".into(),
            incarnation: 0,
        }
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote(b"it's a b"), b"'it'\\''s a b'".to_vec());
        assert_eq!(shell_quote(b""), b"''".to_vec());
    }

    #[test]
    fn remote_command_line_carries_every_variable_and_execs_the_program() {
        let launch = Launch {
            program: "/opt/my prog".into(),
            args: vec!["-x".into(), "a'b".into()],
            exports: vec![("FOO".into(), "v w".into())],
            rsh: vec!["ssh".into()],
            cwd: "/work".into(),
            secret: JobSecret(vec![0xab; 32]),
            bind_cpus: vec![0, 1],
        };
        let line = remote_command_line(&launch, &env());
        let line = line.to_str().expect("utf-8");
        assert!(!line.contains("abab"), "the secret must not be in a command line");
        assert!(!format!("{launch:?}").contains("abab"), "nor in debug output");
        assert_eq!(launch.secret.hex(), "ab".repeat(32));
        assert_eq!(
            line,
            "read -r RINGCC_SECRET; export RINGCC_SECRET; unset RINGCC_SECRET_FILE; \
             cd '/work' 2>/dev/null; export RINGCC_RANK='2' RINGCC_WORLD_SIZE='4' RINGCC_LOCAL_RANK='0' \
             RINGCC_LOCAL_SIZE='2' RINGCC_COORDINATOR='10.0.0.1:4000' RINGCC_JOB_ID='77' RINGCC_HOST='n1' \
             RINGCC_INCARNATION='0' RINGCC_ORPHAN_EXIT='1' FOO='v w'; exec '/opt/my prog' '-x' 'a'\\''b'"
        );
    }

    #[test]
    fn programs_resolve_by_path_then_next_to_ringrun() {
        let cwd = std::env::current_dir().expect("cwd");
        let sh = resolve_program(OsStr::new("sh"), Some(OsStr::new("/usr/bin:/bin")), None, &cwd).expect("sh");
        assert!(sh.ends_with("sh"));
        let none = resolve_program(OsStr::new("sh"), Some(OsStr::new("/nonexistent")), None, &cwd);
        assert!(none.is_err());
        let beside = resolve_program(OsStr::new("sh"), None, Some(Path::new("/bin")), &cwd).expect("beside");
        assert_eq!(beside, Path::new("/bin/sh"));
        let rel = resolve_program(OsStr::new("./no-such-program"), None, None, &cwd);
        assert!(rel.unwrap_err().contains("not an executable"));
        let dir = resolve_program(OsStr::new("/bin"), None, None, &cwd);
        assert!(dir.is_err(), "a directory is not a program");
    }
}
