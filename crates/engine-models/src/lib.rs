//! Model architectures, written against [`engine_core::Backend`] only: no model code names a
//! device, so a new backend runs every architecture unchanged.
//!
//! * [`hparams`]: hyperparameters from GGUF metadata.
//! * [`weights`]: loading named tensors with shape checks.
//! * [`batch`], [`context`]: inputs and per-session state (KV cache, recurrent state,
//!   scratch).
//! * [`decoder`]: the one forward-pass driver (attention or Mamba-2 mixers, dense or MoE
//!   feed-forward), with [`ffn`], [`moe`] and [`mamba`] for its parts.
//! * [`arch`]: the families and the registry ([`load`]).

#![warn(missing_docs)]

pub mod arch;
pub mod batch;
pub mod context;
pub mod decoder;
pub mod error;
pub mod ffn;
pub mod hparams;
pub mod mamba;
pub mod moe;
pub mod weights;

use std::sync::Arc;

use engine_core::Backend;
use engine_gguf::GgufModel;

pub use batch::Batch;
pub use context::{Context, ContextOptions, LayerMemory};
pub use error::{ModelError, Result};

/// Architectures this build implements, as `general.architecture` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "gemma3",
    "glm4moe",
    "gpt-oss",
    "llama",
    "mistral3",
    "nemotron_h",
    "phi3",
    "qwen2",
    "qwen3",
    "qwen3moe",
];

/// Facts about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub arch: String,
    /// `general.name` (or the file name).
    pub name: String,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// Residual width.
    pub n_embd: usize,
    /// Blocks run by the forward pass.
    pub n_layer: usize,
    /// Query heads (first attention layer).
    pub n_head: usize,
    /// Key/value heads (first attention layer).
    pub n_head_kv: usize,
    /// Parameters in the file.
    pub n_params: u64,
    /// Bytes of weights loaded.
    pub weight_bytes: u64,
}

/// Memory a model needs for a given context, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryEstimate {
    /// Weights.
    pub weights: u64,
    /// KV cache and recurrent state.
    pub kv_cache: u64,
    /// Activation scratch.
    pub scratch: u64,
}

impl MemoryEstimate {
    /// Sum of all parts.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// A loaded model: evaluates batches of tokens into logits.
pub trait Model: Send + Sync {
    /// Facts about the model.
    fn info(&self) -> &ModelInfo;

    /// Allocates per-session state (KV cache for `opts.n_seq` sequences of `opts.n_ctx`, and
    /// recurrent state for models with Mamba layers).
    fn new_context(&self, opts: ContextOptions) -> Result<Context>;

    /// Memory needed for a context of these sizes, before allocating it.
    fn memory_estimate(&self, opts: &ContextOptions) -> MemoryEstimate;

    /// Evaluates `batch`, appending the logits of tokens marked for output, in batch order,
    /// to `logits` (cleared first): `n_outputs * n_vocab` values.
    fn forward(&self, ctx: &mut Context, batch: &Batch, logits: &mut Vec<f32>) -> Result<()>;

    /// Like [`Model::forward`], but produces the final normalised hidden state of each token
    /// marked for output (`n_outputs * n_embd` values) instead of logits: the input of
    /// embedding pooling.
    fn forward_embeddings(
        &self,
        ctx: &mut Context,
        batch: &Batch,
        out: &mut Vec<f32>,
    ) -> Result<()>;
}

/// Loads the architecture named by the file onto `backend`.
pub fn load(gguf: &GgufModel, backend: Arc<dyn Backend>) -> Result<Box<dyn Model>> {
    let arch = gguf.require_str("general.architecture")?.to_string();
    let name = gguf
        .get_str("general.name")?
        .map(str::to_string)
        .unwrap_or_else(|| {
            gguf.paths()[0]
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(match arch.as_str() {
        "llama" | "mistral3" => Box::new(arch::llama::load(gguf, backend, &arch, name)?),
        "qwen2" | "qwen3" | "qwen3moe" => Box::new(arch::qwen::load(gguf, backend, &arch, name)?),
        "gemma3" => Box::new(arch::gemma3::load(gguf, backend, name)?),
        "gpt-oss" => Box::new(arch::gpt_oss::load(gguf, backend, name)?),
        "phi3" => Box::new(arch::phi3::load(gguf, backend, name)?),
        "glm4moe" => Box::new(arch::glm4moe::load(gguf, backend, name)?),
        "nemotron_h" => Box::new(arch::nemotron_h::load(gguf, backend, name)?),
        _ => {
            return Err(ModelError::UnknownArchitecture {
                arch,
                supported: SUPPORTED_ARCHITECTURES.to_vec(),
            })
        }
    })
}
