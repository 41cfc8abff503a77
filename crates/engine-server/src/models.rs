//! Many models, one server: the registry of served models and their life cycle.
//!
//! Every served model is an [`Entry`] (a name, aliases, a GGUF file and a preset). A request
//! names a model or an alias; [`Registry::acquire`] returns a [`Lease`] on the loaded model,
//! loading it first when needed. Concurrent first requests share one load. While any lease or
//! queued job holds a model ([`Busy`]) it stays loaded; once idle it unloads when its
//! keep-alive runs out (Ollama's semantics: a duration, `0` = now, negative = never; a
//! request's `keep_alive` replaces the model's).
//!
//! Loads are budgeted: before loading, the model's memory is estimated (weights + KV cache
//! for its context and slots + compute scratch, see [`engine::memory::estimate`]). A model
//! that alone exceeds `--max-memory` is refused with the sizes named. Otherwise least
//! recently used idle models are evicted until it fits; when busy models hold the memory,
//! the load waits for them (up to `--load-timeout`), and new requests to those models wait
//! behind it so it is not starved. Loads run one at a time.
//!
//! An unloaded model's scheduler thread is stopped and joined, and its weights, KV cache and
//! buffers are freed (and returned to the OS with `malloc_trim` on glibc) before its memory
//! counts as free.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use engine::memory::{human, MemoryEstimate};
use engine_store::KeepAlive;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::common::{ApiError, Flavor};
use crate::app::{Loaded, Native, Runner};
use crate::config::{ModelSpec, ServerConfig, TemplateChoice};
use crate::metrics::Metrics;
use crate::scheduler::{self, SchedConfig};
use crate::template::{builtin, ChatTemplate};

/// How busy a loaded model is, and when it may unload.
pub struct Activity {
    busy: AtomicUsize,
    last_done: Mutex<Instant>,
    keep_alive: Mutex<KeepAlive>,
    changed: Arc<watch::Sender<u64>>,
}

impl Activity {
    fn new(keep_alive: KeepAlive, changed: Arc<watch::Sender<u64>>) -> Arc<Activity> {
        Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
            keep_alive: Mutex::new(keep_alive),
            changed,
        })
    }

    /// Marks the model busy until the returned guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Requests (leases and queued jobs) holding the model.
    pub fn busy_count(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// The model's keep-alive.
    pub fn keep_alive(&self) -> KeepAlive {
        *self.keep_alive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the keep-alive (a request's `keep_alive`, or an unload request).
    pub fn set_keep_alive(&self, k: KeepAlive) {
        *self.keep_alive.lock().unwrap_or_else(|e| e.into_inner()) = k;
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// When the model unloads if nothing else arrives: `None` = never. While busy, the
    /// keep-alive counts from now.
    pub fn expires_at(&self) -> Option<Instant> {
        let from = if self.busy_count() > 0 {
            Instant::now()
        } else {
            *self.last_done.lock().unwrap_or_else(|e| e.into_inner())
        };
        self.keep_alive().deadline(from)
    }

    fn last_done(&self) -> Instant {
        *self.last_done.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a model busy (so it is neither evicted nor expired) while alive.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// A loaded model held for one request.
pub struct Lease {
    loaded: Arc<Loaded>,
    _busy: Busy,
}

impl Deref for Lease {
    type Target = Loaded;
    fn deref(&self) -> &Loaded {
        &self.loaded
    }
}

/// Request defaults a preset sets.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Sampling values used where a request gives none.
    pub sampling: engine::SamplingParams,
    /// Stop strings used when a request gives none.
    pub stop: Vec<String>,
    /// Most tokens to generate when a request does not say.
    pub max_tokens: Option<usize>,
    /// System prompt used when a conversation has none.
    pub system: Option<String>,
    /// Messages placed before every conversation (after the system prompt).
    pub messages: Vec<Value>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults::from_preset(&engine_store::Preset::default())
    }
}

impl Defaults {
    /// The defaults a preset sets (engine defaults where it sets nothing).
    pub fn from_preset(p: &engine_store::Preset) -> Defaults {
        let d = engine::SamplingParams::default();
        let q = &p.parameters;
        Defaults {
            sampling: engine::SamplingParams {
                temperature: q.temperature.unwrap_or(d.temperature),
                top_k: q.top_k.map(|k| k.max(0) as usize).unwrap_or(d.top_k),
                top_p: q.top_p.unwrap_or(d.top_p),
                min_p: q.min_p.unwrap_or(d.min_p),
                repeat_penalty: q.repeat_penalty.unwrap_or(d.repeat_penalty),
                repeat_last_n: q.repeat_last_n.unwrap_or(d.repeat_last_n),
                presence_penalty: q.presence_penalty.unwrap_or(d.presence_penalty),
                frequency_penalty: q.frequency_penalty.unwrap_or(d.frequency_penalty),
                seed: q.seed.filter(|s| *s >= 0).map(|s| s as u64),
            },
            stop: q.stop.clone(),
            max_tokens: q.num_predict.filter(|n| *n >= 0).map(|n| n as usize),
            system: p.system.clone(),
            messages: p
                .messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect(),
        }
    }

    /// The conversation with the preset's system prompt (unless it has one, or `system`
    /// overrides it) and messages in front.
    pub fn apply(&self, messages: Vec<Value>, system: Option<String>) -> Vec<Value> {
        let has_system = messages
            .first()
            .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("system"));
        let mut out = Vec::with_capacity(messages.len() + self.messages.len() + 1);
        if !has_system {
            if let Some(s) = system.or_else(|| self.system.clone()) {
                out.push(json!({"role": "system", "content": s}));
            }
        }
        if has_system {
            let mut it = messages.into_iter();
            out.extend(it.next());
            out.extend(self.messages.iter().cloned());
            out.extend(it);
        } else {
            out.extend(self.messages.iter().cloned());
            out.extend(messages);
        }
        out
    }
}

/// Why a model could not be had.
#[derive(Clone, Debug)]
pub enum LoadError {
    /// No served model has this name (404).
    Unknown(String),
    /// The request names no model and several are served (400).
    NoName(String),
    /// The model alone exceeds the memory budget (507).
    TooLarge(String),
    /// Busy models hold the memory and did not free it in time, or the server is shutting
    /// down (503).
    Unavailable(String),
    /// Loading failed (500).
    Failed(String),
}

impl LoadError {
    /// As an HTTP error in `flavor`'s shape.
    pub fn into_api(self, flavor: Flavor, retry_after: u64) -> ApiError {
        match self {
            LoadError::Unknown(m) => ApiError::new(StatusCode::NOT_FOUND, flavor, m),
            LoadError::NoName(m) => ApiError::bad_request(flavor, m),
            LoadError::TooLarge(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, flavor, m),
            LoadError::Unavailable(m) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, flavor, m);
                e.retry_after = Some(retry_after);
                e
            }
            LoadError::Failed(m) => ApiError::internal(flavor, m),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            LoadError::Unknown(m)
            | LoadError::NoName(m)
            | LoadError::TooLarge(m)
            | LoadError::Unavailable(m)
            | LoadError::Failed(m) => m,
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Facts about a model's file, read without loading it.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `general.architecture`.
    pub arch: String,
    /// `general.name`.
    pub gguf_name: Option<String>,
    /// Quantization label (`Q4_K_M`).
    pub quant: String,
    /// Parameters (elements of all tensors).
    pub n_params: u64,
    /// Bytes of the file(s).
    pub file_size: u64,
    /// Training context.
    pub n_ctx_train: Option<u64>,
}

/// Facts of a device model, from its package (the file is the device's, not readable here).
fn device_facts(path: &Path, pkg: &engine_store::DevicePackage) -> Facts {
    let n_params = pkg
        .parameter_size
        .as_deref()
        .and_then(|s| {
            let s = s.trim().to_ascii_uppercase();
            let (num, mul) = match s.chars().last()? {
                'B' => (&s[..s.len() - 1], 1e9),
                'M' => (&s[..s.len() - 1], 1e6),
                _ => (s.as_str(), 1.0),
            };
            num.parse::<f64>().ok().map(|n| (n * mul) as u64)
        })
        .unwrap_or(0);
    Facts {
        arch: pkg.family.clone().unwrap_or_else(|| pkg.device.clone()),
        gguf_name: None,
        quant: pkg.quantization.clone().unwrap_or_else(|| "hef".into()),
        n_params,
        file_size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        n_ctx_train: None,
    }
}

fn read_facts(path: &Path) -> Result<Facts, String> {
    let g = engine_gguf::GgufModel::open(path, true).map_err(|e| e.to_string())?;
    let arch = g
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("unknown")
        .to_string();
    let n_params = g
        .tensors()
        .iter()
        .map(|t| t.shape().iter().product::<usize>() as u64)
        .sum();
    let n_ctx_train = g
        .get_int(&format!("{arch}.context_length"))
        .ok()
        .flatten()
        .map(|v| v as u64);
    Ok(Facts {
        gguf_name: g.get_str("general.name").ok().flatten().map(str::to_string),
        quant: g
            .get_int("general.file_type")
            .ok()
            .flatten()
            .map(crate::api::ollama::file_type_name)
            .unwrap_or("unknown")
            .to_string(),
        n_params,
        file_size: g.file_bytes(),
        n_ctx_train,
        arch,
    })
}

/// One served model.
pub struct Entry {
    /// What to serve.
    pub spec: Arc<ModelSpec>,
    /// Names it answers to, the first one reported.
    pub names: Vec<String>,
    facts: std::sync::OnceLock<Result<Facts, String>>,
}

impl Entry {
    /// True when `name` names this model (case-insensitive; Ollama's `:latest` allowed).
    pub fn answers_to(&self, name: &str) -> bool {
        let n = name.trim();
        let n = n.strip_suffix(":latest").unwrap_or(n);
        self.names.iter().any(|m| m.eq_ignore_ascii_case(n))
    }

    /// The file's facts (read once).
    pub fn facts(&self) -> Result<&Facts, String> {
        self.facts
            .get_or_init(|| match &self.spec.device {
                Some(pkg) => Ok(device_facts(&self.spec.path, pkg)),
                None => read_facts(&self.spec.path),
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

enum State {
    Unloaded,
    Loading { attempt: u64 },
    Loaded(Box<Slot>),
}

struct Slot {
    loaded: Arc<Loaded>,
    thread: Option<std::thread::JoinHandle<()>>,
    bytes: u64,
    draining: bool,
}

struct Inner {
    states: Vec<State>,
    attempts: u64,
    failures: Vec<Option<(u64, LoadError)>>,
    /// Memory of models being unloaded (still allocated).
    unloading_bytes: u64,
    /// Metrics of models being unloaded, until they are folded into the server's.
    retiring: Vec<Arc<Metrics>>,
    closed: bool,
}

/// Where a loaded model stands, for `/api/ps` and `/v1/models`.
pub struct Status {
    /// The entry's index.
    pub index: usize,
    /// The model.
    pub loaded: Arc<Loaded>,
    /// Estimated memory.
    pub bytes: u64,
    /// When it unloads if idle (`None` = never).
    pub expires_at: Option<SystemTime>,
    /// Requests holding it.
    pub busy: usize,
}

/// Every served model and what is loaded.
pub struct Registry {
    entries: Vec<Entry>,
    inner: Mutex<Inner>,
    changed: Arc<watch::Sender<u64>>,
    load_lock: tokio::sync::Mutex<()>,
    cfg: ServerConfig,
    metrics: Arc<Metrics>,
    budget: u64,
    default_keep_alive: KeepAlive,
}

impl Registry {
    /// The registry for `cfg`: its `models`, or the single `-m` model.
    pub fn new(cfg: &ServerConfig, metrics: Arc<Metrics>) -> Result<Arc<Registry>, String> {
        let single = cfg.models.is_empty();
        let specs: Vec<ModelSpec> = if single {
            vec![ModelSpec {
                name: cfg.names.first().cloned().unwrap_or_default(),
                path: cfg.model_path.clone(),
                preset: cfg.preset.clone(),
                origin: cfg.model_path.display().to_string(),
                digest: None,
                device: cfg
                    .device
                    .clone()
                    .or_else(|| engine_store::DevicePackage::for_file(&cfg.model_path)),
            }]
        } else {
            cfg.models.clone()
        };
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut names: Vec<String> = Vec::new();
            if single {
                // llama-server's way: --alias, the -m name, the file stem, general.name
                names.extend(cfg.names.iter().cloned());
                names.extend(spec.preset.aliases.iter().cloned());
                if let Some(stem) = spec.path.file_stem() {
                    names.push(stem.to_string_lossy().into_owned());
                }
            } else {
                names.push(spec.name.clone());
                names.extend(spec.preset.aliases.iter().cloned());
            }
            let entry = Entry {
                names: Vec::new(),
                facts: std::sync::OnceLock::new(),
                spec: Arc::new(spec),
            };
            if single {
                if let Ok(f) = entry.facts() {
                    names.extend(f.gguf_name.clone());
                }
            }
            names.retain(|n| !n.trim().is_empty());
            let mut seen = HashSet::new();
            names.retain(|n| seen.insert(n.to_ascii_lowercase()));
            if names.is_empty() {
                names.push("model".into());
            }
            entries.push(Entry { names, ..entry });
        }
        // a name must pick one model
        let mut owner: std::collections::HashMap<String, &str> = Default::default();
        for e in &entries {
            for n in &e.names {
                let key = n.to_ascii_lowercase();
                if let Some(other) = owner.insert(key, &e.names[0]) {
                    return Err(format!(
                        "the name '{n}' is used by both '{other}' and '{}'; names and aliases must be unique",
                        e.names[0]
                    ));
                }
            }
        }
        let budget = cfg
            .max_memory
            .or_else(engine::memory::available_memory)
            .unwrap_or(u64::MAX);
        metrics
            .memory_budget_bytes
            .store(budget.min(i64::MAX as u64), Ordering::Relaxed);
        let n = entries.len();
        let default_keep_alive = cfg.keep_alive.unwrap_or(if single {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs(300))
        });
        Ok(Arc::new(Registry {
            entries,
            inner: Mutex::new(Inner {
                states: (0..n).map(|_| State::Unloaded).collect(),
                attempts: 0,
                failures: vec![None; n],
                unloading_bytes: 0,
                retiring: Vec::new(),
                closed: false,
            }),
            changed: Arc::new(watch::channel(0u64).0),
            load_lock: tokio::sync::Mutex::new(()),
            cfg: cfg.clone(),
            metrics,
            budget,
            default_keep_alive,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The served models.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The memory budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The entry a request's model name picks. No name picks the only model, if there is
    /// one.
    pub fn find(&self, name: Option<&str>) -> Result<usize, LoadError> {
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        match name {
            None if self.entries.len() == 1 => Ok(0),
            None => Err(LoadError::NoName(format!(
                "this server serves several models; name one in \"model\": {}",
                self.name_list()
            ))),
            Some(n) => self
                .entries
                .iter()
                .position(|e| e.answers_to(n))
                .ok_or_else(|| {
                    LoadError::Unknown(if self.entries.len() == 1 {
                        format!(
                            "model '{n}' not found; this server serves '{}'",
                            self.entries[0].names[0]
                        )
                    } else {
                        format!(
                            "model '{n}' not found; this server serves {}",
                            self.name_list()
                        )
                    })
                }),
        }
    }

    fn name_list(&self) -> String {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .take(30)
            .map(|e| format!("'{}'", e.names[0]))
            .collect();
        if self.entries.len() > 30 {
            v.push(format!("and {} more", self.entries.len() - 30));
        }
        v.join(", ")
    }

    /// The loaded model named `name` (or the only one), loading it first if needed; a
    /// request's `keep_alive` replaces the model's.
    pub async fn acquire(
        self: &Arc<Self>,
        name: Option<&str>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, LoadError> {
        let idx = self.find(name)?;
        self.acquire_index(idx, keep_alive).await
    }

    /// [`Registry::acquire`] by entry index.
    pub async fn acquire_index(
        self: &Arc<Self>,
        idx: usize,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, LoadError> {
        let deadline = Instant::now() + self.cfg.load_timeout;
        let mut waited_on: Option<u64> = None;
        loop {
            let mut rx = self.changed.subscribe();
            let start_load = {
                let mut inner = self.lock();
                if inner.closed {
                    return Err(LoadError::Unavailable("the server is shutting down".into()));
                }
                match &inner.states[idx] {
                    State::Loaded(slot) if !slot.draining => {
                        let busy = slot.loaded.activity.busy();
                        if let Some(k) = keep_alive {
                            slot.loaded.activity.set_keep_alive(k);
                        }
                        return Ok(Lease {
                            loaded: slot.loaded.clone(),
                            _busy: busy,
                        });
                    }
                    State::Loaded(_) => false,
                    State::Loading { attempt } => {
                        waited_on = Some(*attempt);
                        false
                    }
                    State::Unloaded => {
                        if let (Some(a), Some((f, e))) = (waited_on, &inner.failures[idx]) {
                            if *f == a {
                                // the load this request waited for failed: same answer
                                return Err(e.clone());
                            }
                        }
                        inner.attempts += 1;
                        let attempt = inner.attempts;
                        inner.states[idx] = State::Loading { attempt };
                        waited_on = Some(attempt);
                        true
                    }
                }
            };
            if start_load {
                // the load runs in its own task: a client that goes away does not cancel it
                let reg = self.clone();
                let attempt = waited_on.unwrap_or(0);
                let task = tokio::spawn(async move { reg.load(idx, attempt).await });
                let _ = task.await;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return Err(LoadError::Unavailable(format!(
                    "timed out after {}s waiting for model '{}' to load (--load-timeout)",
                    self.cfg.load_timeout.as_secs(),
                    self.entries[idx].names[0]
                )));
            }
        }
    }

    /// Loads entry `idx` (its state is `Loading { attempt }`), making room first.
    async fn load(self: Arc<Self>, idx: usize, attempt: u64) {
        let t0 = Instant::now();
        let _serial = self.load_lock.lock().await;
        let result = self.clone().load_locked(idx).await;
        {
            let mut inner = self.lock();
            for s in inner.states.iter_mut() {
                if let State::Loaded(slot) = s {
                    slot.draining = false;
                }
            }
            match result {
                Ok((loaded, thread, bytes)) => {
                    let secs = t0.elapsed().as_secs_f64();
                    self.metrics.model_loads.fetch_add(1, Ordering::Relaxed);
                    self.metrics.model_load_seconds.observe(secs);
                    self.metrics.set_load_time(secs);
                    tracing::info!(
                        model = %self.entries[idx].names[0],
                        seconds = format!("{secs:.2}"),
                        memory = %human(bytes),
                        "model loaded"
                    );
                    inner.states[idx] = State::Loaded(Box::new(Slot {
                        loaded,
                        thread: Some(thread),
                        bytes,
                        draining: false,
                    }));
                    inner.failures[idx] = None;
                }
                Err(e) => {
                    self.metrics
                        .model_load_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %self.entries[idx].names[0], error = %e, "model not loaded");
                    inner.states[idx] = State::Unloaded;
                    inner.failures[idx] = Some((attempt, e));
                }
            }
            self.publish(&inner);
        }
        self.notify();
    }

    fn load_options(&self, spec: &ModelSpec) -> engine::LoadOptions {
        let mut o = self.cfg.load.clone();
        if let Some(n) = spec.preset.num_ctx {
            o.n_ctx = n;
        }
        o
    }

    async fn load_locked(
        self: Arc<Self>,
        idx: usize,
    ) -> Result<(Arc<Loaded>, std::thread::JoinHandle<()>, u64), LoadError> {
        let spec = self.entries[idx].spec.clone();
        let name = self.entries[idx].names[0].clone();
        if let Some(pkg) = spec.device.clone() {
            // the model lives on the device: only the model count limits it here
            self.make_room(idx, 0).await?;
            let reg = self.clone();
            let loaded =
                tokio::task::spawn_blocking(move || reg.load_device_blocking(idx, &spec, &pkg))
                    .await
                    .map_err(|e| LoadError::Failed(format!("the load task failed: {e}")))??;
            return Ok((loaded.0, loaded.1, 0));
        }
        let opts = self.load_options(&spec);
        // what the scheduler's context will allocate: one step of prompt chunks plus a token
        // per slot
        let (est, _n_ctx) = {
            let path = spec.path.clone();
            let mut o = opts.clone();
            let step = self.cfg.step_tokens.max(self.cfg.ubatch);
            tokio::task::spawn_blocking(move || {
                let (_, n_ctx) = engine::memory::estimate(&path, &o)?;
                o.n_batch = step.clamp(1, n_ctx.max(1)) + o.n_seq.max(1);
                engine::memory::estimate(&path, &o)
            })
            .await
            .map_err(|e| LoadError::Failed(format!("the estimate task failed: {e}")))?
            .map_err(|e| LoadError::Failed(format!("cannot load '{name}': {e}")))?
        };
        let need = est.total();
        if need > self.budget {
            return Err(LoadError::TooLarge(too_large(&name, &est, self.budget)));
        }
        self.make_room(idx, need).await?;
        // load on a blocking thread
        let reg = self.clone();
        let spec2 = spec.clone();
        let loaded = tokio::task::spawn_blocking(move || reg.load_blocking(idx, &spec2, opts, est))
            .await
            .map_err(|e| LoadError::Failed(format!("the load task failed: {e}")))??;
        Ok((loaded.0, loaded.1, need))
    }

    /// Evicts idle models (least recently used first) until `need` more bytes fit; waits for
    /// busy models when idle ones are not enough.
    async fn make_room(self: &Arc<Self>, idx: usize, need: u64) -> Result<(), LoadError> {
        let deadline = Instant::now() + self.cfg.load_timeout;
        loop {
            let mut rx = self.changed.subscribe();
            let (victims, wait_on) = {
                let mut inner = self.lock();
                if inner.closed {
                    return Err(LoadError::Unavailable("the server is shutting down".into()));
                }
                let used: u64 = inner.unloading_bytes
                    + inner
                        .states
                        .iter()
                        .map(|s| match s {
                            State::Loaded(slot) => slot.bytes,
                            _ => 0,
                        })
                        .sum::<u64>();
                let count = inner
                    .states
                    .iter()
                    .filter(|s| matches!(s, State::Loaded(_)))
                    .count();
                let max_models = self.cfg.max_models;
                let fits = |used: u64, count: usize| {
                    used.saturating_add(need) <= self.budget
                        && (max_models == 0 || count < max_models)
                };
                if fits(used, count) {
                    return Ok(());
                }
                // loaded models, least recently used first
                let mut cands: Vec<(usize, bool, Instant, u64)> = inner
                    .states
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| match s {
                        State::Loaded(slot) if i != idx => Some((
                            i,
                            slot.loaded.activity.busy_count() == 0,
                            slot.loaded.activity.last_done(),
                            slot.bytes,
                        )),
                        _ => None,
                    })
                    .collect();
                cands.sort_by_key(|c| c.2);
                let mut evict = Vec::new();
                let (mut u, mut c) = (used, count);
                for &(i, idle, _, bytes) in &cands {
                    if fits(u, c) {
                        break;
                    }
                    if idle {
                        evict.push(i);
                        u -= bytes.min(u);
                        c -= 1;
                    }
                }
                if fits(u, c) {
                    let mut slots = Vec::new();
                    for i in evict {
                        if let State::Loaded(slot) =
                            std::mem::replace(&mut inner.states[i], State::Unloaded)
                        {
                            inner.unloading_bytes += slot.bytes;
                            inner.retiring.push(slot.loaded.metrics.clone());
                            slots.push((i, slot));
                        }
                    }
                    (slots, Vec::new())
                } else {
                    // idle ones are not enough: busy ones must finish; new requests to them
                    // wait behind this load
                    let mut draining = Vec::new();
                    for &(i, idle, _, bytes) in &cands {
                        if fits(u, c) {
                            break;
                        }
                        if !idle {
                            if let State::Loaded(slot) = &mut inner.states[i] {
                                slot.draining = true;
                                draining.push(self.entries[i].names[0].clone());
                            }
                            u -= bytes.min(u);
                            c -= 1;
                        }
                    }
                    (Vec::new(), draining)
                }
            };
            if !victims.is_empty() {
                for (i, slot) in victims {
                    tracing::info!(
                        model = %self.entries[i].names[0],
                        for_model = %self.entries[idx].names[0],
                        "evicting an idle model to make room"
                    );
                    self.metrics.model_evictions.fetch_add(1, Ordering::Relaxed);
                    self.retire(*slot).await;
                }
                continue;
            }
            if wait_on.is_empty() && self.lock().unloading_bytes == 0 {
                // nothing can free memory (the budget is taken by other loads' reservations)
                return Err(LoadError::Unavailable(format!(
                    "model '{}' does not fit next to the loaded models and none can be unloaded",
                    self.entries[idx].names[0]
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return Err(LoadError::Unavailable(format!(
                    "timed out after {}s waiting for busy models ({}) to finish so that '{}' fits in the memory budget of {}",
                    self.cfg.load_timeout.as_secs(),
                    wait_on.join(", "),
                    self.entries[idx].names[0],
                    human(self.budget)
                )));
            }
        }
    }

    fn load_blocking(
        &self,
        idx: usize,
        spec: &Arc<ModelSpec>,
        opts: engine::LoadOptions,
        est: MemoryEstimate,
    ) -> Result<(Arc<Loaded>, std::thread::JoinHandle<()>), LoadError> {
        let name = &self.entries[idx].names[0];
        let fail = |e: String| LoadError::Failed(format!("cannot load '{name}': {e}"));
        let model = engine::Model::load(&spec.path, &opts).map_err(|e| match e {
            engine::Error::Memory(m) => LoadError::TooLarge(m),
            e => fail(e.to_string()),
        })?;
        let choice = match &spec.preset.template {
            Some(t) => Some(template_choice(t).map_err(fail)?),
            None => self.cfg.chat_template.clone(),
        };
        let template = ChatTemplate::for_model(&model, choice.as_ref()).map_err(fail)?;
        tracing::info!(
            model = %name,
            template = %template.origin,
            reasoning = ?template.reasoning,
            "chat template selected"
        );
        let n_ctx = model.context_options().n_ctx;
        let meta = std::fs::metadata(&spec.path).ok();
        let file_size = model.gguf().file_bytes();
        let digest = spec
            .digest
            .clone()
            .unwrap_or_else(|| crate::app::file_digest(&spec.path, meta.as_ref()));
        let draft_cfg = self.draft_config(spec).map_err(fail)?;
        let drafter = crate::draft::build(&draft_cfg, &model, &opts)
            .map_err(fail)?
            .map(|d| (d, draft_cfg.params.clone()));
        if let Some(kind) = draft_cfg.kind() {
            tracing::info!(
                model = %name,
                drafter = kind.name(),
                draft_max = draft_cfg.params.draft_max,
                "speculative decoding on"
            );
        }
        let model = Arc::new(model);
        let metrics = Arc::new(Metrics::new());
        let (sched, thread) = scheduler::spawn_speculative(
            model.clone(),
            SchedConfig {
                ubatch: self.cfg.ubatch,
                step_tokens: self.cfg.step_tokens,
                cache_prompt: self.cfg.cache_prompt,
            },
            metrics.clone(),
            drafter,
        )
        .map_err(|e| fail(e.to_string()))?;
        let keep_alive = match &spec.preset.keep_alive {
            Some(k) => KeepAlive::parse(k).unwrap_or(self.default_keep_alive),
            None => self.default_keep_alive,
        };
        let loaded = Arc::new(Loaded {
            runner: Runner::Native(Native { model, sched }),
            template,
            names: self.entries[idx].names.clone(),
            created: crate::api::common::unix_time(),
            file_size,
            n_ctx,
            digest,
            spec: spec.clone(),
            defaults: Defaults::from_preset(&spec.preset),
            metrics,
            estimate: est,
            activity: Activity::new(keep_alive, self.changed.clone()),
            loaded_at: SystemTime::now(),
        });
        Ok((loaded, thread))
    }

    /// Loads a model compiled for a text device: opens the device (through its shim) and
    /// starts its worker. The package's template is rendered on the host when it has one.
    fn load_device_blocking(
        &self,
        idx: usize,
        spec: &Arc<ModelSpec>,
        pkg: &engine_store::DevicePackage,
    ) -> Result<(Arc<Loaded>, std::thread::JoinHandle<()>), LoadError> {
        let name = &self.entries[idx].names[0];
        let fail = |e: String| LoadError::Failed(format!("cannot load '{name}': {e}"));
        let source = match &spec.preset.template {
            Some(t) => match template_choice(t).map_err(fail)? {
                TemplateChoice::Builtin(n) => builtin::source(&n).map(str::to_string),
                TemplateChoice::Source(src) => Some(src),
            },
            None => pkg.chat_template.clone(),
        };
        let host_template = source.is_some();
        let template = ChatTemplate::from_source(
            source.unwrap_or_else(|| builtin::source("chatml").unwrap_or_default().to_string()),
            if host_template { "package" } else { "device" },
            &pkg.bos_token,
            &pkg.eos_token,
        )
        .map_err(fail)?;
        let open = crate::device::opener(&spec.path, pkg, &self.cfg).map_err(fail)?;
        let metrics = Arc::new(Metrics::new());
        let (handle, thread) = crate::device::spawn(
            open,
            crate::device::DeviceConfig {
                read_timeout: self.cfg.device_timeout,
                cache_prompt: self.cfg.cache_prompt,
                telemetry_every: Duration::from_secs(2),
            },
            metrics.clone(),
            host_template,
        )
        .map_err(|e| match e {
            engine::provider::ProviderError::Unavailable(m) => {
                LoadError::Unavailable(format!("cannot load '{name}': {m}"))
            }
            e => fail(e.to_string()),
        })?;
        tracing::info!(
            model = %name,
            device = %handle.device,
            context = handle.max_context,
            template = %template.origin,
            "device model opened"
        );
        let meta = std::fs::metadata(&spec.path).ok();
        let keep_alive = match &spec.preset.keep_alive {
            Some(k) => KeepAlive::parse(k).unwrap_or(self.default_keep_alive),
            None => self.default_keep_alive,
        };
        let mut defaults = Defaults::from_preset(&spec.preset);
        defaults.sampling = engine::provider::TextSampling::neutral_params(defaults.sampling);
        let loaded = Arc::new(Loaded {
            n_ctx: handle.max_context,
            runner: Runner::Device(handle),
            template,
            names: self.entries[idx].names.clone(),
            created: crate::api::common::unix_time(),
            file_size: meta.as_ref().map(|m| m.len()).unwrap_or(0),
            digest: spec
                .digest
                .clone()
                .unwrap_or_else(|| crate::app::file_digest(&spec.path, meta.as_ref())),
            spec: spec.clone(),
            defaults,
            metrics,
            estimate: MemoryEstimate {
                weights: 0,
                kv_cache: 0,
                scratch: 0,
            },
            activity: Activity::new(keep_alive, self.changed.clone()),
            loaded_at: SystemTime::now(),
        });
        Ok((loaded, thread))
    }

    /// Prometheus lines of the loaded device models (temperature, speed, failures).
    pub fn device_metrics(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for s in &inner.states {
            if let State::Loaded(slot) = s {
                if let Some(d) = slot.loaded.device() {
                    if out.is_empty() {
                        crate::device::render_header(&mut out);
                    }
                    d.stats.render(&mut out, &slot.loaded.names[0], &d.device);
                }
            }
        }
        out
    }

    /// The drafter of a model: its preset's draft model (a path or an installed model name)
    /// if it names one, else the server's `--model-draft`/`--spec-type`/`--draft-remote`.
    fn draft_config(&self, spec: &ModelSpec) -> Result<crate::draft::DraftConfig, String> {
        let Some(name) = spec.preset.draft.as_deref() else {
            return Ok(self.cfg.draft.clone());
        };
        let path = engine_store::Store::open_default()
            .and_then(|s| s.resolve(name))
            .map_err(|e| format!("draft model '{name}': {e}"))?;
        Ok(crate::draft::DraftConfig {
            source: crate::draft::DraftSource::Model(path),
            params: self.cfg.draft.params.clone(),
        })
    }

    /// Stops a removed model's scheduler, waits for its thread, frees it and counts it.
    async fn retire(&self, mut slot: Slot) {
        let name = slot.loaded.names[0].clone();
        slot.loaded.runner.shutdown(Duration::ZERO);
        if let Some(t) = slot.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let metrics = slot.loaded.metrics.clone();
        let bytes = slot.bytes;
        // the scheduler is gone and the model is idle: this is the last reference
        drop(slot);
        trim_heap();
        {
            let mut inner = self.lock();
            self.metrics.absorb(&metrics, false);
            inner.retiring.retain(|m| !Arc::ptr_eq(m, &metrics));
            inner.unloading_bytes = inner.unloading_bytes.saturating_sub(bytes);
            self.metrics.model_unloads.fetch_add(1, Ordering::Relaxed);
            self.publish(&inner);
        }
        tracing::info!(model = %name, memory = %human(bytes), "model unloaded");
        self.notify();
    }

    /// Unloads idle models whose keep-alive ran out. Returns when the next one is due.
    pub async fn reap(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut inner = self.lock();
            for i in 0..inner.states.len() {
                let State::Loaded(slot) = &inner.states[i] else {
                    continue;
                };
                let a = &slot.loaded.activity;
                if a.busy_count() > 0 {
                    continue;
                }
                match a.expires_at() {
                    Some(t) if t <= now => {
                        if let State::Loaded(slot) =
                            std::mem::replace(&mut inner.states[i], State::Unloaded)
                        {
                            inner.unloading_bytes += slot.bytes;
                            inner.retiring.push(slot.loaded.metrics.clone());
                            due.push(slot);
                        }
                    }
                    Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                    None => {}
                }
            }
        }
        for slot in due {
            tracing::info!(model = %slot.loaded.names[0], "keep-alive expired");
            self.retire(*slot).await;
        }
        next
    }

    /// Runs [`Registry::reap`] whenever something changes or a keep-alive is due, until
    /// the server shuts down.
    pub async fn reaper(self: Arc<Self>) {
        let mut rx = self.changed.subscribe();
        loop {
            if self.lock().closed {
                return;
            }
            let next = self.reap().await;
            let sleep = match next {
                Some(t) => tokio::time::sleep_until(t.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {}
                r = rx.changed() => if r.is_err() { return; },
            }
        }
    }

    /// Unloads model `idx`: now if idle, else as soon as its running requests finish.
    /// Returns true when it was loaded.
    pub async fn unload(&self, idx: usize) -> bool {
        let slot = {
            let mut inner = self.lock();
            match &inner.states[idx] {
                State::Loaded(slot) if slot.loaded.activity.busy_count() > 0 => {
                    slot.loaded.activity.set_keep_alive(KeepAlive::Unload);
                    return true;
                }
                State::Loaded(_) => {
                    let State::Loaded(slot) =
                        std::mem::replace(&mut inner.states[idx], State::Unloaded)
                    else {
                        unreachable!("matched Loaded above")
                    };
                    inner.unloading_bytes += slot.bytes;
                    inner.retiring.push(slot.loaded.metrics.clone());
                    slot
                }
                _ => return false,
            }
        };
        self.retire(*slot).await;
        true
    }

    /// Loaded models, in entry order.
    pub fn status(&self) -> Vec<Status> {
        let inner = self.lock();
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        inner
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                State::Loaded(slot) => Some(Status {
                    index: i,
                    loaded: slot.loaded.clone(),
                    bytes: slot.bytes,
                    expires_at: slot.loaded.activity.expires_at().map(|t| {
                        now_s + t.saturating_duration_since(now_i)
                            - now_i.saturating_duration_since(t)
                    }),
                    busy: slot.loaded.activity.busy_count(),
                }),
                _ => None,
            })
            .collect()
    }

    /// `loaded`, `loading` or `unloaded`.
    pub fn state_name(&self, idx: usize) -> &'static str {
        match self.lock().states[idx] {
            State::Unloaded => "unloaded",
            State::Loading { .. } => "loading",
            State::Loaded(_) => "loaded",
        }
    }

    /// True when at least one model is loaded.
    pub fn any_loaded(&self) -> bool {
        self.lock()
            .states
            .iter()
            .any(|s| matches!(s, State::Loaded(_)))
    }

    /// The server's metrics with every model's folded in.
    pub fn metrics(&self) -> Metrics {
        let inner = self.lock();
        let m = self.metrics.snapshot();
        for s in &inner.states {
            if let State::Loaded(slot) = s {
                m.absorb(&slot.loaded.metrics, true);
            }
        }
        for r in &inner.retiring {
            m.absorb(r, false);
        }
        m
    }

    fn publish(&self, inner: &Inner) {
        let (n, bytes) = inner.states.iter().fold((0u64, 0u64), |(n, b), s| match s {
            State::Loaded(slot) => (n + 1, b + slot.bytes),
            _ => (n, b),
        });
        self.metrics.models_loaded.store(n, Ordering::Relaxed);
        self.metrics
            .models_memory_bytes
            .store(bytes + inner.unloading_bytes, Ordering::Relaxed);
    }

    /// Stops new loads and asks every scheduler to finish within `grace`.
    pub fn begin_shutdown(&self, grace: Duration) {
        let mut inner = self.lock();
        inner.closed = true;
        for s in &inner.states {
            if let State::Loaded(slot) = s {
                slot.loaded.runner.shutdown(grace);
            }
        }
        drop(inner);
        self.notify();
    }

    /// Stops every scheduler now and waits for their threads.
    pub async fn finish_shutdown(&self) {
        let slots: Vec<Slot> = {
            let mut inner = self.lock();
            inner.closed = true;
            let mut v = Vec::new();
            for s in inner.states.iter_mut() {
                if let State::Loaded(slot) = std::mem::replace(s, State::Unloaded) {
                    v.push(*slot);
                }
            }
            v
        };
        for mut slot in slots {
            slot.loaded.runner.shutdown(Duration::ZERO);
            if let Some(t) = slot.thread.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        self.notify();
    }
}

/// A preset's template: a built-in name or Jinja source. Ollama's Go templates are refused
/// with an explanation.
pub fn template_choice(t: &str) -> Result<TemplateChoice, String> {
    let name = t.trim();
    if builtin::source(name).is_some() {
        return Ok(TemplateChoice::Builtin(name.to_string()));
    }
    let go = [".Prompt", ".System", ".Messages", ".Response", ".Content"];
    if !t.contains("{%") && go.iter().any(|k| t.contains(k)) {
        return Err(format!(
            "the TEMPLATE uses Ollama's Go template syntax, which this engine does not run; give a Jinja chat template (as in a GGUF's tokenizer.chat_template) or a built-in name ({})",
            builtin::NAMES.join(", ")
        ));
    }
    Ok(TemplateChoice::Source(t.to_string()))
}

fn too_large(name: &str, est: &MemoryEstimate, budget: u64) -> String {
    format!(
        "model '{name}' needs {} (weights {} + KV cache {} + compute buffers {}), more than the memory budget of {} (--max-memory); use a smaller context (num_ctx, -c) or a smaller model",
        human(est.total()),
        human(est.weights),
        human(est.kv_cache),
        human(est.scratch),
        human(budget)
    )
}

/// Gives freed heap memory back to the OS (glibc keeps large freed blocks otherwise).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_messages_and_system() {
        let p = engine_store::Preset {
            system: Some("You are Elroy.".into()),
            messages: vec![engine_store::preset::Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        };
        let d = Defaults::from_preset(&p);
        let user = json!({"role": "user", "content": "who are you?"});
        let out = d.apply(vec![user.clone()], None);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["content"], "You are Elroy.");
        assert_eq!(out[1]["content"], "hi");
        assert_eq!(out[2], user);
        // a request's own system prompt wins and stays first
        let sys = json!({"role": "system", "content": "Be brief."});
        let out = d.apply(vec![sys.clone(), user.clone()], None);
        assert_eq!(
            out,
            vec![sys, json!({"role": "user", "content": "hi"}), user.clone()]
        );
        // Ollama's generate `system` field replaces the preset's
        let out = d.apply(vec![user.clone()], Some("Other.".into()));
        assert_eq!(out[0]["content"], "Other.");
        // no preset: untouched
        let none = Defaults::from_preset(&Default::default());
        assert_eq!(none.apply(vec![user.clone()], None), vec![user]);
    }

    #[test]
    fn preset_parameters_become_defaults() {
        let mut p = engine_store::Preset::default();
        p.parameters.temperature = Some(0.0);
        p.parameters.top_k = Some(5);
        p.parameters.seed = Some(7);
        p.parameters.num_predict = Some(12);
        p.parameters.stop = vec!["\n".into()];
        let d = Defaults::from_preset(&p);
        assert_eq!(d.sampling.temperature, 0.0);
        assert_eq!(d.sampling.top_k, 5);
        assert_eq!(d.sampling.seed, Some(7));
        assert_eq!(d.sampling.top_p, engine::SamplingParams::default().top_p);
        assert_eq!(d.max_tokens, Some(12));
        assert_eq!(d.stop, vec!["\n"]);
    }

    #[test]
    fn template_choices() {
        assert!(matches!(
            template_choice("gemma"),
            Ok(TemplateChoice::Builtin(_))
        ));
        assert!(matches!(
            template_choice("{% for m in messages %}{{ m.content }}{% endfor %}"),
            Ok(TemplateChoice::Source(_))
        ));
        let e = template_choice("{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}").unwrap_err();
        assert!(e.contains("Go template"), "{e}");
    }

    #[test]
    fn refusal_names_the_sizes() {
        let est = MemoryEstimate {
            weights: 200 << 20,
            kv_cache: 40 << 20,
            scratch: 8 << 20,
        };
        let m = too_large("big", &est, 100 << 20);
        assert!(m.contains("needs 248.0 MiB"), "{m}");
        assert!(m.contains("weights 200.0 MiB"), "{m}");
        assert!(m.contains("KV cache 40.0 MiB"), "{m}");
        assert!(m.contains("budget of 100.0 MiB"), "{m}");
    }
}
