//! Check patterns: data whose collective result is known exactly.
//!
//! Every value is a small non-negative integer, so it is exact in every element type
//! (bfloat16 holds integers up to 256 exactly, uint8 up to 255), and every partial result
//! of the reduction — in any order, over any subset of the ranks — stays within those
//! bounds, so the result is exact whatever the ring order or segment boundaries. Values
//! differ per rank and per element: element `i` of rank `r` is a function of
//! `(r + mix(i)) mod period`, where `mix` is a hash, so a segment landing at the wrong
//! offset is caught (no period lines up with segment boundaries), and every element's
//! expected result depends only on `mix(i) mod period` and can be precomputed.

use half::{bf16, f16};

use crate::core::schedule::chunk_range;
use crate::{Element, Rank, ReduceOp};

/// Largest value any partial result may reach: exact in bfloat16 (8 significant bits)
/// and in uint8.
const PARTIAL_MAX: u32 = 255;

/// Largest period of the dense pattern (values `0..16`).
const DENSE_PERIOD_MAX: usize = 16;

/// Most factors of 2 in one element's product: 2^7 = 128 stays within [`PARTIAL_MAX`].
const PROD_TWOS_MAX: usize = 7;

/// An element type the benchmark can fill and check.
pub trait PatternElement: Element {
    /// `v` as this type; exact for `v <= 255`.
    fn from_small(v: u32) -> Self;
    /// The Avg result for an exact integer sum over `count` contributors, computed as the
    /// library documents it: float division (half types through f32, rounded once), or
    /// integer division truncating toward zero.
    fn avg_of(sum: u32, count: usize) -> Self;
    /// The value as f64 (exact for every type but the largest 64-bit integers).
    fn to_f64(self) -> f64;
}

macro_rules! float_pattern {
    ($t:ty) => {
        impl PatternElement for $t {
            fn from_small(v: u32) -> Self {
                v as $t
            }
            fn avg_of(sum: u32, count: usize) -> Self {
                sum as $t / count.max(1) as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
float_pattern!(f32);
float_pattern!(f64);

macro_rules! half_pattern {
    ($t:ty) => {
        impl PatternElement for $t {
            fn from_small(v: u32) -> Self {
                <$t>::from_f32(v as f32)
            }
            fn avg_of(sum: u32, count: usize) -> Self {
                <$t>::from_f32(sum as f32 / count.max(1) as f32)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
        }
    };
}
half_pattern!(f16);
half_pattern!(bf16);

macro_rules! int_pattern {
    ($t:ty) => {
        impl PatternElement for $t {
            fn from_small(v: u32) -> Self {
                <$t>::try_from(v).unwrap_or(<$t>::MAX)
            }
            fn avg_of(sum: u32, count: usize) -> Self {
                Self::from_small(sum / u32::try_from(count.max(1)).unwrap_or(u32::MAX))
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
int_pattern!(i32);
int_pattern!(i64);
int_pattern!(u8);

/// How a phase `(r + mix(i)) mod period` maps to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The phase itself: values `0..period`.
    Dense,
    /// `hi` at phase 0, `lo` elsewhere: few large contributions per element.
    Sparse { lo: u32, hi: u32 },
}

/// The check pattern for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    period: usize,
    shape: Shape,
}

/// SplitMix64's finalizer: a fixed, well-mixed hash of the element index.
fn mix(i: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as usize
}

impl Pattern {
    /// The pattern for reducing with `op` over up to `world` ranks, or for moving data
    /// unreduced (`op == None`: all_gather, broadcast).
    ///
    /// Sum, Avg, Min, Max: values `0..k` with `k = clamp(255 / world, 2, 16)`, so a sum
    /// over every rank is at most 255; beyond 255 ranks a sparse 0/1 pattern with at most
    /// 255 ones per element. Prod: values 1 and 2 with at most seven 2s per element.
    pub fn new(op: Option<ReduceOp>, world: usize) -> Pattern {
        let n = world.max(1);
        let max = PARTIAL_MAX as usize;
        match op {
            None => Pattern { period: DENSE_PERIOD_MAX, shape: Shape::Dense },
            Some(ReduceOp::Prod) => {
                Pattern { period: n.div_ceil(PROD_TWOS_MAX).max(2), shape: Shape::Sparse { lo: 1, hi: 2 } }
            }
            Some(_) if n <= max => Pattern { period: (max / n).clamp(2, DENSE_PERIOD_MAX), shape: Shape::Dense },
            Some(_) => Pattern { period: n.div_ceil(max), shape: Shape::Sparse { lo: 0, hi: 1 } },
        }
    }

    fn value_at_phase(&self, phase: usize) -> u32 {
        match self.shape {
            Shape::Dense => phase as u32,
            Shape::Sparse { lo, hi } => {
                if phase == 0 {
                    hi
                } else {
                    lo
                }
            }
        }
    }

    fn phase(&self, rank: Rank, index: usize) -> usize {
        (rank % self.period + mix(index) % self.period) % self.period
    }

    /// The value element `index` of the whole buffer has on `rank`.
    pub fn value(&self, rank: Rank, index: usize) -> u32 {
        self.value_at_phase(self.phase(rank, index))
    }

    /// Fills `buf` with `rank`'s values for elements `first_index..`.
    pub fn fill<T: PatternElement>(&self, rank: Rank, first_index: usize, buf: &mut [T]) {
        for (j, x) in buf.iter_mut().enumerate() {
            *x = T::from_small(self.value(rank, first_index + j));
        }
    }

    /// Expected reduction for each phase of `mix(i)`: entry `m` is `op` over `members` of
    /// the value at phase `(r + m) mod period`, computed in exact integers.
    pub fn reduced_table<T: PatternElement>(&self, op: ReduceOp, members: &[Rank]) -> Vec<T> {
        (0..self.period)
            .map(|m| {
                let vals = members.iter().map(|&r| self.value_at_phase((r % self.period + m) % self.period));
                match op {
                    ReduceOp::Sum => T::from_small(vals.sum()),
                    ReduceOp::Avg => T::avg_of(vals.sum(), members.len()),
                    ReduceOp::Prod => T::from_small(vals.product()),
                    ReduceOp::Min => T::from_small(vals.min().unwrap_or(0)),
                    ReduceOp::Max => T::from_small(vals.max().unwrap_or(0)),
                }
            })
            .collect()
    }

    /// Number of elements of `buf` (elements `first_index..` of the whole buffer) that are
    /// not bit-identical to the reduction `table` (from [`Pattern::reduced_table`]).
    pub fn count_wrong_reduced<T: PatternElement>(&self, table: &[T], first_index: usize, buf: &[T]) -> u64 {
        self.count_wrong_reduced_any(&[table], first_index, buf)
    }

    /// Like [`Pattern::count_wrong_reduced`], where an element is right if it is
    /// bit-identical to its entry in any of `tables` (the exact result, and the exact
    /// result rounded as a lossy codec may have rounded it).
    pub fn count_wrong_reduced_any<T: PatternElement>(&self, tables: &[&[T]], first_index: usize, buf: &[T]) -> u64 {
        let wrong = buf.iter().enumerate().filter(|&(j, x)| {
            let m = mix(first_index + j) % self.period;
            !tables.iter().any(|t| matches!(t.get(m), Some(w) if bytemuck::bytes_of(w) == bytemuck::bytes_of(x)))
        });
        wrong.count() as u64
    }

    /// Number of elements of `buf` (elements `first_index..`) that differ from `rank`'s
    /// values.
    pub fn count_wrong_from<T: PatternElement>(&self, rank: Rank, first_index: usize, buf: &[T]) -> u64 {
        let wrong = buf.iter().enumerate().filter(|&(j, x)| {
            let want = T::from_small(self.value(rank, first_index + j));
            bytemuck::bytes_of(&want) != bytemuck::bytes_of(x)
        });
        wrong.count() as u64
    }

    /// Number of elements of an all_gather output that differ from the inputs: block `b`
    /// (by [`chunk_range`] over `members.len()` blocks) must hold `members[b]`'s values.
    pub fn count_wrong_gathered<T: PatternElement>(&self, members: &[Rank], buf: &[T]) -> u64 {
        if members.is_empty() {
            return buf.len() as u64;
        }
        members
            .iter()
            .enumerate()
            .map(|(b, &r)| {
                let range = chunk_range(buf.len(), members.len(), b);
                self.count_wrong_from(r, range.start, &buf[range])
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reduce::reduce_into;

    /// Reduces the ranks' buffers with the library kernel in the given rank order (the
    /// ring can combine partial results in any order and grouping).
    fn reduce_in_order<T: PatternElement>(p: &Pattern, op: ReduceOp, order: &[Rank], len: usize) -> Vec<T> {
        let mut acc = vec![T::zeroed(); len];
        p.fill(order[0], 0, &mut acc);
        let mut other = vec![T::zeroed(); len];
        for &r in &order[1..] {
            p.fill(r, 0, &mut other);
            reduce_into(T::DTYPE, op, bytemuck::cast_slice_mut(&mut acc), bytemuck::cast_slice(&other));
        }
        if op == ReduceOp::Avg {
            crate::core::reduce::divide(T::DTYPE, bytemuck::cast_slice_mut(&mut acc), order.len());
        }
        acc
    }

    fn exact_in_any_order<T: PatternElement>() {
        for world in [1usize, 2, 3, 4, 7, 16, 100, 255, 256, 300, 1000] {
            let members: Vec<Rank> = (0..world).collect();
            let mut reversed = members.clone();
            reversed.reverse();
            let interleaved: Vec<Rank> =
                members.iter().step_by(2).chain(members.iter().skip(1).step_by(2)).copied().collect();
            for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
                let p = Pattern::new(Some(op), world);
                let table = p.reduced_table::<T>(op, &members);
                for order in [&members, &reversed, &interleaved] {
                    let got = reduce_in_order::<T>(&p, op, order, 300);
                    assert_eq!(
                        p.count_wrong_reduced(&table, 0, &got),
                        0,
                        "{:?} {op:?} world {world} order {:?}",
                        T::DTYPE,
                        &order[..order.len().min(4)]
                    );
                }
            }
        }
    }

    #[test]
    fn reductions_are_exact_in_every_dtype_and_order() {
        exact_in_any_order::<f32>();
        exact_in_any_order::<f64>();
        exact_in_any_order::<f16>();
        exact_in_any_order::<bf16>();
        exact_in_any_order::<i32>();
        exact_in_any_order::<i64>();
        exact_in_any_order::<u8>();
    }

    #[test]
    fn values_differ_per_rank_and_element() {
        for op in [None, Some(ReduceOp::Sum), Some(ReduceOp::Prod)] {
            let p = Pattern::new(op, 4);
            let rank0: Vec<u32> = (0..64).map(|i| p.value(0, i)).collect();
            let rank1: Vec<u32> = (0..64).map(|i| p.value(1, i)).collect();
            assert_ne!(rank0, rank1, "{op:?}");
            assert!(rank0.iter().any(|&v| v != rank0[0]), "{op:?}");
        }
        // Not periodic in the index: a block moved by a segment-sized offset is caught.
        let p = Pattern::new(Some(ReduceOp::Sum), 4);
        let a: Vec<f32> = (0..4096).map(|i| p.value(2, i) as f32).collect();
        assert!(p.count_wrong_from(2, 1 << 17, &a) > 3000);
    }

    #[test]
    fn corruption_is_counted_element_by_element() {
        let members = [0, 1, 2];
        let p = Pattern::new(Some(ReduceOp::Min), 3);
        let table = p.reduced_table::<f32>(ReduceOp::Min, &members);
        let mut got = reduce_in_order::<f32>(&p, ReduceOp::Min, &members, 1000);
        assert_eq!(p.count_wrong_reduced(&table, 0, &got), 0);
        got[3] += 1.0;
        got[500] = f32::NAN;
        // A zero with the sign bit set is a different result: the check compares bits.
        let zero_at = (0..1000).find(|&i| got[i] == 0.0).unwrap();
        got[zero_at] = -0.0;
        assert_eq!(p.count_wrong_reduced(&table, 0, &got), 3);
        // A buffer offset by one element is nearly all wrong.
        assert!(p.count_wrong_reduced(&table, 1, &got) > 800);
    }

    #[test]
    fn gathered_blocks_belong_to_their_ranks() {
        let p = Pattern::new(None, 3);
        let members = [0, 1, 2];
        let mut out = vec![0u8; 10];
        for (b, &r) in members.iter().enumerate() {
            let range = chunk_range(10, 3, b);
            p.fill(r, range.start, &mut out[range]);
        }
        assert_eq!(p.count_wrong_gathered(&members, &out), 0);
        assert!(p.count_wrong_gathered(&[1, 0, 2], &out) > 0);
    }
}
