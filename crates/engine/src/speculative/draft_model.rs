//! A draft model: a smaller model with the target's vocabulary (`--model-draft`) proposes
//! tokens by decoding ahead on its own context.
//!
//! The drafter keeps one slot per target sequence and remembers which tokens its cache
//! holds, so each step only evaluates what is new since the last one (the accepted drafts
//! are usually already there). Several sequences draft together: one batched forward pass
//! per drafted position. Drafting stops early when the drafter's confidence in its next
//! token falls below `p_min`. Greedy requests get deterministic drafts; sampled requests get
//! tokens drawn from the drafter's own distribution `q` under the request's sampling chain
//! (penalties aside), and `q` is reported so that verification can apply the rejection rule.
//!
//! A draft model with recurrent layers cannot truncate its state, so each slot checkpoints
//! after catching up with the sequence and returns to that checkpoint after drafting.

use std::sync::Arc;

use engine_models::{Batch, Context, ContextOptions};

use super::{check_vocab_compatible, Draft, DraftRequest, Drafter, DrafterKind};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::{argmax, Sampler, SamplingParams};

/// One target sequence's state in the drafter.
#[derive(Default)]
struct Slot {
    /// Tokens whose keys and values (or state) the draft context holds, in order.
    cached: Vec<u32>,
    /// The drafter's sampler for sampled requests (seeded from the request's seed).
    sampler: Option<Sampler>,
    /// Still drafting in the current call.
    active: bool,
    /// Row of this slot's logits in the last forward pass.
    row: usize,
    /// Tokens this call may still propose.
    left: usize,
    /// A checkpoint was taken this call (recurrent draft models).
    checkpointed: bool,
    /// Length of the history the slot last drafted for (a shorter common prefix with the
    /// next history means a new sequence).
    hist_len: usize,
}

/// Drafts with a second, smaller model.
pub struct ModelDrafter {
    model: Arc<Model>,
    ctx: Context,
    batch: Batch,
    logits: Vec<f32>,
    slots: Vec<Slot>,
    p_min: f32,
    cost: f64,
    dist: Vec<(u32, f32)>,
}

impl ModelDrafter {
    /// A drafter running `draft` for up to `n_seq` sequences of `n_ctx` tokens, checking
    /// that it can draft for `target` (the same vocabulary). `p_min` is `--draft-p-min`.
    pub fn new(
        draft: Arc<Model>,
        target: &Model,
        n_seq: usize,
        n_ctx: usize,
        p_min: f32,
    ) -> Result<ModelDrafter> {
        check_vocab_compatible(target.tokenizer(), draft.tokenizer())?;
        let opts = ContextOptions {
            n_ctx,
            n_seq,
            n_batch: draft.context_options().n_batch.max(n_seq),
            kv_type: draft.context_options().kv_type,
        };
        let ctx = draft.inner().new_context(opts)?;
        let cost = draft.info().weight_bytes as f64 / target.info().weight_bytes.max(1) as f64;
        Ok(ModelDrafter {
            ctx,
            batch: Batch::with_capacity(n_ctx),
            logits: Vec::new(),
            slots: (0..n_seq).map(|_| Slot::default()).collect(),
            p_min,
            cost,
            dist: Vec::new(),
            model: draft,
        })
    }

    /// The draft model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Brings slot `s`'s cache to `history` minus its last token and queues that last
    /// token (and anything else missing) in the batch, its logits requested.
    fn catch_up(&mut self, s: usize, history: &[u32]) -> Result<usize> {
        let slot = &mut self.slots[s];
        let mut lcp = slot
            .cached
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count();
        // the last token is always evaluated: its logits start the draft
        lcp = lcp.min(history.len() - 1);
        if lcp < self.ctx.seq_len(s) {
            if self.ctx.is_recurrent() {
                self.ctx.clear_seq(s);
                lcp = 0;
            } else {
                self.ctx.truncate_seq(s, lcp)?;
            }
        }
        slot.cached.truncate(lcp);
        slot.cached.extend_from_slice(&history[lcp..]);
        self.batch
            .push_seq(&history[lcp..], lcp as u32, s as u32, false);
        Ok(history.len() - lcp)
    }
}

/// Picks the next draft token from a logits row: the argmax (greedy, `sampler` `None`) or a
/// draw from the sampler's distribution, which is then returned as `q`. `None` when the
/// drafter's most likely token is less likely than `p_min`.
fn pick(
    sampler: Option<&mut Sampler>,
    dist: &mut Vec<(u32, f32)>,
    p_min: f32,
    row: &[f32],
) -> Option<(u32, Vec<(u32, f32)>)> {
    let Some(sampler) = sampler else {
        let t = argmax(row);
        // probability of the argmax under the plain softmax
        let m = row[t as usize];
        let z: f32 = row.iter().map(|&l| (l - m).exp()).sum();
        return (1.0 / z >= p_min).then_some((t, Vec::new()));
    };
    sampler.distribution(row, dist);
    if dist.first().is_none_or(|d| d.1 < p_min) {
        return None;
    }
    let t = sampler.draw_from(dist)?;
    Some((t, dist.clone()))
}

/// The drafter's sampling chain for a sampled request: the request's truncation and
/// temperature, no penalties, a seed derived from the request's.
fn draft_sampling(p: &SamplingParams) -> SamplingParams {
    SamplingParams {
        repeat_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: p.seed.map(|s| s ^ 0x5EED_D4AF_7000_0001),
        ..p.clone()
    }
}

impl Drafter for ModelDrafter {
    fn kind(&self) -> DrafterKind {
        DrafterKind::DraftModel
    }

    fn draft(&mut self, req: &DraftRequest<'_>, out: &mut Draft) -> Result<()> {
        let mut r = self.draft_many(std::slice::from_ref(req), std::slice::from_mut(out));
        r.pop().unwrap_or(Ok(()))
    }

    fn draft_many(&mut self, reqs: &[DraftRequest<'_>], outs: &mut [Draft]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = reqs.iter().map(|_| Ok(())).collect();
        let n_ctx = self.ctx.n_ctx();
        let n_vocab = self.model.info().n_vocab;
        self.batch.clear();
        for s in &mut self.slots {
            s.active = false;
        }
        for (i, r) in reqs.iter().enumerate() {
            outs[i].clear();
            let s = r.seq;
            if s >= self.slots.len() {
                results[i] = Err(Error::Options(format!("draft slot {s} does not exist")));
                continue;
            }
            let room = n_ctx.saturating_sub(r.history.len());
            let max = r.max.min(room);
            if max == 0 || r.history.is_empty() {
                continue;
            }
            {
                let slot = &mut self.slots[s];
                let lcp = slot
                    .cached
                    .iter()
                    .zip(r.history)
                    .take_while(|(a, b)| a == b)
                    .count();
                let new_sequence = lcp < slot.hist_len.min(r.history.len()) || lcp == 0;
                slot.hist_len = r.history.len();
                if r.sampling.temperature > 0.0 {
                    let want = draft_sampling(r.sampling);
                    if new_sequence || slot.sampler.as_ref().is_none_or(|x| *x.params() != want) {
                        slot.sampler = Some(Sampler::new(want));
                    }
                } else {
                    slot.sampler = None;
                }
                slot.checkpointed = false;
            }
            match self.catch_up(s, r.history) {
                Ok(rows) => outs[i].caught_up = rows,
                Err(e) => {
                    results[i] = Err(e);
                    self.ctx.clear_seq(s);
                    self.slots[s].cached.clear();
                    continue;
                }
            }
            let slot = &mut self.slots[s];
            slot.active = true;
            slot.left = max;
            slot.row = self.batch.n_outputs() - 1;
        }
        let recurrent = self.ctx.is_recurrent();
        let mut first = true;
        while !self.batch.is_empty() {
            if let Err(e) = self
                .model
                .inner()
                .forward(&mut self.ctx, &self.batch, &mut self.logits)
            {
                // the draft context is in an unknown state: start these slots afresh
                let msg = e.to_string();
                for (i, r) in reqs.iter().enumerate() {
                    if r.seq < self.slots.len() && self.slots[r.seq].active {
                        self.ctx.clear_seq(r.seq);
                        self.slots[r.seq].cached.clear();
                        self.slots[r.seq].active = false;
                        outs[i].clear();
                        results[i] = Err(Error::Options(format!("draft model failed: {msg}")));
                    }
                }
                break;
            }
            if first && recurrent {
                for r in reqs {
                    if r.seq < self.slots.len() && self.slots[r.seq].active {
                        self.slots[r.seq].checkpointed = self.ctx.checkpoint_seq(r.seq).is_ok();
                    }
                }
            }
            first = false;
            self.batch.clear();
            for (i, r) in reqs.iter().enumerate() {
                let s = r.seq;
                if s >= self.slots.len() || !self.slots[s].active {
                    continue;
                }
                let row_at = self.slots[s].row * n_vocab;
                let row = &self.logits[row_at..row_at + n_vocab];
                let greedy = r.sampling.temperature <= 0.0;
                let sampler = if greedy {
                    None
                } else {
                    self.slots[s].sampler.as_mut()
                };
                match pick(sampler, &mut self.dist, self.p_min, row) {
                    None => self.slots[s].active = false,
                    Some((t, q)) => {
                        outs[i].tokens.push(t);
                        if !greedy {
                            outs[i].probs.push(q);
                        }
                        let slot = &mut self.slots[s];
                        slot.left -= 1;
                        if slot.left == 0 {
                            slot.active = false;
                        } else {
                            let pos = slot.cached.len();
                            slot.cached.push(t);
                            slot.row = self.batch.n_outputs();
                            self.batch.push(t, pos as u32, s as u32, true);
                        }
                    }
                }
            }
        }
        if recurrent {
            for r in reqs {
                let s = r.seq;
                if s < self.slots.len() && self.slots[s].checkpointed {
                    self.slots[s].checkpointed = false;
                    match self.ctx.restore_seq(s) {
                        Ok(len) => self.slots[s].cached.truncate(len),
                        Err(_) => {
                            self.ctx.clear_seq(s);
                            self.slots[s].cached.clear();
                        }
                    }
                }
            }
        }
        results
    }

    fn release(&mut self, _seq: usize) {
        // the cache stays: a follow-up request (a chat's next turn) may share its prefix
    }

    fn relative_cost(&self) -> f64 {
        self.cost
    }
}
