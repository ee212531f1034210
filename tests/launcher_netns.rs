//! `ringrun` with ranks on three "hosts": network namespaces this test creates, joined by
//! a bridge in a fourth namespace, with addresses in 10.77.0.0/24 that exist only inside
//! them. ringrun runs inside the first namespace (so the coordinator is reachable from
//! all three) and reaches each host through a `--rsh` wrapper doing `ip netns exec HOST`
//! with an emptied environment, so everything a rank gets must travel in the command line
//! (and its stdin, for the secret). Nothing here connects from the root namespace to a
//! namespace address.
//!
//! Skips loudly when namespaces cannot be created (no `ip`, no privilege).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RUN_LIMIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Three host namespaces and a bridge namespace, deleted on drop.
struct Hosts {
    names: Vec<String>,
    bridge: String,
    dir: PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Hosts {
    /// Creates the namespaces, or returns why it cannot (the caller skips).
    fn create(test: &str) -> Result<Hosts, String> {
        let id = format!("rr{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(format!("{id}-{test}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let bridge = format!("{id}br");
        ip(&["netns", "add", &bridge])?;
        let mut hosts = Hosts { names: Vec::new(), bridge, dir };
        ip(&["-n", &hosts.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hosts.bridge, "link", "set", "br0", "up"])?;
        for i in 0..3 {
            let ns = format!("{id}n{i}");
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            let port = format!("v{i}");
            ip(&["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &hosts.bridge])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{}/24", i + 1), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &hosts.bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &hosts.bridge, "link", "set", &port, "up"])?;
        }
        Ok(hosts)
    }

    /// Writes the `--rsh` wrapper: `wrapper HOST COMMAND` runs COMMAND with `sh` in the
    /// namespace HOST (a namespace name, or one of the addresses 10.77.0.1-3), with an
    /// empty environment.
    fn wrapper(&self) -> PathBuf {
        let path = self.dir.join("netns-rsh");
        let n = &self.names;
        let script = format!(
            "#!/bin/sh\n# --rsh for ringrun: run \"$2\" in the network namespace of host \"$1\".\n\
             case \"$1\" in 10.77.0.1) ns={};; 10.77.0.2) ns={};; 10.77.0.3) ns={};; *) ns=\"$1\";; esac\n\
             shift\nexec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ip netns exec \"$ns\" sh -c \"$*\"\n",
            n[0], n[1], n[2]
        );
        std::fs::write(&path, script).expect("write wrapper");
        let status = Command::new("chmod").arg("755").arg(&path).status().expect("chmod");
        assert!(status.success());
        path
    }

    /// `ip netns exec <first namespace> ringrun ARGS...`.
    fn ringrun(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[0], env!("CARGO_BIN_EXE_ringrun")]).args(args);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in self.names.iter().chain(std::iter::once(&self.bridge)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The namespaces, or None after saying loudly why the test is skipped.
fn hosts_or_skip(test: &str) -> Option<Hosts> {
    match Hosts::create(test) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot create network namespaces ({e})");
            None
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct Running {
    child: Child,
    out: JoinHandle<String>,
    err: JoinHandle<String>,
    started: Instant,
}

fn start(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
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
    fn finish(mut self) -> Run {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Anything still holding ringrun's output pipes is a process left behind.
                let end = Instant::now() + Duration::from_secs(5);
                while !(self.out.is_finished() && self.err.is_finished()) {
                    assert!(Instant::now() < end, "ringrun exited but its output pipes are still held open");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let stdout = self.out.join().expect("stdout thread");
                let stderr = self.err.join().expect("stderr thread");
                return Run { code: status.code(), stdout, stderr };
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

/// Fails unless no process has `mark` in its command line or environment (3 s to exit).
fn assert_no_leftovers(mark: &str) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let has = |f: &str| {
                std::fs::read(entry.path().join(f)).is_ok_and(|b| b.windows(mark.len()).any(|w| w == mark.as_bytes()))
            };
            if pid != std::process::id() && (has("cmdline") || has("environ")) {
                left.push(pid);
            }
        }
        if left.is_empty() {
            return;
        }
        if Instant::now() > end {
            for pid in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("processes of job {mark} left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_file(path: &Path) -> String {
    let end = Instant::now() + Duration::from_secs(15);
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

#[test]
fn three_namespaces_run_an_exact_all_reduce_through_the_hosted_coordinator() {
    let Some(hosts) = hosts_or_skip("allreduce") else { return };
    let wrapper = hosts.wrapper();
    let mark = format!("rrmark-netns-{}", std::process::id());
    let host_list = format!("{}:1,{}:1,{}:1", hosts.names[0], hosts.names[1], hosts.names[2]);
    let cmd = hosts.ringrun(&[
        "-n",
        "3",
        "-H",
        &host_list,
        "--bind",
        "10.77.0.1",
        "--rsh",
        wrapper.to_str().expect("utf-8"),
        "--tag-output",
        "-x",
        &format!("RR_MARK={mark}"),
        "--",
        "ringcheck",
        "--lengths",
        "1,7,100003",
        "--big-mib",
        "1",
        "--in-flight",
        "2",
    ]);
    let r = start(cmd).finish();
    assert_eq!(r.code, Some(0), "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    for rank in 0..3 {
        let want = format!("[rank {rank}] ringcheck: rank {rank} of 3:");
        let line = r.stdout.lines().find(|l| l.starts_with(&want)).unwrap_or_else(|| panic!("{}", r.stdout));
        assert!(line.ends_with("all exact"), "{line}");
    }
    assert_no_leftovers(&mark);
}

#[test]
fn remote_ranks_get_their_environment_through_the_command_line_only() {
    let Some(hosts) = hosts_or_skip("env") else { return };
    let wrapper = hosts.wrapper();
    let mark = format!("rrmark-netns-env-{}", std::process::id());
    // Hosts given as addresses: no --bind, so ringrun finds its own address toward the
    // first remote host from the routing table (10.77.0.1, inside the first namespace).
    let script = r#"echo "$(ip netns identify $$) $RINGCC_HOST $RINGCC_RANK $RINGCC_LOCAL_RANK $RINGCC_LOCAL_SIZE $RINGCC_COORDINATOR ${#RINGCC_SECRET} $FOO $HOME""#;
    let cmd = hosts.ringrun(&[
        "-H",
        "10.77.0.1:1,10.77.0.2:2,10.77.0.3:1",
        "--rsh",
        wrapper.to_str().expect("utf-8"),
        "--tag-output",
        "-x",
        "FOO=a b",
        "-x",
        "HOME",
        "-x",
        &format!("RR_MARK={mark}"),
        "--",
        "sh",
        "-c",
        script,
    ]);
    let r = start(cmd).finish();
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let home = std::env::var("HOME").unwrap_or_default();
    let n = &hosts.names;
    let placed = [(0, &n[0], "10.77.0.1", 0, 1), (1, &n[1], "10.77.0.2", 0, 2), (2, &n[1], "10.77.0.2", 1, 2)];
    for (rank, ns, host, local_rank, local_size) in placed.into_iter().chain([(3, &n[2], "10.77.0.3", 0, 1)]) {
        let prefix = format!("[rank {rank}] {ns} {host} {rank} {local_rank} {local_size} 10.77.0.1:");
        let line =
            r.stdout.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix}\n{}", r.stdout));
        assert!(line.ends_with(&format!(" 64 a b {home}")), "{line}");
    }
    assert_no_leftovers(&mark);
}

#[test]
fn a_remote_rank_killed_by_sigkill_is_named_with_its_host() {
    let Some(hosts) = hosts_or_skip("kill9") else { return };
    let wrapper = hosts.wrapper();
    let mark = format!("rrmark-netns-kill-{}", std::process::id());
    let dir = hosts.dir.display().to_string();
    let host_list = format!("{}:1,{}:1,{}:1", hosts.names[0], hosts.names[1], hosts.names[2]);
    let script = format!("echo $$ > {dir}/pid.$RINGCC_RANK; sleep 30");
    let cmd = hosts.ringrun(&[
        "-H",
        &host_list,
        "--bind",
        "10.77.0.1",
        "--rsh",
        wrapper.to_str().expect("utf-8"),
        "-x",
        &format!("RR_MARK={mark}"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let running = start(cmd);
    let pid = wait_for_file(&hosts.dir.join("pid.2"));
    for rank in 0..2 {
        wait_for_file(&hosts.dir.join(format!("pid.{rank}")));
    }
    assert!(Command::new("kill").args(["-9", pid.trim()]).status().expect("kill").success());
    let r = running.finish();
    assert_eq!(r.code, Some(137), "stderr: {}", r.stderr);
    let want = format!("rank 2 (pid {}) on host {} killed by signal SIGKILL", pid.trim(), hosts.names[2]);
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert_no_leftovers(&mark);
}

/// A ring network made by `scripts/netns` (NETNS_TOPOLOGY=ring) under a prefix of this
/// test's own; `scripts/netns down` on drop.
struct RingNet {
    prefix: String,
}

impl RingNet {
    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns"))
            .args(args)
            .env("NETNS_TOPOLOGY", "ring")
            .env("NETNS_PREFIX", &self.prefix)
            // Reno is the one congestion control every kernel lets a namespace choose.
            .env("NETNS_TCP_CC", "reno")
            .output()
            .expect("run scripts/netns")
    }

    fn ns(&self, rank: usize) -> String {
        format!("{}{rank}", self.prefix)
    }

    /// `ip netns exec <rank's namespace> ARGS...`, its stdout.
    fn exec(&self, rank: usize, args: &[&str]) -> String {
        let out =
            Command::new("ip").args(["netns", "exec", &self.ns(rank)]).args(args).output().expect("ip netns exec");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RingNet {
    fn drop(&mut self) {
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[test]
fn scripts_netns_ring_cables_neighbours_and_forwards_the_rest() {
    // Can this process make namespaces at all? (Skip loudly where the kernel forbids it.)
    let probe = format!("rr{}probe", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        eprintln!("SKIPPED ring topology: cannot create network namespaces ({e})");
        return;
    }
    let _ = ip(&["netns", "del", &probe]);
    let net = RingNet { prefix: format!("rt{:05}x", std::process::id() % 100_000) };
    // A congestion control a namespace may not take: `up` fails and leaves nothing behind.
    let bad = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns"))
        .args(["up", "2", "1gbit"])
        .env("NETNS_PREFIX", &net.prefix)
        .env("NETNS_TCP_CC", "nosuchcc")
        .output()
        .expect("run scripts/netns");
    assert!(!bad.status.success(), "netns up with NETNS_TCP_CC=nosuchcc succeeded");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not allowed"), "{}", String::from_utf8_lossy(&bad.stderr));
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&net.prefix), "namespaces left after a failed up");
    let up = net.script(&["up", "4", "1gbit"]);
    assert!(up.status.success(), "netns up: {}", String::from_utf8_lossy(&up.stderr));
    // Neighbours over their own cable, the rank across the ring through a neighbour, always
    // from the rank's own address.
    for rank in 0..4 {
        let cc = net.exec(rank, &["sysctl", "-n", "net.ipv4.tcp_congestion_control"]);
        assert_eq!(cc.trim(), "reno", "NETNS_TCP_CC in rank {rank}'s namespace");
    }
    let route = |rank: usize, to: &str| net.exec(rank, &["ip", "route", "get", to]);
    assert!(route(0, "10.77.0.2").contains("10.77.0.2 dev next src 10.77.0.1"), "{}", route(0, "10.77.0.2"));
    assert!(route(0, "10.77.0.4").contains("10.77.0.4 dev prev src 10.77.0.1"), "{}", route(0, "10.77.0.4"));
    assert!(route(0, "10.77.0.3").contains("via 10.77.0.2 dev next src 10.77.0.1"), "{}", route(0, "10.77.0.3"));
    assert!(route(3, "10.77.0.1").contains("10.77.0.1 dev next src 10.77.0.4"), "{}", route(3, "10.77.0.1"));
    let tx_bytes = |rank: usize, dev: &str| -> u64 {
        net.exec(rank, &["cat", &format!("/sys/class/net/{dev}/statistics/tx_bytes")]).trim().parse().expect("tx_bytes")
    };
    let before: Vec<(u64, u64)> = (0..4).map(|r| (tx_bytes(r, "next"), tx_bytes(r, "prev"))).collect();
    let mark = format!("rrmark-netns-ring-{}", std::process::id());
    let hosts: Vec<String> = (0..4).map(|r| format!("{}:1", net.ns(r))).collect();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns(0), env!("CARGO_BIN_EXE_ringrun")]).args([
        "-n",
        "4",
        "-H",
        &hosts.join(","),
        "--bind",
        "10.77.0.1",
        "--rsh",
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns-rsh"),
        "--tag-output",
        "-x",
        &format!("RR_MARK={mark}"),
        "-x",
        "RINGCC_ALGO=bidir",
        "--",
        env!("CARGO_BIN_EXE_ringcheck"),
        "--lengths",
        "1,7,100003",
        "--big-mib",
        "1",
    ]);
    let r = start(cmd).finish();
    assert_eq!(r.code, Some(0), "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.ends_with("all exact")).count(), 4, "{}", r.stdout);
    // The bidirectional ring sends both ways round: every cable carried data both ways.
    for (rank, (next0, prev0)) in before.into_iter().enumerate() {
        let (next, prev) = (tx_bytes(rank, "next") - next0, tx_bytes(rank, "prev") - prev0);
        assert!(next > 100_000 && prev > 100_000, "rank {rank} sent {next} B to next, {prev} B to prev");
    }
    assert_no_leftovers(&mark);
    let down = net.script(&["down"]);
    assert!(down.status.success(), "netns down: {}", String::from_utf8_lossy(&down.stderr));
    let left = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&net.prefix), "namespaces left after down");
    assert!(!Path::new(&format!("/etc/netns/{}", net.ns(0))).exists(), "/etc/netns entry left after down");
}
