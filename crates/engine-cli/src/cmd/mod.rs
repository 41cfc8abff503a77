//! Subcommands, and the model options they share.

pub mod bench;
pub mod bench_spec;
pub mod doctor;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod run;
pub mod serve;
pub mod spec;
pub mod store;
pub mod tokenize;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine::{DType, LoadOptions, Model};

/// Options for picking and loading a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF path, a name from the local store (known names are pulled on first
    /// use), or an hf:ORG/REPO[/FILE] or https:// source (pulled into the store first).
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Context size in tokens (default: the smaller of 4096 and the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    pub ctx_size: usize,
    /// Largest number of tokens evaluated per step.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// KV cache type for keys: f16 or f32 (default f16; `logits` defaults to f32).
    #[arg(long = "cache-type-k", visible_alias = "ctk")]
    pub cache_type_k: Option<String>,
    /// KV cache type for values (must equal the key type).
    #[arg(long = "cache-type-v", visible_alias = "ctv")]
    pub cache_type_v: Option<String>,
    /// Read the file into memory instead of memory-mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// Keep weights in their file format (no load-time repacking: less memory for Q5_0
    /// tensors, slower generation; results are identical).
    #[arg(long = "no-repack")]
    pub no_repack: bool,
    /// Device: auto (the first usable CUDA GPU, else ROCm GPU, else the CPU), cpu, cuda[:N],
    /// rocm[:N].
    #[arg(long = "device", default_value = "auto")]
    pub device: String,
    /// Where a GPU puts the model: auto (device memory; on an AMD APU whichever of the BIOS
    /// carve-out and GTT holds it), device, or host (GPU-mapped system memory).
    #[arg(long = "gpu-memory", default_value = "auto")]
    pub gpu_memory: String,
}

impl ModelArgs {
    /// Load options from the flags.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let kv = parse_kv_type(self.cache_type_k.as_deref().unwrap_or("f16"))?;
        if let Some(v) = &self.cache_type_v {
            if parse_kv_type(v)? != kv {
                bail!("--cache-type-v must equal --cache-type-k (one cache type is supported per context)");
            }
        }
        Ok(LoadOptions {
            threads: self.threads.map(|t| t as usize).unwrap_or(0),
            n_ctx: self.ctx_size,
            n_batch: self.batch_size as usize,
            kv_type: kv,
            mmap: !self.no_mmap,
            device: self.device.parse()?,
            gpu_memory: parse_gpu_memory(&self.gpu_memory)?,
            repack: !self.no_repack,
            ..Default::default()
        })
    }

    /// Resolves the model (pulling a known name if needed) and loads it.
    pub fn load(&self) -> Result<Model> {
        let path = resolve_model(&self.model)?;
        let opts = self.load_options()?;
        Model::load(&path, &opts).with_context(|| format!("cannot load {}", path.display()))
    }
}

pub fn parse_gpu_memory(s: &str) -> Result<engine::GpuMemory> {
    s.parse().map_err(anyhow::Error::msg)
}

pub fn parse_kv_type(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        other => bail!("unsupported cache type '{other}' (f16 or f32)"),
    }
}

/// A model argument to a file: an existing path, an installed model, a known name pulled
/// now, or an `hf:`/URL source pulled into the store now (a no-op once installed).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    // A path is used as is, without touching the store.
    if std::path::Path::new(spec).is_file() {
        return Ok(PathBuf::from(spec));
    }
    let store = engine_store::Store::open_default()?;
    if matches!(
        engine_store::remote::SourceRef::parse(spec),
        Ok(engine_store::remote::SourceRef::Hf(_) | engine_store::remote::SourceRef::Url(_))
    ) {
        let m = store::pull_source(&store, spec, None, None, None)?;
        return Ok(store.weights(&m)?.1);
    }
    let mut bar = crate::progress::Bar::new();
    Ok(store.ensure(spec, &mut bar)?)
}
