//! Run-time selection of AVX2 for the byte kernels: the only `unsafe` in the codecs.
//!
//! The kernels in `planes` and `lossy` are plain loops that the compiler vectorizes. For
//! the x86-64 baseline (SSE2) it cannot vectorize the byte transposes well: measured on
//! an AMD EPYC with 512 KiB segments (best of 20 runs), shuffle of 4-byte elements runs at
//! 0.7 GB/s and f32 to bf16 at 2.8 GB/s; the same loops compiled with AVX2 run at 5.4-6.5
//! and 6.5 GB/s (memcpy: 5.5-7 GB/s). [`avx2_dispatch`] compiles a kernel twice and calls the AVX2 copy
//! when the CPU has AVX2 (std caches the detection: one relaxed load per call). Other
//! targets (aarch64 has NEON in its baseline) use the portable copy.

/// Defines `fn $name` that runs `$body` compiled with AVX2 when the CPU supports it and
/// `fn $portable` (the same body for the target's baseline), which tests compare.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident / $portable:ident ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        #[inline(always)]
        $vis fn $portable($($arg: $ty),*) $body

        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: `avx2` only requires that the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;
