//! Rank processes of one round: spawning, their output lines, signals, and cleanup that
//! leaves no process behind (every rank also dies with SIGKILL when the driver dies).
//! All `unsafe` of ringchaos lives here.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

/// Wall-clock microseconds since the Unix epoch: the one clock the driver, its coordinator
/// and the rank processes share (all run on this machine).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A line a rank printed (`None` at the end of its stdout).
pub type Line = (usize, Option<String>);

/// What every rank of a round is started with.
pub struct Launch<'a> {
    /// This binary.
    pub program: &'a Path,
    /// Arguments after the program (the `rank` subcommand and its flags).
    pub args: Vec<String>,
    /// The coordinator's address.
    pub coordinator: String,
    /// Ranks at the start.
    pub world: usize,
    /// `RINGCC_HEARTBEAT_TIMEOUT` in seconds.
    pub heartbeat_timeout_s: f64,
    /// `RINGCC_PROGRESS_TIMEOUT` in seconds.
    pub progress_timeout_s: f64,
    /// Directory for each rank's stderr (`rank<R>.log`, appended to).
    pub log_dir: &'a Path,
    /// Round number (in each log line's header).
    pub round: usize,
}

/// The rank processes of a round. Dropping it resumes and kills every one still running
/// and reaps them all.
pub struct Ranks {
    children: Vec<Option<Child>>,
    stdins: Vec<Option<std::process::ChildStdin>>,
}

impl Ranks {
    /// Starts every rank; each stdout line goes to `lines` as `(rank, Some(line))`.
    ///
    /// # Errors
    /// Spawn and log-file errors (ranks already started are killed by the drop).
    pub fn spawn(launch: &Launch<'_>, lines: &Sender<Line>) -> io::Result<Ranks> {
        let mut ranks = Ranks { children: Vec::new(), stdins: Vec::new() };
        for rank in 0..launch.world {
            let path = launch.log_dir.join(format!("rank{rank}.log"));
            let mut log = File::options().create(true).append(true).open(&path)?;
            io::Write::write_all(&mut log, format!("--- round {} world {}\n", launch.round, launch.world).as_bytes())?;
            let mut cmd = Command::new(launch.program);
            cmd.args(&launch.args)
                .env("RINGCC_RANK", rank.to_string())
                .env("RINGCC_WORLD_SIZE", launch.world.to_string())
                .env("RINGCC_COORDINATOR", &launch.coordinator)
                .env("RINGCC_HEARTBEAT_TIMEOUT", launch.heartbeat_timeout_s.to_string())
                .env("RINGCC_PROGRESS_TIMEOUT", launch.progress_timeout_s.to_string())
                .env_remove("RINGCC_FAULT")
                .env_remove("RINGCC_SECRET")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log));
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn()?;
            let out = child.stdout.take().ok_or_else(|| io::Error::other("rank stdout not piped"))?;
            ranks.stdins.push(child.stdin.take());
            ranks.children.push(Some(child));
            let tx = lines.clone();
            std::thread::Builder::new().name(format!("chaos-rank{rank}")).spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((rank, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((rank, None));
            })?;
        }
        Ok(ranks)
    }

    /// Sends `signal` to `rank` unless it has been reaped (a zombie keeps its pid, so the
    /// signal cannot reach an unrelated process). Returns the time just before sending
    /// (the coordinator may log its reaction before `kill` returns here).
    pub fn signal(&mut self, rank: usize, signal: Signal) -> io::Result<u64> {
        let Some(Some(child)) = self.children.get_mut(rank) else {
            return Err(io::Error::other(format!("rank {rank} is not running")));
        };
        let at = now_us();
        send_signal(child.id(), signal)?;
        Ok(at)
    }

    /// Tells every rank to run no call with an index at or past `calls` (ranks that are
    /// gone are skipped).
    pub fn announce_stop(&mut self, calls: usize) {
        for stdin in self.stdins.iter_mut().flatten() {
            let _ = writeln!(stdin, "stop {calls}").and_then(|()| stdin.flush());
        }
    }

    /// Waits up to `limit` for `rank` to exit; its exit code (`None`: killed by a signal).
    /// Still running after `limit`: `Err(TimedOut)`.
    pub fn wait_exit(&mut self, rank: usize, limit: Duration) -> io::Result<Option<i32>> {
        let Some(Some(child)) = self.children.get_mut(rank) else {
            return Err(io::Error::other(format!("rank {rank} is not running")));
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Ok(None) = child.try_wait() {
                let _ = send_signal(child.id(), Signal::Cont);
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The signals the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL (`kill -9`).
    Kill,
    /// SIGSTOP (`kill -STOP`): the process freezes.
    Stop,
    /// SIGCONT: a frozen process resumes.
    Cont,
}

/// Sends `signal` to process `pid`.
///
/// Contract: `pid` is a child of this process that has not been reaped, so the id cannot
/// belong to an unrelated process.
fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if pid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let number = match signal {
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
    };
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, number) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the child of `cmd` die with SIGKILL when the spawning thread exits, so no rank
/// outlives the driver (SIGKILL also ends a stopped process). Ranks are spawned from the
/// main thread, which lives for the whole run.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid is async-signal-safe and this runs before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls prctl and getppid,
    // both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The driver died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
