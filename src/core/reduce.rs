//! Element-wise reduction kernels per dtype and op, on byte slices.
//!
//! `dst[i] = op(dst[i], src[i])`. The loops are plain slices zipped together so the
//! compiler vectorizes them (see `benches/reduce.rs`). f16 and bf16 are reduced through f32
//! and rounded back once per hop, as NCCL does. Integer Sum and Prod wrap. Min and Max on
//! floats return the other operand when one is NaN (IEEE minNum/maxNum, like `f32::min`).
//! Every rank gets the same bits because each chunk is reduced once, by a fixed chain.

use bytemuck::Pod;
use half::{bf16, f16};

use super::{DataType, ReduceOp};

/// Elements converted per block when a slice is not aligned for its type.
const UNALIGNED_BLOCK_ELEMS: usize = 512;

/// `dst[i] = op(dst[i], src[i])` over the elements of `dtype` in `dst` and `src`.
/// `Avg` accumulates like `Sum` (divide once at the end with [`divide`]).
///
/// # Panics
/// If the lengths differ or are not a multiple of the element size (caller bug).
pub fn reduce_into(dtype: DataType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "reduce lengths");
    assert_eq!(dst.len() % dtype.size(), 0, "reduce length not a multiple of the element");
    match dtype {
        DataType::F32 => typed::<f32>(op, dst, src, &FloatOps),
        DataType::F64 => typed::<f64>(op, dst, src, &FloatOps),
        DataType::I32 => typed::<i32>(op, dst, src, &IntOps),
        DataType::I64 => typed::<i64>(op, dst, src, &IntOps),
        DataType::U8 => typed::<u8>(op, dst, src, &IntOps),
        DataType::F16 => typed::<f16>(op, dst, src, &HalfOps),
        DataType::Bf16 => typed::<bf16>(op, dst, src, &HalfOps),
    }
}

/// `dst[i] = op(src[i], dst[i])`: [`reduce_into`] with the operands the other way round.
/// The same two values in the same order give the same bits (`op` need not be commutative
/// bit for bit: a NaN's payload, or which zero `Min` returns, can depend on the order).
///
/// # Panics
/// As [`reduce_into`].
pub fn reduce_into_rev(dtype: DataType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "reduce lengths");
    // Through an aligned block on the stack, which stays in cache.
    let mut block = [0u64; REV_BLOCK_BYTES / 8];
    let tmp: &mut [u8] = bytemuck::cast_slice_mut(&mut block);
    for (d, s) in dst.chunks_mut(REV_BLOCK_BYTES).zip(src.chunks(REV_BLOCK_BYTES)) {
        let t = &mut tmp[..d.len()];
        t.copy_from_slice(s);
        reduce_into(dtype, op, t, d);
        d.copy_from_slice(t);
    }
}

/// Bytes per block of [`reduce_into_rev`] (a multiple of every element size).
const REV_BLOCK_BYTES: usize = 4096;

/// Divides every element by `count` (the Avg finish): float division, or integer division
/// truncating toward zero. `count == 0` leaves the data unchanged.
pub fn divide(dtype: DataType, dst: &mut [u8], count: usize) {
    if count <= 1 {
        return;
    }
    fn apply<T: Pod>(dst: &mut [u8], f: impl Fn(T) -> T) {
        if let Ok(d) = bytemuck::try_cast_slice_mut::<u8, T>(dst) {
            d.iter_mut().for_each(|x| *x = f(*x));
        } else {
            for c in dst.chunks_exact_mut(std::mem::size_of::<T>()) {
                let v: T = bytemuck::pod_read_unaligned(c);
                c.copy_from_slice(bytemuck::bytes_of(&f(v)));
            }
        }
    }
    let n = count;
    match dtype {
        DataType::F32 => apply(dst, |x: f32| x / n as f32),
        DataType::F64 => apply(dst, |x: f64| x / n as f64),
        DataType::F16 => apply(dst, |x: f16| f16::from_f32(x.to_f32() / n as f32)),
        DataType::Bf16 => apply(dst, |x: bf16| bf16::from_f32(x.to_f32() / n as f32)),
        DataType::I32 => apply(dst, |x: i32| x.wrapping_div(i32::try_from(n).unwrap_or(i32::MAX))),
        DataType::I64 => apply(dst, |x: i64| x.wrapping_div(i64::try_from(n).unwrap_or(i64::MAX))),
        DataType::U8 => apply(dst, |x: u8| x / u8::try_from(n).unwrap_or(u8::MAX)),
    }
}

/// The scalar operations for one family of types; each kernel is a zip loop over slices.
trait Ops<T> {
    fn kernel(&self, op: ReduceOp, d: &mut [T], s: &[T]);
}

struct FloatOps;
struct IntOps;
struct HalfOps;

macro_rules! float_kernel {
    ($t:ty) => {
        impl Ops<$t> for FloatOps {
            fn kernel(&self, op: ReduceOp, d: &mut [$t], s: &[$t]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => d.iter_mut().zip(s).for_each(|(a, b)| *a += *b),
                    ReduceOp::Prod => d.iter_mut().zip(s).for_each(|(a, b)| *a *= *b),
                    ReduceOp::Min => d.iter_mut().zip(s).for_each(|(a, b)| *a = a.min(*b)),
                    ReduceOp::Max => d.iter_mut().zip(s).for_each(|(a, b)| *a = a.max(*b)),
                }
            }
        }
    };
}
float_kernel!(f32);
float_kernel!(f64);

macro_rules! int_kernel {
    ($t:ty) => {
        impl Ops<$t> for IntOps {
            fn kernel(&self, op: ReduceOp, d: &mut [$t], s: &[$t]) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => d.iter_mut().zip(s).for_each(|(a, b)| *a = a.wrapping_add(*b)),
                    ReduceOp::Prod => d.iter_mut().zip(s).for_each(|(a, b)| *a = a.wrapping_mul(*b)),
                    ReduceOp::Min => d.iter_mut().zip(s).for_each(|(a, b)| *a = (*a).min(*b)),
                    ReduceOp::Max => d.iter_mut().zip(s).for_each(|(a, b)| *a = (*a).max(*b)),
                }
            }
        }
    };
}
int_kernel!(i32);
int_kernel!(i64);
int_kernel!(u8);

/// Elements converted to f32 per block by the half-precision kernels (two stack buffers).
const HALF_BLOCK_ELEMS: usize = 256;

/// bfloat16 to f32 is exact: the bf16 bits are the high half of the f32.
fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d = f32::from_bits(u32::from(s.to_bits()) << 16));
}

/// f32 to bfloat16, round to nearest even, NaN kept quiet: bit for bit what
/// `bf16::from_f32` does, written so the loop vectorizes.
fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| {
        let x = s.to_bits();
        let nan = x & 0x7FFF_FFFF > 0x7F80_0000;
        let up = u32::from((x & 0x8000) != 0 && (x & (3 * 0x8000 - 1)) != 0);
        let rounded = ((x >> 16) + up) as u16;
        *d = bf16::from_bits(if nan { ((x >> 16) | 0x0040) as u16 } else { rounded });
    });
}

/// Reduces half-precision slices through f32 blocks: widen both, apply the f32 kernel,
/// round back once (as NCCL does per hop).
trait HalfConvert: Copy {
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl HalfConvert for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn narrow(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl HalfConvert for bf16 {
    fn widen(src: &[bf16], dst: &mut [f32]) {
        bf16_to_f32(src, dst);
    }
    fn narrow(src: &[f32], dst: &mut [bf16]) {
        f32_to_bf16(src, dst);
    }
}

macro_rules! half_kernel {
    ($t:ty) => {
        impl Ops<$t> for HalfOps {
            fn kernel(&self, op: ReduceOp, d: &mut [$t], s: &[$t]) {
                let mut a = [0f32; HALF_BLOCK_ELEMS];
                let mut b = [0f32; HALF_BLOCK_ELEMS];
                for (dc, sc) in d.chunks_mut(HALF_BLOCK_ELEMS).zip(s.chunks(HALF_BLOCK_ELEMS)) {
                    let n = dc.len();
                    <$t as HalfConvert>::widen(dc, &mut a[..n]);
                    <$t as HalfConvert>::widen(sc, &mut b[..n]);
                    FloatOps.kernel(op, &mut a[..n], &b[..n]);
                    <$t as HalfConvert>::narrow(&a[..n], dc);
                }
            }
        }
    };
}
half_kernel!(f16);
half_kernel!(bf16);

fn typed<T: Pod + Default>(op: ReduceOp, dst: &mut [u8], src: &[u8], ops: &impl Ops<T>) {
    match (bytemuck::try_cast_slice_mut::<u8, T>(dst), bytemuck::try_cast_slice::<u8, T>(src)) {
        (Ok(d), Ok(s)) => ops.kernel(op, d, s),
        _ => {
            // Unaligned bytes (a payload at an odd offset): reduce through aligned blocks.
            let esize = std::mem::size_of::<T>();
            let mut a = [T::default(); UNALIGNED_BLOCK_ELEMS];
            let mut b = [T::default(); UNALIGNED_BLOCK_ELEMS];
            for (dc, sc) in dst.chunks_mut(UNALIGNED_BLOCK_ELEMS * esize).zip(src.chunks(UNALIGNED_BLOCK_ELEMS * esize))
            {
                let n = dc.len() / esize;
                bytemuck::cast_slice_mut::<T, u8>(&mut a[..n]).copy_from_slice(dc);
                bytemuck::cast_slice_mut::<T, u8>(&mut b[..n]).copy_from_slice(sc);
                ops.kernel(op, &mut a[..n], &b[..n]);
                dc.copy_from_slice(bytemuck::cast_slice(&a[..n]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Pod>(dtype: DataType, op: ReduceOp, a: &[T], b: &[T]) -> Vec<T> {
        let mut d = a.to_vec();
        reduce_into(dtype, op, bytemuck::cast_slice_mut(&mut d), bytemuck::cast_slice(b));
        d
    }

    #[test]
    fn every_op_on_every_type() {
        assert_eq!(run(DataType::F32, ReduceOp::Sum, &[1.0f32, 2.0], &[0.5, -4.0]), vec![1.5, -2.0]);
        assert_eq!(run(DataType::F64, ReduceOp::Prod, &[3.0f64], &[0.5]), vec![1.5]);
        assert_eq!(run(DataType::I32, ReduceOp::Sum, &[i32::MAX], &[1]), vec![i32::MIN]);
        assert_eq!(run(DataType::I64, ReduceOp::Min, &[5i64, -3], &[2, 9]), vec![2, -3]);
        assert_eq!(run(DataType::U8, ReduceOp::Max, &[5u8, 200], &[7, 9]), vec![7, 200]);
        assert_eq!(run(DataType::U8, ReduceOp::Prod, &[16u8], &[17]), vec![16]);
        let h = run(DataType::F16, ReduceOp::Sum, &[f16::from_f32(1.5)], &[f16::from_f32(2.25)]);
        assert_eq!(h[0].to_f32(), 3.75);
        let b = run(DataType::Bf16, ReduceOp::Max, &[bf16::from_f32(-1.0)], &[bf16::from_f32(-2.0)]);
        assert_eq!(b[0].to_f32(), -1.0);
    }

    #[test]
    fn unaligned_source_matches_aligned() {
        let a: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i * 3) as f32).collect();
        let want = run(DataType::F32, ReduceOp::Sum, &a, &b);
        let mut raw = vec![0u8; 4001];
        raw[1..].copy_from_slice(bytemuck::cast_slice(&b));
        let mut d = a.clone();
        reduce_into(DataType::F32, ReduceOp::Sum, bytemuck::cast_slice_mut(&mut d), &raw[1..]);
        assert_eq!(d, want);
    }

    /// Runs `op` over every 16-bit pattern against a spread of others through the block
    /// kernel, and compares with the scalar conversions of the `half` crate.
    fn check_half<T: Pod + PartialEq + std::fmt::Display>(
        dtype: DataType,
        op: ReduceOp,
        from_bits: fn(u16) -> T,
        to_f32: fn(T) -> f32,
        from_f32: fn(f32) -> T,
        is_nan: fn(T) -> bool,
    ) {
        let all: Vec<T> = (0..=u16::MAX).map(from_bits).collect();
        let other: Vec<T> = (0..=u16::MAX).map(|i| from_bits(i.wrapping_mul(40503))).collect();
        let got = run(dtype, op, &all, &other);
        for ((g, a), b) in got.iter().zip(&all).zip(&other) {
            let (x, y) = (to_f32(*a), to_f32(*b));
            let want = from_f32(match op {
                ReduceOp::Sum => x + y,
                ReduceOp::Prod => x * y,
                ReduceOp::Min => x.min(y),
                _ => x.max(y),
            });
            let same = bytemuck::bytes_of(g) == bytemuck::bytes_of(&want) || (is_nan(*g) && is_nan(want));
            assert!(same, "{op:?} {a} {b}: {g} != {want}");
        }
    }

    #[test]
    fn half_kernels_match_scalar_rounding_bit_for_bit() {
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
            check_half(DataType::Bf16, op, bf16::from_bits, bf16::to_f32, bf16::from_f32, |v| v.is_nan());
            check_half(DataType::F16, op, f16::from_bits, f16::to_f32, f16::from_f32, |v| v.is_nan());
        }
    }

    #[test]
    fn reversed_operands_give_the_bits_of_the_other_order() {
        let a: Vec<f32> = (0..3000).map(|i| if i % 7 == 0 { f32::from_bits(0x7fc0_0001 + i) } else { -0.0 }).collect();
        let b: Vec<f32> = (0..3000).map(|i| if i % 7 == 0 { f32::from_bits(0x7fc0_1000 + i) } else { 0.0 }).collect();
        for op in [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max] {
            let want = run(DataType::F32, op, &b, &a);
            let mut d = a.clone();
            reduce_into_rev(DataType::F32, op, bytemuck::cast_slice_mut(&mut d), bytemuck::cast_slice(&b));
            assert_eq!(bytemuck::cast_slice::<f32, u32>(&d), bytemuck::cast_slice::<f32, u32>(&want), "{op:?}");
        }
        // The order matters for some op on these operands, so the check above can fail.
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let differs = [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max]
            .into_iter()
            .any(|op| bits(run(DataType::F32, op, &a, &b)) != bits(run(DataType::F32, op, &b, &a)));
        assert!(differs, "operands whose order changes no bits test nothing");
    }

    #[test]
    fn divide_is_the_avg_finish() {
        let mut v = [6.0f32, 3.0];
        divide(DataType::F32, bytemuck::cast_slice_mut(&mut v), 3);
        assert_eq!(v, [2.0, 1.0]);
        let mut i = [-7i32, 7];
        divide(DataType::I32, bytemuck::cast_slice_mut(&mut i), 2);
        assert_eq!(i, [-3, 3]);
    }
}
