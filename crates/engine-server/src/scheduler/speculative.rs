//! Speculative decoding inside the continuous-batching step.
//!
//! Before each step, every decoding sequence that may speculate (not JSON-constrained, at
//! least two tokens left) asks the drafter for up to `k` tokens after its pending token,
//! all sequences in one call (a draft model batches them; the remote drafter asks in
//! parallel). A sequence with a draft puts its pending token and the draft into the step's
//! batch as verification rows ([`engine::Batch::push_verify`]): one row per token, each
//! computed with a one-token step's kernels, so its logits equal plain decoding's bit for
//! bit whatever else is in the batch. After the pass, [`engine::speculative::verify`] keeps
//! the agreeing prefix plus one token of the target's; the rejected rows are rolled back
//! (the KV cache truncated; recurrent state restored from a checkpoint and the kept tokens
//! evaluated again, batched across sequences).
//!
//! A failing drafter (a remote one that vanished) only means no drafts this step: the
//! sequences decode plainly and the fallback is counted. `k` adapts per sequence to its
//! acceptance ([`AdaptiveLength`]) and to the costs measured on this machine, shared by
//! all sequences ([`CostModel`]: step times against rows, from steps without prompt
//! chunks, and drafting time per drafted token).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine::speculative::{AdaptiveLength, CostModel, VerifyScratch};
use engine::{
    Batch, Context, Draft, DraftRequest, Drafter, DrafterKind, SamplingParams, SpecParams,
};

use crate::metrics::Metrics;

/// Prometheus counters of speculative decoding, per drafter kind.
#[derive(Default)]
pub struct SpecMetrics {
    drafted: [AtomicU64; 3],
    accepted: [AtomicU64; 3],
    steps: [AtomicU64; 3],
    fallbacks: [AtomicU64; 3],
}

fn idx(kind: DrafterKind) -> usize {
    DrafterKind::ALL
        .iter()
        .position(|&k| k == kind)
        .expect("listed")
}

impl SpecMetrics {
    /// Counts one verification of `drafted` tokens, `accepted` kept.
    pub fn verified(&self, kind: DrafterKind, drafted: usize, accepted: usize) {
        let i = idx(kind);
        self.drafted[i].fetch_add(drafted as u64, Ordering::Relaxed);
        self.accepted[i].fetch_add(accepted as u64, Ordering::Relaxed);
        self.steps[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts sequences that decoded plainly because the drafter failed.
    pub fn fallback(&self, kind: DrafterKind, n: usize) {
        self.fallbacks[idx(kind)].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds another model's counters to these.
    pub fn absorb(&self, other: &SpecMetrics) {
        let add = |a: &[AtomicU64; 3], b: &[AtomicU64; 3]| {
            for (x, y) in a.iter().zip(b) {
                x.fetch_add(y.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        };
        add(&self.drafted, &other.drafted);
        add(&self.accepted, &other.accepted);
        add(&self.steps, &other.steps);
        add(&self.fallbacks, &other.fallbacks);
    }

    /// Totals for one kind: (drafted, accepted, verification steps, fallbacks).
    pub fn totals(&self, kind: DrafterKind) -> (u64, u64, u64, u64) {
        let i = idx(kind);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.drafted[i]),
            g(&self.accepted[i]),
            g(&self.steps[i]),
            g(&self.fallbacks[i]),
        )
    }

    /// The exposition lines (appended to `/metrics`).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let series: [(&str, &str, &str, &[AtomicU64; 3]); 4] = [
            (
                "engine:spec_decode_num_draft_tokens_total",
                "counter",
                "Drafted tokens verified by the target model, by drafter kind.",
                &self.drafted,
            ),
            (
                "engine:spec_decode_num_accepted_tokens_total",
                "counter",
                "Drafted tokens the target model accepted, by drafter kind.",
                &self.accepted,
            ),
            (
                "engine:spec_decode_num_verify_steps_total",
                "counter",
                "Verification passes (a sequence's draft scored in one step), by drafter kind.",
                &self.steps,
            ),
            (
                "engine:spec_decode_num_fallbacks_total",
                "counter",
                "Sequence steps decoded without a draft because the drafter failed (a remote drafter unreachable, too slow or erroring), by drafter kind.",
                &self.fallbacks,
            ),
        ];
        for (name, kind, help, vals) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for k in DrafterKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{drafter=\"{}\"}} {}",
                    k.name(),
                    vals[idx(k)].load(Ordering::Relaxed)
                );
            }
        }
        let name = "engine:spec_decode_draft_acceptance_rate";
        let _ = writeln!(
            out,
            "# HELP {name} Accepted over drafted tokens since start, by drafter kind (0 before any draft)."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for k in DrafterKind::ALL {
            let (d, a, _, _) = self.totals(k);
            let rate = if d == 0 { 0.0 } else { a as f64 / d as f64 };
            let _ = writeln!(out, "{name}{{drafter=\"{}\"}} {rate}", k.name());
        }
    }
}

/// One sequence's request for a draft this step.
pub struct Plan<'a> {
    /// Its slot.
    pub slot: usize,
    /// Its tokens so far, the pending (chosen, not yet evaluated) token last.
    pub history: &'a [u32],
    /// Tokens it may still generate, the pending one included.
    pub remaining: usize,
    /// Its sampling settings.
    pub sampling: &'a SamplingParams,
}

/// The scheduler's speculative state.
pub struct Speculation {
    drafter: Box<dyn Drafter>,
    kind: DrafterKind,
    params: SpecParams,
    ctl: Vec<AdaptiveLength>,
    /// Whether the drafter has caught up with each slot's sequence ([`Drafter::warm_up`]).
    warm: Vec<bool>,
    cost: CostModel,
    drafts: Vec<Draft>,
    scratch: VerifyScratch,
    chosen: Vec<u32>,
    redo: Batch,
    redo_logits: Vec<f32>,
    metrics: Arc<Metrics>,
}

impl Speculation {
    /// Speculation with `drafter` for `n_seq` slots.
    pub fn new(
        drafter: Box<dyn Drafter>,
        params: SpecParams,
        n_seq: usize,
        metrics: Arc<Metrics>,
    ) -> Speculation {
        Speculation {
            kind: drafter.kind(),
            ctl: (0..n_seq).map(|_| AdaptiveLength::new(&params)).collect(),
            warm: vec![false; n_seq],
            cost: CostModel::new(drafter.relative_cost()),
            drafts: (0..n_seq).map(|_| Draft::default()).collect(),
            drafter,
            params,
            scratch: VerifyScratch::default(),
            chosen: Vec::new(),
            redo: Batch::default(),
            redo_logits: Vec::new(),
            metrics,
        }
    }

    /// The drafter's kind.
    pub fn kind(&self) -> DrafterKind {
        self.kind
    }

    /// Drafts for this step's sequences (every other slot's draft is cleared). Token ids
    /// outside `n_vocab` end a draft; drafts shorter than `--draft-min` are dropped.
    pub fn draft(&mut self, plans: &[Plan<'_>], n_vocab: usize) {
        for d in &mut self.drafts {
            d.clear();
        }
        let mut reqs = Vec::with_capacity(plans.len());
        for p in plans {
            let k = self.ctl[p.slot]
                .next(&self.cost)
                .min(p.remaining.saturating_sub(1))
                .min(self.params.draft_max);
            if k >= self.params.draft_min.max(1) {
                reqs.push(DraftRequest {
                    seq: p.slot,
                    history: p.history,
                    max: k,
                    sampling: p.sampling,
                });
            }
        }
        if reqs.is_empty() {
            return;
        }
        for r in &reqs {
            if !self.warm[r.seq] {
                // untimed catch-up with a new sequence; a failure shows again below
                let _ = self.drafter.warm_up(r);
                self.warm[r.seq] = true;
            }
        }
        let mut outs: Vec<Draft> = reqs.iter().map(|_| Draft::default()).collect();
        let t = std::time::Instant::now();
        let results = self.drafter.draft_many(&reqs, &mut outs);
        let drafted: usize = outs.iter().map(Draft::len).sum();
        if outs.iter().all(Draft::steady) {
            self.cost.observe_draft(drafted, t.elapsed().as_secs_f64());
        }
        let mut failed = 0;
        for ((r, mut d), res) in reqs.iter().zip(outs).zip(results) {
            if res.is_err() {
                failed += 1;
                continue;
            }
            let valid = d
                .tokens
                .iter()
                .take(r.max)
                .take_while(|&&t| (t as usize) < n_vocab)
                .count();
            d.truncate(valid);
            if d.len() >= self.params.draft_min.max(1) {
                self.drafts[r.seq] = d;
            }
        }
        if failed > 0 {
            self.metrics.spec.fallback(self.kind, failed);
        }
    }

    /// The draft slot `slot` verifies this step (empty: it decodes plainly).
    pub fn draft_of(&self, slot: usize) -> &Draft {
        &self.drafts[slot]
    }

    /// Slot `slot`'s draft with the verification scratch, borrowed together.
    pub fn parts(&mut self, slot: usize) -> (&Draft, &mut VerifyScratch, &mut Vec<u32>) {
        (&self.drafts[slot], &mut self.scratch, &mut self.chosen)
    }

    /// Records slot `slot`'s verification: `accepted` of its draft's tokens kept.
    pub fn verified(&mut self, slot: usize, accepted: usize) {
        let k = self.drafts[slot].len();
        self.ctl[slot].update(k, accepted);
        self.metrics.spec.verified(self.kind, k, accepted);
    }

    /// Whether `slot` verifies a draft this step; if so, takes the checkpoint its
    /// rollback may need (models with recurrent layers only: attention caches are simply
    /// truncated). A failed checkpoint drops the draft: the slot decodes plainly.
    pub fn prepare_verify(&mut self, ctx: &mut Context, slot: usize) -> bool {
        if self.drafts[slot].is_empty() {
            return false;
        }
        if ctx.is_recurrent() && ctx.checkpoint_seq(slot).is_err() {
            self.drafts[slot].clear();
            return false;
        }
        true
    }

    /// Records a forward pass of decoding rows only (one-token steps and verifications of
    /// `rows` rows in all) that took `secs`: the cost model's data.
    pub fn observe_pass(&mut self, rows: usize, secs: f64) {
        let plain = self.drafts.iter().all(Draft::is_empty);
        self.cost.observe_pass(rows, secs, plain);
    }

    /// The longest draft asked for (sizes the step's batch).
    pub fn draft_max(&self) -> usize {
        self.params.draft_max
    }

    /// Rewinds `slot` after its verification: of the rows evaluated from `start`, the
    /// first `keep` (the pending token and the accepted drafts, `tokens`) stay. Recurrent
    /// state is restored from the checkpoint and `tokens` are queued for evaluation again
    /// (with one-token arithmetic) in [`Speculation::redo`]'s pass.
    pub fn rollback(
        &mut self,
        ctx: &mut Context,
        slot: usize,
        start: usize,
        tokens: &[u32],
    ) -> Result<(), engine::Error> {
        if !ctx.is_recurrent() {
            ctx.truncate_seq(slot, start + tokens.len())?;
            return Ok(());
        }
        ctx.restore_seq(slot)?;
        for (i, &t) in tokens.iter().enumerate() {
            self.redo
                .push_single(t, (start + i) as u32, slot as u32, false);
        }
        Ok(())
    }

    /// Evaluates the tokens [`Speculation::rollback`] queued (one pass for all slots).
    pub fn redo(
        &mut self,
        model: &dyn engine_models::Model,
        ctx: &mut Context,
    ) -> Result<(), engine::Error> {
        if self.redo.is_empty() {
            return Ok(());
        }
        let r = model.forward(ctx, &self.redo, &mut self.redo_logits);
        self.redo.clear();
        r.map_err(engine::Error::from)
    }

    /// Slot `slot` got a new request: forget its acceptance history and tell the drafter.
    pub fn reset(&mut self, slot: usize) {
        self.ctl[slot] = AdaptiveLength::new(&self.params);
        self.warm[slot] = false;
        self.drafts[slot].clear();
        self.drafter.release(slot);
    }
}
