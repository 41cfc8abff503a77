//! Qwen2, Qwen3 and Qwen3-MoE decoders: split-half (NeoX) rope; Qwen2 adds Q/K/V biases,
//! Qwen3 per-head RMS norms on queries and keys (both picked up from the tensors present);
//! Qwen3-MoE routes each token to the top k experts of a softmax router with renormalised
//! weights.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::hparams::{HParams, MoeHParams};
use crate::moe::Gating;

/// Loads a `qwen2`, `qwen3` or `qwen3moe` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, arch: &str, name: String) -> Result<Decoder> {
    let hp = HParams::read(g, arch)?;
    let moe = MoeHParams::read(g, arch, &hp)?;
    if arch == "qwen3moe" && moe.n_expert == 0 {
        return Err(ModelError::HParam(
            "qwen3moe.expert_count is required but missing".into(),
        ));
    }
    let cfg = DecoderConfig::standard(hp, RopeMode::Neox).with_moe(
        &moe,
        Gating::Softmax,
        true,
        Activation::Silu,
    );
    Decoder::load(g, backend, cfg, name)
}
