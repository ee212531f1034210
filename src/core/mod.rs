//! The sans-IO core: no sockets, threads, clock or randomness of its own.
//!
//! The TCP driver (`net`) and the simulator (`sim`) both drive the same
//! [`collective::Collective`] state machines; time and buffers come from the caller.

pub mod collective;
pub mod direct;
pub mod doubling;
pub mod fin;
pub mod joins;
mod latency;
pub mod membership;
pub mod payload;
pub mod reduce;
pub mod schedule;
pub mod stream;

use bytemuck::Pod;
use half::{bf16, f16};

/// Element types a collective can carry. The id travels in every frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataType {
    /// IEEE 754 binary32.
    F32 = 1,
    /// IEEE 754 binary64.
    F64 = 2,
    /// IEEE 754 binary16 (`half::f16`); reduced through f32.
    F16 = 3,
    /// bfloat16 (`half::bf16`); reduced through f32.
    Bf16 = 4,
    /// Two's complement 32-bit integer; Sum and Prod wrap.
    I32 = 5,
    /// Two's complement 64-bit integer; Sum and Prod wrap.
    I64 = 6,
    /// Unsigned byte; Sum and Prod wrap.
    U8 = 7,
}

impl DataType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DataType::F32 | DataType::I32 => 4,
            DataType::F64 | DataType::I64 => 8,
            DataType::F16 | DataType::Bf16 => 2,
            DataType::U8 => 1,
        }
    }

    /// The type for a wire id, or `None` for an unknown id.
    pub const fn from_u8(id: u8) -> Option<DataType> {
        Some(match id {
            1 => DataType::F32,
            2 => DataType::F64,
            3 => DataType::F16,
            4 => DataType::Bf16,
            5 => DataType::I32,
            6 => DataType::I64,
            7 => DataType::U8,
            _ => return None,
        })
    }

    /// Short name as nccl-tests prints it (`float`, `double`, `half`, `bfloat16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DataType::F32 => "float",
            DataType::F64 => "double",
            DataType::F16 => "half",
            DataType::Bf16 => "bfloat16",
            DataType::I32 => "int32",
            DataType::I64 => "int64",
            DataType::U8 => "uint8",
        }
    }

    /// True for floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64 | DataType::F16 | DataType::Bf16)
    }
}

/// Reduction operators. `Avg` sums, then divides by the number of contributors the
/// call's [`crate::Report`] names (integer division for integer types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    /// Element-wise sum (wrapping for integers).
    Sum = 1,
    /// Element-wise sum divided by the number of contributors.
    Avg = 2,
    /// Element-wise product (wrapping for integers).
    Prod = 3,
    /// Element-wise minimum.
    Min = 4,
    /// Element-wise maximum.
    Max = 5,
}

impl ReduceOp {
    /// The operator for a wire id, or `None` for an unknown id.
    pub const fn from_u8(id: u8) -> Option<ReduceOp> {
        Some(match id {
            1 => ReduceOp::Sum,
            2 => ReduceOp::Avg,
            3 => ReduceOp::Prod,
            4 => ReduceOp::Min,
            5 => ReduceOp::Max,
            _ => return None,
        })
    }

    /// Name as nccl-tests prints it.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Avg => "avg",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
        }
    }
}

/// A type a collective can carry: plain old data with a wire type id.
pub trait Element: Pod + Send + Sync + 'static {
    /// The wire id of this type.
    const DTYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DataType = DataType::$d; })* };
}
element!(f32 => F32, f64 => F64, f16 => F16, bf16 => Bf16, i32 => I32, i64 => I64, u8 => U8);
