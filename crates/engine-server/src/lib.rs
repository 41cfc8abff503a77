//! # engine-server
//!
//! `engine serve`: models behind the APIs people already use — OpenAI's
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/v1/embeddings`) and Ollama's
//! (`/api/generate`, `/api/chat`, `/api/tags`, ...) — on one port, with continuous batching
//! of up to `--parallel` sequences, chat templates, reasoning extraction, Prometheus metrics
//! and hard limits (a bounded queue, a body size limit, prompts never silently truncated).
//!
//! * [`config`]: the settings.
//! * [`app`]: startup, routes, auth, health, graceful shutdown.
//! * [`api`]: the two API flavours.
//! * [`models`]: the served models: names, on-demand loading under a memory budget,
//!   keep-alive, eviction.
//! * [`scheduler`]: the continuous-batching step loop (one per loaded GGUF model).
//! * [`device`]: models run by a text device (a Hailo NPU): a first-come-first-served
//!   worker producing the same events as the scheduler.
//! * [`template`]: chat templates (minijinja) and the built-ins.
//! * [`reasoning`]: splitting `reasoning_content` from `content`.
//! * [`draft`]: speculative decoding's drafters, and drafting for a verifier on another node.
//! * [`admission`]: the bounded queue.
//! * [`metrics`]: Prometheus exposition.
//!
//! `docs/server.md` is the API reference.

#![warn(missing_docs)]

pub mod admission;
pub mod api;
pub mod app;
pub mod config;
pub mod device;
pub mod draft;
pub mod metrics;
pub mod models;
pub mod reasoning;
pub mod scheduler;
pub mod template;

pub use app::ServeError;
pub use config::{ModelSpec, ReasoningFormat, ServerConfig, TemplateChoice};

/// Runs the server on its own Tokio runtime until SIGTERM/SIGINT; `on_listening` is called
/// with the bound address.
pub fn run(
    cfg: ServerConfig,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("engine-http")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(app::serve(cfg, on_listening))
}
