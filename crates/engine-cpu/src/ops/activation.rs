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

fn gelu_table() -> &'static [u16] {
    GELU_TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_f32(f16::from_bits(b).to_f32())).to_bits())
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
            for (g, &u) in gate.iter_mut().zip(up) {
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
