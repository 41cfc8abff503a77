//! `engine serve`: the OpenAI- and Ollama-compatible server (crate `engine-server`), with
//! llama-server's flag names. Flags win over a `--config` file, which wins over defaults.
//!
//! With `-m` it serves that one model, loaded at startup, as llama-server does. Without
//! `-m` it serves every model in the store (presets from `engine create` included) plus
//! those of a `--models` file, each loaded on demand and unloaded after its keep-alive,
//! within `--max-memory`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine::LoadOptions;
use engine_server::config::FileConfig;
use engine_server::{ModelSpec, ReasoningFormat, ServerConfig, TemplateChoice};
use engine_store::preset::ModelRef;
use engine_store::{KeepAlive, Store};

/// Arguments of `engine serve`.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Model: a GGUF path, or a name from the local store (known names are pulled on first
    /// use). Without it, every model in the store and in --models is served on demand.
    #[arg(short = 'm', long = "model")]
    pub model: Option<String>,
    /// A models file (TOML, one `[models."NAME"]` table per model) served beside the store's
    /// models.
    #[arg(long = "models", conflicts_with = "model")]
    pub models: Option<PathBuf>,
    /// Memory the loaded models may use together (weights + KV cache + compute buffers, as
    /// estimated before loading), e.g. 8g, 512MiB; least recently used idle models are
    /// unloaded to make room [default: the memory available at startup].
    #[arg(long = "max-memory")]
    pub max_memory: Option<String>,
    /// How long an idle model stays loaded: a duration (5m, 1h), seconds, 0 (unload when
    /// idle) or -1 (never) [default: 5m, or forever for the -m model].
    #[arg(long = "keep-alive", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,
    /// Most models loaded at once (0 = as many as fit in --max-memory) [default: 0].
    #[arg(long = "max-models")]
    pub max_models: Option<usize>,
    /// Seconds a model load may wait for busy models to free memory [default: 300].
    #[arg(long = "load-timeout")]
    pub load_timeout: Option<u64>,
    /// TOML file with any of these settings (keys like the long flags, e.g. ctx-size = 8192).
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Total context in tokens, shared equally by the parallel slots as in llama-server
    /// (default: the smaller of 4096 and the training context, per slot).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Sequences decoded together (slots); also `-np` [default: 4].
    #[arg(long = "parallel")]
    pub parallel: Option<usize>,
    /// Most prompt tokens evaluated in one step across sequences [default: 512].
    #[arg(short = 'b', long = "batch-size")]
    pub batch_size: Option<usize>,
    /// Prompt chunk per sequence per step; also `-ub`. Equal to `engine run -b` (512) for
    /// bit-identical prompts; smaller values interleave long prompts more finely
    /// [default: 512].
    #[arg(long = "ubatch-size")]
    pub ubatch_size: Option<usize>,
    /// KV cache type for keys: f16 or f32 [default: f16]; also `-ctk`.
    #[arg(long = "cache-type-k")]
    pub cache_type_k: Option<String>,
    /// KV cache type for values (must equal the key type); also `-ctv`.
    #[arg(long = "cache-type-v")]
    pub cache_type_v: Option<String>,
    /// Read the file into memory instead of memory-mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// Device: auto (the first usable CUDA GPU, else ROCm GPU, else the CPU), cpu, cuda[:N],
    /// rocm[:N].
    #[arg(long = "device")]
    pub device: Option<String>,
    /// Where a GPU puts the model: auto (device memory; on an AMD APU whichever of the BIOS
    /// carve-out and GTT holds it), device, or host (GPU-mapped system memory).
    #[arg(long = "gpu-memory")]
    pub gpu_memory: Option<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Port to listen on (0 = any free port) [default: 8080].
    #[arg(long = "port")]
    pub port: Option<u16>,
    /// Require `Authorization: Bearer KEY` (repeatable; ENGINE_API_KEY also works).
    #[arg(long = "api-key")]
    pub api_key: Vec<String>,
    /// Names the model answers to in requests and reports (comma-separated or repeated).
    #[arg(short = 'a', long = "alias")]
    pub alias: Vec<String>,
    /// Serve Prometheus metrics at /metrics.
    #[arg(long = "metrics")]
    pub metrics: bool,
    /// A built-in chat template by name (gemma, llama3, chatml, harmony, deepseek, phi3,
    /// mistral, llama2) instead of the model's.
    #[arg(long = "chat-template", conflicts_with = "chat_template_file")]
    pub chat_template: Option<String>,
    /// A Jinja chat template file instead of the model's.
    #[arg(long = "chat-template-file")]
    pub chat_template_file: Option<PathBuf>,
    /// Reasoning extraction: none, deepseek or auto (= deepseek) [default: auto].
    #[arg(long = "reasoning-format")]
    pub reasoning_format: Option<String>,
    /// Requests that may wait for a slot; more get 503 with Retry-After [default: 64].
    #[arg(long = "queue-size")]
    pub queue_size: Option<usize>,
    /// Largest request body in bytes; larger gets 413 [default: 8388608].
    #[arg(long = "max-body-size")]
    pub max_body_size: Option<usize>,
    /// Never reuse a cached prompt prefix (every prompt evaluated from scratch).
    #[arg(long = "no-cache-prompt")]
    pub no_cache_prompt: bool,
    /// Allow browser requests from this origin (repeatable; `*` = any). Off by default.
    #[arg(long = "cors")]
    pub cors: Vec<String>,
    /// Seconds SIGTERM waits for running requests before cutting them [default: 30].
    #[arg(long = "shutdown-timeout")]
    pub shutdown_timeout: Option<u64>,
    /// Log format on stderr: text or json [default: text].
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Speculative decoding (the flags of `engine run` and `engine bench`).
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
    /// Seconds a text device (Hailo) may take to produce the next piece of text before the
    /// generation is aborted with 504 [default: 60].
    #[arg(long = "device-timeout")]
    pub device_timeout: Option<u64>,
    /// The Hailo shim library (libengine_hailo_shim.so) [default: ENGINE_HAILO_SHIM, next to
    /// the engine binary, /usr/local/lib, /usr/lib].
    #[arg(long = "hailo-shim")]
    pub hailo_shim: Option<PathBuf>,
}

/// Rewrites llama-server's two-letter short flags into their long forms (clap's short
/// flags are one letter).
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let is_serve = args.get(1).is_some_and(|a| a == "serve");
    if !is_serve {
        return args;
    }
    args.into_iter()
        .map(|a| {
            let (flag, rest) = match a.split_once('=') {
                Some((f, r)) => (f.to_string(), Some(r.to_string())),
                None => (a.clone(), None),
            };
            let long = match flag.as_str() {
                "-np" => "--parallel",
                "-ub" => "--ubatch-size",
                "-ctk" => "--cache-type-k",
                "-ctv" => "--cache-type-v",
                _ => return a,
            };
            match rest {
                Some(r) => format!("{long}={r}"),
                None => long.to_string(),
            }
        })
        .collect()
}

/// The log format asked for (flag or config file), for setting up logging before running.
pub fn log_format(a: &ServeArgs) -> String {
    if let Some(f) = &a.log_format {
        return f.clone();
    }
    a.config
        .as_ref()
        .and_then(|p| FileConfig::load(p).ok())
        .and_then(|c| c.log_format)
        .unwrap_or_else(|| "text".into())
}

/// Builds the server settings from flags, the config file and defaults.
pub fn config(a: ServeArgs) -> Result<ServerConfig> {
    let f = match &a.config {
        Some(p) => FileConfig::load(p).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    if let Some(fmt) = a.log_format.as_ref().or(f.log_format.as_ref()) {
        if fmt != "text" && fmt != "json" {
            bail!("--log-format must be text or json, got '{fmt}'");
        }
    }
    let spec = a.model.clone().or(f.model.clone());
    let models_file = a.models.clone().or(f.models.clone());
    if spec.is_some() && models_file.is_some() {
        bail!("use either -m MODEL (one model) or --models FILE (many), not both");
    }
    let path = match &spec {
        Some(s) => super::resolve_model(s)?,
        None => PathBuf::new(),
    };
    let parallel = a.parallel.or(f.parallel).unwrap_or(4);
    if parallel == 0 || parallel > 256 {
        bail!("--parallel must be between 1 and 256, got {parallel}");
    }
    let ctx_total = a.ctx_size.or(f.ctx_size).unwrap_or(0);
    let n_ctx = if ctx_total == 0 {
        0
    } else {
        ctx_total / parallel
    };
    if ctx_total > 0 && n_ctx < 16 {
        bail!(
            "--ctx-size {ctx_total} shared by {parallel} slots leaves {n_ctx} tokens per slot; use at least {}",
            16 * parallel
        );
    }
    let kv_k = a.cache_type_k.clone().or(f.cache_type_k.clone());
    let kv = super::parse_kv_type(kv_k.as_deref().unwrap_or("f16"))?;
    if let Some(v) = a.cache_type_v.as_ref().or(f.cache_type_v.as_ref()) {
        if super::parse_kv_type(v)? != kv {
            bail!("--cache-type-v must equal --cache-type-k (one cache type is supported per context)");
        }
    }
    let batch = a.batch_size.or(f.batch_size).unwrap_or(512);
    let ubatch = a.ubatch_size.or(f.ubatch_size).unwrap_or(512);
    if batch == 0 || ubatch == 0 {
        bail!("--batch-size and --ubatch-size must be at least 1");
    }
    let threads = a.threads.or(f.threads).map(|t| t as usize).unwrap_or(0);
    let device = a
        .device
        .clone()
        .or(f.device.clone())
        .unwrap_or_else(|| "auto".into());
    let mut cfg = ServerConfig::new(path);
    match &spec {
        None => cfg.models = served_models(models_file.as_deref())?,
        Some(s) if !std::path::Path::new(s).is_file() => {
            // a store preset served with -m keeps its settings
            let store = Store::open_default()?;
            if let Some(m) = store.get(s)? {
                cfg.preset = store.effective_preset(&m)?;
                cfg.device = store.weights(&m)?.0.device;
                if let Some(n) = cfg.preset.num_ctx {
                    if ctx_total > 0 {
                        tracing::info!(num_ctx = n, "the preset's num_ctx replaces -c");
                    }
                }
            }
        }
        Some(_) => {}
    }
    if let Some(m) = a.max_memory.clone().or(f.max_memory.clone()) {
        let bytes = engine::memory::parse_size(&m).map_err(anyhow::Error::msg)?;
        if bytes == 0 {
            bail!("--max-memory must be more than 0");
        }
        cfg.max_memory = Some(bytes);
    }
    let keep_alive = match (&a.keep_alive, &f.keep_alive) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(toml::Value::String(k))) => Some(k.clone()),
        (None, Some(toml::Value::Integer(i))) => Some(i.to_string()),
        (None, Some(toml::Value::Float(x))) => Some(x.to_string()),
        (None, Some(other)) => bail!("keep-alive must be a duration or seconds, got {other}"),
        (None, None) => None,
    };
    if let Some(k) = keep_alive {
        cfg.keep_alive =
            Some(KeepAlive::parse(&k).map_err(|e| anyhow::anyhow!("--keep-alive: {e}"))?);
    }
    cfg.max_models = a.max_models.or(f.max_models).unwrap_or(0);
    cfg.load_timeout = Duration::from_secs(a.load_timeout.or(f.load_timeout).unwrap_or(300));
    cfg.load = LoadOptions {
        threads,
        n_ctx,
        n_seq: parallel,
        n_batch: ubatch,
        kv_type: kv,
        mmap: !(a.no_mmap || f.no_mmap.unwrap_or(false)),
        device: device.parse()?,
        gpu_memory: super::parse_gpu_memory(
            a.gpu_memory
                .as_deref()
                .or(f.gpu_memory.as_deref())
                .unwrap_or("auto"),
        )?,
        ..Default::default()
    };
    let host = a
        .host
        .clone()
        .or(f.host.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = a.port.or(f.port).unwrap_or(8080);
    let ip: std::net::IpAddr = match host.as_str() {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h
            .parse()
            .with_context(|| format!("--host must be an IP address, got '{h}'"))?,
    };
    cfg.addr = std::net::SocketAddr::new(ip, port);
    let mut names: Vec<String> = if a.alias.is_empty() {
        f.alias.map(|x| x.into_vec()).unwrap_or_default()
    } else {
        a.alias.clone()
    };
    names = names
        .iter()
        .flat_map(|n| n.split(','))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(spec) = &spec {
        if !std::path::Path::new(spec).is_file() {
            names.push(spec.clone());
        }
    }
    cfg.names = names;
    cfg.api_keys = if a.api_key.is_empty() {
        f.api_key.map(|x| x.into_vec()).unwrap_or_default()
    } else {
        a.api_key.clone()
    };
    if cfg.api_keys.is_empty() {
        if let Ok(k) = std::env::var("ENGINE_API_KEY") {
            cfg.api_keys.push(k);
        }
    }
    cfg.api_keys.retain(|k| !k.is_empty());
    cfg.metrics = a.metrics || f.metrics.unwrap_or(false);
    let tmpl_name = a.chat_template.clone().or(f.chat_template.clone());
    let tmpl_file = a
        .chat_template_file
        .clone()
        .or(f.chat_template_file.clone());
    cfg.chat_template = match (tmpl_name, tmpl_file) {
        (Some(_), Some(_)) => bail!("use either --chat-template or --chat-template-file"),
        (Some(n), None) => Some(TemplateChoice::Builtin(n)),
        (None, Some(p)) => Some(TemplateChoice::Source(
            std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read chat template file {}", p.display()))?,
        )),
        (None, None) => None,
    };
    cfg.reasoning_format = match a.reasoning_format.as_ref().or(f.reasoning_format.as_ref()) {
        Some(s) => s.parse::<ReasoningFormat>().map_err(anyhow::Error::msg)?,
        None => ReasoningFormat::Deepseek,
    };
    cfg.queue_size = a.queue_size.or(f.queue_size).unwrap_or(64);
    cfg.max_body_bytes = a.max_body_size.or(f.max_body_size).unwrap_or(8 << 20);
    if cfg.max_body_bytes < 1024 {
        bail!("--max-body-size must be at least 1024 bytes");
    }
    cfg.ubatch = ubatch;
    cfg.step_tokens = batch.max(ubatch);
    cfg.cache_prompt = !a.no_cache_prompt && f.cache_prompt.unwrap_or(true);
    cfg.cors_origins = if a.cors.is_empty() {
        f.cors.map(|x| x.into_vec()).unwrap_or_default()
    } else {
        a.cors.clone()
    };
    cfg.shutdown_timeout =
        Duration::from_secs(a.shutdown_timeout.or(f.shutdown_timeout).unwrap_or(30));
    let device_timeout = a.device_timeout.or(f.device_timeout).unwrap_or(60);
    if device_timeout == 0 {
        bail!("--device-timeout must be at least 1 second");
    }
    cfg.device_timeout = Duration::from_secs(device_timeout);
    cfg.hailo_shim = a.hailo_shim.clone().or(f.hailo_shim.clone());
    let sa = &a.spec;
    cfg.draft = super::spec::draft_config(&super::spec::SpecSettings {
        spec_type: sa.spec_type.clone().or(f.spec_type.clone()),
        model_draft: sa.model_draft.clone().or(f.model_draft.clone()),
        draft_max: sa.draft_max.or(f.draft_max),
        draft_min: sa.draft_min.or(f.draft_min),
        draft_p_min: sa.draft_p_min.or(f.draft_p_min),
        adaptive: !(sa.draft_fixed || f.draft_fixed.unwrap_or(false)),
        draft_remote: sa.draft_remote.clone().or(f.draft_remote.clone()),
        draft_remote_key: sa.draft_remote_key.clone().or(f.draft_remote_key.clone()),
        draft_remote_timeout: sa.draft_remote_timeout.or(f.draft_remote_timeout),
        ngram_min: sa.spec_ngram_min.or(f.spec_ngram_min),
        ngram_max: sa.spec_ngram_max.or(f.spec_ngram_max),
    })?;
    Ok(cfg)
}

/// Every model the store holds, then the entries of a models file (which win on a shared
/// name). Store models keep their presets and card aliases; models-file entries that name a
/// store model inherit its preset; `source` entries not yet installed are pulled now.
pub fn served_models(models_file: Option<&std::path::Path>) -> Result<Vec<ModelSpec>> {
    let store = Store::open_default()?;
    let mut out: Vec<ModelSpec> = Vec::new();
    let store_spec = |m: &engine_store::Manifest| -> Result<ModelSpec> {
        let (weights, path) = store.weights(m)?;
        let mut preset = store.effective_preset(m)?;
        if let Some(card) = engine_store::find_card(&m.name).filter(|c| c.name == m.name) {
            for a in card.aliases {
                if !preset.aliases.contains(&a) {
                    preset.aliases.push(a);
                }
            }
        }
        Ok(ModelSpec {
            name: m.name.clone(),
            path,
            preset,
            origin: if m.is_preset() {
                format!("{} (preset over {})", m.source, weights.name)
            } else {
                m.source.clone()
            },
            digest: Some(weights.sha256.clone()),
            device: weights.device.clone(),
        })
    };
    for m in store.list()? {
        match store_spec(&m) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!(model = %m.name, error = %e, "skipping a store model"),
        }
    }
    if let Some(file) = models_file {
        let entries = engine_store::preset::load_models_file(file)?;
        for e in entries {
            let name = e.name.clone();
            let (path, base_preset, origin, digest, device) = match &e.model {
                ModelRef::Store(base) => {
                    let m = match store.get(base)? {
                        Some(m) => m,
                        None => {
                            // a known model is pulled on first use, as with -m
                            super::resolve_model(base)
                                .with_context(|| format!("models.\"{name}\": from = \"{base}\""))?;
                            store.get(base)?.with_context(|| {
                                format!("models.\"{name}\": '{base}' is not in the store")
                            })?
                        }
                    };
                    let s = store_spec(&m)?;
                    (
                        s.path,
                        s.preset,
                        format!("{} (models file)", s.origin),
                        s.digest,
                        s.device,
                    )
                }
                ModelRef::Path(p) => {
                    if !p.is_file() {
                        bail!("models.\"{name}\": {} is not a file", p.display());
                    }
                    let device = engine_store::DevicePackage::for_file(p);
                    (
                        p.clone(),
                        Default::default(),
                        p.display().to_string(),
                        None,
                        device,
                    )
                }
                ModelRef::Source { spec, sha256 } => {
                    let m = super::store::pull_source(
                        &store,
                        spec,
                        Some(&name),
                        sha256.as_deref(),
                        None,
                    )
                    .with_context(|| format!("models.\"{name}\": cannot pull {spec}"))?;
                    let (w, p) = store.weights(&m)?;
                    let preset = store.effective_preset(&m)?;
                    (p, preset, spec.clone(), Some(w.sha256), w.device)
                }
            };
            let mut preset = base_preset;
            preset.overlay(&e.preset);
            out.retain(|s| s.name != name);
            out.push(ModelSpec {
                name,
                path,
                preset,
                origin,
                digest,
                device,
            });
        }
    }
    if out.is_empty() {
        bail!(
            "no models to serve: the store at {} is empty and no --models file was given; `engine pull gemma3-270m`, or pass -m MODEL",
            store.root().display()
        );
    }
    Ok(out)
}

/// Runs `engine serve`.
pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = config(a)?;
    engine_server::run(cfg, |addr| {
        eprintln!("engine serve: listening on http://{addr}");
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_letter_flags_become_long_ones() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_args(args(&["engine", "serve", "-np", "4", "-ub=64", "-m", "x"])),
            args(&[
                "engine",
                "serve",
                "--parallel",
                "4",
                "--ubatch-size=64",
                "-m",
                "x"
            ])
        );
        assert_eq!(
            normalize_args(args(&["engine", "run", "-np", "4"])),
            args(&["engine", "run", "-np", "4"])
        );
    }
}
