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
            rms_eps: g
                .get_f32(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
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
        })
    }
}
