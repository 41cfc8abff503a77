//! AVX2 + FMA + F16C kernels (x86-64), selected at run time.
//!
//! * [`formats`]: each block format's arithmetic ([`tile::BlockDot`]), in the order of the
//!   llama.cpp x86 routine it reproduces: integer products of codes with
//!   `vpmaddubsw`/`vpmaddwd` (exact), then `scale * sum` folded into f32.
//! * [`rows8`]: eight weight rows per vector lane, for Q4_0 and IQ4_NL in the arithmetic of
//!   llama.cpp's repacked kernels.
//! * [`tile`]: the generic drivers: one pair ([`tile::dot`]) and many rows × many columns
//!   ([`tile::gemm`], register tiles, weights unpacked once into a panel for many columns).
//!
//! The wrappers returned here are safe to call only on a CPU with these features;
//! [`super::Isa::detect`] guarantees that before this table is used.

#![allow(clippy::missing_safety_doc)]

mod float;
mod formats;
mod rows8;
mod tile;

use engine_core::DType;

use self::formats::*;
use self::tile::BlockDot;
use super::{DotFn, GemmFn, Routine, Variants};

/// `dot` for a format whose rows are whole blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_blocks<F: BlockDot>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    tile::dot::<F>(n, w, a)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_blocks<F: BlockDot>(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    tile::gemm::<F>(k, w, nr, a, a_row, nc, out, ldo)
}

/// F32 rows of any length: whole 32-element blocks, then the tail one by one.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let full = n - n % 32;
    let mut s = tile::dot::<F32>(full, w, a);
    let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    for i in full..n {
        s += pw.add(i).read_unaligned() * pa.add(i).read_unaligned();
    }
    s
}

/// F16 rows of any length: whole 16-element blocks, then the tail one by one.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let full = n - n % 16;
    let mut s = tile::dot::<F16>(full, w, a);
    for i in full..n {
        s += f16(w.as_ptr().add(2 * i)) * f16(a.as_ptr().add(2 * i));
    }
    s
}

/// Float weights against many columns: one column through the block driver (a GEMV that
/// waits on memory), several through [`float::gemm`]'s chain-by-chain tiles; a row length
/// that is not whole blocks always through the latter, which adds the tail as `dot_*` does.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_float<F: float::FloatFormat>(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    if nc == 1 && k.is_multiple_of(F::QK) {
        tile::gemm::<F>(k, w, nr, a, a_row, nc, out, ldo)
    } else {
        float::gemm::<F>(k, w, nr, a, a_row, nc, out, ldo)
    }
}

/// The routine (pair and many-row) for format `F`.
macro_rules! routine {
    ($f:ty) => {{
        fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: this table is only used after runtime detection of avx2/fma/f16c, and
            // the routine reads only whole blocks within the slices' lengths.
            unsafe { dot_blocks::<$f>(n, w, a) }
        }
        Routine {
            dot: dot as DotFn,
            gemm: Some(gemm_blocks::<$f> as GemmFn),
        }
    }};
}

/// The default routine for a weight type, if AVX2 has one.
pub fn routine(w: DType) -> Option<Routine> {
    Some(match w {
        DType::F32 => {
            fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: as in `routine!`; the tail is read element by element.
                unsafe { dot_f32(n, w, a) }
            }
            Routine {
                dot,
                gemm: Some(gemm_float::<F32> as GemmFn),
            }
        }
        DType::F16 => {
            fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: as for F32.
                unsafe { dot_f16(n, w, a) }
            }
            Routine {
                dot,
                gemm: Some(gemm_float::<F16> as GemmFn),
            }
        }
        DType::Q8_0 => routine!(Q0<Q8_0>),
        DType::Q4_0 => routine!(Q0<Q4_0>),
        DType::Q5_0 => routine!(Q0<Q5_0>),
        DType::IQ4_NL => routine!(Q0<Iq4Nl>),
        DType::MXFP4 => routine!(Q0<Mxfp4>),
        DType::Q4_1 => routine!(Q1<Q4_1>),
        DType::Q5_1 => routine!(Q1<Q5_1>),
        DType::Q2_K => routine!(Q2k),
        DType::Q3_K => routine!(Q3k),
        DType::Q4_K => routine!(Q4k<VecDot>),
        DType::Q5_K => routine!(Q5k),
        DType::Q6_K => routine!(Q6k<false>),
        DType::IQ4_XS => routine!(Iq4Xs),
        _ => return None,
    })
}

/// The pair routine of [`formats::Q0Sum`] with [`rows8::gemm`] for many rows.
macro_rules! rows8_routine {
    ($f:ty) => {{
        fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
            // SAFETY: as in `routine!`.
            unsafe { dot_blocks::<Q0Sum<$f>>(n, w, a) }
        }
        Routine {
            dot: dot as DotFn,
            gemm: Some(rows8::gemm::<$f> as GemmFn),
        }
    }};
}

/// The llama.cpp-order variants for a weight type (see [`super::Variants`]).
pub fn variants(w: DType) -> Variants {
    match w {
        // llama.cpp's repacked arithmetic for rows in groups of four; single rows (decode)
        // keep the `vec_dot` arithmetic, whose lane accumulation streams a row without the
        // per-block horizontal sum (1.06-1.10x llama.cpp's generation, against 0.96-1.04x)
        DType::Q4_0 => Variants {
            repack_gemm: Some(rows8_routine!(Q4_0)),
            ..Default::default()
        },
        DType::IQ4_NL => Variants {
            repack_gemm: Some(rows8_routine!(Iq4Nl)),
            ..Default::default()
        },
        DType::Q4_K => Variants {
            repack_gemv: Some(routine!(Q4k<RepackGemv>)),
            repack_gemm: Some(routine!(Q4k<RepackGemm>)),
            tiled: Some(routine!(Q4k<Tiled>)),
        },
        DType::Q6_K => Variants {
            tiled: Some(routine!(Q6k<true>)),
            ..Default::default()
        },
        _ => Variants::default(),
    }
}

/// The bare dot product for a weight type (kept for callers that need only the pair).
pub fn dot_fn(w: DType) -> Option<DotFn> {
    routine(w).map(|r| r.dot)
}
