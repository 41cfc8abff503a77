//! The CPU kernel table: for each weight type, the activation type it multiplies with and
//! the dot-product routine for the running CPU (after ggml's `type_traits_cpu`).
//!
//! Activations are quantized on the fly to the weight's partner type (Q8_0, Q8_1 or Q8_K for
//! block-quantized weights, F16/BF16/F32 for float weights), so the inner loops are integer
//! dot products. One generic driver ([`crate::matmul`]) serves every format; a format only
//! contributes its block decoder here.
//!
//! * [`scalar`]: portable reference routines; every SIMD routine is tested against them.
//! * `avx2` (x86-64, runtime-detected AVX2+FMA+F16C) and `neon` (aarch64).

pub mod act;
pub mod half_table;
pub mod repack;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "aarch64")]
pub mod neon;

use engine_core::DType;

/// `dot(n, w_row, a_row)`: dot product of one weight row and one quantized activation row,
/// both holding `n` elements in their block formats.
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// `gemm(k, w, nr, a, a_row, nc, out, ldo)`: for `nr` weight rows of `k` elements stored back
/// to back in `w` and `nc` activation rows starting `a_row` bytes apart in `a`, writes
/// `out[c * ldo + r]` = the dot product of weight row `r` and activation row `c`, each
/// bit-identical to the routine's [`DotFn`].
///
/// # Safety
/// `out` must be valid for those writes, `w` and `a` must hold the rows, and the CPU must
/// have the instruction set the routine was built for.
pub type GemmFn = unsafe fn(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
);

/// One way of computing a weight type's dot products: the pair routine and, where the
/// instruction set has one, a many-rows × many-columns routine with the same arithmetic.
#[derive(Clone, Copy)]
pub struct Routine {
    /// One weight row against one activation row.
    pub dot: DotFn,
    /// Many against many, sharing unpacked weights and loaded activations.
    pub gemm: Option<GemmFn>,
}

impl Routine {
    /// A routine with only the pair product.
    pub fn pair(dot: DotFn) -> Routine {
        Routine { dot, gemm: None }
    }

    /// Whether two routines compute the same arithmetic (the same pair routine).
    pub fn same(&self, other: &Routine) -> bool {
        std::ptr::fn_addr_eq(self.dot, other.dot)
    }
}

/// One row of the table.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Weight type.
    pub weight: DType,
    /// Type the activations are converted to before the dot product.
    pub act: DType,
    /// The default routine for this CPU (ggml's `vec_dot` summation order).
    pub base: Routine,
    /// Variants with the f32 epilogues of llama.cpp's other x86 kernels.
    pub variants: Variants,
    /// Name of the implementation (`avx2`, `neon`, `scalar`).
    pub isa: &'static str,
}

/// Alternative routines for one weight type. llama.cpp's x86 CPU backend picks a different
/// kernel depending on the batch (repacked GEMV/GEMM, a tiled K-quant kernel for batches of
/// eight rows or more, or `vec_dot`); they compute the same exact integer sums but round
/// their f32 epilogues differently. Reproducing its choice makes our logits bit-identical
/// to llama.cpp's on x86, which matters for models as sensitive as Gemma 3.
#[derive(Clone, Copy, Default)]
pub struct Variants {
    /// Repacked-weight GEMV (one f32 FMA per super-block); without one, the rows a repacked
    /// GEMM does not take use the base routine.
    pub repack_gemv: Option<Routine>,
    /// Repacked-weight GEMM, for rows in complete groups of four.
    pub repack_gemm: Option<Routine>,
    /// The tiled K-quant kernel, for batches of eight rows or more.
    pub tiled: Option<Routine>,
}

impl Kernel {
    /// The routine for activation row `row` of an `n`-row batch against a weight of `m`
    /// rows, following llama.cpp's x86 dispatch: repacked kernels when the weight can be
    /// repacked (`m % 8 == 0`), else the tiled kernel for `n >= 8`, else `vec_dot`.
    #[inline]
    pub fn select(&self, m: usize, n: usize, row: usize) -> Routine {
        let v = &self.variants;
        if let Some(gemm) = v.repack_gemm {
            if m.is_multiple_of(8) {
                return if n > 3 && row < n - n % 4 {
                    gemm
                } else {
                    v.repack_gemv.unwrap_or(self.base)
                };
            }
        }
        match v.tiled {
            Some(t) if n >= 8 => t,
            _ => self.base,
        }
    }

    /// The default pair routine.
    pub fn dot(&self) -> DotFn {
        self.base.dot
    }
}

/// Which instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 NEON (with the dot-product extension when present).
    Neon,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Isa::Neon;
            }
        }
        Isa::Scalar
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
        }
    }
}

/// The activation type paired with a weight type, or `None` if the CPU cannot multiply it.
pub fn act_type(weight: DType) -> Option<DType> {
    Some(match weight {
        DType::F32 => DType::F32,
        DType::F16 => DType::F16,
        DType::BF16 => DType::BF16,
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL | DType::MXFP4 => DType::Q8_0,
        DType::Q4_1 | DType::Q5_1 => DType::Q8_1,
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS => {
            DType::Q8_K
        }
        _ => return None,
    })
}

/// The kernel for `weight` on instruction set `isa` (falling back to scalar per type).
pub fn kernel(weight: DType, isa: Isa) -> Option<Kernel> {
    let act = act_type(weight)?;
    let simd: Option<(Routine, Variants)> = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::routine(weight).map(|r| (r, avx2::variants(weight))),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::dot_fn(weight).map(|d| (Routine::pair(d), Variants::default())),
        _ => None,
    };
    let (base, variants, isa_name) = match simd {
        Some((r, v)) => (r, v, isa.name()),
        None => (
            Routine::pair(scalar::dot_fn(weight)?),
            Variants::default(),
            "scalar",
        ),
    };
    Some(Kernel {
        weight,
        act,
        base,
        variants,
        isa: isa_name,
    })
}

/// Every weight type the CPU backend can multiply.
pub const SUPPORTED: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::MXFP4,
];
