//! `ringrun status` and SIGUSR1 on a job that hangs: one rank's event loop freezes in the
//! reduce-scatter of call 3 (`RINGCC_FAULT=...action=stall`), and the status must name it,
//! and the ranks waiting for it with their phase. The heartbeat timeout is long, so the
//! frozen rank is not evicted while the test looks. Every run is bounded in time and
//! checks that no process of its job is left (a unique marker in the ranks' environment).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a ringrun of these tests may run.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn marker(test: &str) -> String {
    format!("rrstatus-{}-{test}", std::process::id())
}

/// A fresh scratch directory; `run` inside it is left for ringrun to create.
fn scratch(mark: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(mark);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Pids of processes whose environment or command line contains `mark`.
fn processes_with(mark: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok().filter(|p| *p != me)?;
            let has = |f: &str| {
                std::fs::read(e.path().join(f)).is_ok_and(|b| b.windows(mark.len()).any(|w| w == mark.as_bytes()))
            };
            (has("environ") || has("cmdline")).then_some(pid)
        })
        .collect()
}

fn assert_no_leftovers(mark: &str) {
    let end = Instant::now() + Duration::from_secs(3);
    while !processes_with(mark).is_empty() {
        if Instant::now() > end {
            let left = processes_with(mark);
            for pid in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("processes of job {mark} left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Running {
    child: Child,
    err: JoinHandle<String>,
    started: Instant,
}

fn start(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringrun");
    let mut stderr = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Running { child, err, started: Instant::now() }
}

impl Running {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, name: &str) {
        assert!(Command::new("kill").args([name, &self.pid()]).status().expect("kill").success());
    }

    /// Waits for ringrun to exit (killing it past RUN_LIMIT) and returns its status and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code(), self.err.join().expect("stderr thread"));
            }
            if self.started.elapsed() > RUN_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ringrun did not finish within {RUN_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `ringrun status ARGS` with the job's runtime directory.
fn status(runtime: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringrun"))
        .arg("status")
        .args(args)
        .env("RINGRUN_RUNTIME_DIR", runtime)
        .stdin(Stdio::null())
        .output()
        .expect("run ringrun status")
}

/// The table row of `rank`.
fn row(text: &str, rank: usize) -> &str {
    let prefix = format!("{rank} ");
    text.lines().find(|l| l.trim_start().starts_with(&prefix)).unwrap_or_else(|| panic!("no row for {rank}: {text}"))
}

fn diagnosis(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("diagnosis: ")).collect()
}

#[test]
fn status_names_the_frozen_rank_and_the_ranks_waiting_for_it_in_their_phase() {
    let mark = marker("frozen");
    let dir = scratch(&mark);
    let runtime = dir.join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(["-n", "3", "-x", &format!("RR_MARK={mark}")])
        .args(["-x", "RINGCC_FAULT=rank=1,seq=3,phase=rs,action=stall"])
        .args(["-x", "RINGCC_HEARTBEAT_TIMEOUT=60", "-x", "RINGCC_ALGO=ring", "-x", "RINGCC_SEGMENT_BYTES=4096"])
        .args(["--", env!("CARGO_BIN_EXE_ringcheck"), "--survive", "50", "--survive-len", "65536"])
        .env("RINGRUN_RUNTIME_DIR", &runtime);
    let job = start(cmd);
    let socket = runtime.join(format!("{}.sock", job.pid()));

    // Ask until rank 1 has been silent, and the others stuck, long enough (a few heartbeats).
    let end = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let out = status(&runtime, &[&job.pid()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if diagnosis(&text).iter().any(|d| d.starts_with("rank 1 has sent nothing") && d.contains("0 (through 2)")) {
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            break text;
        }
        assert!(Instant::now() < end, "the status never named rank 1:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.starts_with(&format!("ringrun status: pid {}, ringcheck, up ", job.pid())), "{text}");
    assert!(text.contains("epoch 1, 3 of 3 ranks in the view, heartbeat timeout 60.0s"), "{text}");
    // Rank 2 reads from rank 1, which froze after its first frame of call 3, so it waits
    // for rank 1 in the reduce-scatter; rank 0 reads from rank 2 and waits behind it (in
    // the reduce-scatter, or in the all-gather if rank 2's share of it got through).
    let two: Vec<&str> = row(&text, 2).split_whitespace().collect();
    assert_eq!(&two[..7], ["2", "running", "1", "3", "3", "all_reduce", "reduce-scatter"], "{text}");
    assert_eq!(&two[8..10], ["rank", "1"], "{text}");
    let zero: Vec<&str> = row(&text, 0).split_whitespace().collect();
    assert_eq!(&zero[..6], ["0", "running", "1", "3", "3", "all_reduce"], "{text}");
    assert!(["reduce-scatter", "all-gather"].contains(&zero[6]), "{text}");
    assert_eq!(&zero[8..10], ["rank", "2"], "{text}");
    assert_eq!(row(&text, 1).split_whitespace().nth(1), Some("silent"), "{text}");
    let d = diagnosis(&text);
    assert_eq!(d.len(), 1, "{text}");
    assert!(
        d[0].ends_with("(stopped, frozen, or its event loop is blocked); waiting for it: 2, 0 (through 2)"),
        "{text}"
    );

    // Without a pid: every job of this user in that directory (only this one).
    let all = status(&runtime, &[]);
    let all_text = String::from_utf8_lossy(&all.stdout);
    assert_eq!(all.status.code(), Some(0));
    assert_eq!(all_text.matches("ringrun status: pid").count(), 1, "{all_text}");
    assert!(all_text.contains("waiting for it: 2, 0 (through 2)"), "{all_text}");
    let mode = std::fs::metadata(&runtime).expect("runtime dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777, 0o600);

    // SIGUSR1 prints the same on ringrun's stderr and does not stop the job.
    job.signal("-USR1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(status(&runtime, &[&job.pid()]).status.success(), "ringrun stopped after SIGUSR1");
    job.signal("-TERM");
    let (code, stderr) = job.finish();
    assert_eq!(code, Some(143), "{stderr}");
    let printed =
        stderr.split("ringrun status: pid").nth(1).unwrap_or_else(|| panic!("SIGUSR1 printed nothing: {stderr}"));
    assert!(printed.contains("diagnosis: rank 1 has sent nothing"), "{stderr}");
    assert!(!socket.exists(), "the status socket outlived ringrun");
    assert_no_leftovers(&mark);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_refuses_a_shared_directory_and_says_when_no_job_runs() {
    let mark = marker("nojob");
    let dir = scratch(&mark);
    let runtime = dir.join("run");
    let out = status(&runtime, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running ringrun job of this user"), "{out:?}");

    // A directory others can enter: ringrun serves only SIGUSR1, and the client refuses it.
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(["-n", "1", "-x", &format!("RR_MARK={mark}"), "--", "sh", "-c", "exit 0", &mark])
        .env("RINGRUN_RUNTIME_DIR", &runtime);
    let (code, stderr) = start(cmd).finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("`ringrun status` disabled for this job") && stderr.contains("must be 0700"), "{stderr}");
    assert_eq!(std::fs::read_dir(&runtime).expect("list").count(), 0, "a socket was made in a shared directory");
    let out = status(&runtime, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to use"), "{out:?}");
    assert_no_leftovers(&mark);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_job_stopped_by_timeout_prints_where_it_hung_first() {
    let mark = marker("timeout");
    let dir = scratch(&mark);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(["-n", "3", "--timeout", "4", "-x", &format!("RR_MARK={mark}")])
        .args(["-x", "RINGCC_FAULT=rank=1,seq=3,phase=rs,action=stall"])
        .args(["-x", "RINGCC_HEARTBEAT_TIMEOUT=60", "-x", "RINGCC_ALGO=ring", "-x", "RINGCC_SEGMENT_BYTES=4096"])
        .args(["--", env!("CARGO_BIN_EXE_ringcheck"), "--survive", "50", "--survive-len", "65536"])
        .env("RINGRUN_RUNTIME_DIR", dir.join("run"));
    let (code, stderr) = start(cmd).finish();
    assert_eq!(code, Some(124), "{stderr}");
    let table = stderr.find("ringrun status: pid").unwrap_or_else(|| panic!("no status printed: {stderr}"));
    let stop = stderr.find("--timeout of 4s expired").unwrap_or_else(|| panic!("no timeout line: {stderr}"));
    assert!(table < stop, "the status must come before the ranks are stopped: {stderr}");
    assert!(stderr[table..stop].contains("diagnosis: rank 1 has sent nothing"), "{stderr}");
    assert_no_leftovers(&mark);
    let _ = std::fs::remove_dir_all(&dir);
}
