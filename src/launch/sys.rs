//! The few POSIX calls the launcher needs that std does not offer: death signal, process
//! group signals, waiting without reaping, signal handlers and CPU affinity. All `unsafe` of the
//! launcher lives here.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::table::Outcome;

/// Last terminating signal (SIGINT, SIGTERM, SIGHUP) ringrun received, 0 for none. Written
/// only by [`on_signal`]; the supervisor polls it with [`take_signal`].
static RECEIVED_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Set by SIGUSR1 (print the job's status); the status thread polls it with
/// [`take_status_request`].
static STATUS_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The CPUs this process may run on, in order (empty if the kernel does not say).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data for which all-zero bytes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Makes the child of `cmd` run only on `cpus` (nothing changes if `cpus` is empty). A
/// failure to bind (a CPU gone offline meanwhile) leaves the child unbound rather than
/// failing the launch.
pub fn bind_to_cpus(cmd: &mut Command, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: cpu_set_t is plain data for which all-zero bytes is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: CPU_SET writes bit `c` of `set`, and c < CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the closure runs between fork and exec and only calls sched_setaffinity,
    // async-signal-safe, on a set built before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

/// Makes the child of `cmd` die with SIGKILL when the thread that spawns it exits
/// (`PR_SET_PDEATHSIG`), and if ringrun is already gone by the time the child runs.
///
/// Contract: the death signal is tied to the spawning *thread*, so ranks must be spawned
/// from the thread that lives for the whole job (the supervisor's, i.e. the main thread).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid is async-signal-safe and this runs before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls prctl and getppid,
    // both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // ringrun died between fork and prctl: the signal will never come, so leave.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group `pgid`. A group that no longer exists is not an
/// error (the rank and everything it started are already gone).
///
/// Contract: `pgid` is a group ringrun created and whose leader it has not reaped yet, so
/// the id cannot have been reused by an unrelated group.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Blocks until child `pid` has ended and returns how, WITHOUT reaping it: the zombie keeps
/// its pid and process group id reserved until the supervisor reaps it through its
/// `Child`, so signalling the group stays safe in the meantime.
///
/// # Errors
/// The OS error of `waitid` other than EINTR (which is retried), e.g. ECHILD if `pid` is
/// not a child of this process.
pub(crate) fn wait_exit_keep_zombie(pid: u32) -> io::Result<Outcome> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: siginfo_t is plain data for which all-zero bytes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid succeeded for a WEXITED event, so si_status is initialised.
        let status = unsafe { info.si_status() };
        return Ok(match info.si_code {
            libc::CLD_EXITED => Outcome::Code(status),
            _ => Outcome::Signal(status),
        });
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    RECEIVED_SIGNAL.store(signal, Ordering::SeqCst);
}

extern "C" fn on_status_signal(_signal: libc::c_int) {
    STATUS_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs handlers that record SIGINT, SIGTERM and SIGHUP for [`take_signal`] instead
/// of ending ringrun, so they can be forwarded to the ranks, and SIGUSR1 for
/// [`take_status_request`] (it is not forwarded).
///
/// # Errors
/// The OS error of `sigaction`.
pub(crate) fn install_signal_handlers() -> io::Result<()> {
    let stop = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let status = on_status_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for (signal, handler) in
        [(libc::SIGINT, stop), (libc::SIGTERM, stop), (libc::SIGHUP, stop), (libc::SIGUSR1, status)]
    {
        // SAFETY: sigaction is plain data for which all-zero bytes is a valid value.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised; each handler only stores to an atomic,
        // which is async-signal-safe.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal received since the last call, if any.
pub(crate) fn take_signal() -> Option<i32> {
    match RECEIVED_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Whether SIGUSR1 arrived since the last call.
pub(crate) fn take_status_request() -> bool {
    STATUS_REQUESTED.swap(false, Ordering::SeqCst)
}

/// `SIGKILL`-style name of a signal number, or `signal N` for one without a name here.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_cover_the_common_ones_and_fall_back_to_numbers() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn signalling_a_vanished_group_is_not_an_error_but_bad_ids_are() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
        // pid_max is at most 2^22, so this group cannot exist.
        assert!(signal_group((1 << 22) + 7, 0).is_ok());
    }
}
