//! Load-time repacking of weights into a layout that decodes faster with the same numbers.
//!
//! Token generation reads every weight once per token. On a narrow core, formats whose
//! unpacking costs more than the memory they save run below the memory bandwidth: Q5_0's
//! fifth bits take a shuffle, a compare and two logic operations per block before the
//! integer dot product, and Q5_0 generation ran at about 60% of Q8_0's bytes per second
//! here. Expanding Q5_0 blocks at load time into Q8_0 blocks holding the *same* signed
//! values (`-16..=15`) and the same f16 scale costs 34 instead of 22 bytes per 32 weights,
//! and then the Q8_0 routines compute exactly what the Q5_0 routines computed: both load the
//! 32 signed values, take the same integer pair sums and apply `d_w * d_a` in the same order
//! (llama.cpp's two AVX2 `vec_dot` functions differ only in how they obtain the values, and
//! so do ours). The test `repacked_q5_0_is_bit_identical` checks every routine.
//!
//! Only the AVX2 kernels are repacked: the equivalence is per instruction set.

use engine_core::DType;

use super::{kernel, Isa, Kernel, Variants};

/// The layout `dtype` weights are stored in on `isa` when repacking is on (`None`: as is).
pub fn repacked_layout(dtype: DType, isa: Isa) -> Option<DType> {
    match (dtype, isa) {
        (DType::Q5_0, Isa::Avx2) => Some(DType::Q8_0),
        _ => None,
    }
}

/// Expands whole Q5_0 blocks (`src`) into Q8_0 blocks (`dst`, 34 bytes per 22).
pub fn q5_0_to_q8_0(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(22).zip(dst.chunks_exact_mut(34)) {
        d[..2].copy_from_slice(&s[..2]);
        let qh = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
        let qs = &s[6..22];
        for j in 0..16 {
            let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            d[2 + j] = (lo as i8 - 16) as u8;
            d[2 + 16 + j] = (hi as i8 - 16) as u8;
        }
    }
}

/// Converts a whole tensor of `dtype` into its repacked `layout`.
pub fn repack(dtype: DType, layout: DType, src: &[u8], dst: &mut [u8]) -> bool {
    match (dtype, layout) {
        (DType::Q5_0, DType::Q8_0) => {
            q5_0_to_q8_0(src, dst);
            true
        }
        _ => false,
    }
}

/// The kernel for `dtype` weights stored in `layout`: `layout`'s routines, chosen by the
/// rules of `dtype` (the same batch sizes pick the same arithmetic as without repacking).
pub fn kernel_for_layout(dtype: DType, layout: DType, isa: Isa) -> Option<Kernel> {
    if dtype == layout {
        return kernel(dtype, isa);
    }
    let (own, stored) = (kernel(dtype, isa)?, kernel(layout, isa)?);
    // Only layouts with the same activation type and routine kinds can stand in.
    if own.act != stored.act
        || own.variants.repack_gemv.is_some()
        || own.variants.repack_gemm.is_some()
        || own.variants.tiled.is_some() != stored.variants.tiled.is_some()
    {
        return None;
    }
    Some(Kernel {
        weight: layout,
        act: stored.act,
        base: stored.base,
        variants: Variants {
            repack_gemv: None,
            repack_gemm: None,
            tiled: stored.variants.tiled,
        },
        isa: stored.isa,
    })
}
