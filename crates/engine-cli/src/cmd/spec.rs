//! Speculative decoding flags shared by `engine run`, `engine bench` and `engine serve`, with
//! llama-server's names: `--model-draft`/`-md`, `--draft-max`, `--draft-min`,
//! `--draft-p-min`, plus `--spec-type ngram` (prompt lookup) and `--draft-remote URL` (a
//! drafter engine on another node).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use engine::speculative::ngram::NgramParams;
use engine::SpecParams;
use engine_server::draft::{DraftConfig, DraftSource, RemoteConfig};

/// Speculative decoding options of `engine run`, `engine bench` and `engine serve`.
#[derive(Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Drafter for speculative decoding: draft (a draft model, --model-draft), ngram
    /// (prompt lookup, no second model) or remote (--draft-remote). Implied by
    /// --model-draft and --draft-remote.
    #[arg(long = "spec-type")]
    pub spec_type: Option<String>,
    /// Draft model: a GGUF path or store name with the model's vocabulary; also -md.
    #[arg(long = "model-draft", visible_alias = "md")]
    pub model_draft: Option<String>,
    /// Most tokens drafted per step [default: 16].
    #[arg(long = "draft-max", visible_alias = "draft")]
    pub draft_max: Option<usize>,
    /// Fewest drafted tokens worth verifying [default: 0].
    #[arg(long = "draft-min")]
    pub draft_min: Option<usize>,
    /// A draft model stops drafting below this confidence in its next token [default: 0.75].
    #[arg(long = "draft-p-min")]
    pub draft_p_min: Option<f32>,
    /// Always draft --draft-max tokens (no adaptation to the acceptance rate).
    #[arg(long = "draft-fixed")]
    pub draft_fixed: bool,
    /// A drafter engine on another node: http://HOST:PORT of its `engine serve`.
    #[arg(long = "draft-remote")]
    pub draft_remote: Option<String>,
    /// The remote drafter's API key.
    #[arg(long = "draft-remote-key")]
    pub draft_remote_key: Option<String>,
    /// Deadline of one remote drafting exchange, in milliseconds [default: 1000].
    #[arg(long = "draft-remote-timeout")]
    pub draft_remote_timeout: Option<u64>,
    /// Shortest suffix n-gram lookup matches [default: 2].
    #[arg(long = "spec-ngram-min")]
    pub spec_ngram_min: Option<usize>,
    /// Longest suffix n-gram lookup matches [default: 4].
    #[arg(long = "spec-ngram-max")]
    pub spec_ngram_max: Option<usize>,
}

impl SpecArgs {
    /// True when speculative decoding was asked for.
    pub fn enabled(&self) -> bool {
        self.spec_type.is_some() || self.model_draft.is_some() || self.draft_remote.is_some()
    }

    /// The drafter configuration these flags describe.
    pub fn config(&self) -> Result<DraftConfig> {
        draft_config(&SpecSettings {
            spec_type: self.spec_type.clone(),
            model_draft: self.model_draft.clone(),
            draft_max: self.draft_max,
            draft_min: self.draft_min,
            draft_p_min: self.draft_p_min,
            adaptive: !self.draft_fixed,
            draft_remote: self.draft_remote.clone(),
            draft_remote_key: self.draft_remote_key.clone(),
            draft_remote_timeout: self.draft_remote_timeout,
            ngram_min: self.spec_ngram_min,
            ngram_max: self.spec_ngram_max,
        })
    }
}

/// The speculative settings of any command (flags, or `engine serve`'s config file).
#[derive(Clone, Debug, Default)]
pub struct SpecSettings {
    /// `--spec-type`
    pub spec_type: Option<String>,
    /// `--model-draft`
    pub model_draft: Option<String>,
    /// `--draft-max`
    pub draft_max: Option<usize>,
    /// `--draft-min`
    pub draft_min: Option<usize>,
    /// `--draft-p-min`
    pub draft_p_min: Option<f32>,
    /// not `--draft-fixed`
    pub adaptive: bool,
    /// `--draft-remote`
    pub draft_remote: Option<String>,
    /// `--draft-remote-key`
    pub draft_remote_key: Option<String>,
    /// `--draft-remote-timeout` (ms)
    pub draft_remote_timeout: Option<u64>,
    /// `--spec-ngram-min`
    pub ngram_min: Option<usize>,
    /// `--spec-ngram-max`
    pub ngram_max: Option<usize>,
}

/// Checks the combination and builds the drafter configuration.
pub fn draft_config(s: &SpecSettings) -> Result<DraftConfig> {
    let defaults = SpecParams::default();
    let params = SpecParams {
        draft_max: s.draft_max.unwrap_or(defaults.draft_max),
        draft_min: s.draft_min.unwrap_or(defaults.draft_min),
        p_min: s.draft_p_min.unwrap_or(defaults.p_min),
        adaptive: s.adaptive,
    };
    params.validate()?;
    let kind = match (&s.spec_type, &s.model_draft, &s.draft_remote) {
        (Some(t), _, _) => t.to_ascii_lowercase(),
        (None, Some(_), None) => "draft".into(),
        (None, None, Some(_)) => "remote".into(),
        (None, Some(_), Some(_)) => {
            bail!("use either --model-draft or --draft-remote (or pick one with --spec-type)")
        }
        (None, None, None) => "none".into(),
    };
    let source = match kind.as_str() {
        "none" => DraftSource::None,
        "draft" => {
            let Some(m) = &s.model_draft else {
                bail!("--spec-type draft needs --model-draft MODEL");
            };
            DraftSource::Model(super::resolve_model(m)?)
        }
        "ngram" | "lookup" => {
            let d = NgramParams::default();
            let n_min = s.ngram_min.unwrap_or(d.n_min);
            let n_max = s.ngram_max.unwrap_or(d.n_max.max(n_min));
            if n_min == 0 || n_max < n_min || n_max > 16 {
                bail!("--spec-ngram-min/max must satisfy 1 <= min <= max <= 16 (got {n_min}, {n_max})");
            }
            DraftSource::Ngram(NgramParams { n_min, n_max })
        }
        "remote" => {
            let Some(url) = &s.draft_remote else {
                bail!("--spec-type remote needs --draft-remote http://HOST:PORT");
            };
            let mut r = RemoteConfig::new(url.clone());
            r.api_key = s.draft_remote_key.clone().filter(|k| !k.is_empty());
            if let Some(ms) = s.draft_remote_timeout {
                if ms == 0 || ms > 60_000 {
                    bail!("--draft-remote-timeout must be between 1 and 60000 ms, got {ms}");
                }
                r.timeout = Duration::from_millis(ms);
            }
            DraftSource::Remote(r)
        }
        other => bail!("unknown --spec-type '{other}' (draft, ngram or remote)"),
    };
    Ok(DraftConfig { source, params })
}
