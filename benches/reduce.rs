//! Reduction kernels per element type and operator on 4 MiB buffers, next to a plain
//! memcpy of the same size: how close each kernel gets to memory bandwidth.
//!
//! Run: `cargo bench --bench reduce` (about a minute).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcc::core::reduce::reduce_into;
use ringcc::{bf16, f16, DataType, Element, ReduceOp};

/// Bytes per buffer: larger than L2, like a few segments in flight.
const BUFFER_BYTES: usize = 4 << 20;

const DTYPES: [DataType; 7] =
    [DataType::F32, DataType::F64, DataType::F16, DataType::Bf16, DataType::I32, DataType::I64, DataType::U8];
const OPS: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max];

/// A buffer of `BUFFER_BYTES` holding the value one of type `T` in every element, in
/// 8-byte-aligned storage so the kernels take their aligned path. Ones keep every op's
/// result finite and normal however often it runs (no denormal slow path).
fn ones<T: Element>(one: T) -> Vec<u64> {
    let mut storage = vec![0u64; BUFFER_BYTES / 8];
    bytemuck::cast_slice_mut::<u64, T>(&mut storage).fill(one);
    storage
}

fn ones_of(dtype: DataType) -> Vec<u64> {
    match dtype {
        DataType::F32 => ones(1.0f32),
        DataType::F64 => ones(1.0f64),
        DataType::F16 => ones(f16::ONE),
        DataType::Bf16 => ones(bf16::ONE),
        DataType::I32 => ones(1i32),
        DataType::I64 => ones(1i64),
        DataType::U8 => ones(1u8),
    }
}

fn reduce(c: &mut Criterion) {
    let mut g = c.benchmark_group("reduce_4MiB");
    g.throughput(Throughput::Bytes(BUFFER_BYTES as u64));
    let src = vec![1u64; BUFFER_BYTES / 8];
    let mut dst = vec![0u64; BUFFER_BYTES / 8];
    g.bench_function("memcpy", |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
    for dtype in DTYPES {
        let src = ones_of(dtype);
        let mut dst = ones_of(dtype);
        for op in OPS {
            g.bench_with_input(BenchmarkId::new(dtype.name(), op.name()), &op, |b, &op| {
                b.iter(|| {
                    reduce_into(
                        dtype,
                        op,
                        bytemuck::cast_slice_mut(&mut dst),
                        bytemuck::cast_slice(std::hint::black_box(&src)),
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = reduce
}
criterion_main!(benches);
