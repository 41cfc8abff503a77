//! Models served by a text device (a Hailo-10H NPU running a HEF): the device's worker
//! thread and the handle requests use, beside the continuous-batching scheduler that runs
//! GGUF models.
//!
//! A device holds one generation at a time, so requests queue in arrival order (first come,
//! first served: none overtakes another) and run one by one on the worker thread, which
//! owns the [`engine::provider::TextSession`]. Requests produce the same [`Event`] stream
//! as the scheduler's, so the API handlers serve both alike. The worker also reads the
//! device's temperature between requests and keeps the per-device figures `/metrics` shows.
//! A device that fails fatally (its shim process crashed or hung) is opened again for the
//! next request; meanwhile its `engine:device_up` gauge reads 0.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::provider::{
    ChatMessage, GenerateText, ProviderError, TextInput, TextProvider, TextSampling, TextSession,
};
use engine::{StopReason, Timings};
use tokio::sync::mpsc as tmpsc;

use crate::admission::Permit;
use crate::metrics::{Finish, Metrics};
use crate::scheduler::{Done, Event, GenParams, Stopped, TokenOut};

/// Opens the device (again, after a crash).
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn TextProvider>, ProviderError> + Send>;

/// How a device model is run.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Longest wait for the next piece of text before a generation is aborted.
    pub read_timeout: Duration,
    /// Keep the device's context when a prompt extends the previous conversation.
    pub cache_prompt: bool,
    /// How often the temperature is read while idle.
    pub telemetry_every: Duration,
}

/// The figures of one device, kept by its worker and read by `/metrics`.
pub struct DeviceStats {
    temperature_bits: AtomicU64,
    up: AtomicU64,
    tokens_per_second_bits: AtomicU64,
    /// Tokens generated (by the device's tokenizer).
    pub tokens: AtomicU64,
    /// Microseconds spent generating.
    pub generating_us: AtomicU64,
    /// Generations that failed on the device.
    pub failures: AtomicU64,
    /// Times the device was opened again after a fatal failure.
    pub restarts: AtomicU64,
    /// Generations aborted because the client went away.
    pub aborts: AtomicU64,
    /// Prompt tokens kept in the device's context instead of being written again.
    pub reused_tokens: AtomicU64,
}

impl DeviceStats {
    fn new() -> DeviceStats {
        DeviceStats {
            temperature_bits: AtomicU64::new(f64::NAN.to_bits()),
            up: AtomicU64::new(1),
            tokens_per_second_bits: AtomicU64::new(0f64.to_bits()),
            tokens: AtomicU64::new(0),
            generating_us: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            reused_tokens: AtomicU64::new(0),
        }
    }

    /// The last temperature read, in degrees Celsius (`None` when unknown or failing).
    pub fn temperature(&self) -> Option<f64> {
        Some(f64::from_bits(
            self.temperature_bits.load(Ordering::Relaxed),
        ))
        .filter(|t| t.is_finite())
    }

    fn set_temperature(&self, t: Option<f64>) {
        self.temperature_bits
            .store(t.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }

    /// True while the device answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) == 1
    }

    /// Decoding speed of the last generation, tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second_bits.load(Ordering::Relaxed))
    }

    /// Prometheus lines for this device, labelled with the model's name.
    pub fn render(&self, out: &mut String, model: &str, device: &str) {
        let labels = format!(
            "model=\"{}\",device=\"{device}\"",
            model.replace(['"', '\\'], "_")
        );
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(out, "engine:device_up{{{labels}}} {}", g(&self.up));
        match self.temperature() {
            Some(t) => {
                let _ = writeln!(out, "engine:device_temperature_celsius{{{labels}}} {t}");
            }
            None => {
                let _ = writeln!(out, "engine:device_temperature_celsius{{{labels}}} NaN");
            }
        }
        let _ = writeln!(
            out,
            "engine:device_tokens_per_second{{{labels}}} {}",
            self.tokens_per_second()
        );
        let _ = writeln!(
            out,
            "engine:device_generated_tokens_total{{{labels}}} {}",
            g(&self.tokens)
        );
        let _ = writeln!(
            out,
            "engine:device_generation_seconds_total{{{labels}}} {}",
            g(&self.generating_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "engine:device_failures_total{{{labels}}} {}",
            g(&self.failures)
        );
        let _ = writeln!(
            out,
            "engine:device_restarts_total{{{labels}}} {}",
            g(&self.restarts)
        );
        let _ = writeln!(
            out,
            "engine:device_aborts_total{{{labels}}} {}",
            g(&self.aborts)
        );
        let _ = writeln!(
            out,
            "engine:device_context_reused_tokens_total{{{labels}}} {}",
            g(&self.reused_tokens)
        );
    }
}

/// The `# HELP`/`# TYPE` header of the device metrics (written once before all devices').
pub fn render_header(out: &mut String) {
    for (name, kind, help) in [
        (
            "engine:device_up",
            "gauge",
            "1 while the text device answers, 0 after a failure until it is opened again.",
        ),
        (
            "engine:device_temperature_celsius",
            "gauge",
            "Chip temperature of the text device (NaN when it cannot be read).",
        ),
        (
            "engine:device_tokens_per_second",
            "gauge",
            "Decoding speed of the device's last generation.",
        ),
        (
            "engine:device_generated_tokens_total",
            "counter",
            "Tokens the device generated (by its own tokenizer).",
        ),
        (
            "engine:device_generation_seconds_total",
            "counter",
            "Seconds the device spent generating.",
        ),
        (
            "engine:device_failures_total",
            "counter",
            "Generations that failed on the device.",
        ),
        (
            "engine:device_restarts_total",
            "counter",
            "Times the device was opened again after a crash or hang.",
        ),
        (
            "engine:device_aborts_total",
            "counter",
            "Generations aborted because the client went away.",
        ),
        (
            "engine:device_context_reused_tokens_total",
            "counter",
            "Prompt tokens kept in the device's context instead of written again.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }
}

/// A prompt for a device.
pub type TextPrompt = TextInput;

struct TextJob {
    prompt: TextPrompt,
    params: GenParams,
    events: tmpsc::UnboundedSender<Event>,
    arrived: Instant,
    _permit: Option<Permit>,
}

enum Command {
    Submit(TextJob),
    Shutdown { deadline: Instant },
}

/// Sends work to a device's worker.
#[derive(Clone)]
pub struct DeviceHandle {
    tx: mpsc::Sender<Command>,
    /// The device kind.
    pub device: String,
    /// Tokens the device's context holds.
    pub max_context: usize,
    /// Whether prompts are rendered with the package's template on the host (else chat
    /// messages go to the device, which applies its own).
    pub host_template: bool,
    /// Its figures.
    pub stats: Arc<DeviceStats>,
}

impl DeviceHandle {
    /// Queues a generation; events arrive on the returned receiver, and dropping it aborts.
    pub fn generate(
        &self,
        prompt: TextPrompt,
        params: GenParams,
        arrived: Instant,
        permit: Option<Permit>,
    ) -> Result<tmpsc::UnboundedReceiver<Event>, Stopped> {
        let (tx, rx) = tmpsc::unbounded_channel();
        self.tx
            .send(Command::Submit(TextJob {
                prompt,
                params,
                events: tx,
                arrived,
                _permit: permit,
            }))
            .map_err(|_| Stopped)?;
        Ok(rx)
    }

    /// Asks the worker to finish queued work within `grace`, then stop.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.tx.send(Command::Shutdown {
            deadline: Instant::now() + grace,
        });
    }
}

/// Opens the device and starts its worker thread. The first open happens here, so a
/// missing shim or device fails the model's load with the provider's message.
pub fn spawn(
    mut open: Opener,
    cfg: DeviceConfig,
    metrics: Arc<Metrics>,
    host_template: bool,
) -> Result<(DeviceHandle, std::thread::JoinHandle<()>), ProviderError> {
    let provider = open()?;
    let info = provider.info().clone();
    let stats = Arc::new(DeviceStats::new());
    let (tx, rx) = mpsc::channel();
    let mut worker = Worker {
        open,
        session: Some(TextSession::new(provider, cfg.read_timeout)),
        rx,
        queue: VecDeque::new(),
        metrics,
        stats: stats.clone(),
        cfg,
        last_sample: None,
        deadline: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("engine-{}", info.device))
        .spawn(move || worker.run())
        .map_err(|e| ProviderError::Unavailable(format!("cannot start the device worker: {e}")))?;
    Ok((
        DeviceHandle {
            tx,
            device: info.device,
            max_context: info.max_context,
            host_template,
            stats,
        },
        thread,
    ))
}

struct Worker {
    open: Opener,
    session: Option<TextSession>,
    rx: mpsc::Receiver<Command>,
    queue: VecDeque<TextJob>,
    metrics: Arc<Metrics>,
    stats: Arc<DeviceStats>,
    cfg: DeviceConfig,
    last_sample: Option<Instant>,
    deadline: Option<Instant>,
}

const SHUTTING_DOWN: &str = "the server is shutting down";

impl Worker {
    fn run(&mut self) {
        self.sample();
        loop {
            let wait = if self.queue.is_empty() {
                self.cfg.telemetry_every
            } else {
                Duration::ZERO
            };
            match self.rx.recv_timeout(wait) {
                Ok(c) => self.accept(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) if self.queue.is_empty() => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            while let Ok(c) = self.rx.try_recv() {
                self.accept(c);
            }
            if let Some(d) = self.deadline {
                if Instant::now() >= d || self.queue.is_empty() {
                    for job in self.queue.drain(..) {
                        let _ = job.events.send(Event::Error(SHUTTING_DOWN.into()));
                        self.metrics.finished(Finish::Error);
                    }
                    self.metrics.waiting.store(0, Ordering::Relaxed);
                    return;
                }
            }
            if let Some(job) = self.queue.pop_front() {
                self.metrics
                    .waiting
                    .store(self.queue.len() as u64, Ordering::Relaxed);
                self.run_job(job);
            }
            if self
                .last_sample
                .is_none_or(|t| t.elapsed() >= self.cfg.telemetry_every)
            {
                self.sample();
            }
        }
    }

    fn accept(&mut self, c: Command) {
        match c {
            Command::Submit(job) => {
                self.queue.push_back(job);
                self.metrics
                    .waiting
                    .store(self.queue.len() as u64, Ordering::Relaxed);
            }
            Command::Shutdown { deadline } => {
                self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
            }
        }
    }

    /// Reads the temperature; a failure marks the device down.
    fn sample(&mut self) {
        self.last_sample = Some(Instant::now());
        let Some(s) = self.session.as_mut() else {
            self.stats.set_temperature(None);
            return;
        };
        match s.telemetry() {
            Ok(t) => {
                self.stats.set_temperature(t.temperature_c.map(f64::from));
                self.stats.up.store(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the device's temperature");
                self.stats.set_temperature(None);
                self.stats.up.store(0, Ordering::Relaxed);
                if e.is_fatal() {
                    self.session = None;
                }
            }
        }
    }

    fn session(&mut self) -> Result<&mut TextSession, ProviderError> {
        if self.session.is_none() {
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::info!("opening the device again");
            match (self.open)() {
                Ok(p) => {
                    self.session = Some(TextSession::new(p, self.cfg.read_timeout));
                    self.stats.up.store(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.up.store(0, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.session
            .as_mut()
            .ok_or_else(|| ProviderError::Unavailable("the device is not open".into()))
    }

    fn fail(&mut self, job: &TextJob, e: ProviderError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if e.is_fatal() {
            self.session = None;
            self.stats.up.store(0, Ordering::Relaxed);
            self.stats.set_temperature(None);
        }
        tracing::warn!(error = %e, "device generation failed");
        let _ = job.events.send(Event::Error(error_message(&e)));
        self.metrics.finished(Finish::Error);
    }

    fn run_job(&mut self, job: TextJob) {
        if job.events.is_closed() {
            self.metrics.finished(Finish::Abort);
            return;
        }
        let queue_ms = job.arrived.elapsed().as_secs_f64() * 1e3;
        self.metrics.queue_time.observe(queue_ms / 1e3);
        let sampling = match TextSampling::from_params(&job.params.sampling, job.params.max_tokens)
        {
            Ok(s) => s,
            Err(m) => {
                let _ = job.events.send(Event::Error(m));
                self.metrics.finished(Finish::Error);
                return;
            }
        };
        let req = GenerateText {
            input: job.prompt.clone(),
            sampling,
            stop: job.params.stop.clone(),
            reuse_context: self.cfg.cache_prompt && job.params.cache_prompt,
        };
        let deadline = self.deadline;
        let metrics = self.metrics.clone();
        let session = match self.session() {
            Ok(s) => s,
            Err(e) => return self.fail(&job, e),
        };
        metrics.running.store(1, Ordering::Relaxed);
        let mut first = true;
        let mut shutting_down = false;
        let events = job.events.clone();
        let arrived = job.arrived;
        let r = session.generate(&req, &mut |t| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                shutting_down = true;
                return false;
            }
            if !t.is_empty() {
                if first {
                    first = false;
                    metrics.ttft.observe(arrived.elapsed().as_secs_f64());
                }
                let _ = events.send(Event::Token(TokenOut {
                    id: 0,
                    text: t.to_string(),
                    logprob: None,
                }));
            }
            !events.is_closed()
        });
        self.metrics.running.store(0, Ordering::Relaxed);
        let out = match r {
            Ok(out) => out,
            Err(e) => return self.fail(&job, e),
        };
        if out.reason == StopReason::Cancelled {
            if shutting_down {
                let _ = job.events.send(Event::Error(SHUTTING_DOWN.into()));
                self.metrics.finished(Finish::Error);
            } else {
                tracing::info!("client disconnected; device generation aborted");
                self.stats.aborts.fetch_add(1, Ordering::Relaxed);
                self.metrics.finished(Finish::Abort);
            }
            return;
        }
        self.record(&out.timings, out.cached_n);
        let m = &self.metrics;
        m.prompt_tokens
            .fetch_add(out.prompt_n as u64, Ordering::Relaxed);
        m.prompt_tokens_cached
            .fetch_add(out.cached_n as u64, Ordering::Relaxed);
        m.generation_tokens
            .fetch_add(out.timings.predicted_n as u64, Ordering::Relaxed);
        if out.timings.predicted_n > 1 {
            m.tpot
                .observe(out.timings.predicted_ms / 1e3 / (out.timings.predicted_n - 1) as f64);
        }
        m.e2e.observe(job.arrived.elapsed().as_secs_f64());
        m.finished(match out.reason {
            StopReason::Length | StopReason::ContextFull => Finish::Length,
            _ => Finish::Stop,
        });
        let _ = job.events.send(Event::Done(Done {
            reason: out.reason,
            prompt_n: out.prompt_n,
            cached_n: out.cached_n,
            queue_ms,
            timings: out.timings,
        }));
    }

    fn record(&self, t: &Timings, cached: usize) {
        let s = &self.stats;
        s.tokens.fetch_add(t.predicted_n as u64, Ordering::Relaxed);
        s.generating_us
            .fetch_add((t.predicted_ms * 1e3) as u64, Ordering::Relaxed);
        s.reused_tokens.fetch_add(cached as u64, Ordering::Relaxed);
        if t.predicted_ms > 0.0 {
            s.tokens_per_second_bits
                .store(t.predicted_per_second().to_bits(), Ordering::Relaxed);
        }
    }
}

/// The message of a device failure, worded so [`crate::api::common::event_error`] picks
/// the right status: 400 for a prompt the device refuses, 503 for a device that is not
/// there, 504 for a device that stopped producing text, 500 otherwise.
fn error_message(e: &ProviderError) -> String {
    match e {
        ProviderError::Rejected(m) => format!("the device refused the request: {m}"),
        ProviderError::Unavailable(m) => format!("the device is unavailable: {m}"),
        ProviderError::Timeout(m) => format!("the device timed out: {m}"),
        ProviderError::Failed(m) | ProviderError::Crashed(m) => m.clone(),
    }
}

/// Chat messages of a request as the device's input (for devices that apply their own
/// template).
pub fn messages(msgs: &[serde_json::Value]) -> TextPrompt {
    TextInput::Messages(
        msgs.iter()
            .map(|m| ChatMessage {
                role: m
                    .get("role")
                    .and_then(|v| v.as_str())
                    .unwrap_or("user")
                    .to_string(),
                content: m
                    .get("content")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
            })
            .collect(),
    )
}

/// How to open the device a package names.
pub fn opener(
    path: &std::path::Path,
    pkg: &engine_store::DevicePackage,
    cfg: &crate::config::ServerConfig,
) -> Result<Opener, String> {
    match pkg.device.as_str() {
        "hailo" => {
            let host = match &cfg.hailo_host {
                Some(h) => h.clone(),
                None => engine_hailo::HostCommand::current_exe()?,
            };
            let mut opts = engine_hailo::HailoOptions::new(path.to_path_buf(), host);
            opts.shim = cfg.hailo_shim.clone();
            opts.end_tokens = pkg.end_tokens();
            Ok(Box::new(move || {
                engine_hailo::HailoProvider::open(opts.clone())
                    .map(|p| Box::new(p) as Box<dyn TextProvider>)
            }))
        }
        other => Err(format!(
            "the model is compiled for a '{other}' device, which this engine does not drive (known: hailo)"
        )),
    }
}
