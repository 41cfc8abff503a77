//! GLM-4.5 (`glm4moe`): Q/K/V biases, optional q/k norms, partial NeoX rope; the first
//! `leading_dense_block_count` layers have a dense SwiGLU FFN, the rest a MoE with a sigmoid
//! router whose selection adds `exp_probs_b`, weights renormalised and scaled by
//! `expert_weights_scale`, plus a shared expert. The FFN input norm is `post_attention_norm`.
//! The trailing NextN (multi-token prediction) block counted in `block_count` is loaded for
//! later speculative use but not run.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::hparams::{HParams, MoeHParams};
use crate::moe::Gating;

/// Loads a `glm4moe` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let arch = "glm4moe";
    let hp = HParams::read(g, arch)?;
    let moe = MoeHParams::read(g, arch, &hp)?;
    if moe.n_expert == 0 {
        return Err(ModelError::HParam(
            "glm4moe.expert_count is required but missing".into(),
        ));
    }
    let gating = match moe.gating_func {
        None | Some(0) => Gating::Sigmoid,
        Some(code) => Gating::from_code(code)?,
    };
    let norm = moe.weights_norm.unwrap_or(false);
    let mut cfg =
        DecoderConfig::standard(hp, RopeMode::Neox).with_moe(&moe, gating, norm, Activation::Silu);
    cfg.ffn_norm = "post_attention_norm";
    Decoder::load(g, backend, cfg, name)
}
