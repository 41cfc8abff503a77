//! Phi-3 (`phi3`): fused QKV projection, gate and up fused in `ffn_up` (gate rows first),
//! partial NeoX rope with LongRoPE factors (`rope_factors_short` while the context fits the
//! original one, `rope_factors_long` beyond) and `rope.scaling.attn_factor`, queries scaled
//! by `1/sqrt(head_dim)` before attention. Like llama.cpp, the sliding window of some Phi-3
//! files is not applied.

use std::sync::Arc;

use engine_core::{Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::Result;
use crate::hparams::HParams;

/// Loads a `phi3` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let hp = HParams::read(g, "phi3")?;
    let q_scale = 1.0 / (hp.head_dim as f32).sqrt();
    let mut cfg = DecoderConfig::standard(hp, RopeMode::Neox);
    cfg.q_prescale = Some(q_scale);
    Decoder::load(g, backend, cfg, name)
}
