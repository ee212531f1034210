//! The codecs allocate nothing in steady state: after one call per segment size, encode,
//! decode, decode_reduce, round_in_place and ErrorFeedback::apply make no heap allocation,
//! zstd's own included. And a collective that encodes its segments allocates per call, not
//! per segment, once its driver's codecs have warmed up.
//!
//! This test binary interposes the C allocator entry points (`malloc` and friends), which
//! both Rust's global allocator and zstd's C code call, forwards them to glibc, and counts
//! the calls made on the current thread. Linux with glibc only.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::cell::Cell;
use std::ffi::{c_int, c_void};

use std::time::{Duration, Instant};

use ringcc::codec::{round_in_place, Codec, CodecChoice, Decoder, Encoder, ErrorFeedback, ALL_CODECS};
use ringcc::core::collective::{Algorithm, Collective, Link, Spec, Status};
use ringcc::core::payload::Codecs;
use ringcc::wire::{CollKind, Header};
use ringcc::{DataType, ReduceOp};

thread_local! {
    /// Allocation calls made by this thread. Const-initialized with no destructor, so
    /// reading it never allocates (it may be touched from inside `malloc`).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|c| c.set(c.get() + 1));
}

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

// SAFETY (all five): each forwards to glibc's implementation of the same function with the
// same arguments, so callers get exactly glibc's contract; counting touches only a
// const-initialized thread-local Cell. glibc's `free` stays in place and frees them all.
/// glibc's `malloc`, counted.
///
/// # Safety
/// As glibc's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    count();
    unsafe { __libc_malloc(size) }
}

/// glibc's `calloc`, counted.
///
/// # Safety
/// As glibc's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    count();
    unsafe { __libc_calloc(n, size) }
}

/// glibc's `realloc`, counted.
///
/// # Safety
/// As glibc's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    count();
    unsafe { __libc_realloc(p, size) }
}

/// glibc's `aligned_alloc`, counted.
///
/// # Safety
/// As glibc's `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    count();
    unsafe { __libc_memalign(align, size) }
}

/// glibc's `posix_memalign`, counted.
///
/// # Safety
/// As glibc's `posix_memalign`.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    count();
    let p = unsafe { __libc_memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    unsafe { *out = p };
    0
}

/// Allocation calls made on this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// Gradient-like f32 bytes.
fn gradients(bytes: usize) -> Vec<u8> {
    (0..bytes / 4).flat_map(|i| ((i as f32 * 0.618).sin() * 1e-3).to_ne_bytes()).collect()
}

#[test]
fn the_counter_sees_rust_and_zstd_allocations() {
    assert!(allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64)))) >= 1);
    // Creating a zstd context allocates in C: the interposition covers zstd.
    assert!(allocations_in(|| drop(Encoder::new(1))) >= 1);
}

#[test]
fn steady_state_encode_and_decode_allocate_nothing() {
    let segment_bytes = 512 << 10;
    let raw = gradients(2 * segment_bytes);
    let mut encoder = Encoder::new(1).expect("encoder");
    let mut decoder = Decoder::new().expect("decoder");
    let mut payload = Vec::new();
    let mut out = vec![0u8; segment_bytes];
    let mut acc = vec![0u8; segment_bytes];
    let mut run = |encoder: &mut Encoder, decoder: &mut Decoder| {
        for codec in ALL_CODECS {
            for seg in raw.chunks(segment_bytes) {
                let sent = encoder.encode(codec, DataType::F32, seg, &mut payload).expect("encode");
                decoder.decode(sent, DataType::F32, &payload, &mut out).expect("decode");
                decoder.decode_reduce(sent, DataType::F32, ReduceOp::Sum, &payload, &mut acc).expect("reduce");
                round_in_place(codec, DataType::F32, &mut out).expect("round");
            }
        }
    };
    run(&mut encoder, &mut decoder); // warm-up: buffers and zstd workspaces grow once
    for round in 0..3 {
        let n = allocations_in(|| run(&mut encoder, &mut decoder));
        assert_eq!(n, 0, "round {round}: {n} allocations in steady state");
    }
    // Shorter segments reuse the same buffers.
    let n = allocations_in(|| {
        let sent = encoder.encode(Codec::ShuffleZstd, DataType::F32, &raw[..4096], &mut payload).expect("encode");
        decoder.decode(sent, DataType::F32, &payload, &mut out[..4096]).expect("decode");
    });
    assert_eq!(n, 0, "{n} allocations for a shorter segment");
}

#[test]
fn error_feedback_allocates_only_on_the_first_call() {
    let mut ef = ErrorFeedback::new(Codec::Bf16);
    let mut values = vec![1.0f32 + 1.0 / 512.0; 100_000];
    assert!(allocations_in(|| ef.apply(&mut values)) >= 1);
    assert_eq!(allocations_in(|| (0..5).for_each(|_| ef.apply(&mut values))), 0);
}

/// Segment size of the collective test, in bytes.
const SEGMENT_BYTES: usize = 16 << 10;

fn spec(pos: usize, len_elems: usize, codec: CodecChoice) -> Spec {
    Spec {
        coll: CollKind::AllReduce,
        op: ReduceOp::Sum,
        dtype: DataType::F32,
        codec,
        job: 1,
        epoch: 1,
        seq: 0,
        len_elems,
        world: 2,
        pos,
        rank: pos as u32,
        block_of_pos: vec![0, 1],
        root_pos: 0,
        segment_bytes: SEGMENT_BYTES,
        contributors: 2,
        algorithm: Algorithm::Ring,
        progress_timeout: Duration::from_secs(10),
        fin: false,
        payload_crc: [true, true, true],
        partner_links: false,
    }
}

/// One all_reduce over `bufs` on two in-memory ranks (frames handed straight across),
/// lending each rank its codecs and taking them back.
fn all_reduce_pair(codec: CodecChoice, codecs: &mut [Option<Box<Codecs>>; 2], bufs: &mut [Vec<u8>; 2]) {
    let now = Instant::now();
    let len_elems = bufs[0].len() / 4;
    let [b0, b1] = bufs;
    let mut c0 = Collective::start_with(spec(0, len_elems, codec), now, b0, codecs[0].take());
    let mut c1 = Collective::start_with(spec(1, len_elems, codec), now, b1, codecs[1].take());
    loop {
        let mut moved = false;
        while let Some(t) = c0.poll_transmit(b0) {
            let (h, _) = Header::decode(&t.header).expect("header");
            let payload: &[u8] = t.owned.as_deref().unwrap_or(&b0[t.payload.clone()]);
            c1.handle_frame(now, Link::Prev, &h, payload, b1).expect("accepted");
            moved = true;
        }
        while let Some(t) = c1.poll_transmit(b1) {
            let (h, _) = Header::decode(&t.header).expect("header");
            let payload: &[u8] = t.owned.as_deref().unwrap_or(&b1[t.payload.clone()]);
            c0.handle_frame(now, Link::Prev, &h, payload, b0).expect("accepted");
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(*c0.status() == Status::Done && *c1.status() == Status::Done);
    codecs[0] = c0.take_codecs();
    codecs[1] = c1.take_codecs();
}

#[test]
fn a_collective_that_encodes_allocates_per_call_not_per_segment() {
    for codec in [Codec::Raw, Codec::ShuffleZstd, Codec::Bf16Zstd] {
        let choice = CodecChoice::Fixed(codec);
        let mut codecs = [0, 1].map(|_| Codecs::new(1, None).ok().map(Box::new));
        let mut small = [gradients(32 * SEGMENT_BYTES), gradients(32 * SEGMENT_BYTES)];
        let mut large = [gradients(128 * SEGMENT_BYTES), gradients(128 * SEGMENT_BYTES)];
        // Warm-up: pools and zstd workspaces grow to the largest call's needs.
        all_reduce_pair(choice, &mut codecs, &mut large);
        all_reduce_pair(choice, &mut codecs, &mut small);
        let per_call = allocations_in(|| all_reduce_pair(choice, &mut codecs, &mut small));
        let four_times_the_segments = allocations_in(|| all_reduce_pair(choice, &mut codecs, &mut large));
        // 16 more segments per chunk per step may grow a queue's capacity a few times; one
        // allocation per segment would be hundreds.
        assert!(
            four_times_the_segments <= per_call + 8,
            "{}: {per_call} allocations for 32 segments, {four_times_the_segments} for 128",
            codec.name()
        );
    }
}
