//! The step loop: slots, the waiting queue, prefix reuse, and one batched forward pass per
//! step.
//!
//! Each step's batch holds, in this order, one token for every decoding sequence and then
//! whole prompt chunks of sequences still in prefill (oldest first, at most `step_tokens`
//! prompt tokens in all). A sequence's tokens are always contiguous and a prompt is cut at
//! multiples of `ubatch` from where its evaluation started, so each sequence sees exactly the
//! kernels it would see alone (see `engine-models`' batching test): batching does not change
//! results. The context's step size is `step_tokens + n_seq`, so the model never splits a
//! step. With speculative decoding a decoding sequence contributes its token and its draft
//! as verification rows instead (see [`super::speculative`]); the step size grows by
//! `n_seq * draft_max` for them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use engine::{Batch, Context, ContextOptions, Model, StopReason};

use super::sequence::{GenState, Scratch, Step};
use super::speculative::{Plan, Speculation};
use super::{Command, EmbedJob, EmbedOut, Event, GenJob, Job, SchedConfig};
use crate::metrics::{Finish, Metrics};

/// A prefix is reused only when it covers more than BOS and at least this share of the
/// new prompt (llama-server's default slot-prompt similarity).
const MIN_REUSE_SHARE: f64 = 0.1;

enum Task {
    Idle,
    Gen(Box<GenState>),
    Embed(Box<EmbedState>),
}

struct EmbedState {
    job: EmbedJob,
    input: usize,
    pos: usize,
    sums: Vec<f64>,
    out: Vec<Vec<f32>>,
    started: Instant,
    tokens: usize,
}

struct Slot {
    /// Tokens whose keys and values are in this slot's cache, in order.
    cached: Vec<u32>,
    last_used: u64,
    task: Task,
}

impl Slot {
    fn is_free(&self) -> bool {
        matches!(self.task, Task::Idle)
    }
}

/// The scheduler thread's state.
pub struct Scheduler {
    model: Arc<Model>,
    cfg: SchedConfig,
    metrics: Arc<Metrics>,
    rx: Receiver<Command>,
    ctx: Context,
    batch: Batch,
    logits: Vec<f32>,
    hidden: Vec<f32>,
    slots: Vec<Slot>,
    waiting: VecDeque<Job>,
    outs: Vec<usize>,
    order: Vec<usize>,
    scratch: Scratch,
    n_ctx: usize,
    clock: u64,
    deadline: Option<Instant>,
    disconnected: bool,
    spec: Option<Speculation>,
}

impl Scheduler {
    /// Allocates the cache for the model's slots.
    pub(crate) fn new(
        model: Arc<Model>,
        mut cfg: SchedConfig,
        metrics: Arc<Metrics>,
        rx: Receiver<Command>,
        spec: Option<Speculation>,
    ) -> Result<Scheduler, engine::Error> {
        let base = model.context_options().clone();
        cfg.step_tokens = cfg.step_tokens.clamp(1, base.n_ctx.max(1));
        cfg.ubatch = cfg.ubatch.clamp(1, cfg.step_tokens);
        let draft_rows = spec.as_ref().map_or(0, |s| s.draft_max());
        let opts = ContextOptions {
            n_batch: cfg.step_tokens + base.n_seq * (1 + draft_rows),
            ..base
        };
        let ctx = model
            .inner()
            .new_context(opts.clone())
            .map_err(engine::Error::from)?;
        metrics
            .kv_capacity
            .store((opts.n_ctx * opts.n_seq) as u64, Ordering::Relaxed);
        let slots = (0..opts.n_seq)
            .map(|_| Slot {
                cached: Vec::with_capacity(opts.n_ctx),
                last_used: 0,
                task: Task::Idle,
            })
            .collect();
        Ok(Scheduler {
            batch: Batch::with_capacity(opts.n_batch),
            logits: Vec::new(),
            hidden: Vec::new(),
            outs: Vec::with_capacity(opts.n_seq),
            order: Vec::with_capacity(opts.n_seq),
            scratch: Scratch::default(),
            n_ctx: opts.n_ctx,
            waiting: VecDeque::new(),
            clock: 0,
            deadline: None,
            disconnected: false,
            spec,
            slots,
            ctx,
            model,
            cfg,
            metrics,
            rx,
        })
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.slots.iter().any(|s| !s.is_free())
    }

    /// Runs until shut down (or every handle is dropped) and no work is left.
    pub fn run(&mut self) {
        loop {
            if !self.has_work() {
                if self.deadline.is_some() || self.disconnected {
                    break;
                }
                match self.rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => break,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(c) => self.command(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.disconnected = true;
                        break;
                    }
                }
            }
            self.reap_cancelled();
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.cut_all("the server is shutting down");
            }
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.assign();
                self.step();
            }));
            if stepped.is_err() {
                // A bug must not take the server down: fail what was running, start clean.
                tracing::error!("the scheduler step panicked; running requests were failed");
                self.cut_all("internal error in the scheduler");
                for i in 0..self.slots.len() {
                    self.ctx.clear_seq(i);
                    self.slots[i].cached.clear();
                }
            }
            self.publish();
        }
        self.cut_all("the server is shutting down");
        self.publish();
        tracing::debug!("scheduler stopped");
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(job) => {
                if self.deadline.is_some() {
                    reject(job, "the server is shutting down", &self.metrics);
                } else {
                    self.waiting.push_back(job);
                }
            }
            Command::Shutdown { deadline } => {
                self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
            }
        }
    }

    /// Frees slots and queue entries of clients that went away.
    fn reap_cancelled(&mut self) {
        let metrics = &self.metrics;
        self.waiting.retain(|j| {
            let gone = match j {
                Job::Generate(g) => g.events.is_closed(),
                Job::Embed(e) => e.reply.is_closed(),
            };
            if gone {
                metrics.finished(Finish::Abort);
            }
            !gone
        });
        for i in 0..self.slots.len() {
            let gone = match &self.slots[i].task {
                Task::Gen(g) => g.is_cancelled(),
                Task::Embed(e) => e.job.reply.is_closed(),
                Task::Idle => false,
            };
            if gone {
                tracing::info!(slot = i, "client disconnected; sequence freed");
                self.release(i, Finish::Abort);
            }
        }
    }

    /// Ends whatever slot `i` runs without a reply (the client is gone) or after an error.
    fn release(&mut self, i: usize, why: Finish) {
        // `cached` already says exactly what the cache holds (a sampled token that was never
        // evaluated is not in it), so the prefix stays reusable.
        self.slots[i].task = Task::Idle;
        self.clock += 1;
        self.slots[i].last_used = self.clock;
        self.metrics.finished(why);
    }

    fn cut_all(&mut self, msg: &str) {
        while let Some(job) = self.waiting.pop_front() {
            reject(job, msg, &self.metrics);
        }
        for i in 0..self.slots.len() {
            match std::mem::replace(&mut self.slots[i].task, Task::Idle) {
                Task::Idle => {}
                Task::Gen(g) => {
                    let _ = g.job.events.send(Event::Error(msg.to_string()));
                    self.metrics.finished(Finish::Error);
                }
                Task::Embed(e) => {
                    let _ = e.job.reply.send(Err(msg.to_string()));
                    self.metrics.finished(Finish::Error);
                }
            }
        }
    }

    /// Moves waiting requests into free slots, reusing cached prefixes where allowed.
    fn assign(&mut self) {
        while !self.waiting.is_empty() {
            let Some(lru) = self.lru_free_slot() else {
                return;
            };
            let job = self.waiting.pop_front().expect("checked non-empty");
            let now = Instant::now();
            match job {
                Job::Generate(job) => {
                    let n = job.prompt.len();
                    if n == 0 || n >= self.n_ctx {
                        let msg = format!(
                            "the prompt is {n} tokens, but the context holds {} (raise -c/--ctx-size or shorten the prompt)",
                            self.n_ctx
                        );
                        reject(Job::Generate(job), &msg, &self.metrics);
                        continue;
                    }
                    let (slot, reuse) = if self.cfg.cache_prompt && job.params.cache_prompt {
                        self.best_prefix_slot(&job).unwrap_or((lru, 0))
                    } else {
                        (lru, 0)
                    };
                    // recurrent layers cannot rewind to a shorter prefix: start afresh
                    let reuse = match self.ctx.truncate_seq(slot, reuse) {
                        Ok(()) => reuse,
                        Err(_) => {
                            self.ctx.clear_seq(slot);
                            0
                        }
                    };
                    self.slots[slot].cached.truncate(reuse);
                    debug_assert_eq!(self.ctx.seq_len(slot), self.slots[slot].cached.len());
                    let m = &self.metrics;
                    m.queue_time.observe((now - job.arrived).as_secs_f64());
                    m.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                    m.prompt_tokens_cached
                        .fetch_add(reuse as u64, Ordering::Relaxed);
                    tracing::debug!(slot, prompt = n, reused = reuse, "request started");
                    self.clock += 1;
                    let state = GenState::new(job, self.clock, reuse, self.n_ctx);
                    self.slots[slot].task = Task::Gen(Box::new(state));
                    if let Some(spec) = self.spec.as_mut() {
                        spec.reset(slot);
                    }
                }
                Job::Embed(job) => {
                    if let Some(bad) = job
                        .inputs
                        .iter()
                        .find(|t| t.is_empty() || t.len() > self.n_ctx)
                    {
                        let msg = format!(
                            "an input is {} tokens, but the context holds {}",
                            bad.len(),
                            self.n_ctx
                        );
                        reject(Job::Embed(job), &msg, &self.metrics);
                        continue;
                    }
                    self.metrics
                        .queue_time
                        .observe((now - job.arrived).as_secs_f64());
                    let n_embd = self.model.info().n_embd;
                    self.ctx.clear_seq(lru);
                    self.slots[lru].cached.clear();
                    self.slots[lru].task = Task::Embed(Box::new(EmbedState {
                        job,
                        input: 0,
                        pos: 0,
                        sums: vec![0.0; n_embd],
                        out: Vec::new(),
                        started: now,
                        tokens: 0,
                    }));
                }
            }
        }
    }

    fn lru_free_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_free())
            .min_by_key(|(_, s)| (s.last_used, s.cached.len()))
            .map(|(i, _)| i)
    }

    /// The free slot sharing the longest useful prefix with the job's prompt.
    fn best_prefix_slot(&self, job: &GenJob) -> Option<(usize, usize)> {
        let p = &job.prompt;
        let (slot, lcp) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_free())
            .map(|(i, s)| {
                let lcp = s.cached.iter().zip(p).take_while(|(a, b)| a == b).count();
                (i, lcp)
            })
            .max_by_key(|&(_, lcp)| lcp)?;
        // At least one prompt token must be evaluated to get logits.
        let reuse = lcp.min(p.len() - 1);
        (reuse > 1 && reuse as f64 >= MIN_REUSE_SHARE * p.len() as f64).then_some((slot, reuse))
    }

    /// Builds and runs one batched forward pass and handles its outputs.
    fn step(&mut self) {
        self.batch.clear();
        self.outs.clear();
        self.draft_step();
        // Decoding sequences: one token each (with a draft: the token and the draft).
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Task::Gen(g) = &mut slot.task {
                if let Some(t) = g.pending.take() {
                    let pos = slot.cached.len();
                    slot.cached.push(t);
                    let verify = self
                        .spec
                        .as_mut()
                        .is_some_and(|s| s.prepare_verify(&mut self.ctx, i));
                    match self.spec.as_ref() {
                        Some(spec) if verify => {
                            slot.cached.extend_from_slice(&spec.draft_of(i).tokens);
                            self.batch
                                .push_verify(&slot.cached[pos..], pos as u32, i as u32);
                        }
                        _ => self.batch.push(t, pos as u32, i as u32, true),
                    }
                    self.outs.push(i);
                }
            }
        }
        // Prompt chunks, oldest request first.
        self.order.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Task::Gen(g) = &slot.task {
                if g.in_prefill() {
                    self.order.push(i);
                }
            }
        }
        let slots = &self.slots;
        self.order.sort_by_key(|&i| match &slots[i].task {
            Task::Gen(g) => g.seq_no,
            _ => u64::MAX,
        });
        let now = Instant::now();
        let mut budget = self.cfg.step_tokens;
        let mut any_chunk = false;
        for k in 0..self.order.len() {
            let i = self.order[k];
            let slot = &mut self.slots[i];
            let Task::Gen(g) = &mut slot.task else {
                continue;
            };
            g.prompt_chunk_started(now);
            let prompt = &g.job.prompt;
            let start = g.next_prompt;
            let end = (start + self.cfg.ubatch).min(prompt.len());
            let n = end - start;
            if n > budget && any_chunk {
                break;
            }
            for (p, &t) in prompt.iter().enumerate().take(end).skip(start) {
                self.batch
                    .push(t, p as u32, i as u32, p + 1 == prompt.len());
            }
            slot.cached.extend_from_slice(&prompt[start..end]);
            g.next_prompt = end;
            if end == prompt.len() {
                self.outs.push(i);
            }
            budget = budget.saturating_sub(n);
            any_chunk = true;
        }

        if !self.batch.is_empty() {
            self.metrics.steps.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .last_batch_tokens
                .store(self.batch.len() as u64, Ordering::Relaxed);
            let t = Instant::now();
            let result = self
                .model
                .inner()
                .forward(&mut self.ctx, &self.batch, &mut self.logits);
            if let Some(spec) = self.spec.as_mut() {
                // decoding rows only: a prompt chunk would blur the cost per row
                if !any_chunk {
                    spec.observe_pass(self.batch.len(), t.elapsed().as_secs_f64());
                }
            }
            match result {
                Ok(()) => self.sample_outputs(),
                Err(e) => self.fail_batch(&e.to_string()),
            }
        }
        self.embed_step();
    }

    fn sample_outputs(&mut self) {
        let n_vocab = self.model.info().n_vocab;
        let tok = self.model.tokenizer().clone();
        let mut row_at = 0;
        for k in 0..self.outs.len() {
            let i = self.outs[k];
            // a verifying sequence has a row per drafted token besides its own
            let drafted = self.spec.as_ref().map_or(0, |s| s.draft_of(i).len());
            let rows = row_at * n_vocab..(row_at + drafted + 1) * n_vocab;
            row_at += drafted + 1;
            let Task::Gen(g) = &mut self.slots[i].task else {
                continue;
            };
            let before = g.n_gen;
            let step = if drafted > 0 {
                self.verify_slot(i, rows, &tok)
            } else {
                g.on_logits(&self.logits[rows], &tok, &mut self.scratch, &self.metrics)
            };
            let Task::Gen(g) = &mut self.slots[i].task else {
                continue;
            };
            self.metrics
                .generation_tokens
                .fetch_add((g.n_gen - before) as u64, Ordering::Relaxed);
            if let Step::Finished(reason) = step {
                self.finish(i, reason);
            }
        }
        let model = self.model.clone();
        if let Some(spec) = self.spec.as_mut() {
            if let Err(e) = spec.redo(model.inner(), &mut self.ctx) {
                // the rewound sequences' state is unknown: fail them
                tracing::error!(error = %e, "re-evaluating accepted drafts failed");
                for i in 0..self.slots.len() {
                    if self.ctx.seq_len(i) != self.slots[i].cached.len() {
                        self.ctx.clear_seq(i);
                        self.slots[i].cached.clear();
                        if let Task::Gen(g) = std::mem::replace(&mut self.slots[i].task, Task::Idle)
                        {
                            let _ = g
                                .job
                                .events
                                .send(Event::Error(format!("inference failed: {e}")));
                            self.metrics.finished(Finish::Error);
                        }
                    }
                }
            }
        }
    }

    /// Draft requests for this step's decoding sequences (see [`super::speculative`]).
    fn draft_step(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        // the history of each sequence: its cached tokens, then its pending one
        for slot in self.slots.iter_mut() {
            if let Task::Gen(g) = &slot.task {
                if let Some(t) = g.pending {
                    slot.cached.push(t);
                }
            }
        }
        let plans: Vec<Plan<'_>> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match &slot.task {
                Task::Gen(g) if g.pending.is_some() && g.speculable() => Some(Plan {
                    slot: i,
                    history: &slot.cached,
                    remaining: g.remaining(),
                    sampling: &g.job.params.sampling,
                }),
                _ => None,
            })
            .collect();
        let n_vocab = self.model.info().n_vocab;
        spec.draft(&plans, n_vocab);
        for slot in self.slots.iter_mut() {
            if let Task::Gen(g) = &slot.task {
                if g.pending.is_some() {
                    slot.cached.pop();
                }
            }
        }
    }

    /// Verifies slot `i`'s draft against its logits `rows` (a range of `self.logits`) and
    /// rewinds what was rejected.
    fn verify_slot(
        &mut self,
        i: usize,
        rows: std::ops::Range<usize>,
        tok: &engine::Tokenizer,
    ) -> Step {
        let n_vocab = self.model.info().n_vocab;
        let spec = self.spec.as_mut().expect("verifying implies speculation");
        let slot = &mut self.slots[i];
        let Task::Gen(g) = &mut slot.task else {
            return Step::Continue;
        };
        let (draft, vs, chosen) = spec.parts(i);
        let k = draft.len();
        let (accepted, step) = g.on_verified(
            &self.logits[rows],
            n_vocab,
            draft,
            vs,
            chosen,
            tok,
            &mut self.scratch,
            &self.metrics,
        );
        spec.verified(i, accepted);
        // the rows of the pending token and the accepted drafts stay
        let start = slot.cached.len() - (k + 1);
        slot.cached.truncate(start + accepted + 1);
        if let Err(e) = spec.rollback(&mut self.ctx, i, start, &slot.cached[start..]) {
            tracing::error!(slot = i, error = %e, "rolling back rejected drafts failed");
            self.ctx.clear_seq(i);
            slot.cached.clear();
            if let Task::Gen(g) = std::mem::replace(&mut slot.task, Task::Idle) {
                let _ = g
                    .job
                    .events
                    .send(Event::Error(format!("inference failed: {e}")));
            }
            self.metrics.finished(Finish::Error);
            return Step::Continue;
        }
        step
    }

    fn finish(&mut self, i: usize, reason: StopReason) {
        let task = std::mem::replace(&mut self.slots[i].task, Task::Idle);
        let Task::Gen(mut g) = task else {
            return;
        };
        let why = match reason {
            StopReason::Cancelled => Finish::Abort,
            StopReason::Length | StopReason::ContextFull => Finish::Length,
            StopReason::Eog | StopReason::StopString => Finish::Stop,
        };
        if reason == StopReason::Cancelled {
            tracing::info!(slot = i, "client disconnected; sequence freed");
        } else {
            let d = g.finish(reason, &self.metrics);
            tracing::info!(
                slot = i,
                prompt_tokens = d.prompt_n,
                cached_tokens = d.cached_n,
                generated_tokens = d.timings.predicted_n,
                prompt_ms = d.timings.prompt_ms,
                generation_ms = d.timings.predicted_ms,
                finish = reason.finish_reason(),
                "request finished"
            );
        }
        self.clock += 1;
        self.slots[i].last_used = self.clock;
        self.metrics.finished(why);
    }

    /// A forward pass failed: every sequence in it gets the error and its slot is cleared.
    fn fail_batch(&mut self, msg: &str) {
        tracing::error!(error = msg, "forward pass failed");
        let mut seqs: Vec<u32> = self.batch.seq.clone();
        seqs.dedup();
        for s in seqs {
            let i = s as usize;
            self.ctx.clear_seq(i);
            self.slots[i].cached.clear();
            if let Task::Gen(g) = std::mem::replace(&mut self.slots[i].task, Task::Idle) {
                let _ = g
                    .job
                    .events
                    .send(Event::Error(format!("inference failed: {msg}")));
                self.metrics.finished(Finish::Error);
            }
        }
    }

    /// Advances the oldest embedding request by one chunk.
    fn embed_step(&mut self) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s.task, Task::Embed(_)))
        else {
            return;
        };
        let ubatch = self.cfg.ubatch;
        let n_embd = self.model.info().n_embd;
        let Task::Embed(e) = &mut self.slots[i].task else {
            return;
        };
        let input = &e.job.inputs[e.input];
        let end = (e.pos + ubatch).min(input.len());
        self.batch.clear();
        for (p, &t) in input.iter().enumerate().take(end).skip(e.pos) {
            self.batch.push(t, p as u32, i as u32, true);
        }
        if let Err(err) =
            self.model
                .inner()
                .forward_embeddings(&mut self.ctx, &self.batch, &mut self.hidden)
        {
            let Task::Embed(e) = std::mem::replace(&mut self.slots[i].task, Task::Idle) else {
                return;
            };
            self.ctx.clear_seq(i);
            let _ = e.job.reply.send(Err(format!("inference failed: {err}")));
            self.metrics.finished(Finish::Error);
            return;
        }
        for row in self.hidden.chunks_exact(n_embd) {
            for (s, &v) in e.sums.iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        e.tokens += end - e.pos;
        e.pos = end;
        if e.pos < input.len() {
            return;
        }
        // Mean pooling, then L2 normalisation.
        let n = input.len() as f64;
        let mut v: Vec<f32> = e.sums.iter().map(|s| (s / n) as f32).collect();
        let norm = v
            .iter()
            .map(|x| (*x as f64) * (*x as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for x in &mut v {
                *x = (*x as f64 / norm) as f32;
            }
        }
        e.out.push(v);
        e.sums.iter_mut().for_each(|s| *s = 0.0);
        e.input += 1;
        e.pos = 0;
        self.ctx.clear_seq(i);
        if e.input < e.job.inputs.len() {
            return;
        }
        let Task::Embed(e) = std::mem::replace(&mut self.slots[i].task, Task::Idle) else {
            return;
        };
        let out = EmbedOut {
            embeddings: e.out,
            prompt_n: e.tokens,
            prompt_ms: e.started.elapsed().as_secs_f64() * 1e3,
        };
        self.metrics
            .prompt_tokens
            .fetch_add(e.tokens as u64, Ordering::Relaxed);
        self.metrics
            .e2e
            .observe(e.job.arrived.elapsed().as_secs_f64());
        let _ = e.job.reply.send(Ok(out));
        self.metrics.finished(Finish::Stop);
        self.clock += 1;
        self.slots[i].last_used = self.clock;
    }

    /// Stores the gauges the metrics endpoint reads.
    fn publish(&self) {
        let running = self.slots.iter().filter(|s| !s.is_free()).count();
        let active_tokens: usize = self
            .slots
            .iter()
            .filter(|s| !s.is_free())
            .map(|s| s.cached.len())
            .sum();
        let all_tokens: usize = self.slots.iter().map(|s| s.cached.len()).sum();
        let m = &self.metrics;
        m.running.store(running as u64, Ordering::Relaxed);
        m.waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        m.kv_tokens.store(all_tokens as u64, Ordering::Relaxed);
        m.set_kv_usage(active_tokens as f64 / (self.n_ctx * self.slots.len()) as f64);
    }
}

fn reject(job: Job, msg: &str, metrics: &Metrics) {
    match job {
        Job::Generate(g) => {
            let _ = g.events.send(Event::Error(msg.to_string()));
        }
        Job::Embed(e) => {
            let _ = e.reply.send(Err(msg.to_string()));
        }
    }
    metrics.finished(Finish::Error);
}
