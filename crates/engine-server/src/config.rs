//! Server settings: everything `engine serve` is told by its flags (or a `--config` file),
//! with the defaults documented in `docs/server.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use engine::LoadOptions;
use engine_store::{KeepAlive, Preset};

/// How reasoning ("thinking") text is returned (llama-server's `--reasoning-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReasoningFormat {
    /// Leave reasoning in `content`, markers included.
    None,
    /// Split reasoning into `reasoning_content` (`<think>` blocks, harmony `analysis`).
    #[default]
    Deepseek,
}

impl std::str::FromStr for ReasoningFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(ReasoningFormat::None),
            "deepseek" | "auto" => Ok(ReasoningFormat::Deepseek),
            other => Err(format!(
                "unknown reasoning format '{other}' (none, deepseek or auto)"
            )),
        }
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The GGUF file to serve.
    pub model_path: PathBuf,
    /// How to load it. `n_seq` is the number of parallel slots and `n_ctx` the context of
    /// each slot.
    pub load: LoadOptions,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Names the model answers to, the first one reported by `/v1/models` and `/api/tags`
    /// (`--alias`, then the name given to `-m`, then the file stem).
    pub names: Vec<String>,
    /// Bearer keys accepted (empty = no authentication).
    pub api_keys: Vec<String>,
    /// Serve `GET /metrics`.
    pub metrics: bool,
    /// A Jinja chat template overriding the model's (the text of `--chat-template-file`, or
    /// a built-in name given to `--chat-template`).
    pub chat_template: Option<TemplateChoice>,
    /// Reasoning extraction default.
    pub reasoning_format: ReasoningFormat,
    /// Requests allowed to wait for a slot beyond those running; more get 503.
    pub queue_size: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Prompt tokens evaluated per sequence per step (`-ub`); the prompt's chunking, so
    /// changing it from `engine run`'s batch size changes numerics slightly.
    pub ubatch: usize,
    /// Most prompt tokens evaluated in one step across sequences (`-b`).
    pub step_tokens: usize,
    /// Reuse the KV cache of a slot whose last prompt shares a prefix with a new one.
    pub cache_prompt: bool,
    /// Origins allowed by CORS (empty = no CORS headers; `*` = any).
    pub cors_origins: Vec<String>,
    /// How long SIGTERM waits for running requests before cutting them.
    pub shutdown_timeout: Duration,
    /// Seconds sent in `Retry-After` with a 503.
    pub retry_after_secs: u64,
    /// The models served, loaded on demand (`engine serve` without `-m`). Empty: serve the
    /// one model at `model_path`, loaded at startup and kept, as llama-server does.
    pub models: Vec<ModelSpec>,
    /// Settings of the `-m` model when it is a store preset (system prompt, parameters, ...).
    pub preset: Preset,
    /// Memory for loaded models together (weights + KV cache + compute buffers, as
    /// estimated before loading), `--max-memory`. `None`: the memory available at startup.
    pub max_memory: Option<u64>,
    /// How long an idle model stays loaded (`--keep-alive`). `None`: 5 minutes for models
    /// loaded on demand, forever for the `-m` model.
    pub keep_alive: Option<KeepAlive>,
    /// Most models loaded at once (0 = as many as fit in memory).
    pub max_models: usize,
    /// How long a load may wait for busy models to finish before the request gets 503.
    pub load_timeout: Duration,
    /// Speculative decoding (none by default).
    pub draft: crate::draft::DraftConfig,
    /// For the `-m` model when it runs on a text device (a Hailo HEF): its package.
    pub device: Option<engine_store::DevicePackage>,
    /// Longest wait for a text device's next piece of text before the generation is aborted
    /// (`--device-timeout`).
    pub device_timeout: Duration,
    /// The Hailo shim library (`--hailo-shim`; default: `ENGINE_HAILO_SHIM`, next to the
    /// program, the library directories).
    pub hailo_shim: Option<PathBuf>,
    /// How to start the Hailo host process (default: this program's `hailo-host`).
    pub hailo_host: Option<engine_hailo::HostCommand>,
}

/// One model of a multi-model server.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name requests use (and reports show).
    pub name: String,
    /// The GGUF file (a split set's first part).
    pub path: PathBuf,
    /// Aliases, system prompt, default parameters, context, template, keep-alive, draft.
    pub preset: Preset,
    /// Where it comes from (for `/api/show`): a store source, a models file, a path.
    pub origin: String,
    /// An identifier of the weights (sha256 from the store manifest, if known).
    pub digest: Option<String>,
    /// For a model compiled for a text device (a Hailo HEF): its package.
    pub device: Option<engine_store::DevicePackage>,
}

/// Where a chat template override comes from.
#[derive(Clone, Debug)]
pub enum TemplateChoice {
    /// A built-in template by name (`gemma`, `llama3`, `chatml`, `harmony`, ...).
    Builtin(String),
    /// Jinja source (from `--chat-template-file`).
    Source(String),
}

impl ServerConfig {
    /// A configuration with the documented defaults for `model_path`.
    pub fn new(model_path: PathBuf) -> ServerConfig {
        ServerConfig {
            model_path,
            load: LoadOptions {
                n_seq: 4,
                ..Default::default()
            },
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            names: Vec::new(),
            api_keys: Vec::new(),
            metrics: false,
            chat_template: None,
            reasoning_format: ReasoningFormat::Deepseek,
            queue_size: 64,
            max_body_bytes: 8 << 20,
            ubatch: 512,
            step_tokens: 512,
            cache_prompt: true,
            cors_origins: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            retry_after_secs: 2,
            models: Vec::new(),
            preset: Preset::default(),
            max_memory: None,
            keep_alive: None,
            max_models: 0,
            load_timeout: Duration::from_secs(300),
            draft: Default::default(),
            device: None,
            device_timeout: Duration::from_secs(60),
            hailo_shim: None,
            hailo_host: None,
        }
    }

    /// Number of parallel sequences.
    pub fn parallel(&self) -> usize {
        self.load.n_seq.max(1)
    }
}

/// `--config FILE`: the same settings as the flags, in TOML, keys spelled like the long
/// flags (`ctx-size = 8192`, `api-key = ["k1", "k2"]`). Flags given on the command line win.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// `-m`
    pub model: Option<String>,
    /// `-t`
    pub threads: Option<u32>,
    /// `-c`
    pub ctx_size: Option<usize>,
    /// `-np`
    pub parallel: Option<usize>,
    /// `-b`
    pub batch_size: Option<usize>,
    /// `-ub`
    pub ubatch_size: Option<usize>,
    /// `--cache-type-k`
    pub cache_type_k: Option<String>,
    /// `--cache-type-v`
    pub cache_type_v: Option<String>,
    /// `--no-mmap`
    pub no_mmap: Option<bool>,
    /// `--device`
    pub device: Option<String>,
    /// `--gpu-memory`
    pub gpu_memory: Option<String>,
    /// `--host`
    pub host: Option<String>,
    /// `--port`
    pub port: Option<u16>,
    /// `--api-key` (one or a list)
    pub api_key: Option<OneOrMany>,
    /// `--alias`
    pub alias: Option<OneOrMany>,
    /// `--metrics`
    pub metrics: Option<bool>,
    /// `--chat-template`
    pub chat_template: Option<String>,
    /// `--chat-template-file`
    pub chat_template_file: Option<PathBuf>,
    /// `--reasoning-format`
    pub reasoning_format: Option<String>,
    /// `--queue-size`
    pub queue_size: Option<usize>,
    /// `--max-body-size`
    pub max_body_size: Option<usize>,
    /// `--no-cache-prompt` (as `cache-prompt = false`)
    pub cache_prompt: Option<bool>,
    /// `--cors`
    pub cors: Option<OneOrMany>,
    /// `--shutdown-timeout` in seconds
    pub shutdown_timeout: Option<u64>,
    /// `--log-format`
    pub log_format: Option<String>,
    /// `--models`
    pub models: Option<PathBuf>,
    /// `--max-memory` (`8g`, `512MiB`, bytes)
    pub max_memory: Option<String>,
    /// `--keep-alive` (`5m`, `0`, `-1`, seconds)
    pub keep_alive: Option<toml::Value>,
    /// `--max-models`
    pub max_models: Option<usize>,
    /// `--load-timeout` in seconds
    pub load_timeout: Option<u64>,
    /// `--model-draft`
    pub model_draft: Option<String>,
    /// `--spec-type`
    pub spec_type: Option<String>,
    /// `--draft-max`
    pub draft_max: Option<usize>,
    /// `--draft-min`
    pub draft_min: Option<usize>,
    /// `--draft-p-min`
    pub draft_p_min: Option<f32>,
    /// `--draft-fixed`
    pub draft_fixed: Option<bool>,
    /// `--draft-remote`
    pub draft_remote: Option<String>,
    /// `--draft-remote-key`
    pub draft_remote_key: Option<String>,
    /// `--draft-remote-timeout` in milliseconds
    pub draft_remote_timeout: Option<u64>,
    /// `--spec-ngram-min`
    pub spec_ngram_min: Option<usize>,
    /// `--spec-ngram-max`
    pub spec_ngram_max: Option<usize>,
    /// `--device-timeout` in seconds
    pub device_timeout: Option<u64>,
    /// `--hailo-shim`
    pub hailo_shim: Option<PathBuf>,
}

/// A string or a list of strings.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_keys_and_errors() {
        let c: FileConfig = toml::from_str(
            "model = \"gemma3-270m\"\nctx-size = 8192\nparallel = 4\napi-key = [\"a\", \"b\"]\nalias = \"g\"\nmetrics = true\n",
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("gemma3-270m"));
        assert_eq!(c.ctx_size, Some(8192));
        assert_eq!(c.api_key.unwrap().into_vec(), vec!["a", "b"]);
        assert_eq!(c.alias.unwrap().into_vec(), vec!["g"]);
        let c: FileConfig = toml::from_str(
            "models = \"/etc/engine/models.toml\"\nmax-memory = \"8g\"\nkeep-alive = \"10m\"\nmax-models = 2\nload-timeout = 60\n",
        )
        .unwrap();
        assert_eq!(c.models.unwrap().to_str(), Some("/etc/engine/models.toml"));
        assert_eq!(c.max_memory.as_deref(), Some("8g"));
        assert_eq!(c.keep_alive, Some(toml::Value::String("10m".into())));
        assert_eq!(c.max_models, Some(2));
        assert_eq!(c.load_timeout, Some(60));
        assert!(toml::from_str::<FileConfig>("ctx_sizee = 1").is_err());
        assert!(toml::from_str::<FileConfig>("port = \"x\"").is_err());
        assert_eq!("none".parse::<ReasoningFormat>(), Ok(ReasoningFormat::None));
        assert!("bogus".parse::<ReasoningFormat>().is_err());
    }
}
