//! Command-line options of `ringbench`, spelled like nccl-tests' `all_reduce_perf`.

use std::path::PathBuf;

use clap::Parser;

use super::{MAX_BYTES_LIMIT, SIZES_MAX};
use crate::codec::CodecChoice;
use crate::core::collective::Algorithm;
use crate::{DataType, ReduceOp};

/// The collective a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BenchColl {
    /// `Communicator::all_reduce`, in place.
    AllReduce,
    /// `Communicator::reduce_scatter`; `size` is the input.
    ReduceScatter,
    /// `Communicator::all_gather`; `size` is the output.
    AllGather,
    /// `Communicator::broadcast` from rank 0.
    Broadcast,
}

impl BenchColl {
    /// Name as `--coll` takes it and the table prints it.
    pub fn name(self) -> &'static str {
        match self {
            BenchColl::AllReduce => "all_reduce",
            BenchColl::ReduceScatter => "reduce_scatter",
            BenchColl::AllGather => "all_gather",
            BenchColl::Broadcast => "broadcast",
        }
    }

    /// Whether the collective reduces (and so has a meaningful `--op`).
    pub fn reduces(self) -> bool {
        matches!(self, BenchColl::AllReduce | BenchColl::ReduceScatter)
    }

    /// The root column: rank 0 for broadcast, -1 (none) otherwise, as nccl-tests prints.
    pub fn root(self) -> i64 {
        match self {
            BenchColl::Broadcast => 0,
            _ => -1,
        }
    }
}

/// `ringbench` flags. Run it under the launcher: `ringrun -n 4 ringbench -b 4K -e 256M -f 4`.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringbench", version, about = "nccl-tests-style benchmark of ringcc collectives")]
pub struct Options {
    /// Smallest size in bytes (K/M/G suffixes are powers of 1024).
    #[arg(short = 'b', long = "minbytes", default_value = "32M", value_parser = parse_size)]
    pub min_bytes: u64,
    /// Largest size in bytes.
    #[arg(short = 'e', long = "maxbytes", default_value = "32M", value_parser = parse_size)]
    pub max_bytes: u64,
    /// Increment between sizes in bytes, used when the step factor is 1.
    #[arg(short = 'i', long = "stepbytes", default_value = "1M", value_parser = parse_size)]
    pub step_bytes: u64,
    /// Multiplication factor between sizes; 1 means add `--stepbytes` instead.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 1)]
    pub step_factor: u64,
    /// Timed iterations per size.
    #[arg(short = 'n', long = "iters", default_value_t = 20)]
    pub iters: usize,
    /// Untimed warm-up iterations per size.
    #[arg(short = 'w', long = "warmup_iters", default_value_t = 5)]
    pub warmup_iters: usize,
    /// Check results exactly after each size (1) or not (0).
    #[arg(short = 'c', long = "check", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub check: u8,
    /// Element type: f32 f64 f16 bf16 i32 i64 u8 (or the nccl names float, half, ...).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DataType,
    /// Reduction: sum avg prod min max.
    #[arg(long, default_value = "sum", value_parser = parse_op)]
    pub op: ReduceOp,
    /// Payload codec: raw zstd shuffle+zstd bf16 f16 bf16+zstd auto auto+bf16 (overrides
    /// RINGCC_CODEC; default: the environment's, else raw).
    #[arg(long, value_parser = parse_codec)]
    pub codec: Option<CodecChoice>,
    /// zstd level of the zstd codecs (overrides RINGCC_CODEC_LEVEL; negative: zstd's fast modes).
    #[arg(long = "codec-level", allow_negative_numbers = true)]
    pub codec_level: Option<i32>,
    /// all_reduce algorithm: auto ring bidir.
    #[arg(long, default_value = "auto", value_parser = parse_algo)]
    pub algo: Algorithm,
    /// Collective: all_reduce reduce_scatter all_gather broadcast.
    #[arg(long, default_value = "all_reduce", value_parser = parse_coll)]
    pub coll: BenchColl,
    /// Also write every row and the machine description as JSON to this file (rank 0).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Segment size in bytes (overrides the configuration; K/M suffixes allowed).
    #[arg(long = "segment-bytes", value_parser = parse_size)]
    pub segment_bytes: Option<u64>,
    /// Label for the JSON file (legend of scripts/plot); default names the run.
    #[arg(long)]
    pub label: Option<String>,
    /// Fill buffers from this file of raw little-endian values of `--dtype` (f32, f16 or
    /// bf16; e.g. saved gradients, see benches/data/) instead of the check pattern. Rank r
    /// reads from element r * len / world on, wrapping round; `-c 1` checks against the
    /// same values.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
}

impl Options {
    /// The sizes to visit, in order: nccl-tests' loop `for (size = min; size <= max;
    /// size = factor > 1 ? size * factor : size + step)`.
    ///
    /// # Errors
    /// A message for an empty or endless range, more than [`SIZES_MAX`] sizes, or a
    /// largest size over [`MAX_BYTES_LIMIT`].
    pub fn sizes(&self) -> Result<Vec<u64>, String> {
        let (min, max) = (self.min_bytes, self.max_bytes);
        if min > max {
            return Err(format!("minbytes {min} is larger than maxbytes {max}"));
        }
        if max > MAX_BYTES_LIMIT {
            return Err(format!("maxbytes {max} is over the limit of {MAX_BYTES_LIMIT} bytes"));
        }
        if self.step_factor > 1 && min == 0 {
            return Err("minbytes must be at least 1 with a step factor".into());
        }
        if self.step_factor <= 1 && self.step_bytes == 0 {
            return Err("stepbytes must be at least 1 without a step factor".into());
        }
        let mut sizes = Vec::new();
        let mut size = min;
        while size <= max {
            if sizes.len() == SIZES_MAX {
                return Err(format!("more than {SIZES_MAX} sizes from {min} to {max}"));
            }
            sizes.push(size);
            let next = if self.step_factor > 1 {
                size.checked_mul(self.step_factor)
            } else {
                size.checked_add(self.step_bytes)
            };
            match next {
                Some(n) => size = n,
                None => break,
            }
        }
        Ok(sizes)
    }

    /// Checks the options that do not depend on the world.
    ///
    /// # Errors
    /// A message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.iters == 0 {
            return Err("-n (iters) must be at least 1".into());
        }
        self.sizes().map(|_| ())
    }
}

/// Parses a byte count with an optional K, M or G suffix (powers of 1024, case-insensitive,
/// an optional trailing `B`): `4K` is 4096, `256M` is 268435456.
///
/// # Errors
/// A message for anything else, or a count that overflows `u64`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (like 4096, 4K, 256M, 1G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} overflows"))
}

/// Parses an element type by its short (`f32`) or nccl-tests (`float`) name.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_dtype(s: &str) -> Result<DataType, String> {
    Ok(match s {
        "f32" | "float" | "float32" => DataType::F32,
        "f64" | "double" | "float64" => DataType::F64,
        "f16" | "half" | "float16" => DataType::F16,
        "bf16" | "bfloat16" => DataType::Bf16,
        "i32" | "int32" | "int" => DataType::I32,
        "i64" | "int64" => DataType::I64,
        "u8" | "uint8" => DataType::U8,
        _ => return Err(format!("unknown dtype {s:?}: use f32 f64 f16 bf16 i32 i64 u8")),
    })
}

/// Parses a reduction by its nccl name.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_op(s: &str) -> Result<ReduceOp, String> {
    (1..=5)
        .filter_map(ReduceOp::from_u8)
        .find(|op| op.name() == s)
        .ok_or_else(|| format!("unknown op {s:?}: use sum avg prod min max"))
}

/// Parses a codec setting by the name `CodecChoice::name` gives it.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_codec(s: &str) -> Result<CodecChoice, String> {
    CodecChoice::parse(s)
}

/// Parses an all_reduce algorithm name.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_algo(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(s).ok_or_else(|| format!("unknown algo {s:?}: use one of {}", Algorithm::names()))
}

/// Parses a collective name.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_coll(s: &str) -> Result<BenchColl, String> {
    [BenchColl::AllReduce, BenchColl::ReduceScatter, BenchColl::AllGather, BenchColl::Broadcast]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("unknown collective {s:?}: use all_reduce reduce_scatter all_gather broadcast"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("ringbench").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512KB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn flags_follow_all_reduce_perf() {
        let o = opts(&["-b", "4K", "-e", "256M", "-f", "4", "-n", "20", "-w", "5", "-c", "1"]);
        let sizes = o.sizes().unwrap();
        assert_eq!(sizes.first(), Some(&4096));
        assert_eq!(sizes.last(), Some(&(256 << 20)));
        assert_eq!(sizes.len(), 9);
        assert!(sizes.windows(2).all(|w| w[1] == w[0] * 4));
        assert_eq!((o.iters, o.warmup_iters, o.check), (20, 5, 1));
        assert_eq!(
            (o.dtype, o.op, o.codec, o.algo, o.coll),
            (DataType::F32, ReduceOp::Sum, None, Algorithm::Auto, BenchColl::AllReduce)
        );
    }

    #[test]
    fn step_bytes_apply_without_a_factor() {
        let o = opts(&["-b", "1K", "-e", "4K", "-i", "1K"]);
        assert_eq!(o.sizes().unwrap(), vec![1024, 2048, 3072, 4096]);
    }

    #[test]
    fn every_name_parses() {
        let o = opts(&["--dtype", "bfloat16", "--op", "max", "--algo", "bidir", "--coll", "all_gather"]);
        assert_eq!(
            (o.dtype, o.op, o.algo, o.coll),
            (DataType::Bf16, ReduceOp::Max, Algorithm::Bidir, BenchColl::AllGather)
        );
        let o = opts(&["--codec", "shuffle+zstd", "--segment-bytes", "64K", "--json", "out.json"]);
        assert_eq!(
            (o.codec, o.segment_bytes),
            (Some(CodecChoice::Fixed(crate::codec::Codec::ShuffleZstd)), Some(65536))
        );
        let o = opts(&["--codec", "auto+bf16", "--codec-level", "-3"]);
        assert_eq!((o.codec, o.codec_level), (Some(CodecChoice::Auto { lossy: true }), Some(-3)));
        assert!(Options::try_parse_from(["ringbench", "--codec", "lz4"]).is_err());
        assert_eq!(o.data, None);
        let o = opts(&["--data", "benches/data/grads.f32", "--dtype", "bf16"]);
        assert_eq!(
            (o.data.as_deref(), o.dtype),
            (Some(std::path::Path::new("benches/data/grads.f32")), DataType::Bf16)
        );
        for d in ["f32", "f64", "f16", "bf16", "i32", "i64", "u8"] {
            assert!(parse_dtype(d).is_ok(), "{d}");
        }
        for op in ["sum", "avg", "prod", "min", "max"] {
            assert_eq!(parse_op(op).map(ReduceOp::name), Ok(op));
        }
        assert!(Options::try_parse_from(["ringbench", "--op", "mean"]).is_err());
        assert!(Options::try_parse_from(["ringbench", "-c", "2"]).is_err());
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(opts(&["-b", "8M", "-e", "4M"]).sizes().is_err());
        assert!(opts(&["-b", "0", "-e", "4M", "-f", "2"]).sizes().is_err());
        assert!(opts(&["-b", "1", "-e", "1G", "-i", "1"]).sizes().is_err());
        assert!(opts(&["-e", "1024G"]).sizes().is_err());
        assert!(opts(&["-n", "0"]).validate().is_err());
        assert_eq!(opts(&["-b", "0", "-e", "0"]).sizes().unwrap(), vec![0]);
    }
}
