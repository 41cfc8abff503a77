//! Hyperparameters read from GGUF metadata (`{arch}.*` keys), with llama.cpp's defaults.
//!
//! Nothing here is keyed on a model name: every value comes from the file, and a missing
//! required key or an inconsistent value is a clear [`ModelError::HParam`].

use engine_gguf::{Array, GgufModel};

use crate::error::{ModelError, Result};

/// Generic transformer hyperparameters.
#[derive(Clone, Debug)]
pub struct HParams {
    /// `general.architecture`.
    pub arch: String,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Query heads per layer.
    pub n_head: Vec<usize>,
    /// Key/value heads per layer (0 for layers without attention).
    pub n_head_kv: Vec<usize>,
    /// Feed-forward width per layer.
    pub n_ff: Vec<usize>,
    /// Key/query head size.
    pub head_dim: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// RMS norm epsilon.
    pub rms_eps: f32,
    /// Rope base frequency.
    pub rope_base: f32,
    /// `1 / rope.scaling.factor` (1 when absent).
    pub rope_freq_scale: f32,
    /// `rope.scaling.type` (`none`, `linear`, `yarn`, `longrope`).
    pub rope_scaling: String,
    /// `rope.scaling.original_context_length` (defaults to the training context).
    pub n_ctx_orig: usize,
    /// `rope.scaling.attn_factor` (1 when absent).
    pub rope_attn_factor: f32,
    /// `attention.sliding_window` (0 = none).
    pub sliding_window: usize,
    /// `rope.scaling.yarn_beta_fast` (32 when absent).
    pub yarn_beta_fast: f32,
    /// `rope.scaling.yarn_beta_slow` (1 when absent).
    pub yarn_beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier` (0 when absent).
    pub yarn_log_mul: f32,
    /// `attention.temperature_scale` (0 = no query temperature scaling).
    pub attn_temperature_scale: f32,
    /// Trailing next-token-prediction blocks included in `block_count`
    /// (`nextn_predict_layers`); they are not part of the forward pass.
    pub n_layer_nextn: usize,
}

impl HParams {
    /// Rope frequency scale after the scaling type: 1 for `none`.
    pub fn effective_freq_scale(&self) -> f32 {
        if self.rope_scaling == "none" {
            1.0
        } else {
            self.rope_freq_scale
        }
    }

    /// YaRN extrapolation mix: 1 for YaRN scaling, else 0.
    pub fn yarn_ext_factor(&self) -> f32 {
        if self.rope_scaling == "yarn" {
            1.0
        } else {
            0.0
        }
    }

    /// The magnitude factor on rope's cos/sin as llama.cpp's context derives it: with YaRN,
    /// `mscale(factor, 1) / mscale(factor, log_mul)` (or `mscale(factor, 1)` without a log
    /// multiplier) divided by `1 + 0.1 ln(factor)`, which the rope kernel multiplies back;
    /// then times `rope.scaling.attn_factor`.
    pub fn rope_attn_factor_effective(&self) -> f32 {
        let mut f = 1.0f32;
        if self.yarn_ext_factor() != 0.0 {
            let factor = 1.0 / self.effective_freq_scale();
            let mscale = |s: f32, m: f32| {
                if s <= 1.0 {
                    1.0
                } else {
                    0.1 * m * s.ln() + 1.0
                }
            };
            f = if self.yarn_log_mul != 0.0 {
                mscale(factor, 1.0) / mscale(factor, self.yarn_log_mul)
            } else {
                mscale(factor, 1.0)
            };
            f *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        f * self.rope_attn_factor
    }

    /// Blocks that take part in the forward pass (`block_count` minus next-token blocks).
    pub fn n_layer_run(&self) -> usize {
        self.n_layer - self.n_layer_nextn
    }
}

/// Reads a metadata key that may be a scalar or a per-layer array.
pub fn per_layer(
    g: &GgufModel,
    key: &str,
    n_layer: usize,
    default: Option<usize>,
) -> Result<Vec<usize>> {
    match g.get(key) {
        None => match default {
            Some(d) => Ok(vec![d; n_layer]),
            None => Err(ModelError::HParam(format!(
                "'{key}' is required but missing"
            ))),
        },
        Some(v) => {
            if let Some(a) = v.as_array() {
                let ints = a
                    .to_ints()
                    .filter(|_| !matches!(a, Array::String(_)))
                    .ok_or_else(|| ModelError::HParam(format!("'{key}' must be integers")))?;
                if ints.len() != n_layer || ints.iter().any(|&x| x < 0) {
                    return Err(ModelError::HParam(format!(
                        "'{key}' has {} entries for {n_layer} layers",
                        ints.len()
                    )));
                }
                Ok(ints.into_iter().map(|x| x as usize).collect())
            } else {
                match v.as_int() {
                    Some(x) if x >= 0 => Ok(vec![x as usize; n_layer]),
                    _ => Err(ModelError::HParam(format!(
                        "'{key}' must be a non-negative integer, found {v}"
                    ))),
                }
            }
        }
    }
}

impl HParams {
    /// Reads the generic hyperparameters of `arch`.
    pub fn read(g: &GgufModel, arch: &str) -> Result<HParams> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_layer = g.require_usize(&k("block_count"))?;
        let n_embd = g.require_usize(&k("embedding_length"))?;
        if n_layer == 0 || n_layer > 4096 || n_embd == 0 || n_embd > 1 << 20 {
            return Err(ModelError::HParam(format!(
                "implausible shape: {n_layer} layers of width {n_embd}"
            )));
        }
        let n_head = per_layer(g, &k("attention.head_count"), n_layer, Some(0))?;
        let n_head_kv = match g.get(&k("attention.head_count_kv")) {
            None => n_head.clone(),
            Some(_) => per_layer(g, &k("attention.head_count_kv"), n_layer, None)?,
        };
        let n_ff = per_layer(g, &k("feed_forward_length"), n_layer, Some(0))?;
        let h0 = n_head.iter().copied().find(|&h| h > 0).unwrap_or(0);
        let default_hd = n_embd.checked_div(h0).unwrap_or(0);
        let head_dim = g
            .get_usize(&k("attention.key_length"))?
            .unwrap_or(default_hd);
        let head_dim_v = g
            .get_usize(&k("attention.value_length"))?
            .unwrap_or(default_hd);
        let n_rot = g.get_usize(&k("rope.dimension_count"))?.unwrap_or(head_dim);
        let n_ctx_train = g.get_usize(&k("context_length"))?.unwrap_or(2048);
        let rope_factor = match g.get_f32(&k("rope.scaling.factor"))? {
            Some(f) => f,
            None => g.get_f32(&k("rope.scale_linear"))?.unwrap_or(0.0),
        };
        let n_vocab = match g.tensor("token_embd.weight") {
            Some(t) => t.ne.get(1).copied().unwrap_or(0) as usize,
            None => g.get_usize(&k("vocab_size"))?.unwrap_or(0),
        };
        for (i, (&h, &kv)) in n_head.iter().zip(&n_head_kv).enumerate() {
            if kv > 0 && (h == 0 || h % kv != 0) {
                return Err(ModelError::HParam(format!(
                    "layer {i}: {h} query heads is not a multiple of {kv} key/value heads"
                )));
            }
        }
        let n_layer_nextn = g.get_usize(&k("nextn_predict_layers"))?.unwrap_or(0);
        if n_layer_nextn >= n_layer {
            return Err(ModelError::HParam(format!(
                "{n_layer_nextn} next-token blocks of {n_layer} blocks"
            )));
        }
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ModelError::HParam(format!(
                "rope.dimension_count {n_rot} for heads of {head_dim}"
            )));
        }
        Ok(HParams {
            arch: arch.to_string(),
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            n_ff,
            head_dim,
            head_dim_v,
            n_rot,
            rms_eps: match g.get_f32(&k("attention.layer_norm_rms_epsilon"))? {
                Some(e) => e,
                None => g
                    .get_f32(&k("attention.layer_norm_epsilon"))?
                    .unwrap_or(1e-5),
            },
            rope_base: g.get_f32(&k("rope.freq_base"))?.unwrap_or(10000.0),
            rope_freq_scale: if rope_factor == 0.0 {
                1.0
            } else {
                1.0 / rope_factor
            },
            rope_scaling: g
                .get_str(&k("rope.scaling.type"))?
                .unwrap_or("linear")
                .to_string(),
            n_ctx_orig: g
                .get_usize(&k("rope.scaling.original_context_length"))?
                .unwrap_or(n_ctx_train),
            rope_attn_factor: g.get_f32(&k("rope.scaling.attn_factor"))?.unwrap_or(1.0),
            sliding_window: g.get_usize(&k("attention.sliding_window"))?.unwrap_or(0),
            yarn_beta_fast: g
                .get_f32(&k("rope.scaling.yarn_beta_fast"))?
                .unwrap_or(32.0),
            yarn_beta_slow: g.get_f32(&k("rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0),
            yarn_log_mul: g
                .get_f32(&k("rope.scaling.yarn_log_multiplier"))?
                .unwrap_or(0.0),
            attn_temperature_scale: g.get_f32(&k("attention.temperature_scale"))?.unwrap_or(0.0),
            n_layer_nextn,
        })
    }
}

/// Mixture-of-experts hyperparameters (`{arch}.expert_*`); `n_expert == 0` for dense models.
#[derive(Clone, Debug, Default)]
pub struct MoeHParams {
    /// Experts per MoE layer.
    pub n_expert: usize,
    /// Experts each token is routed to.
    pub n_expert_used: usize,
    /// Hidden width of one expert (`expert_feed_forward_length`, else `feed_forward_length`).
    pub n_ff_exp: usize,
    /// Shared experts (`expert_shared_count`).
    pub n_expert_shared: usize,
    /// Leading dense layers (`leading_dense_block_count`).
    pub n_layer_dense_lead: usize,
    /// Multiplier on the routing weights (`expert_weights_scale`; 0 or 1 = none).
    pub weights_scale: f32,
    /// Whether routing weights are renormalised (`expert_weights_norm`), when the file says.
    pub weights_norm: Option<bool>,
    /// `expert_gating_func` (1 softmax, 2 sigmoid, 3 softmax over the selected), when given.
    pub gating_func: Option<u32>,
}

impl MoeHParams {
    /// Reads the expert hyperparameters of `arch` (all absent for a dense model).
    pub fn read(g: &GgufModel, arch: &str, hp: &HParams) -> Result<MoeHParams> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_expert = g.get_usize(&k("expert_count"))?.unwrap_or(0);
        if n_expert == 0 {
            return Ok(MoeHParams::default());
        }
        let n_expert_used = g.require_usize(&k("expert_used_count"))?;
        if n_expert_used == 0 || n_expert_used > n_expert || n_expert > 1 << 16 {
            return Err(ModelError::HParam(format!(
                "{n_expert_used} experts used of {n_expert}"
            )));
        }
        let n_ff_exp = match g.get_usize(&k("expert_feed_forward_length"))? {
            Some(v) => v,
            None => hp.n_ff.iter().copied().max().unwrap_or(0),
        };
        if n_ff_exp == 0 {
            return Err(ModelError::HParam(
                "experts need expert_feed_forward_length or feed_forward_length".into(),
            ));
        }
        Ok(MoeHParams {
            n_expert,
            n_expert_used,
            n_ff_exp,
            n_expert_shared: g.get_usize(&k("expert_shared_count"))?.unwrap_or(0),
            n_layer_dense_lead: g.get_usize(&k("leading_dense_block_count"))?.unwrap_or(0),
            weights_scale: g.get_f32(&k("expert_weights_scale"))?.unwrap_or(0.0),
            weights_norm: g.get_bool(&k("expert_weights_norm"))?,
            gating_func: g.get_usize(&k("expert_gating_func"))?.map(|v| v as u32),
        })
    }
}

/// Mamba-2 hyperparameters (`{arch}.ssm.*`).
#[derive(Clone, Copy, Debug)]
pub struct SsmHParams {
    /// Convolution kernel width.
    pub d_conv: usize,
    /// Inner width (`ssm.inner_size`).
    pub d_inner: usize,
    /// State size per channel.
    pub d_state: usize,
    /// Heads (`ssm.time_step_rank`).
    pub n_head: usize,
    /// Groups of B/C.
    pub n_group: usize,
}

impl SsmHParams {
    /// Reads and checks the SSM hyperparameters of `arch`.
    pub fn read(g: &GgufModel, arch: &str) -> Result<SsmHParams> {
        let k = |s: &str| format!("{arch}.ssm.{s}");
        let s = SsmHParams {
            d_conv: g.require_usize(&k("conv_kernel"))?,
            d_inner: g.require_usize(&k("inner_size"))?,
            d_state: g.require_usize(&k("state_size"))?,
            n_head: g.require_usize(&k("time_step_rank"))?,
            n_group: g.get_usize(&k("group_count"))?.unwrap_or(1),
        };
        if s.d_conv < 2
            || s.d_conv > 64
            || s.n_head == 0
            || s.n_group == 0
            || s.d_state == 0
            || !s.d_inner.is_multiple_of(s.n_head)
            || !s.n_head.is_multiple_of(s.n_group)
            || s.d_inner > 1 << 20
            || s.d_state > 1 << 12
        {
            return Err(ModelError::HParam(format!(
                "inconsistent SSM shape: inner {} in {} heads and {} groups, state {}, conv {}",
                s.d_inner, s.n_head, s.n_group, s.d_state, s.d_conv
            )));
        }
        Ok(s)
    }

    /// Width of the convolved `[x | B | C]` rows.
    pub fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.n_group * self.d_state
    }
}
