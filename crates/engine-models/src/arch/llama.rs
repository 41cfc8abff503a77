//! Llama-family decoders: Llama 2/3 and Mistral (`llama`), with Mixtral-style experts when
//! the file has them, and Ministral 3 (`mistral3`). RMS norm, SwiGLU, interleaved-pair rope
//! with optional `rope_freqs` factors (Llama 3.1 scaling) or YaRN, tied or separate output;
//! `mistral3` adds llama-4-style temperature scaling of the queries.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{AttnTemperature, Decoder, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::hparams::{HParams, MoeHParams};
use crate::moe::Gating;

/// Loads a `llama` or `mistral3` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, arch: &str, name: String) -> Result<Decoder> {
    let hp = HParams::read(g, arch)?;
    let moe = MoeHParams::read(g, arch, &hp)?;
    let temp = if hp.attn_temperature_scale != 0.0 {
        if hp.n_ctx_orig == 0 {
            return Err(ModelError::HParam(
                "attention temperature scaling needs rope.scaling.original_context_length".into(),
            ));
        }
        Some(AttnTemperature {
            beta: hp.attn_temperature_scale,
            floor_scale: hp.n_ctx_orig as u32,
        })
    } else {
        None
    };
    let mut cfg = DecoderConfig::standard(hp, RopeMode::Norm).with_moe(
        &moe,
        Gating::Softmax,
        true,
        Activation::Silu,
    );
    cfg.attn_temperature = temp;
    Decoder::load(g, backend, cfg, name)
}
