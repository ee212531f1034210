//! `ringrun` as a user runs it: environment, placement, output, failure policy, signals,
//! timeouts and usage errors. Ranks are `sh -c` scripts on this machine. Every test is
//! bounded in time and checks afterwards that no process of its job is left: each job
//! carries a unique marker in its ranks' environment (`-x RR_MARK=...`) and arguments,
//! searched for in /proc.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any single ringrun run in these tests may take.
const RUN_LIMIT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique marker for one job.
fn marker(test: &str) -> String {
    format!("rrmark-{}-{test}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A fresh empty directory for one test.
fn scratch(mark: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(mark);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `ringrun ARGS... -x RR_MARK=mark -- sh -c SCRIPT mark`: the marker is in every rank's
/// environment and command line.
fn ringrun_sh(mark: &str, args: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(args).arg("-x").arg(format!("RR_MARK={mark}")).args(["--", "sh", "-c", script, mark]);
    cmd
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

struct Running {
    child: Child,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
    started: Instant,
}

fn start(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringrun");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Running { child, out, err, started: Instant::now() }
}

impl Running {
    /// Waits for ringrun to exit within RUN_LIMIT; kills it and fails the test otherwise.
    fn finish(mut self) -> Run {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let took = self.started.elapsed();
                // Anything still holding ringrun's output pipes is a process left behind.
                let end = Instant::now() + Duration::from_secs(5);
                while !(self.out.is_finished() && self.err.is_finished()) {
                    assert!(Instant::now() < end, "ringrun exited but its output pipes are still held open");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let stdout = self.out.join().expect("stdout thread");
                let stderr = self.err.join().expect("stderr thread");
                return Run { code: status.code(), stdout, stderr, took };
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

fn run(cmd: Command) -> Run {
    start(cmd).finish()
}

/// Pids of processes whose command line or environment contains `mark`.
fn processes_with(mark: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let has = |f: &str| {
            std::fs::read(entry.path().join(f))
                .map(|b| b.windows(mark.len()).any(|w| w == mark.as_bytes()))
                .unwrap_or(false)
        };
        if has("cmdline") || has("environ") {
            found.push(pid);
        }
    }
    found
}

/// Fails unless every process of the job marked `mark` is gone (allowing 3 s to exit).
fn assert_no_leftovers(mark: &str) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_with(mark);
        if left.is_empty() {
            return;
        }
        if Instant::now() > end {
            for pid in &left {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                eprintln!("left behind: {pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " "));
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("processes of job {mark} left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `path` exists with content, and returns it.
fn wait_for_file(path: &Path) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(Instant::now() < end, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines `[rank N] rest` grouped by N, in order.
fn by_rank(text: &str) -> BTreeMap<usize, Vec<String>> {
    let mut map: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let rest = line.strip_prefix("[rank ").unwrap_or_else(|| panic!("untagged line {line:?}"));
        let (n, body) = rest.split_once("] ").unwrap_or_else(|| panic!("malformed tag in {line:?}"));
        map.entry(n.parse().expect("rank number")).or_default().push(body.to_string());
    }
    map
}

#[test]
fn library_ranks_meet_at_the_hosted_coordinator_and_reduce_exactly() {
    let mark = marker("ringcheck");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(["-n", "3", "--tag-output", "-x", &format!("RR_MARK={mark}"), "--", env!("CARGO_BIN_EXE_ringcheck")])
        .args(["--lengths", "1,7,4099", "--big-mib", "0", "--in-flight", "1"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    for (rank, lines) in by_rank(&r.stdout) {
        let summary = format!("ringcheck: rank {rank} of 3:");
        assert!(lines.iter().any(|l| l.starts_with(&summary) && l.ends_with("all exact")), "{lines:?}");
    }
    assert_no_leftovers(&mark);
}

#[test]
fn every_rank_gets_its_placement_coordinator_job_and_exports() {
    let mark = marker("env");
    let script = r#"echo "$RINGCC_RANK $RINGCC_WORLD_SIZE $RINGCC_LOCAL_RANK $RINGCC_LOCAL_SIZE $RINGCC_COORDINATOR $RINGCC_JOB_ID $RINGCC_HOST $RINGCC_INCARNATION|$FOO|$COPIED""#;
    let mut cmd = ringrun_sh(
        &mark,
        &["-n", "4", "-H", "localhost:2,127.0.0.1:2", "--tag-output", "-x", "FOO=bar 'baz'", "-x", "COPIED"],
        script,
    );
    cmd.env("COPIED", "from ringrun");
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let lines = by_rank(&r.stdout);
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    let mut coordinators = Vec::new();
    let mut jobs = Vec::new();
    for (rank, body) in &lines {
        let (vars, exports) = body[0].split_once('|').expect("separator");
        assert_eq!(exports, "bar 'baz'|from ringrun");
        let f: Vec<&str> = vars.split(' ').collect();
        let host = if *rank < 2 { "localhost" } else { "127.0.0.1" };
        let expect = [rank.to_string(), "4".into(), (rank % 2).to_string(), "2".into()];
        assert_eq!(&f[..4], &expect.iter().map(String::as_str).collect::<Vec<_>>()[..]);
        assert_eq!((f[6], f[7]), (host, "0"));
        assert!(f[4].starts_with("127.0.0.1:") && f[4]["127.0.0.1:".len()..].parse::<u16>().is_ok(), "{}", f[4]);
        assert!(f[5].parse::<u64>().is_ok_and(|j| j != 0), "job id {}", f[5]);
        coordinators.push(f[4].to_string());
        jobs.push(f[5].to_string());
    }
    coordinators.dedup();
    jobs.dedup();
    assert_eq!((coordinators.len(), jobs.len()), (1, 1), "one coordinator and one job id per job");
    assert_no_leftovers(&mark);
}

#[test]
fn hostfile_fills_hosts_in_order_and_np_defaults_to_its_slots() {
    let mark = marker("hostfile");
    let dir = scratch(&mark);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let hostname = hostname.trim();
    let file = dir.join("hosts");
    let text = format!("# test hosts\nlocalhost slots=1\n\n127.0.0.1 slots=2   # two\n{hostname} slots=1\n");
    std::fs::write(&file, text).expect("hostfile");
    let script = r#"echo "$RINGCC_HOST $RINGCC_LOCAL_RANK $RINGCC_LOCAL_SIZE $RINGCC_WORLD_SIZE""#;
    let r = run(ringrun_sh(&mark, &["--hostfile", file.to_str().expect("utf-8"), "--tag-output"], script));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let got: Vec<String> = by_rank(&r.stdout).into_values().map(|v| v.join("")).collect();
    let want = [
        "localhost 0 1 4".to_string(),
        "127.0.0.1 0 2 4".into(),
        "127.0.0.1 1 2 4".into(),
        format!("{hostname} 0 1 4"),
    ];
    assert_eq!(got, want);
    assert_no_leftovers(&mark);
}

#[test]
fn more_ranks_than_slots_is_an_error_unless_oversubscribed() {
    let mark = marker("oversub");
    let dir = scratch(&mark);
    let started = dir.join("started");
    let script = format!("echo \"$RINGCC_HOST $RINGCC_LOCAL_SIZE\"; touch {}", started.display());
    let r = run(ringrun_sh(&mark, &["-n", "5", "-H", "localhost:2,127.0.0.1:2"], &script));
    assert_eq!(r.code, Some(2));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("--oversubscribe"), "{}", r.stderr);
    assert!(!started.exists(), "a rank started despite the error");

    let args = ["-n", "5", "-H", "localhost:2,127.0.0.1:2", "--oversubscribe", "--tag-output"];
    let r = run(ringrun_sh(&mark, &args, &script));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let got: Vec<String> = by_rank(&r.stdout).into_values().map(|v| v.join("")).collect();
    assert_eq!(got, ["localhost 3", "localhost 3", "localhost 3", "127.0.0.1 2", "127.0.0.1 2"]);
    assert_no_leftovers(&mark);
}

#[test]
fn np_is_one_flag_as_in_mpirun_and_the_program_keeps_its_own_flags() {
    let mark = marker("np");
    let r = run(ringrun_sh(&mark, &["-np", "3", "--tag-output"], "echo \"$RINGCC_WORLD_SIZE $1\""));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(by_rank(&r.stdout).len(), 3);
    // ringrun's own flags after the program belong to the program.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.args(["-n", "1", "-x", &format!("RR_MARK={mark}"), "sh", "-c", "echo \"$@\"", "sh", "-np", "7", "-n", "2"]);
    let r = run(cmd);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "-np 7 -n 2\n"), "stderr: {}", r.stderr);
    assert_no_leftovers(&mark);
}

#[test]
fn tagged_output_keeps_every_line_whole_while_ranks_print_concurrently() {
    let mark = marker("tag");
    // Each rank prints 1500 short lines and 20 lines of 10 000 bytes to stdout (larger than
    // a pipe's atomic write), and 300 lines to stderr, all at once.
    let script = r#"
        pad=$(printf '%0150d' 0); big=$(printf '%010000d' 0); i=0
        while [ $i -lt 1500 ]; do
            echo "out $RINGCC_RANK $i $pad"
            if [ $((i % 75)) -eq 0 ]; then echo "big $RINGCC_RANK $i $big"; fi
            if [ $((i % 5)) -eq 0 ]; then echo "err $RINGCC_RANK $i" >&2; fi
            i=$((i + 1))
        done
        printf 'no newline at the end'"#;
    let r = run(ringrun_sh(&mark, &["-n", "4", "--tag-output"], script));
    assert_eq!(r.code, Some(0), "stderr: {}", &r.stderr[..r.stderr.len().min(2000)]);
    let pad = "0".repeat(150);
    let big = "0".repeat(10_000);
    let out = by_rank(&r.stdout);
    assert_eq!(out.len(), 4);
    for (rank, lines) in &out {
        let mut want = Vec::new();
        for i in 0..1500 {
            want.push(format!("out {rank} {i} {pad}"));
            if i % 75 == 0 {
                want.push(format!("big {rank} {i} {big}"));
            }
        }
        want.push("no newline at the end".into());
        assert!(lines == &want, "rank {rank}: stdout lines differ from what it printed");
    }
    let err = by_rank(&r.stderr);
    for rank in 0..4 {
        let want: Vec<String> = (0..1500).step_by(5).map(|i| format!("err {rank} {i}")).collect();
        assert_eq!(err.get(&rank), Some(&want), "rank {rank} stderr");
    }
    assert_no_leftovers(&mark);
}

#[test]
fn output_filename_writes_one_pair_of_files_per_rank() {
    let mark = marker("files");
    let dir = scratch(&mark).join("out");
    let dir_arg = dir.to_str().expect("utf-8");
    let r = run(ringrun_sh(
        &mark,
        &["-n", "3", "--output-filename", dir_arg],
        "echo out $RINGCC_RANK; echo err $RINGCC_RANK >&2",
    ));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    for rank in 0..3 {
        let out = std::fs::read_to_string(dir.join(format!("rank.{rank}.out"))).expect("out file");
        let err = std::fs::read_to_string(dir.join(format!("rank.{rank}.err"))).expect("err file");
        assert_eq!((out, err), (format!("out {rank}\n"), format!("err {rank}\n")));
    }
    assert_no_leftovers(&mark);
}

#[test]
fn a_rank_exiting_3_makes_ringrun_exit_3_and_name_it() {
    let mark = marker("exit3");
    let script = r#"if [ "$RINGCC_RANK" = 2 ]; then sleep 0.2; exit 3; fi; sleep 30"#;
    let r = run(ringrun_sh(&mark, &["-n", "4"], script));
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    let line = r.stderr.lines().find(|l| l.contains("rank 2")).unwrap_or_else(|| panic!("no report: {}", r.stderr));
    assert!(line.contains("exited with code 3") && line.contains("host localhost"), "{line}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_no_leftovers(&mark);
}

#[test]
fn a_rank_killed_by_sigkill_stops_the_job_with_status_137() {
    let mark = marker("kill9");
    let dir = scratch(&mark);
    // `sleep` is a child of the shell, so the killed rank leaves it behind in its group.
    let script = format!("echo $$ > {}/pid.$RINGCC_RANK; sleep 30", dir.display());
    let running = start(ringrun_sh(&mark, &["-n", "4"], &script));
    let pid = wait_for_file(&dir.join("pid.1"));
    let status = Command::new("kill").args(["-9", pid.trim()]).status().expect("kill");
    assert!(status.success());
    let r = running.finish();
    assert_eq!(r.code, Some(137), "stderr: {}", r.stderr);
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    assert!(
        r.stderr.contains(&format!("rank 1 (pid {}) on host localhost killed by signal SIGKILL", pid.trim())),
        "{}",
        r.stderr
    );
    assert_no_leftovers(&mark);
}

#[test]
fn processes_a_successful_rank_left_behind_are_killed_at_the_end() {
    let mark = marker("leftover");
    // The background sleep keeps the rank's output pipe open after the rank exits 0.
    let r = run(ringrun_sh(&mark, &["-n", "2", "--tag-output"], "sleep 30 & echo started $!"));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(by_rank(&r.stdout).len(), 2, "{}", r.stdout);
    assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
    assert_no_leftovers(&mark);
}

#[test]
fn sigterm_to_ringrun_is_forwarded_to_every_rank() {
    let mark = marker("term");
    let dir = scratch(&mark);
    let d = dir.display();
    let script = format!(
        "trap 'echo term > {d}/got.$RINGCC_RANK; exit 0' TERM; echo ready > {d}/ready.$RINGCC_RANK; \
         while :; do sleep 0.05; done"
    );
    let running = start(ringrun_sh(&mark, &["-n", "3"], &script));
    for rank in 0..3 {
        wait_for_file(&dir.join(format!("ready.{rank}")));
    }
    let pid = running.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let r = running.finish();
    assert_eq!(r.code, Some(143), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("received SIGTERM; forwarding it to 3 rank(s)"), "{}", r.stderr);
    for rank in 0..3 {
        assert!(dir.join(format!("got.{rank}")).exists(), "rank {rank} never saw SIGTERM");
    }
    assert!(r.took < Duration::from_secs(3), "ranks that obey SIGTERM need no grace period: {:?}", r.took);
    assert_no_leftovers(&mark);
}

#[test]
fn local_ranks_die_when_ringrun_is_killed_with_sigkill() {
    let mark = marker("orphan");
    let dir = scratch(&mark);
    let script = format!("echo $$ > {}/pid.$RINGCC_RANK; exec sleep 30", dir.display());
    // Output to files, so that surviving ranks could not hold this test's pipes open.
    let out = dir.join("out");
    let running = start(ringrun_sh(&mark, &["-n", "3", "--output-filename", out.to_str().expect("utf-8")], &script));
    for rank in 0..3 {
        wait_for_file(&dir.join(format!("pid.{rank}")));
    }
    let pid = running.child.id().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
    let r = running.finish();
    assert_eq!(r.code, None, "ringrun was killed by a signal");
    assert_no_leftovers(&mark);
}

#[test]
fn timeout_stops_the_job_and_sigkills_ranks_that_ignore_sigterm() {
    let mark = marker("timeout");
    let r = run(ringrun_sh(&mark, &["-n", "2", "--timeout", "0.5"], "trap '' TERM; sleep 30"));
    assert_eq!(r.code, Some(124), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--timeout of 500ms expired"), "{}", r.stderr);
    assert!(r.stderr.contains("sending SIGKILL"), "{}", r.stderr);
    assert!(r.took >= Duration::from_millis(3400) && r.took < Duration::from_secs(8), "took {:?}", r.took);
    assert_no_leftovers(&mark);
}

#[test]
fn wrong_usage_is_one_line_exit_2_and_starts_nothing() {
    let mark = marker("usage");
    let dir = scratch(&mark);
    let started = dir.join("started");
    let hostfile = dir.join("missing-hostfile");
    let touch = format!("touch {}", started.display());
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec!["-n".into(), "0".into()],
        vec!["-n".into(), "x".into()],
        vec!["-H".into(), "localhost:0".into()],
        vec!["-H".into(), "localhost:x".into()],
        vec!["-H".into(), ":2".into()],
        vec!["-H".into(), "localhost,,".into()],
        vec!["--hostfile".into(), hostfile.display().to_string()],
        vec!["-n".into(), "3".into(), "-H".into(), "localhost:2".into()],
        vec!["-n".into(), "1".into(), "-x".into(), "1BAD=2".into()],
        vec!["-n".into(), "1".into(), "-x".into(), "RR_SURELY_UNSET_VARIABLE".into()],
        vec!["-n".into(), "1".into(), "-x".into(), "RINGCC_RANK=5".into()],
        vec!["-n".into(), "1".into(), "--timeout".into(), "0".into()],
        // A remote host must never be told a loopback coordinator address.
        vec!["-H".into(), "node7:1".into(), "--bind".into(), "127.0.0.1".into()],
        vec!["-H".into(), "127.0.0.2:1".into()],
        vec![
            "-H".into(),
            "node7:1".into(),
            "--bind".into(),
            "10.255.0.1".into(),
            "--rsh".into(),
            "/no/such/rsh".into(),
        ],
    ];
    for args in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
        cmd.args(&args).args(["-x", &format!("RR_MARK={mark}"), "--", "sh", "-c", &touch, &mark]);
        let r = run(cmd);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("ringrun: "), "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{args:?}");
        assert!(!started.exists(), "{args:?} started a rank");
    }
    for (args, says) in
        [(&["-n", "2", "--", "surely-not-a-program-anywhere"][..], "not found"), (&["-n", "2"], "PROGRAM")]
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
        cmd.args(args);
        let r = run(cmd);
        assert_eq!((r.code, r.stderr.lines().count()), (Some(2), 1), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert_no_leftovers(&mark);
}

#[test]
fn programs_are_found_next_to_ringrun_when_not_in_path() {
    let mark = marker("beside");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.env("PATH", "/usr/bin:/bin").args(["-n", "2", "-x", &format!("RR_MARK={mark}"), "ringrun", "--version"]);
    let r = run(cmd);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, format!("ringrun {v}\nringrun {v}\n", v = env!("CARGO_PKG_VERSION")));
    assert_no_leftovers(&mark);
}

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.arg("--help");
    let r = run(cmd);
    assert_eq!(r.code, Some(0));
    for flag in ["-n", "--hostfile", "-x", "--tag-output", "--rsh", "--bind", "--timeout", "--output-filename"] {
        assert!(r.stdout.contains(flag), "--help does not mention {flag}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrun"));
    cmd.arg("--version");
    let r = run(cmd);
    assert_eq!((r.code, r.stdout.trim()), (Some(0), format!("ringrun {}", env!("CARGO_PKG_VERSION")).as_str()));
}

/// CPU list from a `Cpus_allowed_list:` line of /proc/PID/status ("0-3,6").
fn cpu_list(line: &str) -> Vec<usize> {
    let list = line.split(':').nth(1).expect("list").trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu"));
    }
    cpus
}

#[test]
fn local_ranks_are_bound_to_their_share_of_the_cpus_unless_told_not_to() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let allowed = cpu_list(status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).expect("line"));
    let script = "grep Cpus_allowed_list: /proc/self/status";
    let ranks = 2 * allowed.len();
    let bound = |args: &[&str]| {
        let mark = marker("bind");
        let r = run(ringrun_sh(&mark, args, script));
        assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
        by_rank(&r.stdout).into_iter().map(|(rank, lines)| (rank, cpu_list(&lines[0]))).collect::<Vec<_>>()
    };
    // More ranks than CPUs: one CPU each, neighbours on different CPUs.
    let got = bound(&["-n", &ranks.to_string(), "--tag-output"]);
    assert_eq!(got.len(), ranks);
    for (rank, cpus) in &got {
        assert_eq!(cpus, &vec![allowed[rank % allowed.len()]], "rank {rank}");
    }
    // Two names of this machine are one machine: its ranks share the CPUs as one set.
    let hosts = format!("localhost:1,127.0.0.1:{}", ranks - 1);
    for (rank, cpus) in bound(&["-H", &hosts, "--tag-output"]) {
        assert_eq!(cpus, vec![allowed[rank % allowed.len()]], "rank {rank} of {hosts}");
    }
    // One rank: every CPU; told not to bind: every CPU for every rank.
    assert_eq!(bound(&["-n", "1", "--tag-output"]), vec![(0, allowed.clone())]);
    for (rank, cpus) in bound(&["-n", &ranks.to_string(), "--tag-output", "--bind-to", "none"]) {
        assert_eq!(cpus, allowed, "rank {rank}");
    }
}
