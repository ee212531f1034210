//! Test inputs whose reduction is exact in any order, and the expected outputs, computed
//! independently of the core's kernels.
//!
//! A ring reduces each chunk in an order that depends on the ring, so a float reference is
//! only comparable bit for bit if every order gives the same bits. The inputs make sure of
//! that: floats are small integers for Sum and Avg (every partial sum is an exact integer,
//! within 8 bits of significand for bf16), any small integers for Min and Max, and for Prod
//! values in {1, -1, 0, 2, 0.5} with at most eight ranks away from {1, -1} per element (so
//! every partial product is a signed power of two within 2^-8..=2^8, or zero). Integer Sum
//! and Prod wrap, which is exact in any order.
//!
//! The reference then follows the documented semantics: Avg is the exact sum divided by the
//! number of contributors in the element type's arithmetic (f16 and bf16 through f32, one
//! rounding; integers truncate toward zero), as `core::reduce::divide` specifies.

use bytemuck::Pod;
use half::{bf16, f16};

use super::{Call, SimRng};
use crate::core::schedule::chunk_range;
use crate::core::{DataType, ReduceOp};
use crate::wire::CollKind;

/// Ranks (lowest first) that may hold a factor other than ±1 in Prod inputs.
const PROD_WIDE_RANKS: usize = 8;

/// Every rank's input for `call` in a job of `world` ranks, from `seed`
/// (see [`super::Call::input_bytes`] for the lengths).
pub fn inputs(call: &Call, world: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SimRng::new(seed ^ 0x6f72_6163_6c65);
    (0..world)
        .map(|rank| {
            let elems = call.input_bytes(world, rank) / call.dtype.size();
            let op =
                if matches!(call.coll, CollKind::AllGather | CollKind::Broadcast) { ReduceOp::Max } else { call.op };
            (0..elems).flat_map(|_| element(call.dtype, op, rank, &mut rng)).collect()
        })
        .collect()
}

/// One element's bytes for `rank`.
fn element(dtype: DataType, op: ReduceOp, rank: usize, rng: &mut SimRng) -> Vec<u8> {
    if !dtype.is_float() {
        let v = rng.next_u64();
        return v.to_le_bytes()[..dtype.size()].to_vec();
    }
    let small = |rng: &mut SimRng, half_width: u64| rng.below(2 * half_width + 1) as f64 - half_width as f64;
    let x = match op {
        ReduceOp::Sum | ReduceOp::Avg => small(rng, 7),
        ReduceOp::Min | ReduceOp::Max => small(rng, 100),
        ReduceOp::Prod if rank < PROD_WIDE_RANKS => [1.0, -1.0, 2.0, 0.5, 2.0, 0.5, -2.0, 0.0][rng.index(8)],
        ReduceOp::Prod => [1.0, -1.0][rng.index(2)],
    };
    from_f64(dtype, x)
}

fn from_f64(dtype: DataType, x: f64) -> Vec<u8> {
    match dtype {
        DataType::F32 => (x as f32).to_le_bytes().to_vec(),
        DataType::F64 => x.to_le_bytes().to_vec(),
        DataType::F16 => f16::from_f64(x).to_le_bytes().to_vec(),
        DataType::Bf16 => bf16::from_f64(x).to_le_bytes().to_vec(),
        _ => unreachable!("integer types are generated as raw bits"),
    }
}

/// What each rank should hold after `call` (by rank, as [`super::SimOutcome::outputs`]).
pub fn expected(call: &Call, world: usize, inputs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let esize = call.dtype.size();
    let block = |rank: usize| {
        let r = chunk_range(call.len_elems, world, rank);
        r.start * esize..r.end * esize
    };
    match call.coll {
        CollKind::AllReduce => vec![reduce(call.dtype, call.op, inputs); world],
        CollKind::ReduceScatter => {
            let full = reduce(call.dtype, call.op, inputs);
            (0..world).map(|rank| full[block(rank)].to_vec()).collect()
        }
        CollKind::AllGather => vec![inputs.concat(); world],
        CollKind::Broadcast => vec![inputs[call.root].clone(); world],
        CollKind::Barrier => vec![Vec::new(); world],
    }
}

/// Element-wise reduction of `inputs` (equal lengths) with the documented semantics.
pub fn reduce(dtype: DataType, op: ReduceOp, inputs: &[Vec<u8>]) -> Vec<u8> {
    let n = inputs.len();
    match dtype {
        DataType::F32 => floats(
            inputs,
            op,
            |b| f32::from_le_bytes(arr(b)).into(),
            |s| ((s as f32) / n as f32).into(),
            |x| (x as f32).to_le_bytes().to_vec(),
        ),
        DataType::F64 => {
            floats(inputs, op, |b| f64::from_le_bytes(arr(b)), |s| s / n as f64, |x| x.to_le_bytes().to_vec())
        }
        DataType::F16 => floats(
            inputs,
            op,
            |b| f16::from_le_bytes(arr(b)).to_f64(),
            |s| f16::from_f32(s as f32 / n as f32).to_f64(),
            |x| f16::from_f64(x).to_le_bytes().to_vec(),
        ),
        DataType::Bf16 => floats(
            inputs,
            op,
            |b| bf16::from_le_bytes(arr(b)).to_f64(),
            |s| bf16::from_f32(s as f32 / n as f32).to_f64(),
            |x| bf16::from_f64(x).to_le_bytes().to_vec(),
        ),
        DataType::I32 => ints::<i32>(inputs, op, i32::wrapping_add, i32::wrapping_mul, |s| s.wrapping_div(n as i32)),
        DataType::I64 => ints::<i64>(inputs, op, i64::wrapping_add, i64::wrapping_mul, |s| s.wrapping_div(n as i64)),
        DataType::U8 => {
            ints::<u8>(inputs, op, u8::wrapping_add, u8::wrapping_mul, |s| s / u8::try_from(n).unwrap_or(u8::MAX))
        }
    }
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// Floats are folded in f64, exact for the inputs [`inputs`] makes; `avg` divides the
/// exact sum in the element type's arithmetic.
fn floats(
    inputs: &[Vec<u8>],
    op: ReduceOp,
    read: impl Fn(&[u8]) -> f64,
    avg: impl Fn(f64) -> f64,
    write: impl Fn(f64) -> Vec<u8>,
) -> Vec<u8> {
    let esize = write(0.0).len();
    let len = inputs.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(len);
    for e in (0..len).step_by(esize) {
        let values = inputs.iter().map(|i| read(&i[e..e + esize]));
        let x = match op {
            ReduceOp::Sum => values.sum(),
            ReduceOp::Avg => avg(values.sum()),
            ReduceOp::Prod => values.product(),
            ReduceOp::Min => values.fold(f64::INFINITY, f64::min),
            ReduceOp::Max => values.fold(f64::NEG_INFINITY, f64::max),
        };
        out.extend(write(x));
    }
    out
}

fn ints<T: Pod + Ord>(
    inputs: &[Vec<u8>],
    op: ReduceOp,
    add: fn(T, T) -> T,
    mul: fn(T, T) -> T,
    div_n: impl Fn(T) -> T,
) -> Vec<u8> {
    let esize = std::mem::size_of::<T>();
    let len = inputs.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(len);
    for e in (0..len).step_by(esize) {
        let mut values = inputs.iter().map(|i| bytemuck::pod_read_unaligned::<T>(&i[e..e + esize]));
        let Some(first) = values.next() else { break };
        let x = match op {
            ReduceOp::Sum => values.fold(first, add),
            ReduceOp::Avg => div_n(values.fold(first, add)),
            ReduceOp::Prod => values.fold(first, mul),
            ReduceOp::Min => values.fold(first, Ord::min),
            ReduceOp::Max => values.fold(first, Ord::max),
        };
        out.extend_from_slice(bytemuck::bytes_of(&x));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_of_hand_made_inputs() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let a = f(&[1.0, 4.0, -2.0]);
        let b = f(&[2.0, -4.0, 0.5]);
        assert_eq!(reduce(DataType::F32, ReduceOp::Sum, &[a.clone(), b.clone()]), f(&[3.0, 0.0, -1.5]));
        assert_eq!(reduce(DataType::F32, ReduceOp::Avg, &[a.clone(), b.clone()]), f(&[1.5, 0.0, -0.75]));
        assert_eq!(reduce(DataType::F32, ReduceOp::Min, &[a.clone(), b.clone()]), f(&[1.0, -4.0, -2.0]));
        let i = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(reduce(DataType::I32, ReduceOp::Avg, &[i(&[-7, i32::MAX]), i(&[0, 1])]), i(&[-3, i32::MIN / 2]));
        assert_eq!(reduce(DataType::U8, ReduceOp::Prod, &[vec![16, 3], vec![17, 5]]), vec![16, 15]);
    }

    #[test]
    fn all_gather_inputs_are_blocks_and_the_output_is_their_concatenation() {
        let call = Call::all_gather(DataType::I64, 11);
        let ins = inputs(&call, 3, 5);
        assert_eq!(ins.iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 32, 24]);
        assert_eq!(expected(&call, 3, &ins)[2], ins.concat());
    }

    #[test]
    fn prod_inputs_stay_within_the_exact_range() {
        let call = Call::all_reduce(ReduceOp::Prod, DataType::F16, 64);
        let ins = inputs(&call, 33, 9);
        for e in 0..64 {
            let wide =
                ins.iter().filter(|i| ![1.0, -1.0].contains(&f16::from_le_bytes(arr(&i[2 * e..2 * e + 2])).to_f32()));
            assert!(wide.count() <= PROD_WIDE_RANKS);
        }
    }
}
