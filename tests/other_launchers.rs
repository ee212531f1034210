//! The library runs without ringrun: under Open MPI's mpirun, torchrun, and with Slurm's
//! variables set by hand. Each rank runs `ringcheck` (every collective checked exactly).
//! A launcher that is not installed is skipped with a loud message (scripts/test installs
//! Open MPI; torch is not installed by the tests).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHECK_ARGS: [&str; 6] = ["--lengths", "0,7,10007", "--big-mib", "1", "--in-flight", "3"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn found(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// Runs a command to completion within `limit`, killing it (and failing) otherwise.
fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn runs_under_open_mpi_mpirun() {
    if !found("mpirun") {
        eprintln!("SKIPPED runs_under_open_mpi_mpirun: mpirun not installed (scripts/test installs openmpi-bin)");
        return;
    }
    let port = free_port().to_string();
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "3", "-x", "MASTER_ADDR=127.0.0.1"])
        .args(["-x", &format!("MASTER_PORT={port}")])
        .env("OMPI_MCA_plm_rsh_agent", "")
        .arg(env!("CARGO_BIN_EXE_ringcheck"))
        .args(CHECK_ARGS);
    let (ok, text) = run_bounded(cmd, Duration::from_secs(120));
    assert!(ok, "{text}");
    assert_eq!(text.matches("all exact").count(), 3, "{text}");
}

#[test]
fn runs_with_slurm_variables() {
    let port = free_port().to_string();
    let children: Vec<_> = (0..3)
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_ringcheck"))
                .args(CHECK_ARGS)
                .env("SLURM_PROCID", r.to_string())
                .env("SLURM_NTASKS", "3")
                .env("SLURM_LOCALID", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for mut c in children {
        while c.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "slurm-style ranks hang");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = c.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("all exact"), "{text}");
    }
}

#[test]
fn runs_under_torchrun() {
    if !found("torchrun") {
        eprintln!("SKIPPED runs_under_torchrun: torchrun not installed (pip install torch to run this test)");
        return;
    }
    let port = free_port().to_string();
    let mut cmd = Command::new("torchrun");
    cmd.args(["--no-python", "--nproc-per-node", "3", "--master-addr", "127.0.0.1", "--master-port", &port])
        .arg(env!("CARGO_BIN_EXE_ringcheck"))
        .args(CHECK_ARGS);
    let (ok, text) = run_bounded(cmd, Duration::from_secs(180));
    assert!(ok, "{text}");
    assert_eq!(text.matches("all exact").count(), 3, "{text}");
}
