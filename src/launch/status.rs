//! `ringrun status` and SIGUSR1: the job's status table (see [`crate::coord::status`]) on
//! demand, so a stuck job can be diagnosed while it hangs.
//!
//! A running ringrun serves its status two ways, from one thread (`ringrun-status`):
//! * SIGUSR1 to ringrun prints the table on ringrun's stderr.
//! * A Unix socket `DIR/PID.sock`, where DIR is `$RINGRUN_RUNTIME_DIR` or
//!   `/tmp/ringrun-UID`, PID is ringrun's pid and UID the user's id. The directory is
//!   created with mode 0700 and must be a directory (not a symlink) owned by the user with
//!   no access for group or others; otherwise ringrun says why on stderr and serves only
//!   SIGUSR1 (the job runs anyway). A client connects, reads the table until end of stream,
//!   and sends nothing. The socket is removed when ringrun ends.
//!
//! `ringrun status [PID]` is that client: it prints the table of job PID, or of every
//! ringrun job of this user when no PID is given, on stdout, and exits 0 if at least one
//! job answered, 1 otherwise.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys;
use crate::coord::StatusHandle;

/// How often the status thread looks for SIGUSR1 and for clients.
const POLL: Duration = Duration::from_millis(50);

/// Longest ringrun waits for its coordinator thread to answer a status request.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a client may take to read the table; a client that reads nothing cannot hold
/// the status thread longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest `ringrun status` waits for one job to answer (its coordinator may take
/// [`QUERY_TIMEOUT`]).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer `ringrun status` reads from one job, in bytes (a table of
/// `limits::WORLD_MAX` ranks is about 500 KiB).
const ANSWER_BYTES_MAX: u64 = 4 << 20;

/// The directory holding the status sockets of this user's jobs.
pub(crate) fn runtime_dir() -> PathBuf {
    match std::env::var_os("RINGRUN_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/ringrun-{}", unsafe { libc::geteuid() })),
    }
}

/// Creates `dir` (mode 0700) if missing, then checks it is a real directory owned by this
/// user that nobody else can enter.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private(dir)
}

/// Fails unless `dir` is a directory (not a symlink) owned by this user, mode `0?00`.
fn check_private(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let bad = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !meta.file_type().is_dir() {
        return bad(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != me {
        return bad(format!("{} belongs to uid {}, not to this user ({me})", dir.display(), meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return bad(format!("{} has mode {:o}; it must be 0700", dir.display(), meta.mode() & 0o777));
    }
    Ok(())
}

/// Serves the status of the running job until dropped.
#[derive(Debug)]
pub(crate) struct StatusService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: Option<PathBuf>,
    handle: StatusHandle,
    program: String,
    started: Instant,
}

impl StatusService {
    /// Starts the status thread for the job whose coordinator answers `handle`;
    /// `program` names what the ranks run (for the table's first line). A socket that
    /// cannot be set up is reported on stderr and left out.
    ///
    /// Contract: call after [`sys::install_signal_handlers`] (which catches SIGUSR1).
    pub(crate) fn start(handle: StatusHandle, program: String) -> StatusService {
        let started = Instant::now();
        let dir = runtime_dir();
        let path = dir.join(format!("{}.sock", std::process::id()));
        let listener = match listen(&dir, &path) {
            Ok(l) => Some(l),
            Err(e) => {
                say!("`ringrun status` disabled for this job ({e}); SIGUSR1 still prints the status");
                None
            }
        };
        let socket = listener.as_ref().map(|_| path);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (handle_here, program_here) = (handle.clone(), program.clone());
        let serve = move || {
            let text = || table(&handle, &program, started);
            while !flag.load(Ordering::SeqCst) {
                if sys::take_status_request() {
                    super::write_stderr(&text());
                }
                while let Some(stream) = listener.as_ref().and_then(|l| l.accept().ok()).map(|(s, _)| s) {
                    answer(stream, &text());
                }
                std::thread::sleep(POLL);
            }
        };
        let thread = match std::thread::Builder::new().name("ringrun-status".into()).spawn(serve) {
            Ok(t) => Some(t),
            Err(e) => {
                say!("status disabled for this job: cannot start its thread: {e}");
                None
            }
        };
        StatusService { stop, thread, socket, handle: handle_here, program: program_here, started }
    }

    /// The status table now (what SIGUSR1 prints).
    pub(crate) fn table(&self) -> String {
        table(&self.handle, &self.program, self.started)
    }
}

impl Drop for StatusService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the status socket at `path` in the private `dir`. A socket left at that path
/// by an earlier process with this pid (which is dead, as the pid is now ours) is replaced.
fn listen(dir: &Path, path: &Path) -> io::Result<UnixListener> {
    private_dir(dir)?;
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The first line (which ringrun, what it runs, for how long) and the coordinator's table.
fn table(handle: &StatusHandle, program: &str, started: Instant) -> String {
    let head =
        format!("ringrun status: pid {}, {program}, up {:.1}s", std::process::id(), started.elapsed().as_secs_f64());
    match handle.query(QUERY_TIMEOUT) {
        Some(status) => format!("{head}\n{}", status.render()),
        None => format!("{head}\nthe coordinator did not answer within {QUERY_TIMEOUT:?}\n"),
    }
}

/// Writes `text` to one client, bounded by [`WRITE_TIMEOUT`].
fn answer(stream: UnixStream, text: &str) {
    let mut stream = stream;
    // Accepted sockets may inherit non-blocking mode; the timeout bounds a slow reader.
    if stream.set_nonblocking(false).is_err() || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let _ = stream.write_all(text.as_bytes());
}

/// `ringrun status [PID]`: returns the exit status.
pub(crate) fn client(args: &[OsString]) -> i32 {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("?")).collect();
    let pid = match args.as_slice() {
        [] => None,
        ["-h" | "--help"] => {
            print!("{HELP}");
            return 0;
        }
        [pid] => match pid.parse::<u32>() {
            Ok(p) => Some(p),
            Err(_) => return usage(&format!("{pid:?} is not a process id")),
        },
        _ => return usage("too many arguments"),
    };
    let dir = runtime_dir();
    if std::fs::symlink_metadata(&dir).is_err() {
        eprintln!("ringrun status: no running ringrun job of this user ({} does not exist)", dir.display());
        return 1;
    }
    if let Err(e) = check_private(&dir) {
        eprintln!("ringrun status: refusing to use {}: {e}", dir.display());
        return 1;
    }
    let sockets = match pid {
        Some(p) => vec![(p, dir.join(format!("{p}.sock")))],
        None => match list_sockets(&dir) {
            Ok(list) => list,
            Err(e) => {
                eprintln!("ringrun status: cannot list {}: {e}", dir.display());
                return 1;
            }
        },
    };
    let mut answered = 0;
    for (p, path) in &sockets {
        match ask(path) {
            Ok(text) => {
                if answered > 0 {
                    println!();
                }
                print!("{text}");
                answered += 1;
            }
            Err(e) if pid.is_some() => eprintln!("ringrun status: no answer from ringrun pid {p} ({e})"),
            Err(_) => {}
        }
    }
    if answered == 0 && pid.is_none() {
        eprintln!("ringrun status: no running ringrun job of this user (looked in {})", dir.display());
    }
    i32::from(answered == 0)
}

const HELP: &str = "\
Usage: ringrun status [PID]

Print the status of a running ringrun job: for every rank its state, epoch, calls done, the
running call, its phase and step, the rank it waits for, for how long nothing changed, and
when ringrun last heard from it; then a diagnosis naming the rank that holds the others up.
Without PID, every ringrun job of this user. The jobs' sockets are in $RINGRUN_RUNTIME_DIR,
or /tmp/ringrun-UID. SIGUSR1 to a ringrun prints the same on its stderr.
";

fn usage(message: &str) -> i32 {
    eprintln!("ringrun status: {message} (usage: ringrun status [PID])");
    super::USAGE_EXIT_CODE
}

/// `(pid, path)` of every `PID.sock` in `dir`, by pid.
fn list_sockets(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_suffix(".sock")).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            found.push((pid, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads one job's answer.
fn ask(path: &Path) -> io::Result<String> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut text = String::new();
    stream.take(ANSWER_BYTES_MAX).read_to_string(&mut text)?;
    if text.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "it closed the connection without an answer"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_directory_of_this_user_is_accepted() {
        let base = std::env::temp_dir().join(format!("ringrun-status-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("run");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&dir).unwrap_err().to_string().contains("must be 0700"));
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(private_dir(&link).unwrap_err().to_string().contains("not a directory"));
        let file = base.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(private_dir(&file).is_err());
        // A socket path left by a dead process is replaced; others' sockets are listed.
        let stale = dir.join("7.sock");
        std::fs::write(&stale, "").unwrap();
        let listener = listen(&dir, &stale).unwrap();
        assert_eq!(std::fs::metadata(&stale).unwrap().mode() & 0o777, 0o600);
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        assert_eq!(list_sockets(&dir).unwrap(), vec![(7, stale.clone())]);
        drop(listener);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_client_refuses_bad_arguments() {
        assert_eq!(client(&["x".into()]), super::super::USAGE_EXIT_CODE);
        assert_eq!(client(&["1".into(), "2".into()]), super::super::USAGE_EXIT_CODE);
    }
}
