//! Nemotron-H (`nemotron_h`), a Mamba-2 / attention hybrid. Each block is one norm and one
//! part, chosen per layer from the hyperparameter arrays: no key/value heads and no FFN width
//! makes a Mamba-2 layer, key/value heads make an attention layer (no rope), an FFN width
//! makes a squared-ReLU MLP layer.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{AttnConfig, Decoder, DecoderConfig, FfnConfig, LayerConfig, MixerConfig};
use crate::error::{ModelError, Result};
use crate::hparams::{HParams, SsmHParams};

/// Loads a `nemotron_h` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let arch = "nemotron_h";
    let hp = HParams::read(g, arch)?;
    let ssm = SsmHParams::read(g, arch)?;
    if g.get_usize(&format!("{arch}.expert_count"))?.unwrap_or(0) > 0 {
        return Err(ModelError::HParam(
            "nemotron_h with experts (Nemotron-H MoE) is not supported yet".into(),
        ));
    }
    let layers = (0..hp.n_layer)
        .map(|i| match (hp.n_head_kv[i], hp.n_ff[i]) {
            (0, 0) => LayerConfig {
                mixer: MixerConfig::Mamba2,
                ffn: FfnConfig::None,
            },
            (_, 0) => LayerConfig {
                mixer: MixerConfig::Attention(AttnConfig {
                    rope: None,
                    window: None,
                }),
                ffn: FfnConfig::None,
            },
            _ => LayerConfig {
                mixer: MixerConfig::None,
                ffn: FfnConfig::Dense,
            },
        })
        .collect();
    let mut cfg = DecoderConfig::standard(hp, RopeMode::Neox);
    cfg.layers = layers;
    cfg.act = Activation::ReluSquared;
    cfg.ffn_norm = "attn_norm";
    cfg.ssm = Some(ssm);
    Decoder::load(g, backend, cfg, name)
}
