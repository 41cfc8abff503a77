//! Loading a model (weights, tokenizer, backend) and running it: [`Model`] for the shared,
//! read-only part and [`Session`] for one sequence's state and generation loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine_core::{Backend, DType};
use engine_gguf::GgufModel;
use engine_models::{Batch, Context, ContextOptions, ModelInfo};
use engine_tokenizer::{StreamDecoder, Tokenizer};

use crate::error::{Error, Result};
use crate::sampling::{top_logprobs, Sampler, SamplingParams};
use crate::speculative::{
    rollback, verify, AdaptiveLength, CostModel, Draft, DraftRequest, Drafter, SpecParams,
    SpecStats, VerifyScratch,
};
use crate::stop::{StopCheck, StopMatcher};

/// Which device runs the model.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// An NVIDIA GPU (ordinal), through the CUDA driver loaded at run time.
    Cuda(usize),
    /// An AMD GPU (HIP ordinal), through the HIP runtime loaded at run time.
    Rocm(usize),
}

impl Device {
    /// `auto`: the first CUDA GPU when one is usable, else the first ROCm GPU, else the CPU.
    pub fn auto() -> Device {
        if engine_cuda::unavailable_reason().is_none() {
            Device::Cuda(0)
        } else if engine_rocm::unavailable_reason().is_none() {
            Device::Rocm(0)
        } else {
            Device::Cpu
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Rocm(i) => write!(f, "rocm:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Device> {
        let mut parts = s.splitn(2, ':');
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let ordinal = match parts.next() {
            None => 0,
            Some(n) => n.parse::<usize>().map_err(|_| {
                Error::Options(format!("device '{s}': '{n}' is not a device number"))
            })?,
        };
        match kind.as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::auto()),
            "cuda" => match engine_cuda::unavailable_reason() {
                None => Ok(Device::Cuda(ordinal)),
                Some(why) => Err(Error::Options(why)),
            },
            "rocm" | "hip" => match engine_rocm::unavailable_reason() {
                None => Ok(Device::Rocm(ordinal)),
                Some(why) => Err(Error::Options(why)),
            },
            "hailo" => Err(Error::Options(format!(
                "device '{s}' runs whole models, not tensors: serve a HEF model from the store \
                 (engine pull, engine serve), not --device"
            ))),
            _ => Err(Error::Options(format!(
                "unknown device '{s}' (expected auto, cpu, cuda[:N] or rocm[:N])"
            ))),
        }
    }
}

/// How to load a model and size its context.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute threads (0 = all available cores).
    pub threads: usize,
    /// Context size per sequence (0 = the smaller of 4096 and the training context).
    pub n_ctx: usize,
    /// Sequences that can be held at once.
    pub n_seq: usize,
    /// Largest number of tokens evaluated per step.
    pub n_batch: usize,
    /// KV cache element type (F16 or F32).
    pub kv_type: DType,
    /// Memory-map the file (otherwise read it into memory).
    pub mmap: bool,
    /// Refuse to load when the estimate exceeds available memory.
    pub check_memory: bool,
    /// Device to run on.
    pub device: Device,
    /// Where a GPU puts the model: device memory, or on an APU GPU-mapped system memory
    /// (ROCm; CUDA always uses device memory).
    pub gpu_memory: crate::GpuMemory,
    /// Let the backend expand weights whose unpacking is slower than their memory saving
    /// into a faster layout with the same values (the CPU backend: Q5_0 as 8-bit blocks,
    /// bit-identical results, about 1.5x the memory for those tensors).
    pub repack: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 0,
            n_ctx: 0,
            n_seq: 1,
            n_batch: 512,
            kv_type: DType::F16,
            mmap: true,
            check_memory: true,
            device: Device::Cpu,
            gpu_memory: crate::GpuMemory::Auto,
            repack: true,
        }
    }
}

/// Number of CPU cores available to this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A loaded model with its tokenizer, ready to open sessions.
pub struct Model {
    path: PathBuf,
    gguf: GgufModel,
    model: Box<dyn engine_models::Model>,
    tokenizer: Arc<Tokenizer>,
    backend: Arc<dyn Backend>,
    ctx_opts: ContextOptions,
    load_time: std::time::Duration,
}

impl Model {
    /// Loads the GGUF model at `path`.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        Self::load_on(path, opts, None)
    }

    /// Loads the GGUF model at `path` onto another model's backend (its thread pool), as a
    /// draft model does: the two never compute at the same time, and one pool keeps the
    /// cores from being shared by two sets of spinning workers.
    pub fn load_sharing(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        other: &Model,
    ) -> Result<Model> {
        Self::load_on(path, opts, Some(other.backend.clone()))
    }

    fn load_on(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        backend: Option<Arc<dyn Backend>>,
    ) -> Result<Model> {
        let t0 = Instant::now();
        let path = path.as_ref();
        if opts.n_seq == 0 || opts.n_batch == 0 {
            return Err(Error::Options(
                "n_seq and n_batch must be at least 1".into(),
            ));
        }
        if !matches!(opts.kv_type, DType::F16 | DType::F32) {
            return Err(Error::Options(format!(
                "KV cache type {} is not supported (f16 or f32)",
                opts.kv_type
            )));
        }
        if !opts.mmap && opts.check_memory {
            if let (Ok(meta), Some(avail)) =
                (std::fs::metadata(path), crate::memory::available_memory())
            {
                if meta.len() > avail {
                    return Err(Error::Memory(format!(
                        "reading {} into memory needs {}, but only {} is available",
                        path.display(),
                        crate::memory::human(meta.len()),
                        crate::memory::human(avail)
                    )));
                }
            }
        }
        let gguf = GgufModel::open(path, opts.mmap)?;
        let threads = if opts.threads == 0 {
            default_threads()
        } else {
            opts.threads
        };
        let backend: Arc<dyn Backend> = match (backend, &opts.device) {
            (Some(b), _) => b,
            (None, Device::Cpu) => {
                Arc::new(engine_cpu::CpuBackend::new(threads).with_repack(opts.repack))
            }
            (None, Device::Cuda(i)) => {
                let cache = engine_gpu::cache::CodeCache::default_for("cuda");
                Arc::new(engine_cuda::open(*i, &cache).map_err(Error::Options)?)
            }
            (None, Device::Rocm(i)) => {
                // Counted before anything is allocated, against the pool the model goes to
                // (on an APU that may be GTT, not the carve-out).
                let need = if opts.check_memory {
                    let plain = LoadOptions {
                        repack: false,
                        ..opts.clone()
                    };
                    Some(crate::memory::estimate(path, &plain)?.0.total())
                } else {
                    None
                };
                let cache = engine_gpu::cache::CodeCache::default_for("rocm");
                Arc::new(
                    engine_rocm::open(*i, &cache, opts.gpu_memory, need).map_err(|e| match e {
                        engine_rocm::OpenError::Memory(m) => Error::Memory(m),
                        engine_rocm::OpenError::Device(m) => Error::Options(m),
                    })?,
                )
            }
        };
        // The architecture first: an unsupported model fails on that, not on its tokenizer.
        let model = engine_models::load(&gguf, backend.clone())?;
        let tokenizer = Arc::new(Tokenizer::from_gguf(&gguf)?);
        let info = model.info();
        if tokenizer.n_vocab() > info.n_vocab {
            return Err(Error::Options(format!(
                "the tokenizer has {} tokens but the model's embedding only {}",
                tokenizer.n_vocab(),
                info.n_vocab
            )));
        }
        let n_ctx = if opts.n_ctx == 0 {
            info.n_ctx_train.clamp(1, 4096)
        } else {
            opts.n_ctx
        };
        let ctx_opts = ContextOptions {
            n_ctx,
            n_seq: opts.n_seq,
            n_batch: opts.n_batch.min(n_ctx.max(1)),
            kv_type: opts.kv_type,
        };
        // ROCm placed the model against its own pools above.
        if opts.check_memory && !matches!(opts.device, Device::Rocm(_)) {
            if let Some(avail) = crate::memory::available_memory() {
                let est = model.memory_estimate(&ctx_opts);
                crate::memory::check(
                    &est,
                    avail,
                    &format!("{} with a context of {n_ctx}", path.display()),
                )?;
            }
        }
        Ok(Model {
            path: path.to_path_buf(),
            gguf,
            model,
            tokenizer,
            backend,
            ctx_opts,
            load_time: t0.elapsed(),
        })
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file (metadata such as the chat template).
    pub fn gguf(&self) -> &GgufModel {
        &self.gguf
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The backend running the model.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Context sizes sessions get.
    pub fn context_options(&self) -> &ContextOptions {
        &self.ctx_opts
    }

    /// Time spent loading.
    pub fn load_time(&self) -> std::time::Duration {
        self.load_time
    }

    /// The underlying architecture implementation (for batched serving).
    pub fn inner(&self) -> &dyn engine_models::Model {
        &*self.model
    }

    /// Text to token ids. `add_special` adds BOS/EOS as the model wants; `parse_special`
    /// turns control-token text such as `<start_of_turn>` into the token.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, add_special, parse_special)?)
    }

    /// Token ids to text (control tokens rendered only when `render_special`).
    pub fn detokenize(&self, ids: &[u32], render_special: bool) -> String {
        self.tokenizer.decode(ids, render_special)
    }

    /// A context of the model's configured sizes (for callers that batch themselves).
    pub fn new_context(&self) -> Result<Context> {
        Ok(self.model.new_context(self.ctx_opts.clone())?)
    }

    /// Opens a session holding one sequence.
    pub fn session(&self) -> Result<Session<'_>> {
        let opts = ContextOptions {
            n_seq: 1,
            ..self.ctx_opts.clone()
        };
        Ok(Session {
            model: self,
            ctx: self.model.new_context(opts)?,
            batch: Batch::with_capacity(self.ctx_opts.n_batch),
            logits: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Convenience: generates from a text prompt in a fresh session.
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        self.session()?
            .generate(&Prompt::Text(prompt.to_string()), params, on_token)
    }
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text, tokenized with the generation parameters' flags.
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to generate (`None` = until the context is full).
    pub max_tokens: Option<usize>,
    /// Sampling chain settings.
    pub sampling: SamplingParams,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// Add BOS/EOS around a text prompt as the model's metadata says.
    pub add_special: bool,
    /// Parse control-token text in a text prompt.
    pub parse_special: bool,
    /// Report this many top log-probabilities per generated token (0 = none).
    pub logprobs: usize,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: Some(128),
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            add_special: true,
            parse_special: true,
            logprobs: 0,
            ignore_eos: false,
        }
    }
}

/// One generated token, as the streaming callback sees it.
pub struct TokenEvent<'a> {
    /// Token id.
    pub id: u32,
    /// New text that became final with this token (may be empty while a multi-byte
    /// character or a possible stop string is pending).
    pub text: &'a str,
    /// Top log-probabilities at this position, if requested.
    pub logprobs: Option<&'a [(u32, f32)]>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    Eog,
    /// `max_tokens` reached.
    Length,
    /// A stop string.
    StopString,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// OpenAI-style `finish_reason`.
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::Eog | StopReason::StopString | StopReason::Cancelled => "stop",
            StopReason::Length | StopReason::ContextFull => "length",
        }
    }
}

/// Prompt and generation timings (tokenization and sampling excluded from prompt time).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Prompt tokens evaluated.
    pub prompt_n: usize,
    /// Milliseconds evaluating the prompt.
    pub prompt_ms: f64,
    /// Tokens generated.
    pub predicted_n: usize,
    /// Milliseconds generating (evaluation and sampling of each new token).
    pub predicted_ms: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prompt_per_second(&self) -> f64 {
        if self.prompt_ms > 0.0 {
            self.prompt_n as f64 * 1000.0 / self.prompt_ms
        } else {
            0.0
        }
    }

    /// Generated tokens per second.
    pub fn predicted_per_second(&self) -> f64 {
        if self.predicted_ms > 0.0 {
            self.predicted_n as f64 * 1000.0 / self.predicted_ms
        } else {
            0.0
        }
    }
}

/// The result of a generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Prompt token ids (BOS included when added).
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (a final end-of-generation token included).
    pub ids: Vec<u32>,
    /// Generated text (stop strings and control tokens excluded).
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: Timings,
    /// Top log-probabilities per generated token, if requested.
    pub logprobs: Vec<Vec<(u32, f32)>>,
    /// What speculative decoding did, when it was used.
    pub speculative: Option<SpecStats>,
}

/// Everything a generated token goes through once chosen: end-of-generation, detokenizing,
/// stop strings, the callback and the length limit (shared by plain and speculative
/// decoding, so both end a generation the same way).
struct Emitter<'a> {
    tok: &'a Tokenizer,
    params: &'a GenerateParams,
    stops: StopMatcher,
    decoder: StreamDecoder,
    ids: Vec<u32>,
    text: String,
    emitted: usize,
    all_logprobs: Vec<Vec<(u32, f32)>>,
    max_new: usize,
}

impl Emitter<'_> {
    /// Emits `id` (already recorded by the sampler); returns why generation ends, if it does.
    fn emit(
        &mut self,
        id: u32,
        lp: Option<Vec<(u32, f32)>>,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Option<StopReason> {
        self.ids.push(id);
        if !self.params.ignore_eos && self.tok.is_eog(id) {
            if let Some(lp) = lp {
                self.all_logprobs.push(lp);
            }
            return Some(StopReason::Eog);
        }
        self.decoder.push(self.tok, id, &mut self.text);
        let check = self.stops.check(&self.text, self.emitted);
        let (end, stop) = match check {
            StopCheck::Continue { safe } => (safe, false),
            StopCheck::Stop { at } => (at, true),
        };
        let keep_going = on_token(&TokenEvent {
            id,
            text: &self.text[self.emitted..end],
            logprobs: lp.as_deref(),
        });
        self.emitted = end;
        if let Some(lp) = lp {
            self.all_logprobs.push(lp);
        }
        if stop {
            self.text.truncate(end);
            return Some(StopReason::StopString);
        }
        if !keep_going {
            return Some(StopReason::Cancelled);
        }
        if self.ids.len() >= self.max_new {
            let by_request = self.params.max_tokens.is_some_and(|m| self.ids.len() >= m);
            return Some(if by_request {
                StopReason::Length
            } else {
                StopReason::ContextFull
            });
        }
        None
    }
}

/// One sequence's state on a model.
pub struct Session<'m> {
    model: &'m Model,
    ctx: Context,
    batch: Batch,
    logits: Vec<f32>,
    scratch: Vec<(u32, f32)>,
}

impl<'m> Session<'m> {
    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Tokens currently in the context.
    pub fn n_past(&self) -> usize {
        self.ctx.seq_len(0)
    }

    /// Forgets everything evaluated so far.
    pub fn reset(&mut self) {
        self.ctx.clear_seq(0);
    }

    /// Evaluates `ids` at positions `0..` of a cleared context and returns the logits of
    /// every position (`ids.len() * n_vocab` values).
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() > self.ctx.n_ctx() {
            return Err(Error::PromptTooLong {
                prompt: ids.len(),
                n_ctx: self.ctx.n_ctx(),
            });
        }
        self.reset();
        self.batch.clear();
        self.batch.push_seq(ids, 0, 0, true);
        let mut out = Vec::new();
        self.model
            .model
            .forward(&mut self.ctx, &self.batch, &mut out)?;
        Ok(out)
    }

    /// Evaluates `ids` at positions `0..` of a cleared context and returns the final
    /// normalised hidden state of every position (`ids.len() * n_embd` values), the input
    /// of embedding pooling.
    pub fn hidden_states(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() > self.ctx.n_ctx() {
            return Err(Error::PromptTooLong {
                prompt: ids.len(),
                n_ctx: self.ctx.n_ctx(),
            });
        }
        self.reset();
        self.batch.clear();
        self.batch.push_seq(ids, 0, 0, true);
        let mut out = Vec::new();
        self.model
            .model
            .forward_embeddings(&mut self.ctx, &self.batch, &mut out)?;
        Ok(out)
    }

    /// Generates from `prompt` in a cleared context, calling `on_token` for each token; the
    /// callback returns `false` to stop.
    pub fn generate(
        &mut self,
        prompt: &Prompt,
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        self.generate_inner(prompt, params, None, &mut on_token)
    }

    /// Like [`Session::generate`], with speculative decoding: `drafter` proposes tokens
    /// and the model verifies them in one pass per step (see [`crate::speculative`]).
    /// Greedy output is identical to [`Session::generate`]'s; sampled output has the same
    /// distribution (not the same tokens for a seed: the random stream is used differently).
    pub fn generate_speculative(
        &mut self,
        prompt: &Prompt,
        params: &GenerateParams,
        drafter: &mut dyn Drafter,
        spec: &SpecParams,
        mut on_token: impl FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        spec.validate()?;
        self.generate_inner(prompt, params, Some((drafter, spec)), &mut on_token)
    }

    fn generate_inner(
        &mut self,
        prompt: &Prompt,
        params: &GenerateParams,
        spec: Option<(&mut dyn Drafter, &SpecParams)>,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        params.sampling.validate().map_err(Error::Options)?;
        let model = self.model;
        let tok = &*model.tokenizer;
        let prompt_ids = match prompt {
            Prompt::Text(t) => tok.encode(t, params.add_special, params.parse_special)?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        let n_ctx = self.ctx.n_ctx();
        let n_vocab = model.info().n_vocab;
        if prompt_ids.is_empty() {
            return Err(Error::Options("the prompt is empty".into()));
        }
        if prompt_ids.len() >= n_ctx {
            return Err(Error::PromptTooLong {
                prompt: prompt_ids.len(),
                n_ctx,
            });
        }
        if let Some(&bad) = prompt_ids.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Options(format!(
                "token id {bad} is outside the vocabulary of {n_vocab}"
            )));
        }
        let max_new = params
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(n_ctx - prompt_ids.len());
        let mut sampler = Sampler::new(params.sampling.clone());
        for &t in &prompt_ids {
            sampler.accept(t);
        }
        let mut em = Emitter {
            tok,
            params,
            stops: StopMatcher::new(&params.stop),
            decoder: StreamDecoder::new(false),
            ids: Vec::with_capacity(max_new.min(1 << 16)),
            text: String::with_capacity(4 * max_new.min(1 << 16)),
            emitted: 0,
            all_logprobs: Vec::new(),
            max_new,
        };
        let mut timings = Timings {
            prompt_n: prompt_ids.len(),
            ..Default::default()
        };

        self.reset();
        self.batch.clear();
        self.batch.push_seq(&prompt_ids, 0, 0, false);
        let t0 = Instant::now();
        model
            .model
            .forward(&mut self.ctx, &self.batch, &mut self.logits)?;
        let t1 = Instant::now();
        timings.prompt_ms = (t1 - t0).as_secs_f64() * 1e3;

        let mut stop_reason = StopReason::Length;
        let mut stats = None;
        match spec {
            None => {
                let mut pos = prompt_ids.len();
                while em.ids.len() < max_new {
                    let lp = (params.logprobs > 0).then(|| {
                        top_logprobs(&self.logits[..n_vocab], params.logprobs, &mut self.scratch)
                    });
                    let id = sampler.sample(&self.logits[..n_vocab]);
                    sampler.accept(id);
                    if let Some(r) = em.emit(id, lp, on_token) {
                        stop_reason = r;
                        break;
                    }
                    self.batch.clear();
                    self.batch.push(id, pos as u32, 0, true);
                    model
                        .model
                        .forward(&mut self.ctx, &self.batch, &mut self.logits)?;
                    pos += 1;
                }
            }
            Some((drafter, sp)) if max_new > 0 => {
                let (reason, st) = self.speculative_loop(
                    &prompt_ids,
                    &mut sampler,
                    &mut em,
                    drafter,
                    sp,
                    on_token,
                )?;
                stop_reason = reason;
                stats = Some(st);
            }
            Some(_) => {}
        }
        if stop_reason != StopReason::StopString {
            em.decoder.finish(&mut em.text);
            if em.emitted < em.text.len() {
                let tail = em.text[em.emitted..].to_string();
                on_token(&TokenEvent {
                    id: *em.ids.last().unwrap_or(&0),
                    text: &tail,
                    logprobs: None,
                });
            }
        }
        timings.predicted_n = em.ids.len();
        timings.predicted_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Generation {
            prompt_ids,
            ids: em.ids,
            text: em.text,
            stop_reason,
            timings,
            logprobs: em.all_logprobs,
            speculative: stats,
        })
    }

    /// The speculative generation loop, from the prompt's logits on: each step drafts
    /// after the last chosen token, verifies the draft in one pass and emits what it keeps.
    fn speculative_loop(
        &mut self,
        prompt_ids: &[u32],
        sampler: &mut Sampler,
        em: &mut Emitter<'_>,
        drafter: &mut dyn Drafter,
        sp: &SpecParams,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<(StopReason, SpecStats)> {
        let model = self.model;
        let inner = &*model.model;
        let n_vocab = model.info().n_vocab;
        let params = em.params;
        let mut stats = SpecStats::default();
        let mut ctl = AdaptiveLength::new(sp);
        let mut cost = CostModel::new(drafter.relative_cost());
        let mut hist = Vec::with_capacity(prompt_ids.len() + em.max_new + 1);
        hist.extend_from_slice(prompt_ids);
        let mut draft = Draft::default();
        let mut vs = VerifyScratch::default();
        let mut chosen = Vec::with_capacity(sp.draft_max + 1);
        let mut evaluated = Vec::with_capacity(sp.draft_max + 1);
        let mut rows = Vec::new();
        let lp_of = |row: &[f32], scratch: &mut Vec<(u32, f32)>| {
            (params.logprobs > 0).then(|| top_logprobs(row, params.logprobs, scratch))
        };

        // the first token comes from the prompt's logits
        let lp = lp_of(&self.logits[..n_vocab], &mut self.scratch);
        let id = sampler.sample(&self.logits[..n_vocab]);
        sampler.accept(id);
        hist.push(id);
        if let Some(r) = em.emit(id, lp, on_token) {
            return Ok((r, stats));
        }
        let mut pos = prompt_ids.len();
        let mut warm = false;
        loop {
            // `hist`'s last token is chosen but not evaluated; it sits at `pos`
            let remaining = em.max_new - em.ids.len();
            // 0 also when the cost model needs a one-token step timed
            let k_max = ctl.next(&cost).min(remaining.saturating_sub(1));
            draft.clear();
            if k_max >= sp.draft_min.max(1) {
                let req = DraftRequest {
                    seq: 0,
                    history: &hist,
                    max: k_max,
                    sampling: &params.sampling,
                };
                if !warm {
                    // a failure shows again in the timed call below, which falls back
                    let _ = drafter.warm_up(&req);
                    warm = true;
                }
                let t = Instant::now();
                if drafter.draft(&req, &mut draft).is_err() {
                    stats.fallbacks += 1;
                    draft.clear();
                }
                if draft.steady() {
                    cost.observe_draft(draft.len(), t.elapsed().as_secs_f64());
                }
                let valid = draft
                    .tokens
                    .iter()
                    .take(k_max)
                    .take_while(|&&t| (t as usize) < n_vocab)
                    .count();
                draft.truncate(valid);
                if draft.len() < sp.draft_min {
                    draft.clear();
                }
            }
            let pending = *hist.last().expect("holds the prompt");
            self.batch.clear();
            if draft.is_empty() {
                self.batch.push(pending, pos as u32, 0, true);
                let t = Instant::now();
                inner.forward(&mut self.ctx, &self.batch, &mut self.logits)?;
                cost.observe_pass(1, t.elapsed().as_secs_f64(), true);
                pos += 1;
                let lp = lp_of(&self.logits[..n_vocab], &mut self.scratch);
                let id = sampler.sample(&self.logits[..n_vocab]);
                sampler.accept(id);
                hist.push(id);
                if let Some(r) = em.emit(id, lp, on_token) {
                    return Ok((r, stats));
                }
                continue;
            }
            if self.ctx.is_recurrent() {
                self.ctx.checkpoint_seq(0)?;
            }
            evaluated.clear();
            evaluated.push(pending);
            evaluated.extend_from_slice(&draft.tokens);
            self.batch.push_verify(&evaluated, pos as u32, 0);
            let t = Instant::now();
            inner.forward(&mut self.ctx, &self.batch, &mut rows)?;
            cost.observe_pass(evaluated.len(), t.elapsed().as_secs_f64(), false);
            chosen.clear();
            let k = draft.len();
            let a = verify(sampler, &rows, n_vocab, &draft, &mut vs, &mut chosen);
            stats.steps += 1;
            stats.drafted += k;
            stats.accepted += a;
            ctl.update(k, a);
            rollback(
                inner,
                &mut self.ctx,
                (&mut self.batch, &mut self.logits),
                0,
                pos,
                &evaluated,
                a + 1,
            )?;
            pos += a + 1;
            for (j, &t) in chosen.iter().enumerate() {
                let lp = lp_of(&rows[j * n_vocab..(j + 1) * n_vocab], &mut self.scratch);
                hist.push(t);
                if let Some(r) = em.emit(t, lp, on_token) {
                    return Ok((r, stats));
                }
            }
        }
    }
}
