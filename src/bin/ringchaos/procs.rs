//! Rank processes of one round: spawning, their output lines, signals, and cleanup that
//! leaves no process behind (every rank also dies with SIGKILL when the driver dies).
//! All `unsafe` of ringchaos lives here.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

/// Wall-clock microseconds since the Unix epoch: the one clock the driver, its coordinator
/// and the rank processes share (all run on this machine).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A line a rank printed: `(rank, incarnation, line)`, `None` at the end of its stdout.
pub type Line = (usize, u64, Option<String>);

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

/// The rank processes of a round (one per rank: its latest incarnation). Dropping it
/// resumes and kills every one still running and reaps them all.
pub struct Ranks<'a> {
    launch: Launch<'a>,
    lines: Sender<Line>,
    children: Vec<Option<Child>>,
    stdins: Vec<Option<std::process::ChildStdin>>,
    /// The last `stop K` announced (told to ranks started after it too).
    stop_at: Option<usize>,
}

impl<'a> Ranks<'a> {
    /// Starts every rank (incarnation 0); each stdout line goes to `lines`.
    ///
    /// # Errors
    /// Spawn and log-file errors (ranks already started are killed by the drop).
    pub fn spawn(launch: Launch<'a>, lines: Sender<Line>) -> io::Result<Ranks<'a>> {
        let world = launch.world;
        let mut ranks = Ranks { launch, lines, children: Vec::new(), stdins: Vec::new(), stop_at: None };
        for rank in 0..world {
            let (child, stdin) = ranks.start(rank, 0)?;
            ranks.children.push(Some(child));
            ranks.stdins.push(stdin);
        }
        Ok(ranks)
    }

    /// Replaces `rank`'s process, which must be gone or going (killed, or ended by itself),
    /// with a new one of `incarnation` (it joins the running job). Reaps the old process
    /// first (waiting at most 10 s; still running then: killed). Returns the time the new
    /// process was started.
    ///
    /// # Errors
    /// Spawn and log-file errors.
    pub fn restart(&mut self, rank: usize, incarnation: u64) -> io::Result<u64> {
        if let Some(mut old) = self.children.get_mut(rank).and_then(Option::take) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while old.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    let _ = send_signal(old.id(), Signal::Cont);
                    let _ = old.kill();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let (child, mut stdin) = self.start(rank, incarnation)?;
        let at = now_us();
        if let (Some(k), Some(s)) = (self.stop_at, stdin.as_mut()) {
            let _ = writeln!(s, "stop {k}").and_then(|()| s.flush());
        }
        if let (Some(c), Some(s)) = (self.children.get_mut(rank), self.stdins.get_mut(rank)) {
            *c = Some(child);
            *s = stdin;
        }
        Ok(at)
    }

    /// Starts one process of `rank` and the thread that forwards its stdout lines.
    fn start(&self, rank: usize, incarnation: u64) -> io::Result<(Child, Option<std::process::ChildStdin>)> {
        let launch = &self.launch;
        let path = launch.log_dir.join(format!("rank{rank}.log"));
        let mut log = File::options().create(true).append(true).open(&path)?;
        let header = format!("--- round {} world {} incarnation {incarnation}\n", launch.round, launch.world);
        io::Write::write_all(&mut log, header.as_bytes())?;
        let mut cmd = Command::new(launch.program);
        cmd.args(&launch.args)
            .env("RINGCC_RANK", rank.to_string())
            .env("RINGCC_WORLD_SIZE", launch.world.to_string())
            .env("RINGCC_COORDINATOR", &launch.coordinator)
            .env("RINGCC_HEARTBEAT_TIMEOUT", launch.heartbeat_timeout_s.to_string())
            .env("RINGCC_PROGRESS_TIMEOUT", launch.progress_timeout_s.to_string())
            .env("RINGCC_INCARNATION", incarnation.to_string())
            .env_remove("RINGCC_FAULT")
            .env_remove("RINGCC_SECRET")
            .env_remove("RINGCC_JOIN_POINTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        ringcc::launch::sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("rank stdout not piped"));
        };
        let tx = self.lines.clone();
        let forward = move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((rank, incarnation, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((rank, incarnation, None));
        };
        if let Err(e) = std::thread::Builder::new().name(format!("chaos-rank{rank}.{incarnation}")).spawn(forward) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok((child, stdin))
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
        self.stop_at = Some(self.stop_at.map_or(calls, |k| k.min(calls)));
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

impl Drop for Ranks<'_> {
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
