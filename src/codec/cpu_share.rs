//! How much CPU `auto`'s codecs cost and how much of a core they get.
//!
//! Two readings, both from the scheduler's own accounting:
//!
//! - [`thread_cpu_clock`]: the calling thread's CPU time, what each encode and decode is
//!   timed with. A wall clock would also count the time the thread spent descheduled in
//!   the middle of a segment, which on a host with more busy ranks than cores happens to
//!   a large minority of segments and makes single samples several times too large;
//! - [`thread_sched_times`] (Linux `/proc/thread-self/schedstat`: time run and time spent
//!   runnable but waiting for a core), read at the end of each call: how much the thread
//!   ran (what it ran besides the codecs is the cost of moving the bytes) and the share of
//!   a core it got while it wanted one (four busy ranks on two cores: about half).
//!
//! A codec's speed in use is then the share over its CPU cost: the two are measured
//! apart, so neither counts the other's effect twice.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The calling thread's CPU time (user and system) as a monotonic reading with an
/// arbitrary origin: the clock `auto` times codecs with. Where the OS has no per-thread
/// CPU clock, the wall time since the first reading (then descheduled time counts too).
pub fn thread_cpu_clock() -> Duration {
    // Decided once, so two readings never come from different clocks.
    static WALL_ORIGIN: OnceLock<Option<Instant>> = OnceLock::new();
    match WALL_ORIGIN.get_or_init(|| thread_cpu_time().is_none().then(Instant::now)) {
        Some(origin) => origin.elapsed(),
        None => thread_cpu_time().unwrap_or_default(),
    }
}

/// `CLOCK_THREAD_CPUTIME_ID`: exact to the nanosecond on Linux (the kernel adds the
/// running slice to the reading), unlike the tick-granular schedstat.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok().filter(|n| *n < 1_000_000_000)?;
    (rc == 0).then(|| Duration::new(secs, nanos))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The calling thread's total time on a core and total time waiting for one, or `None`
/// where the OS does not report them (not Linux, or schedstats unavailable).
pub fn thread_sched_times() -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let run_ns = fields.next()??;
    let wait_ns = fields.next()??;
    Some((Duration::from_nanos(run_ns), Duration::from_nanos(wait_ns)))
}

/// How long a thread ran and how long it waited for a core while runnable between two
/// readings of [`thread_sched_times`], if it was runnable for at least `min` (shorter
/// spans are too coarse for the scheduler's accounting) and the readings are in order.
pub fn sched_between(
    before: (Duration, Duration),
    after: (Duration, Duration),
    min: Duration,
) -> Option<(Duration, Duration)> {
    let run = after.0.checked_sub(before.0)?;
    let wait = after.1.checked_sub(before.1)?;
    (run + wait >= min && !run.is_zero()).then_some((run, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_clock_counts_running_and_not_sleeping() {
        let a = thread_cpu_clock();
        std::thread::sleep(Duration::from_millis(30));
        let b = thread_cpu_clock();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let c = thread_cpu_clock();
        assert!(b >= a && c > b, "monotonic and moved by work: {a:?} {b:?} {c:?} ({x})");
        if cfg!(target_os = "linux") {
            assert!(b - a < Duration::from_millis(10), "a sleep costs no CPU: {:?}", b - a);
        }
    }

    #[test]
    fn spans_come_from_differences_of_run_and_wait_time() {
        let ms = Duration::from_millis;
        assert_eq!(sched_between((ms(10), ms(5)), (ms(40), ms(35)), ms(10)), Some((ms(30), ms(30))));
        assert_eq!(sched_between((ms(10), ms(5)), (ms(15), ms(6)), ms(10)), None, "too little to say");
        assert_eq!(sched_between((ms(10), ms(5)), (ms(5), ms(6)), ms(1)), None, "a clock that went back");
        assert_eq!(sched_between((ms(10), ms(5)), (ms(10), ms(25)), ms(1)), None, "never ran");
        if cfg!(target_os = "linux") {
            let a = thread_sched_times().expect("Linux reports schedstat");
            let mut x = 0u64;
            // Long enough to span several scheduler ticks (4 ms at HZ=250): the kernel
            // accounts a running thread's time at ticks and switches, not continuously.
            for i in 0..100_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let b = thread_sched_times().expect("Linux reports schedstat");
            assert!(b.0 > a.0, "running took time: {a:?} {b:?} ({x})");
        }
    }
}
