//! `ringbench`: an nccl-tests-style benchmark of the collectives, as a library so the
//! binary stays a thin `main` and every piece is unit-tested.
//!
//! The flags follow nccl-tests' `all_reduce_perf` (`-b -e -i -f -n -w -c`, sizes with
//! K/M/G suffixes, powers of 1024). For each size the benchmark runs `-w` untimed
//! iterations, a barrier, `-n` timed iterations (each timed on every rank; the time of an
//! iteration is the maximum over ranks), and with `-c 1` one more iteration on fresh
//! patterned data whose every element is then checked exactly. With `--data FILE` the
//! buffers hold the file's values instead (see [`data`]), refilled before every in-place
//! iteration so that every iteration sends the file's values, and the check allows the
//! rounding of a reduction in another order.
//!
//! Bandwidths follow nccl-tests: `algbw = size / time` (GB = 1e9 bytes) and
//! `busbw = algbw x factor`, with the factor `2(n-1)/n` for all_reduce, `(n-1)/n` for
//! reduce_scatter and all_gather (whose `size` is the total: all_gather's output,
//! reduce_scatter's input) and `1` for broadcast.

pub mod data;
pub mod json;
pub mod memory;
pub mod options;
pub mod pattern;
pub mod runner;
pub mod table;

pub use options::{BenchColl, Options};
pub use runner::{run, RunError, Settings};
pub use table::Row;

/// Most sizes one run may visit; `-i 1` over a wide range would otherwise loop for ever.
pub const SIZES_MAX: usize = 10_000;

/// Largest `-e` accepted, in bytes: buffers are allocated once at the largest size, and
/// this machine-independent cap turns a typo (`-e 256G`) into an error, not an OOM kill.
pub const MAX_BYTES_LIMIT: u64 = 64 << 30;

/// How a size in bytes maps onto buffers for one collective on `world` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Elements the `size` column counts: the whole buffer (all_reduce, broadcast), the
    /// input (reduce_scatter) or the output (all_gather).
    pub count_elems: usize,
    /// Elements each rank contributes (reduce_scatter: receives; all_gather: sends).
    pub per_rank_elems: usize,
}

impl Layout {
    /// The layout for `size_bytes` of elements of `elem_bytes` bytes. Sizes round down to
    /// whole elements, and for reduce_scatter and all_gather to a multiple of `world`
    /// elements, as nccl-tests does.
    ///
    /// # Panics
    /// If `elem_bytes == 0` or `world == 0` (caller bug).
    pub fn new(coll: BenchColl, size_bytes: u64, elem_bytes: usize, world: usize) -> Layout {
        assert!(elem_bytes > 0 && world > 0);
        let elems = usize::try_from(size_bytes / elem_bytes as u64).unwrap_or(usize::MAX);
        match coll {
            BenchColl::AllReduce | BenchColl::Broadcast => Layout { count_elems: elems, per_rank_elems: elems },
            BenchColl::ReduceScatter | BenchColl::AllGather => {
                let per = elems / world;
                Layout { count_elems: per * world, per_rank_elems: per }
            }
        }
    }
}

/// The nccl-tests bus bandwidth factor: bytes each rank moves per byte of `size`, relative
/// to a point-to-point copy.
pub fn bus_factor(coll: BenchColl, world: usize) -> f64 {
    let n = world.max(1) as f64;
    match coll {
        BenchColl::AllReduce => 2.0 * (n - 1.0) / n,
        BenchColl::ReduceScatter | BenchColl::AllGather => (n - 1.0) / n,
        BenchColl::Broadcast => 1.0,
    }
}

/// Mean, median and 99th percentile of per-iteration times in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean_us: f64,
    /// 50th percentile (nearest rank).
    pub p50_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
}

/// Summarizes per-iteration times; all zero for an empty slice. Percentiles use the
/// nearest-rank method, so they are always one of the measured times.
pub fn summarize(times_us: &[f64]) -> Summary {
    if times_us.is_empty() {
        return Summary { mean_us: 0.0, p50_us: 0.0, p99_us: 0.0 };
    }
    let mut sorted = times_us.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    Summary { mean_us: times_us.iter().sum::<f64>() / times_us.len() as f64, p50_us: pick(50.0), p99_us: pick(99.0) }
}

/// Bandwidth in GB/s (1e9 bytes) of moving `size_bytes` in `time_us`; zero for a zero time.
pub fn bandwidth_gbs(size_bytes: u64, time_us: f64) -> f64 {
    if time_us > 0.0 {
        size_bytes as f64 / time_us / 1e3
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_like_nccl_tests() {
        let l = Layout::new(BenchColl::AllReduce, 4098, 4, 3);
        assert_eq!(l, Layout { count_elems: 1024, per_rank_elems: 1024 });
        let l = Layout::new(BenchColl::AllGather, 4096, 4, 3);
        assert_eq!(l, Layout { count_elems: 1023, per_rank_elems: 341 });
        let l = Layout::new(BenchColl::ReduceScatter, 8, 4, 4);
        assert_eq!(l, Layout { count_elems: 0, per_rank_elems: 0 });
    }

    #[test]
    fn bus_factors_match_nccl_tests() {
        assert_eq!(bus_factor(BenchColl::AllReduce, 4), 1.5);
        assert_eq!(bus_factor(BenchColl::AllReduce, 1), 0.0);
        assert_eq!(bus_factor(BenchColl::ReduceScatter, 4), 0.75);
        assert_eq!(bus_factor(BenchColl::AllGather, 2), 0.5);
        assert_eq!(bus_factor(BenchColl::Broadcast, 8), 1.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let t: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&t);
        assert_eq!((s.mean_us, s.p50_us, s.p99_us), (50.5, 50.0, 99.0));
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!((s.mean_us, s.p50_us, s.p99_us), (2.0, 2.0, 3.0));
        assert_eq!(summarize(&[]).p99_us, 0.0);
    }

    #[test]
    fn bandwidth_is_bytes_per_nanosecond() {
        assert_eq!(bandwidth_gbs(1_000_000, 1000.0), 1.0);
        assert_eq!(bandwidth_gbs(4096, 0.0), 0.0);
    }
}
