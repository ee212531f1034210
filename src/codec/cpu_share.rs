//! How much of a core the calling thread gets while it wants one, from the scheduler's
//! own accounting (Linux `/proc/thread-self/schedstat`: time run and time spent runnable
//! but waiting for a core).
//!
//! `auto` needs it because a codec's measured speed is the speed of a core, while a rank
//! gets only part of one when the host runs more busy ranks than it has cores (four ranks
//! on two cores: about half). Short probes and single segments fit in a scheduler time
//! slice, so their timings cannot show it; the runqueue wait over a whole call does.

use std::time::Duration;

/// The calling thread's total time on a core and total time waiting for one, or `None`
/// where the OS does not report them (not Linux, or schedstats unavailable).
pub fn thread_sched_times() -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let run_ns = fields.next()??;
    let wait_ns = fields.next()??;
    Some((Duration::from_nanos(run_ns), Duration::from_nanos(wait_ns)))
}

/// The share of a core a thread got while runnable between two readings of
/// [`thread_sched_times`], if it was runnable for at least `min`.
pub fn share_between(before: (Duration, Duration), after: (Duration, Duration), min: Duration) -> Option<f64> {
    let run = after.0.checked_sub(before.0)?;
    let wait = after.1.checked_sub(before.1)?;
    let runnable = run + wait;
    (runnable >= min && !runnable.is_zero()).then(|| run.as_secs_f64() / runnable.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_from_differences_of_run_and_wait_time() {
        let ms = Duration::from_millis;
        assert_eq!(share_between((ms(10), ms(5)), (ms(40), ms(35)), ms(10)), Some(0.5));
        assert_eq!(share_between((ms(10), ms(5)), (ms(15), ms(6)), ms(10)), None, "too little to say");
        assert_eq!(share_between((ms(10), ms(5)), (ms(5), ms(6)), ms(1)), None, "a clock that went back");
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
