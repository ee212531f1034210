//! CPU binding of local ranks (`ringrun --bind-to core`, the default): each rank on this
//! machine gets its share of the CPUs ringrun may use, so the scheduler neither migrates
//! ranks nor piles ring neighbours onto one core.
//!
//! With at least as many CPUs as local ranks, local rank i gets a contiguous block of
//! `cpus / ranks` CPUs (the first `cpus % ranks` ranks one more), so threads of one rank
//! (the caller's and ringcc's event loop, a training program's own) still run side by
//! side. With more ranks than CPUs, local rank i gets CPU `i % cpus`: ranks i and i + 1,
//! ring neighbours and recursive-doubling partners, land on different CPUs and can run at
//! the same time (measured in docs/BENCHMARKS.md: on 2 CPUs with 4 ranks it removes the
//! launch-to-launch swings of small all-reduces). Ranks started through `--rsh` are not
//! bound (ringrun does not know the other machine's CPUs).

use clap::ValueEnum;

/// `--bind-to`: whether ringrun binds local ranks to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BindTo {
    /// Each local rank to its share of the CPUs.
    Core,
    /// No binding: the scheduler places ranks.
    None,
}

/// The CPUs local rank `local_rank` of `local_size` is bound to, out of `allowed` (the CPUs
/// ringrun may use, in order). Empty if `allowed` is empty (then nothing is bound).
pub(crate) fn cpus_for(local_rank: usize, local_size: usize, allowed: &[usize]) -> Vec<usize> {
    let (c, r) = (allowed.len(), local_size.max(1));
    if c == 0 {
        return Vec::new();
    }
    if r > c {
        return vec![allowed[local_rank % c]];
    }
    let i = local_rank % r;
    let (base, extra) = (c / r, c % r);
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    allowed[start..start + len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_ranks_than_cpus_put_neighbours_on_different_cpus() {
        let allowed = [0, 1];
        let got: Vec<Vec<usize>> = (0..4).map(|i| cpus_for(i, 4, &allowed)).collect();
        assert_eq!(got, vec![vec![0], vec![1], vec![0], vec![1]]);
        assert_eq!(cpus_for(4, 5, &[3, 5, 7]), vec![5]);
    }

    #[test]
    fn fewer_ranks_than_cpus_get_disjoint_blocks_covering_every_cpu() {
        let allowed: Vec<usize> = (10..17).collect();
        let blocks: Vec<Vec<usize>> = (0..3).map(|i| cpus_for(i, 3, &allowed)).collect();
        assert_eq!(blocks, vec![vec![10, 11, 12], vec![13, 14], vec![15, 16]]);
        assert_eq!(cpus_for(0, 1, &allowed), allowed);
        assert_eq!(cpus_for(1, 2, &[0, 1]), vec![1]);
        assert!(cpus_for(0, 2, &[]).is_empty());
    }
}
