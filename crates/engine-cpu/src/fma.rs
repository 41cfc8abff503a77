//! Scalar fused multiply-add, dispatched at run time.
//!
//! llama.cpp is built with `-march=native`, and GCC contracts `a*b + c` in ggml's scalar
//! code into FMA instructions (rope rotations, the softmax running sum, the GELU table). To
//! produce the same numbers we use a true FMA in the same places: the hardware instruction
//! where the CPU has one, `f32::mul_add` (correctly rounded in software) elsewhere.

/// True when the CPU has FMA instructions.
#[inline(always)]
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Runs `f` compiled with FMA enabled when the CPU has it (so `mul_add` inside `f` is one
/// instruction), or as is otherwise. `f` must be `#[inline(always)]` to benefit.
#[inline(always)]
pub fn with_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_fma() {
            // SAFETY: the feature was detected above.
            return unsafe { run(f) };
        }
    }
    f()
}
