//! Llama-family dense decoders (Llama 2/3, Mistral): RMS norm, SwiGLU, interleaved-pair
//! rope with optional `rope_freqs` factors (Llama 3.1 scaling), tied or separate output.

use std::sync::Arc;

use engine_core::{Backend, RopeMode};
use engine_gguf::GgufModel;

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::Result;
use crate::hparams::HParams;

/// Loads a `llama` model.
pub fn load(g: &GgufModel, backend: Arc<dyn Backend>, name: String) -> Result<Decoder> {
    let hp = HParams::read(g, "llama")?;
    let cfg = DecoderConfig::standard(hp, RopeMode::Norm);
    Decoder::load(g, backend, cfg, name)
}
