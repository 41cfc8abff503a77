//! Rotary position embeddings with ggml's parameterisation: linear scaling, per-pair
//! frequency factors, and YaRN (extrapolation ramp plus magnitude correction).

use engine_core::{RopeMode, RopeSpec};

/// Most rotated pairs per head supported (n_rot <= 2048).
pub const MAX_PAIRS: usize = 1024;

/// Fills `cs[2i] = cos`, `cs[2i+1] = sin` for every rotated pair at position `pos`.
pub fn cos_sin(pos: f32, spec: &RopeSpec, factors: Option<&[f32]>, cs: &mut [f32]) {
    let n_rot = spec.n_rot;
    let theta_scale = spec.freq_base.powf(-2.0 / n_rot as f32);
    let corr = if spec.ext_factor != 0.0 {
        spec.yarn_corr_dims()
    } else {
        [0.0, 0.0]
    };
    let mut theta = pos;
    for i in 0..n_rot / 2 {
        let ff = factors.map_or(1.0, |f| f[i]);
        let theta_extrap = theta / ff;
        let theta_interp = spec.freq_scale * theta_extrap;
        let mut mscale = spec.attn_factor;
        let t = if spec.ext_factor != 0.0 {
            let y = (i as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
            let ramp = 1.0 - y.clamp(0.0, 1.0);
            let mix = ramp * spec.ext_factor;
            mscale *= 1.0 + 0.1 * (1.0 / spec.freq_scale).ln();
            theta_interp * (1.0 - mix) + theta_extrap * mix
        } else {
            theta_interp
        };
        cs[2 * i] = t.cos() * mscale;
        cs[2 * i + 1] = t.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotates every head of one token's row in place with precomputed `cs`.
///
/// The rotation is computed as ggml's compiled code does it: `x0*c - x1*s` as
/// `fma(x0, c, -(x1*s))` and `x0*s + x1*c` as `fma(x0, s, x1*c)`.
pub fn apply(row: &mut [f32], spec: &RopeSpec, cs: &[f32]) {
    crate::fma::with_fma(|| apply_inner(row, spec, cs))
}

#[inline(always)]
fn apply_inner(row: &mut [f32], spec: &RopeSpec, cs: &[f32]) {
    let hd = spec.head_dim;
    let half = spec.n_rot / 2;
    for h in 0..spec.n_head {
        let x = &mut row[h * hd..(h + 1) * hd];
        match spec.mode {
            RopeMode::Norm => {
                for i in 0..half {
                    let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                    let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = x0.mul_add(c, -(x1 * s));
                    x[2 * i + 1] = x0.mul_add(s, x1 * c);
                }
            }
            RopeMode::Neox => {
                for i in 0..half {
                    let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                    let (x0, x1) = (x[i], x[i + half]);
                    x[i] = x0.mul_add(c, -(x1 * s));
                    x[i + half] = x0.mul_add(s, x1 * c);
                }
            }
        }
    }
}
