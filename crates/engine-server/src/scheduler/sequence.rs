//! One generation request inside the scheduler: its prompt progress, sampler, stop strings
//! and streamed text. [`GenState::on_logits`] is the body of `engine::Session::generate`'s
//! loop (sample, end-of-generation check, detokenize, stop strings, emit), so a sequence
//! decoded in a batch produces exactly what `engine run` produces alone;
//! [`GenState::on_verified`] does the same for the tokens a speculative step keeps.

use std::time::Instant;

use engine::sampling::top_logprobs;
use engine::stop::{StopCheck, StopMatcher};
use engine::{Sampler, StopReason, StreamDecoder, Timings, Tokenizer};

use super::json_constraint::JsonState;
use super::{Done, Event, GenJob, TokenLogprob, TokenOut};
use crate::metrics::Metrics;

/// JSON-constrained sampling looks at this many of the most likely tokens first.
const JSON_CANDIDATES: usize = 4096;

/// Buffers shared by every sequence of the scheduler (nothing is allocated per token
/// unless log-probabilities or JSON output are requested).
#[derive(Default)]
pub struct Scratch {
    logprobs: Vec<(u32, f32)>,
    mask: Vec<f32>,
    order: Vec<u32>,
    json: JsonState,
}

/// What happened after a token was sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The sampled token must be evaluated next step.
    Continue,
    /// The generation ended.
    Finished(StopReason),
}

/// A running generation.
pub struct GenState {
    /// The request.
    pub job: GenJob,
    /// Arrival order (prompt chunks are scheduled oldest first).
    pub seq_no: u64,
    /// Index of the next prompt token to evaluate.
    pub next_prompt: usize,
    /// Prompt tokens reused from the slot's cache.
    pub cached_n: usize,
    /// Token sampled last step, to be evaluated this step.
    pub pending: Option<u32>,
    /// Tokens generated so far.
    pub n_gen: usize,
    last_id: u32,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    max_new: usize,
    json: Option<JsonState>,
    queue_ms: f64,
    t_prompt_start: Option<Instant>,
    t_prompt_done: Option<Instant>,
    t_first: Option<Instant>,
    prompt_ms: f64,
}

impl GenState {
    /// Starts `job` in a slot whose first `cached_n` prompt tokens are already cached.
    pub fn new(job: GenJob, seq_no: u64, cached_n: usize, n_ctx: usize) -> GenState {
        let p = &job.params;
        let max_new = p
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(n_ctx.saturating_sub(job.prompt.len()));
        let mut sampler = Sampler::new(p.sampling.clone());
        for &t in &job.prompt {
            sampler.accept(t);
        }
        GenState {
            stops: StopMatcher::new(&p.stop),
            decoder: StreamDecoder::new(p.render_special),
            json: p.json.then(JsonState::new),
            sampler,
            text: String::with_capacity(4 * max_new.min(1 << 12)),
            emitted: 0,
            max_new,
            seq_no,
            next_prompt: cached_n,
            cached_n,
            pending: None,
            n_gen: 0,
            last_id: 0,
            queue_ms: job.arrived.elapsed().as_secs_f64() * 1e3,
            t_prompt_start: None,
            t_prompt_done: None,
            t_first: None,
            prompt_ms: 0.0,
            job,
        }
    }

    /// True while prompt tokens remain to be evaluated.
    pub fn in_prefill(&self) -> bool {
        self.next_prompt < self.job.prompt.len()
    }

    /// Notes that a prompt chunk is being evaluated now.
    pub fn prompt_chunk_started(&mut self, now: Instant) {
        self.t_prompt_start.get_or_insert(now);
    }

    /// True when the client has gone away.
    pub fn is_cancelled(&self) -> bool {
        self.job.events.is_closed()
    }

    /// Handles the logits of this sequence's last evaluated token: samples, emits and
    /// decides whether to continue.
    pub fn on_logits(
        &mut self,
        row: &[f32],
        tok: &Tokenizer,
        cx: &mut Scratch,
        metrics: &Metrics,
    ) -> Step {
        let now = Instant::now();
        if self.t_prompt_done.is_none() {
            self.t_prompt_done = Some(now);
            self.prompt_ms = (now - self.t_prompt_start.unwrap_or(now)).as_secs_f64() * 1e3;
        }
        if self.max_new == 0 {
            return Step::Finished(StopReason::Length);
        }
        let id = if self.json.is_some() {
            match self.sample_json(row, tok, cx) {
                Some(id) => id,
                None => return Step::Finished(StopReason::Eog),
            }
        } else {
            self.sampler.sample(row)
        };
        self.sampler.accept(id);
        self.emit(id, row, tok, cx, metrics, now)
    }

    /// True when this sequence may verify drafts: not JSON-constrained (its mask is not
    /// applied to verification rows) and at least two tokens left to generate.
    pub fn speculable(&self) -> bool {
        self.json.is_none() && self.remaining() >= 2
    }

    /// Tokens it may still generate.
    pub fn remaining(&self) -> usize {
        self.max_new.saturating_sub(self.n_gen)
    }

    /// Handles a verification: `rows` holds the logits after the pending token and after
    /// each drafted token. Keeps the agreeing prefix of `draft` and one token of the
    /// target's (see [`engine::speculative::verify`]), emitting them in order until the
    /// generation ends. Returns the number of drafted tokens accepted and what happened.
    #[allow(clippy::too_many_arguments)]
    pub fn on_verified(
        &mut self,
        rows: &[f32],
        n_vocab: usize,
        draft: &engine::Draft,
        vs: &mut engine::speculative::VerifyScratch,
        chosen: &mut Vec<u32>,
        tok: &Tokenizer,
        cx: &mut Scratch,
        metrics: &Metrics,
    ) -> (usize, Step) {
        let now = Instant::now();
        chosen.clear();
        let accepted =
            engine::speculative::verify(&mut self.sampler, rows, n_vocab, draft, vs, chosen);
        for (j, &id) in chosen.iter().enumerate() {
            let row = &rows[j * n_vocab..(j + 1) * n_vocab];
            if let Step::Finished(r) = self.emit(id, row, tok, cx, metrics, now) {
                return (accepted, Step::Finished(r));
            }
        }
        (accepted, Step::Continue)
    }

    /// Emits a chosen token (already recorded by the sampler) whose logits row is `row`:
    /// end-of-generation, log-probabilities, detokenizing, stop strings, the event, limits.
    fn emit(
        &mut self,
        id: u32,
        row: &[f32],
        tok: &Tokenizer,
        cx: &mut Scratch,
        metrics: &Metrics,
        now: Instant,
    ) -> Step {
        let top = self
            .job
            .params
            .logprobs
            .map(|k| top_logprobs(row, k.max(1), &mut cx.logprobs));
        self.n_gen += 1;
        self.last_id = id;
        if self.t_first.is_none() {
            self.t_first = Some(now);
            metrics.ttft.observe((now - self.job.arrived).as_secs_f64());
        }
        if !self.job.params.ignore_eos && tok.is_eog(id) {
            return Step::Finished(StopReason::Eog);
        }
        let logprob = top.map(|mut t| {
            // top[0] is the argmax: its raw logit minus its log-probability is log-sum-exp.
            let lse = row[t[0].0 as usize] - t[0].1;
            t.truncate(self.job.params.logprobs.unwrap_or(0));
            TokenLogprob {
                logprob: row[id as usize] - lse,
                top: t,
            }
        });
        let mut json_done = false;
        if let Some(j) = self.json.as_mut() {
            j.feed(tok.token_to_piece(id, false));
            json_done = j.is_complete();
        }
        self.decoder.push(tok, id, &mut self.text);
        let (end, stop) = match self.stops.check(&self.text, self.emitted) {
            StopCheck::Continue { safe } => (safe, false),
            StopCheck::Stop { at } => (at, true),
        };
        let sent = self.job.events.send(Event::Token(TokenOut {
            id,
            text: self.text[self.emitted..end].to_string(),
            logprob,
        }));
        self.emitted = end;
        if stop {
            self.text.truncate(end);
            return Step::Finished(StopReason::StopString);
        }
        if sent.is_err() {
            return Step::Finished(StopReason::Cancelled);
        }
        if json_done {
            return Step::Finished(StopReason::Eog);
        }
        if self.n_gen >= self.max_new {
            let by_request = self.job.params.max_tokens.is_some_and(|m| self.n_gen >= m);
            return Step::Finished(if by_request {
                StopReason::Length
            } else {
                StopReason::ContextFull
            });
        }
        self.pending = Some(id);
        Step::Continue
    }

    /// Samples among the tokens that keep the output valid JSON (`None`: no token does).
    fn sample_json(&mut self, row: &[f32], tok: &Tokenizer, cx: &mut Scratch) -> Option<u32> {
        let n = row.len();
        let state = self.json.as_ref()?;
        cx.order.clear();
        cx.order.extend(0..n as u32);
        let m = JSON_CANDIDATES.min(n);
        cx.order
            .select_nth_unstable_by(m - 1, |a, b| row[*b as usize].total_cmp(&row[*a as usize]));
        cx.mask.clear();
        cx.mask.resize(n, f32::NEG_INFINITY);
        let ok = |id: u32, cx_json: &mut JsonState| {
            if tok.is_eog(id) {
                return false;
            }
            let piece = tok.token_to_piece(id, false);
            if piece.is_empty() {
                return false;
            }
            cx_json.copy_from(state);
            cx_json.feed(piece)
        };
        let mut any = false;
        for k in 0..m {
            let id = cx.order[k];
            if ok(id, &mut cx.json) {
                cx.mask[id as usize] = row[id as usize];
                any = true;
            }
        }
        if !any {
            for k in m..n {
                let id = cx.order[k];
                if ok(id, &mut cx.json) {
                    cx.mask[id as usize] = row[id as usize];
                    any = true;
                }
            }
        }
        any.then(|| self.sampler.sample(&cx.mask))
    }

    /// Ends the generation: flushes held-back text (unless a stop string ended it) and
    /// reports the totals. Returns the event sent (or that would have been sent).
    pub fn finish(&mut self, reason: StopReason, metrics: &Metrics) -> Done {
        if reason != StopReason::StopString {
            self.decoder.finish(&mut self.text);
            if self.emitted < self.text.len() {
                let tail = self.text[self.emitted..].to_string();
                self.emitted = self.text.len();
                let _ = self.job.events.send(Event::Token(TokenOut {
                    id: self.last_id,
                    text: tail,
                    logprob: None,
                }));
            }
        }
        let now = Instant::now();
        let predicted_ms = self
            .t_prompt_done
            .map(|t| (now - t).as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        if let Some(first) = self.t_first {
            if self.n_gen > 1 {
                metrics
                    .tpot
                    .observe((now - first).as_secs_f64() / (self.n_gen - 1) as f64);
            }
        }
        metrics.e2e.observe((now - self.job.arrived).as_secs_f64());
        let done = Done {
            reason,
            prompt_n: self.job.prompt.len(),
            cached_n: self.cached_n,
            queue_ms: self.queue_ms,
            timings: Timings {
                prompt_n: self.job.prompt.len() - self.cached_n,
                prompt_ms: self.prompt_ms,
                predicted_n: self.n_gen,
                predicted_ms,
            },
        };
        let _ = self.job.events.send(Event::Done(done.clone()));
        done
    }
}
