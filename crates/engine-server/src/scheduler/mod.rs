//! Continuous batching. One scheduler thread owns the model's KV cache (one slot per
//! parallel sequence) and runs the step loop: requests waiting for a slot join between steps,
//! every running sequence contributes its next token to one batched forward pass, and prompts
//! are evaluated in chunks so a long prompt cannot stall running streams.
//!
//! * [`sequence`]: one request's generation state (sampling, stop strings, streaming text),
//!   the same steps as `engine::Session::generate`.
//! * [`engine_loop`]: the slots, the queue and the step loop.
//! * [`json_constraint`]: JSON-only output for `response_format: json_object`.
//! * [`speculative`]: drafting and verification inside the step (speculative decoding).
//!
//! HTTP handlers talk to the loop through a [`SchedulerHandle`]: they submit a tokenized
//! request and receive [`Event`]s; dropping the receiver cancels the request at the next
//! step.

pub mod engine_loop;
pub mod json_constraint;
pub mod sequence;
pub mod speculative;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{SamplingParams, StopReason, Timings};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::admission::Permit;

/// How one request is generated.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Most tokens to generate (`None` = until the context is full).
    pub max_tokens: Option<usize>,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// `Some(k)`: report the chosen token's log-probability and the `k` most likely.
    pub logprobs: Option<usize>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Constrain the output to one JSON object.
    pub json: bool,
    /// Render control tokens in the text (needed to parse harmony channels).
    pub render_special: bool,
    /// Allow reusing a cached prompt prefix (may change numerics slightly).
    pub cache_prompt: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_tokens: None,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            json: false,
            render_special: false,
            cache_prompt: true,
        }
    }
}

/// Log-probabilities at one generated position (log-softmax of the raw logits).
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    /// Of the chosen token.
    pub logprob: f32,
    /// The most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

/// One generated token.
#[derive(Clone, Debug)]
pub struct TokenOut {
    /// Token id.
    pub id: u32,
    /// Text that became final with it (may be empty).
    pub text: String,
    /// Log-probabilities, when requested.
    pub logprob: Option<TokenLogprob>,
}

/// The end of a generation.
#[derive(Clone, Debug)]
pub struct Done {
    /// Why it ended.
    pub reason: StopReason,
    /// Prompt tokens.
    pub prompt_n: usize,
    /// Of which reused from the cache.
    pub cached_n: usize,
    /// Milliseconds from arrival to getting a slot.
    pub queue_ms: f64,
    /// Prompt and generation timings (`prompt_n` there counts evaluated tokens).
    pub timings: Timings,
}

/// What a generation request receives.
#[derive(Clone, Debug)]
pub enum Event {
    /// A token.
    Token(TokenOut),
    /// Finished normally.
    Done(Done),
    /// Failed or cut (shutdown); nothing follows.
    Error(String),
}

/// A tokenized generation request.
pub struct GenJob {
    /// Prompt tokens (BOS included when wanted).
    pub prompt: Vec<u32>,
    /// Settings.
    pub params: GenParams,
    /// Where events go; when the receiver is dropped the request is cancelled.
    pub events: tmpsc::UnboundedSender<Event>,
    /// When the request arrived (for queue time and latency).
    pub arrived: Instant,
    /// The admission place, released when the job is dropped.
    pub permit: Option<Permit>,
}

/// Embeddings of one or more inputs.
pub struct EmbedOut {
    /// One L2-normalised mean-pooled vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens evaluated.
    pub prompt_n: usize,
    /// Milliseconds evaluating.
    pub prompt_ms: f64,
}

/// A tokenized embedding request.
pub struct EmbedJob {
    /// Inputs, tokenized.
    pub inputs: Vec<Vec<u32>>,
    /// The answer.
    pub reply: oneshot::Sender<Result<EmbedOut, String>>,
    /// When the request arrived.
    pub arrived: Instant,
    /// The admission place.
    pub permit: Option<Permit>,
}

/// Work for the scheduler.
pub enum Job {
    /// Generate text.
    Generate(GenJob),
    /// Compute embeddings.
    Embed(EmbedJob),
}

pub(crate) enum Command {
    Submit(Job),
    /// Finish running requests until `deadline`, then cut the rest and exit.
    Shutdown {
        deadline: Instant,
    },
}

/// Sends work to the scheduler thread.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
}

/// The scheduler is gone (shut down or failed).
#[derive(Debug)]
pub struct Stopped;

impl SchedulerHandle {
    /// Queues a generation; events arrive on the returned receiver.
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenParams,
        arrived: Instant,
        permit: Option<Permit>,
    ) -> Result<tmpsc::UnboundedReceiver<Event>, Stopped> {
        let (tx, rx) = tmpsc::unbounded_channel();
        self.tx
            .send(Command::Submit(Job::Generate(GenJob {
                prompt,
                params,
                events: tx,
                arrived,
                permit,
            })))
            .map_err(|_| Stopped)?;
        Ok(rx)
    }

    /// Queues an embedding request.
    pub fn embed(
        &self,
        inputs: Vec<Vec<u32>>,
        arrived: Instant,
        permit: Option<Permit>,
    ) -> Result<oneshot::Receiver<Result<EmbedOut, String>>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit(Job::Embed(EmbedJob {
                inputs,
                reply: tx,
                arrived,
                permit,
            })))
            .map_err(|_| Stopped)?;
        Ok(rx)
    }

    /// Asks the loop to finish running work within `grace`, then stop.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.tx.send(Command::Shutdown {
            deadline: Instant::now() + grace,
        });
    }
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    /// Prompt chunk per sequence per step.
    pub ubatch: usize,
    /// Most prompt tokens per step across sequences.
    pub step_tokens: usize,
    /// Prefix reuse allowed at all.
    pub cache_prompt: bool,
}

/// Starts the scheduler thread for `model`; it runs until every handle is dropped or a
/// shutdown completes. Returns the handle and the thread.
pub fn spawn(
    model: Arc<engine::Model>,
    cfg: SchedConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(SchedulerHandle, std::thread::JoinHandle<()>), engine::Error> {
    spawn_speculative(model, cfg, metrics, None)
}

/// [`spawn`] with speculative decoding: `drafter` proposes tokens for every decoding
/// sequence (see [`speculative`]).
pub fn spawn_speculative(
    model: Arc<engine::Model>,
    cfg: SchedConfig,
    metrics: Arc<crate::metrics::Metrics>,
    drafter: Option<(Box<dyn engine::Drafter>, engine::SpecParams)>,
) -> Result<(SchedulerHandle, std::thread::JoinHandle<()>), engine::Error> {
    let (tx, rx) = mpsc::channel();
    let n_seq = model.context_options().n_seq;
    let spec = drafter.map(|(d, p)| speculative::Speculation::new(d, p, n_seq, metrics.clone()));
    let mut sched = engine_loop::Scheduler::new(model, cfg, metrics, rx, spec)?;
    let thread = std::thread::Builder::new()
        .name("engine-scheduler".into())
        .spawn(move || sched.run())
        .map_err(|e| engine::Error::Options(format!("cannot start the scheduler: {e}")))?;
    Ok((SchedulerHandle { tx }, thread))
}
