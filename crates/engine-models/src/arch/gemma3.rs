//! Gemma 3: five sliding-window layers to one global layer (pattern 6), each kind with its
//! own rope base (and linear scaling on global layers only), q/k RMS norms, norms after
//! attention and after the feed-forward, embeddings scaled by sqrt(n_embd), queries scaled
//! before attention, GEGLU, tied output, optional final logit soft-capping.

use std::sync::Arc;

use engine_core::{Activation, Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::arch::swa_layers;
use crate::decoder::{
    AttnConfig, Decoder, DecoderConfig, FfnConfig, LayerConfig, MixerConfig, RopeConfig,
};
use crate::error::Result;
use crate::hparams::HParams;

/// Loads a `gemma3` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let arch = "gemma3";
    let hp = HParams::read(g, arch)?;
    let local = if hp.sliding_window > 0 {
        swa_layers(g, arch, hp.n_layer, 6, false)?
    } else {
        vec![false; hp.n_layer]
    };
    let base_swa = g
        .get_f32(&format!("{arch}.rope.freq_base_swa"))?
        .unwrap_or(10000.0);
    let global = RopeConfig::from_hparams(&hp, RopeMode::Neox);
    let layers = local
        .iter()
        .map(|&is_local| {
            let (rope, window) = if is_local {
                let rope = RopeConfig {
                    base: base_swa,
                    scale: 1.0,
                    ..global
                };
                (rope, Some(hp.sliding_window as u32))
            } else {
                (global, None)
            };
            LayerConfig {
                mixer: MixerConfig::Attention(AttnConfig {
                    rope: Some(rope),
                    window,
                }),
                ffn: FfnConfig::Dense,
            }
        })
        .collect();
    // Gemma scales queries by 1/sqrt(query_pre_attn_scalar): the head size, except for the
    // 62-layer (27B) configuration, where it is n_embd / n_head (as llama.cpp does).
    let q_scale = if hp.n_layer == 62 {
        1.0 / ((hp.n_embd / hp.n_head[0]) as f32).sqrt()
    } else {
        1.0 / (hp.head_dim as f32).sqrt()
    };
    let final_softcap = g
        .get_f32(&format!("{arch}.final_logit_softcapping"))?
        .unwrap_or(0.0);
    let embed_scale = (hp.n_embd as f32).sqrt();
    let mut cfg = DecoderConfig::standard(hp, RopeMode::Neox);
    cfg.layers = layers;
    cfg.embed_scale = Some(embed_scale);
    cfg.q_prescale = Some(q_scale);
    cfg.act = Activation::GeluTanh;
    cfg.final_softcap = final_softcap;
    cfg.post_norms = true;
    Decoder::load(g, backend, cfg, name)
}
