//! Qwen2 and Qwen3 dense decoders: split-half (NeoX) rope; Qwen2 adds Q/K/V biases, Qwen3
//! per-head RMS norms on queries and keys (both picked up from the tensors present).

use std::sync::Arc;

use engine_core::{Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::Result;
use crate::hparams::HParams;

/// Loads a `qwen2` or `qwen3` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, arch: &str, name: String) -> Result<Decoder> {
    let hp = HParams::read(g, arch)?;
    let cfg = DecoderConfig::standard(hp, RopeMode::Neox);
    Decoder::load(g, backend, cfg, name)
}
