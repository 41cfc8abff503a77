//! Gated activations. GELU reproduces ggml's CPU numerics: the input is rounded to f16 and
//! the result read from a table of f16 values (exact tanh-GELU differs by up to ~2e-3).

use engine_core::Activation;
use half::f16;
use std::sync::OnceLock;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEF_A: f32 = 0.044715;

/// tanh-approximated GELU in f32, evaluated as ggml's compiled code does it (the inner
/// `1 + A*x*x` contracted to one FMA).
pub fn gelu_f32(x: f32) -> f32 {
    (0.5 * x) * (1.0 + ((SQRT_2_OVER_PI * x) * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

static GELU_TABLE: OnceLock<Box<[u16]>> = OnceLock::new();

/// GELU of every f16 bit pattern, plus one padding entry so that a 32-bit gather at the
/// last index stays inside the table.
fn gelu_table() -> &'static [u16] {
    GELU_TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_f32(f16::from_bits(b).to_f32())).to_bits())
            .chain([0])
            .collect()
    })
}

/// GELU as ggml's CPU backend computes it (f16 table between -10 and 10).
#[inline(always)]
pub fn gelu_ggml(x: f32, table: &[u16]) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32()
    }
}

/// SiLU.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = act(gate[i]) * up[i]` over a row (or `act(gate[i])` for ungated kinds).
pub fn glu_row(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = silu(*g) * u;
            }
        }
        Activation::GeluTanh => {
            let t = gelu_table();
            #[cfg(target_arch = "x86_64")]
            let done = if crate::vecops::has_avx2() {
                // SAFETY: the features were just detected; the table has the padding entry.
                unsafe { x86::gelu_mul(gate, up, t) }
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
                *g = gelu_ggml(*g, t) * u;
            }
        }
        Activation::ReluSquared => {
            for g in gate.iter_mut() {
                let r = g.max(0.0);
                *g = r * r;
            }
        }
        Activation::SwigluOai { alpha, limit } => {
            for (g, &u) in gate.iter_mut().zip(up) {
                let x = g.min(limit);
                let y = u.clamp(-limit, limit);
                *g = x / (1.0 + (-alpha * x).exp()) * (y + 1.0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::gelu_ggml`]`(gate[i]) * up[i]` for whole groups of eight elements, with
    /// the same f16 rounding (to nearest even) and table; returns how many were done.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn gelu_mul(gate: &mut [f32], up: &[f32], table: &[u16]) -> usize {
        debug_assert!(table.len() > u16::MAX as usize + 1);
        let n = gate.len().min(up.len()) / 8 * 8;
        let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
        let low16 = _mm256_set1_epi32(0xffff);
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(gate.as_ptr().add(i));
            let h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
            let idx = _mm256_cvtepu16_epi32(h);
            // 32 bits at byte 2 * idx: the entry in the low half
            let e = _mm256_and_si256(
                _mm256_i32gather_epi32(table.as_ptr() as *const i32, idx, 2),
                low16,
            );
            let packed =
                _mm_packus_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1));
            let y = _mm256_cvtph_ps(packed);
            // x >= 10: x itself; x <= -10: 0
            let y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
            let y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), y);
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(y, u));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorized GELU gives exactly the scalar one's bits, around the table's edges,
    /// at f16 rounding ties and on infinities and NaN.
    #[test]
    fn vector_gelu_is_bit_identical_to_the_scalar_one() {
        let t = gelu_table();
        let mut x: Vec<f32> = vec![
            -10.0,
            10.0,
            -10.000001,
            9.999999,
            0.0,
            -0.0,
            65504.0,
            65520.0,
            -65520.0,
            1e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            5.96e-8,
            2.98e-8,
        ];
        // f16 rounding ties: halfway between neighbouring f16 values
        for b in [0x3c00u16, 0x3c01, 0x4900, 0xc123, 0x0001, 0x7bff] {
            let a = f16::from_bits(b).to_f32();
            let c = f16::from_bits(b + 1).to_f32();
            x.push((a + c) / 2.0);
        }
        let mut state = 12345u32;
        while x.len() < 4096 {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            x.push((state as i32 as f32) / (i32::MAX as f32) * 14.0);
        }
        let up: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let mut got = x.clone();
        glu_row(Activation::GeluTanh, &mut got, &up);
        for (i, (&xi, &ui)) in x.iter().zip(&up).enumerate() {
            let want = gelu_ggml(xi, t) * ui;
            assert!(
                got[i].to_bits() == want.to_bits() || (got[i].is_nan() && want.is_nan()),
                "x = {xi:e}: {} vs {}",
                got[i],
                want
            );
        }
    }
}
