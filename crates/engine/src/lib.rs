//! # engine
//!
//! Native LLM inference as a library: load a GGUF model, tokenize, and generate text with a
//! streaming callback and sampling options. The same crates power the `engine` command.
//!
//! ```no_run
//! use engine::{GenerateParams, LoadOptions, Model, SamplingParams};
//!
//! let model = Model::load("gemma-3-270m-q4_k_m.gguf", &LoadOptions::default())?;
//! let params = GenerateParams {
//!     max_tokens: Some(32),
//!     sampling: SamplingParams::greedy(),
//!     ..Default::default()
//! };
//! let out = model.generate("The capital of France is", &params, |ev| {
//!     print!("{}", ev.text);
//!     true // keep going
//! })?;
//! eprintln!("\n{:.1} tokens/s", out.timings.predicted_per_second());
//! # Ok::<(), engine::Error>(())
//! ```
//!
//! * [`bench`]: throughput tests with llama-bench's semantics.
//! * [`model`]: [`Model`] (weights, tokenizer, backend) and [`Session`] (one sequence).
//! * [`sampling`]: the sampler.
//! * [`perplexity`]: perplexity and KL-divergence with llama-perplexity's semantics.
//! * [`speculative`]: speculative decoding (verification, n-gram and draft-model drafters).
//! * [`memory`]: memory estimates and the refusal to overcommit.
//! * [`stop`]: stop strings in streamed text.
//! * [`harmony`]: the GPT-OSS (harmony) chat format: rendering and reply parsing.
//! * [`provider`]: text providers, devices that run a whole model and speak text (an NPU),
//!   and generation on them.

#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod harmony;
pub mod memory;
pub mod model;
pub mod perplexity;
pub mod provider;
pub mod sampling;
pub mod speculative;
pub mod stop;

pub use engine_core::DType;
pub use engine_models::{Batch, Context, ContextOptions, ModelInfo};
/// Where a GPU backend puts the model (`--gpu-memory auto|device|host`).
pub use engine_rocm::memory::Choice as GpuMemory;
pub use engine_tokenizer::{StreamDecoder, Tokenizer};
pub use error::{Error, Result};
pub use model::{
    default_threads, Device, GenerateParams, Generation, LoadOptions, Model, Prompt, Session,
    StopReason, Timings, TokenEvent,
};
pub use sampling::{Sampler, SamplingParams};
pub use speculative::{Draft, DraftRequest, Drafter, DrafterKind, SpecParams, SpecStats};
