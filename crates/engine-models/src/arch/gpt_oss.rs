//! GPT-OSS (`gpt-oss`): alternating sliding-window and full attention layers (even layers
//! local by default) with learned attention sinks, Q/K/V/O biases, YaRN rope, and a MoE
//! whose router has a bias, takes the top k raw logits and weights them by a softmax over
//! those k; experts have biases and the clamped SwiGLU (alpha 1.702, limit 7), and are
//! usually stored in MXFP4. The FFN input norm is `post_attention_norm`.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::arch::swa_layers;
use crate::decoder::{AttnConfig, Decoder, DecoderConfig, MixerConfig, RopeConfig};
use crate::error::{ModelError, Result};
use crate::hparams::{HParams, MoeHParams};
use crate::moe::Gating;

/// GPT-OSS's clamped SwiGLU.
pub const SWIGLU_OAI: Activation = Activation::SwigluOai {
    alpha: 1.702,
    limit: 7.0,
};

/// Loads a `gpt-oss` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let arch = "gpt-oss";
    let hp = HParams::read(g, arch)?;
    let moe = MoeHParams::read(g, arch, &hp)?;
    if moe.n_expert == 0 {
        return Err(ModelError::HParam(
            "gpt-oss.expert_count is required but missing".into(),
        ));
    }
    let local = if hp.sliding_window > 0 {
        swa_layers(g, arch, hp.n_layer, 2, false)?
    } else {
        vec![false; hp.n_layer]
    };
    let rope = RopeConfig::from_hparams(&hp, RopeMode::Neox);
    let swa_rope = RopeConfig {
        base: g
            .get_f32(&format!("{arch}.rope.freq_base_swa"))?
            .unwrap_or(hp.rope_base),
        ..rope
    };
    let window = hp.sliding_window as u32;
    let mut cfg = DecoderConfig::standard(hp, RopeMode::Neox).with_moe(
        &moe,
        Gating::SoftmaxSelected,
        false,
        SWIGLU_OAI,
    );
    for (l, &is_local) in cfg.layers.iter_mut().zip(&local) {
        l.mixer = MixerConfig::Attention(if is_local {
            AttnConfig {
                rope: Some(swa_rope),
                window: Some(window),
            }
        } else {
            AttnConfig {
                rope: Some(rope),
                window: None,
            }
        });
    }
    cfg.ffn_norm = "post_attention_norm";
    Decoder::load(g, backend, cfg, name)
}
