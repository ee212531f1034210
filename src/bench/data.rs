//! `ringbench --data FILE`: buffers filled from a file of real values (saved gradients)
//! instead of the check pattern, so codecs are measured on data that compresses as real
//! data does.
//!
//! The file is raw little-endian elements of the run's dtype (f32, or f16/bf16 with
//! `--dtype`), read once. Rank `r` of `world` reads it from element `r * len / world` on,
//! wrapping round at the end, so ranks hold different values (as data-parallel ranks do) and
//! any buffer size can be filled from any file. Element `i` of rank `r`'s buffer is
//! therefore `file[(r * len / world + i) % len]`, a function of `(r, i)` like the pattern's
//! values, and the check recomputes every rank's values from the same file.
//!
//! # The check
//!
//! Real values are not exact under reduction in another order, so the reference is the
//! reduction in f64 over the members' values, and an element is wrong when it is further
//! from it than the rounding the ring may do. Each of the at most `n` roundings of a
//! partial result (in the element type, and on the wire for a lossy codec) is off by at
//! most `u * |partial|` with `u` the unit roundoff, and every partial is at most
//! `sum |x_i|`, so the bound is `(n + 1) * (u_elem + u_wire) * sum |x_i|` (Prod: the product
//! of the `|x_i|`; Avg: divided by `n`), plus `n + 1` times half the smallest subnormal for
//! underflow. Min and Max are exact with lossless codecs. The check also compares a hash of
//! the result across ranks: every rank must hold the same bits.

use std::path::Path;

use crate::codec::Codec;
use crate::core::schedule::chunk_range;
use crate::{DataType, Rank, ReduceOp};

use super::pattern::PatternElement;

/// Largest data file read, in bytes: it is held in memory by every rank. Longer files
/// are cut to this many bytes (whole elements).
pub const DATA_BYTES_MAX: u64 = 1 << 30;

/// A data file, read once, with what the check needs to know about the run.
#[derive(Clone, PartialEq, Eq)]
pub struct DataFile {
    /// The file's path as given, for titles and the JSON record.
    pub name: String,
    /// Element type of the file (the run's dtype).
    pub dtype: DataType,
    /// Codec the run sends with: a lossy one widens the check's tolerance by its rounding.
    pub wire_codec: Codec,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for DataFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataFile({}, {} {} elements)", self.name, self.len_elems(), self.dtype.name())
    }
}

impl DataFile {
    /// Reads `path` as raw little-endian `dtype` elements (at most [`DATA_BYTES_MAX`] bytes).
    ///
    /// # Errors
    /// A message for an unreadable or empty file, a length that is not whole elements, or
    /// a dtype other than f32, f16 and bf16.
    pub fn read(path: &Path, dtype: DataType, wire_codec: Codec) -> Result<DataFile, String> {
        use std::io::Read;
        let shown = path.display();
        if !matches!(dtype, DataType::F32 | DataType::F16 | DataType::Bf16) {
            return Err(format!("--data takes f32, f16 or bf16 elements, not {}", dtype.name()));
        }
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open --data {shown}: {e}"))?;
        let mut bytes = Vec::new();
        file.take(DATA_BYTES_MAX).read_to_end(&mut bytes).map_err(|e| format!("cannot read --data {shown}: {e}"))?;
        DataFile::from_bytes(shown.to_string(), dtype, wire_codec, bytes)
    }

    /// A data file from bytes already in memory (tests, or a caller that reads its own).
    ///
    /// # Errors
    /// As [`DataFile::read`].
    pub fn from_bytes(name: String, dtype: DataType, wire_codec: Codec, bytes: Vec<u8>) -> Result<DataFile, String> {
        let esize = dtype.size();
        if bytes.len() < esize {
            return Err(format!("--data {name} holds no whole {} element", dtype.name()));
        }
        if bytes.len() % esize != 0 {
            return Err(format!("--data {name} is {} bytes, not whole {}-byte elements", bytes.len(), esize));
        }
        Ok(DataFile { name, dtype, wire_codec, bytes })
    }

    /// Elements in the file.
    pub fn len_elems(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// The file's elements as `T`, which must be the file's dtype.
    ///
    /// # Panics
    /// If `T` is not the file's dtype (caller bug).
    pub fn elements<T: PatternElement>(&self) -> Vec<T> {
        assert_eq!(T::DTYPE, self.dtype, "elements of another type than the file's");
        let mut v: Vec<T> = bytemuck::pod_collect_to_vec(&self.bytes);
        if cfg!(target_endian = "big") {
            for x in &mut v {
                bytemuck::bytes_of_mut(x).reverse();
            }
        }
        v
    }

    /// The smallest magnitude at which a partial result may overflow: in the element type,
    /// or on the wire for a lossy codec.
    fn overflow(&self) -> f64 {
        let wire = match self.wire_codec {
            Codec::F16 => max_finite(DataType::F16),
            _ => f64::INFINITY,
        };
        max_finite(self.dtype).min(wire)
    }

    /// Largest relative rounding of one step: the element type's and, for a lossy codec,
    /// the wire format's unit roundoff; and the absolute error of one underflowing rounding.
    fn rounding(&self) -> (f64, f64) {
        let (u_elem, tiny_elem) = unit_roundoff(self.dtype);
        let (u_wire, tiny_wire) = match self.wire_codec {
            Codec::Bf16 | Codec::Bf16Zstd => unit_roundoff(DataType::Bf16),
            Codec::F16 => unit_roundoff(DataType::F16),
            _ => (0.0, 0.0),
        };
        (u_elem + u_wire, tiny_elem.max(tiny_wire))
    }
}

/// Largest finite value of a float type.
fn max_finite(dtype: DataType) -> f64 {
    match dtype {
        DataType::F16 => f64::from(half::f16::MAX),
        DataType::Bf16 => f64::from(half::bf16::MAX),
        DataType::F64 => f64::MAX,
        _ => f64::from(f32::MAX),
    }
}

/// Unit roundoff (half an ulp of 1, relative) and half the smallest subnormal of a float type.
fn unit_roundoff(dtype: DataType) -> (f64, f64) {
    match dtype {
        DataType::F16 => (2f64.powi(-11), 2f64.powi(-25)),
        DataType::Bf16 => (2f64.powi(-8), 2f64.powi(-134)),
        DataType::F64 => (2f64.powi(-53), 2f64.powi(-1075)),
        _ => (2f64.powi(-24), 2f64.powi(-150)),
    }
}

/// The file's values as the ranks' inputs: rank `r`'s element `i` is
/// `values[(r * len / world + i) % len]`.
#[derive(Debug)]
pub struct FileSource<'a, T> {
    file: &'a DataFile,
    values: Vec<T>,
    world: usize,
}

impl<'a, T: PatternElement> FileSource<'a, T> {
    /// The inputs of a `world`-rank run.
    ///
    /// # Panics
    /// If `T` is not the file's dtype (caller bug).
    pub fn new(file: &'a DataFile, world: usize) -> FileSource<'a, T> {
        FileSource { file, values: file.elements(), world: world.max(1) }
    }

    /// Where rank `rank`'s element 0 lies in the file.
    pub fn offset_elems(&self, rank: Rank) -> usize {
        let len = self.values.len();
        // rank < world, so rank * len / world < len; the u128 product cannot overflow.
        ((rank % self.world) as u128 * len as u128 / self.world as u128) as usize
    }

    /// Fills `buf` with `rank`'s elements `first_index..`, in contiguous runs.
    pub fn fill(&self, rank: Rank, first_index: usize, buf: &mut [T]) {
        let len = self.values.len();
        let mut at = (self.offset_elems(rank) + first_index % len) % len;
        let mut done = 0;
        while done < buf.len() {
            let run = (len - at).min(buf.len() - done);
            buf[done..done + run].copy_from_slice(&self.values[at..at + run]);
            done += run;
            at = 0;
        }
    }

    fn value(&self, rank: Rank, index: usize) -> f64 {
        let len = self.values.len();
        self.values[(self.offset_elems(rank) + index % len) % len].to_f64()
    }

    /// Elements of `buf` (elements `first_index..` of a reduction over `members` with `op`)
    /// outside the rounding bound around the f64 reference.
    pub fn count_wrong_reduced(&self, op: ReduceOp, members: &[Rank], first_index: usize, buf: &[T]) -> u64 {
        let n = members.len().max(1);
        let (u, tiny) = self.file.rounding();
        let lossless = u == unit_roundoff(self.file.dtype).0;
        let steps = (n + 1) as f64;
        let mut inputs = Vec::with_capacity(n);
        let wrong = buf.iter().enumerate().filter(|&(j, got)| {
            inputs.clear();
            inputs.extend(members.iter().map(|&r| self.value(r, first_index + j)));
            let (want, scale, partial_max) = reference(op, &inputs);
            let select = matches!(op, ReduceOp::Min | ReduceOp::Max);
            // An underflow in a product is multiplied by the factors after it.
            let amplified = if op == ReduceOp::Prod { partial_max } else { 1.0 };
            let tol = if select && lossless { 0.0 } else { steps * (u * scale + tiny * amplified) };
            // Which value Min and Max pick among NaNs is the kernel's choice, and a partial
            // result that may overflow may end as any infinity or NaN: neither is checked.
            let nan_pick = select && inputs.iter().any(|x| x.is_nan());
            let overflow = !got.to_f64().is_finite() && partial_max * (1.0 + steps * u) >= self.file.overflow();
            !within(got.to_f64(), want, tol, nan_pick || overflow)
        });
        wrong.count() as u64
    }

    /// Elements of `buf` (elements `first_index..`) that differ from `rank`'s values by
    /// more than a lossy codec's rounding (not at all with a lossless one).
    pub fn count_wrong_from(&self, rank: Rank, first_index: usize, buf: &[T]) -> u64 {
        let (u_elem, _) = unit_roundoff(self.file.dtype);
        let (u, tiny) = self.file.rounding();
        let lossless = u == u_elem;
        let wrong = buf.iter().enumerate().filter(|&(j, got)| {
            let want = self.value(rank, first_index + j);
            if lossless {
                got.to_f64().to_bits() != want.to_bits() && !(want.is_nan() && got.to_f64().is_nan())
            } else {
                !within(got.to_f64(), want, u * want.abs() + tiny, false)
            }
        });
        wrong.count() as u64
    }

    /// Wrong elements of an all_gather output: block `b` must hold `members[b]`'s values.
    pub fn count_wrong_gathered(&self, members: &[Rank], buf: &[T]) -> u64 {
        if members.is_empty() {
            return buf.len() as u64;
        }
        let blocks = members.iter().enumerate().map(|(b, &r)| {
            let range = chunk_range(buf.len(), members.len(), b);
            self.count_wrong_from(r, range.start, &buf[range])
        });
        blocks.sum()
    }
}

/// The f64 reference of `op` over `inputs`, the magnitude its rounding error scales with,
/// and a bound on the magnitude of any partial result (for overflow).
fn reference(op: ReduceOp, inputs: &[f64]) -> (f64, f64, f64) {
    let n = inputs.len().max(1) as f64;
    let abs_sum: f64 = inputs.iter().map(|x| x.abs()).sum();
    match op {
        ReduceOp::Sum => (inputs.iter().sum(), abs_sum, abs_sum),
        ReduceOp::Avg => (inputs.iter().sum::<f64>() / n, abs_sum / n, abs_sum),
        ReduceOp::Prod => {
            let p: f64 = inputs.iter().product();
            (p, p.abs(), inputs.iter().map(|x| x.abs().max(1.0)).product())
        }
        ReduceOp::Min => (inputs.iter().copied().fold(f64::INFINITY, f64::min), abs_sum, abs_sum),
        ReduceOp::Max => (inputs.iter().copied().fold(f64::NEG_INFINITY, f64::max), abs_sum, abs_sum),
    }
}

/// Whether `got` is within `tol` of `want`. NaN must meet NaN and an infinity the same
/// infinity; `any_ok` accepts anything.
fn within(got: f64, want: f64, tol: f64, any_ok: bool) -> bool {
    if any_ok {
        return true;
    }
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return want == got;
    }
    (got - want).abs() <= tol
}

/// FNV-1a hash of a buffer's bytes: ranks compare it to check they hold the same bits.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::core::reduce::{divide, reduce_into};

    fn file_of<T: PatternElement>(values: &[T], codec: Codec) -> DataFile {
        let mut bytes = Vec::new();
        for v in values {
            let mut b = bytemuck::bytes_of(v).to_vec();
            if cfg!(target_endian = "big") {
                b.reverse();
            }
            bytes.extend(b);
        }
        DataFile::from_bytes("test".into(), T::DTYPE, codec, bytes).unwrap()
    }

    /// Gradient-like values: signed, spread over several orders of magnitude, some zeros.
    fn gradients(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u32 << 24) as f32;
                if i % 7 == 0 {
                    0.0
                } else {
                    (x - 0.5) * 10f32.powi(-((i % 5) as i32))
                }
            })
            .collect()
    }

    #[test]
    fn ranks_start_at_spread_offsets_and_wrap() {
        let values: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let file = file_of(&values, Codec::Raw);
        let src = FileSource::<f32>::new(&file, 4);
        assert_eq!((0..4).map(|r| src.offset_elems(r)).collect::<Vec<_>>(), vec![0, 2, 5, 7]);
        let mut buf = vec![0.0f32; 25];
        src.fill(3, 1, &mut buf);
        let want: Vec<f32> = (0..25).map(|i| ((7 + 1 + i) % 10) as f32).collect();
        assert_eq!(buf, want);
        assert_eq!(src.count_wrong_from(3, 1, &buf), 0);
        buf[4] = 99.0;
        assert_eq!(src.count_wrong_from(3, 1, &buf), 1);
    }

    #[test]
    fn files_must_be_whole_floats() {
        assert!(DataFile::from_bytes("x".into(), DataType::F32, Codec::Raw, vec![0; 6]).is_err());
        assert!(DataFile::from_bytes("x".into(), DataType::F16, Codec::Raw, vec![]).is_err());
        assert!(DataFile::from_bytes("x".into(), DataType::F16, Codec::Raw, vec![0; 6]).is_ok());
        let e = DataFile::read(Path::new("/nonexistent/grads.f32"), DataType::F32, Codec::Raw).unwrap_err();
        assert!(e.contains("/nonexistent/grads.f32"), "{e}");
        assert!(DataFile::read(Path::new("/dev/null"), DataType::I32, Codec::Raw).unwrap_err().contains("f32"));
    }

    /// Reduces the ranks' inputs with the library kernel in `order`, as one chunk owner does.
    fn ring_result<T: PatternElement>(src: &FileSource<T>, op: ReduceOp, order: &[Rank], len: usize) -> Vec<T> {
        let mut acc = vec![T::zeroed(); len];
        src.fill(order[0], 0, &mut acc);
        let mut other = vec![T::zeroed(); len];
        for &r in &order[1..] {
            src.fill(r, 0, &mut other);
            reduce_into(T::DTYPE, op, bytemuck::cast_slice_mut(&mut acc), bytemuck::cast_slice(&other));
        }
        if op == ReduceOp::Avg {
            divide(T::DTYPE, bytemuck::cast_slice_mut(&mut acc), order.len());
        }
        acc
    }

    fn kernel_results_pass<T: PatternElement>(values: &[T]) {
        let file = file_of(values, Codec::Raw);
        for world in [1usize, 2, 4, 7] {
            let src = FileSource::<T>::new(&file, world);
            let members: Vec<Rank> = (0..world).collect();
            let reversed: Vec<Rank> = members.iter().rev().copied().collect();
            for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
                for order in [&members, &reversed] {
                    let got = ring_result(&src, op, order, 3000);
                    let wrong = src.count_wrong_reduced(op, &members, 0, &got);
                    assert_eq!(wrong, 0, "{:?} {op:?} world {world} order {order:?}", T::DTYPE);
                }
            }
        }
    }

    #[test]
    fn reductions_in_any_order_pass_the_check() {
        let g = gradients(2000);
        kernel_results_pass::<f32>(&g);
        kernel_results_pass::<f16>(&g.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>());
        kernel_results_pass::<bf16>(&g.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bits_with_infinities_nans_and_overflow_pass_the_check() {
        // f32 gradients read as bf16 and f16: the low halves are arbitrary bit patterns.
        let bytes: Vec<u8> = gradients(3000).iter().flat_map(|x| x.to_le_bytes()).collect();
        let halves: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        kernel_results_pass::<bf16>(&halves.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>());
        kernel_results_pass::<f16>(&halves.iter().map(|&b| f16::from_bits(b)).collect::<Vec<_>>());
    }

    #[test]
    fn misplaced_or_corrupt_results_fail_the_check() {
        let file = file_of(&gradients(5000), Codec::Raw);
        let src = FileSource::<f32>::new(&file, 4);
        let members = [0, 1, 2, 3];
        let mut got = ring_result(&src, ReduceOp::Sum, &members, 4000);
        assert_eq!(src.count_wrong_reduced(ReduceOp::Sum, &members, 0, &got), 0);
        // One rank's contribution missing, one value off by a relative 1e-3, a NaN.
        let mut short = ring_result(&src, ReduceOp::Sum, &members[..3], 4000);
        assert!(src.count_wrong_reduced(ReduceOp::Sum, &members, 0, &short) > 3000);
        let k = (0..4000).find(|&i| got[i].abs() > 1e-3).unwrap();
        got[k] *= 1.001;
        got[k + 1] = f32::NAN;
        assert_eq!(src.count_wrong_reduced(ReduceOp::Sum, &members, 0, &got), 2);
        // A block shifted by one element.
        short.copy_from_slice(&ring_result(&src, ReduceOp::Max, &members, 4000));
        assert_eq!(src.count_wrong_reduced(ReduceOp::Max, &members, 0, &short), 0);
        assert!(src.count_wrong_reduced(ReduceOp::Max, &members, 1, &short) > 3000);
    }

    #[test]
    fn a_lossy_codec_widens_the_tolerance_by_its_rounding() {
        let g = gradients(3000);
        let lossless = file_of(&g, Codec::ShuffleZstd);
        let lossy = file_of(&g, Codec::Bf16);
        let members = [0, 1, 2];
        // Each rank's input rounded to bf16 once, as a lossy wire would.
        let src = FileSource::<f32>::new(&lossy, 3);
        let mut got = ring_result(&src, ReduceOp::Sum, &members, 3000);
        crate::codec::round_in_place(Codec::Bf16, DataType::F32, bytemuck::cast_slice_mut(&mut got)).unwrap();
        assert_eq!(src.count_wrong_reduced(ReduceOp::Sum, &members, 0, &got), 0);
        let strict = FileSource::<f32>::new(&lossless, 3);
        assert!(strict.count_wrong_reduced(ReduceOp::Sum, &members, 0, &got) > 100);
        let mut gathered = vec![0.0f32; 3000];
        for (b, &r) in members.iter().enumerate() {
            let range = chunk_range(3000, 3, b);
            src.fill(r, range.start, &mut gathered[range]);
        }
        assert_eq!(strict.count_wrong_gathered(&members, &gathered), 0);
        crate::codec::round_in_place(Codec::Bf16, DataType::F32, bytemuck::cast_slice_mut(&mut gathered)).unwrap();
        assert_eq!(src.count_wrong_gathered(&members, &gathered), 0);
        assert!(strict.count_wrong_gathered(&members, &gathered) > 100);
    }

    #[test]
    fn hashes_tell_buffers_apart() {
        assert_eq!(hash_bytes(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(hash_bytes(&[0, 1]), hash_bytes(&[1, 0]));
    }
}
