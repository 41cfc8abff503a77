//! Speculative decoding for the server: which drafter the scheduler uses, and drafting
//! across nodes.
//!
//! * [`DraftConfig`]: the drafter of `engine serve` (`--model-draft`, `--spec-type ngram`,
//!   `--draft-remote`) and its settings (`--draft-max`, `--draft-min`, `--draft-p-min`);
//!   [`build`] makes it.
//! * [`protocol`]: the versioned remote drafting protocol (`POST /v1/draft`).
//! * [`client`]: the verifier's side, [`client::RemoteDrafter`].
//! * [`endpoint`]: the drafter node's side.
//!
//! The scheduler's use of a drafter (drafting, verification in the batched step, rollback,
//! metrics) is in [`crate::scheduler::speculative`]. `docs/speculative.md` describes the
//! design and its latency budget.

pub mod client;
pub mod endpoint;
pub mod protocol;

use std::path::PathBuf;
use std::sync::Arc;

use engine::speculative::draft_model::ModelDrafter;
use engine::speculative::ngram::{NgramDrafter, NgramParams};
use engine::{Drafter, DrafterKind, SpecParams};

pub use client::{RemoteConfig, RemoteDrafter};

/// The drafter a server verifies with.
#[derive(Clone, Debug, Default)]
pub enum DraftSource {
    /// No speculative decoding.
    #[default]
    None,
    /// A draft model file (`--model-draft`).
    Model(PathBuf),
    /// Prompt lookup (`--spec-type ngram`).
    Ngram(NgramParams),
    /// A drafter engine on another node (`--draft-remote`).
    Remote(RemoteConfig),
}

/// Speculative decoding settings of the server.
#[derive(Clone, Debug, Default)]
pub struct DraftConfig {
    /// Where drafts come from.
    pub source: DraftSource,
    /// Draft lengths and confidence cut.
    pub params: SpecParams,
}

impl DraftConfig {
    /// The kind of drafter configured, if any.
    pub fn kind(&self) -> Option<DrafterKind> {
        match self.source {
            DraftSource::None => None,
            DraftSource::Model(_) => Some(DrafterKind::DraftModel),
            DraftSource::Ngram(_) => Some(DrafterKind::Ngram),
            DraftSource::Remote(_) => Some(DrafterKind::Remote),
        }
    }
}

/// Makes the configured drafter for `target` with `n_seq` slots of `n_ctx` tokens: a draft
/// model is loaded onto the target's thread pool and checked for vocabulary compatibility.
pub fn build(
    cfg: &DraftConfig,
    target: &engine::Model,
    load: &engine::LoadOptions,
) -> Result<Option<Box<dyn Drafter>>, String> {
    cfg.params.validate().map_err(|e| e.to_string())?;
    let n_ctx = target.context_options().n_ctx;
    let n_seq = target.context_options().n_seq;
    Ok(match &cfg.source {
        DraftSource::None => None,
        DraftSource::Ngram(p) => Some(Box::new(NgramDrafter::new(*p))),
        DraftSource::Remote(r) => Some(Box::new(RemoteDrafter::new(r.clone())?)),
        DraftSource::Model(path) => {
            let opts = engine::LoadOptions {
                n_seq,
                n_ctx,
                ..load.clone()
            };
            let draft = engine::Model::load_sharing(path, &opts, target)
                .map_err(|e| format!("cannot load the draft model {}: {e}", path.display()))?;
            tracing::info!(
                draft = %path.display(),
                arch = %draft.info().arch,
                "draft model loaded"
            );
            let d = ModelDrafter::new(Arc::new(draft), target, n_seq, n_ctx, cfg.params.p_min)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Some(Box::new(d))
        }
    })
}
