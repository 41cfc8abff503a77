//! Speculative decoding: a drafter proposes the next tokens of a sequence, the target model
//! scores all of them in one forward pass, and the longest prefix the target agrees with is
//! kept, plus one token of the target's own.
//!
//! * Verification ([`verify`]): greedy requests accept a drafted token when it is the
//!   target's argmax; sampled requests use speculative sampling's rejection rule (accept `x`
//!   with probability `min(1, p(x)/q(x))`, on rejection draw from the normalised residual
//!   `max(0, p - q)`), so the output distribution is exactly the target's. A drafter that
//!   picks its tokens deterministically (n-gram lookup, greedy drafts) has `q` one-hot.
//! * The verification rows use [`Batch::push_verify`](engine_models::Batch::push_verify),
//!   so each row's logits are bit-identical to plain one-token decoding: greedy speculative
//!   output equals plain greedy output token for token.
//! * Rejected tokens are rolled back ([`rollback`]): attention caches are truncated;
//!   recurrent (Mamba) state is restored from a checkpoint taken before verification and the
//!   accepted tokens are evaluated again.
//! * The draft length adapts to the observed acceptance rate ([`AdaptiveLength`]).
//!
//! Drafters ([`Drafter`]): [`ngram::NgramDrafter`] (prompt lookup, no second model),
//! [`draft_model::ModelDrafter`] (a small model with the same vocabulary, see
//! [`check_vocab_compatible`]), and in `engine-server` a drafter on another node.

pub mod draft_model;
pub mod ngram;

use engine_models::{Batch, Context};
use engine_tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::sampling::{Sampler, SamplingParams};

/// Which kind of drafter proposed the tokens (a label of the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DrafterKind {
    /// A draft model in the same process.
    DraftModel,
    /// Prompt lookup: n-grams of the sequence itself.
    Ngram,
    /// A drafter engine on another node.
    Remote,
}

impl DrafterKind {
    /// All kinds, in the order metrics list them.
    pub const ALL: [DrafterKind; 3] = [
        DrafterKind::DraftModel,
        DrafterKind::Ngram,
        DrafterKind::Remote,
    ];

    /// The name used in flags and metric labels: `draft`, `ngram`, `remote`.
    pub fn name(self) -> &'static str {
        match self {
            DrafterKind::DraftModel => "draft",
            DrafterKind::Ngram => "ngram",
            DrafterKind::Remote => "remote",
        }
    }
}

/// Drafted tokens, with the distributions they were drawn from when the drafter sampled.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    /// The proposed tokens, in order.
    pub tokens: Vec<u32>,
    /// For each token, the drafter's distribution `q` it was drawn from (`(token,
    /// probability)` pairs); empty when the tokens were chosen deterministically (then `q`
    /// is one-hot on each token).
    pub probs: Vec<Vec<(u32, f32)>>,
}

impl Draft {
    /// Removes every token (keeps the allocations).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.probs.clear();
    }

    /// Number of drafted tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when nothing was drafted.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Keeps the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.probs.truncate(n);
    }
}

/// What a drafter is asked for.
#[derive(Clone, Copy, Debug)]
pub struct DraftRequest<'a> {
    /// The sequence's slot (drafters that keep state per sequence key it by this).
    pub seq: usize,
    /// Every token of the sequence so far, prompt and generated, the last one included
    /// (it has been chosen but not yet evaluated by the target).
    pub history: &'a [u32],
    /// Most tokens to propose.
    pub max: usize,
    /// The request's sampling settings: a drafter that samples uses them to shape its
    /// distribution `q` (penalties aside); greedy settings ask for deterministic drafts.
    pub sampling: &'a SamplingParams,
}

/// Proposes tokens for the target model to verify.
pub trait Drafter: Send {
    /// The kind, for statistics and metrics.
    fn kind(&self) -> DrafterKind;

    /// Proposes up to `req.max` tokens to follow `req.history` into `out` (cleared first).
    /// Proposing nothing is always allowed (the step then decodes plainly). An error means
    /// the drafter is unusable for this step; the caller falls back to plain decoding.
    fn draft(&mut self, req: &DraftRequest<'_>, out: &mut Draft) -> Result<()>;

    /// Drafts for several sequences at once (a drafter that can batch them overrides this).
    /// `outs[i]` receives the draft of `reqs[i]`; per-request errors are returned in order.
    fn draft_many(&mut self, reqs: &[DraftRequest<'_>], outs: &mut [Draft]) -> Vec<Result<()>> {
        reqs.iter()
            .zip(outs.iter_mut())
            .map(|(r, o)| self.draft(r, o))
            .collect()
    }

    /// The sequence in slot `seq` ended: forget what is kept for it.
    fn release(&mut self, _seq: usize) {}

    /// Cost of drafting one token relative to one decoding step of the target (used to
    /// choose the draft length): 0 for lookup drafters, about the ratio of weight sizes for
    /// a draft model.
    fn relative_cost(&self) -> f64 {
        0.0
    }
}

/// Speculative decoding settings (llama-server's names).
#[derive(Clone, Debug, PartialEq)]
pub struct SpecParams {
    /// Most tokens drafted per step (`--draft-max`).
    pub draft_max: usize,
    /// Fewest drafted tokens worth verifying; shorter drafts are dropped and the step
    /// decodes plainly (`--draft-min`).
    pub draft_min: usize,
    /// A draft model stops drafting when its most likely token is less likely than this
    /// (`--draft-p-min`).
    pub p_min: f32,
    /// Adapt the draft length to the acceptance rate (otherwise always `draft_max`).
    pub adaptive: bool,
}

impl Default for SpecParams {
    fn default() -> Self {
        SpecParams {
            draft_max: 16,
            draft_min: 0,
            p_min: 0.75,
            adaptive: true,
        }
    }
}

impl SpecParams {
    /// Checks ranges, naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.draft_max == 0 || self.draft_max > 64 {
            return Err(Error::Options(format!(
                "--draft-max must be between 1 and 64, got {}",
                self.draft_max
            )));
        }
        if self.draft_min > self.draft_max {
            return Err(Error::Options(format!(
                "--draft-min ({}) must not exceed --draft-max ({})",
                self.draft_min, self.draft_max
            )));
        }
        if !(0.0..=1.0).contains(&self.p_min) {
            return Err(Error::Options(format!(
                "--draft-p-min must be within [0, 1], got {}",
                self.p_min
            )));
        }
        Ok(())
    }
}

/// Counts of one generation's (or one drafter's) speculation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification passes run.
    pub steps: usize,
    /// Tokens drafted and verified.
    pub drafted: usize,
    /// Drafted tokens the target accepted.
    pub accepted: usize,
    /// Steps that decoded plainly because the drafter failed (remote drafter gone).
    pub fallbacks: usize,
}

impl SpecStats {
    /// Accepted over drafted (0 when nothing was drafted).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Chooses the draft length from the acceptance rate seen so far.
///
/// With a per-token acceptance rate `a`, a draft of `k` tokens yields on average
/// `E(k) = (1 - a^(k+1)) / (1 - a)` tokens per verification pass, and costs
/// `1 + k * (c_verify + c_draft)` one-token steps of the target, where `c_verify` is the
/// marginal cost of one more row in the verification pass and `c_draft` the drafter's cost
/// per token. The length maximising `E(k) / cost(k)` within `[draft_min, draft_max]` is
/// used; when no length pays (the best `E(k) / cost(k)` is below 1, i.e. `a` is below the
/// per-token cost), the step decodes plainly, and one short draft every
/// [`PROBE_EVERY`] steps keeps measuring `a`. `a` is estimated from recent steps (counts of accepted tokens and of rejections,
/// forgotten exponentially per drafted token, with a uniform prior), so it follows the text: high while a quote
/// is repeated, low in free writing. The choice depends only on the acceptance history,
/// so a seeded generation is reproducible.
#[derive(Clone, Debug)]
pub struct AdaptiveLength {
    min: usize,
    max: usize,
    adaptive: bool,
    c_verify: f64,
    c_draft: f64,
    accepted: f64,
    rejected: f64,
    idle: usize,
}

/// While speculation does not pay, one step in this many still drafts (the shortest
/// allowed draft) to notice when the text becomes predictable again.
pub const PROBE_EVERY: usize = 8;

/// Marginal cost of one more verified row, relative to a one-token decoding step, measured
/// on the 2-core CPU reference machine with Gemma 3 270M (a 9-row verification pass costs
/// about 2.2 one-token steps; see docs/speculative.md).
pub const VERIFY_ROW_COST: f64 = 0.15;

/// How much of the acceptance evidence survives each drafted token (the last ~30 drafted
/// tokens count).
const FORGET: f64 = 0.97;

impl AdaptiveLength {
    /// A controller for `params`, a drafter costing `c_draft` target steps per token.
    pub fn new(params: &SpecParams, c_draft: f64) -> AdaptiveLength {
        AdaptiveLength {
            min: params.draft_min,
            max: params.draft_max.max(1),
            adaptive: params.adaptive,
            c_verify: VERIFY_ROW_COST,
            c_draft: c_draft.max(0.0),
            // optimistic start: drafts are tried at a good length before evidence arrives
            accepted: 3.0,
            rejected: 1.0,
            idle: 0,
        }
    }

    /// The estimated per-token acceptance rate.
    pub fn rate(&self) -> f64 {
        (self.accepted + 1.0) / (self.accepted + self.rejected + 2.0)
    }

    /// The draft length to ask for next (0: decode this step plainly).
    pub fn next(&mut self) -> usize {
        if !self.adaptive {
            return self.max;
        }
        let (k, gain) = self.best();
        if gain > 1.0 {
            self.idle = 0;
            return k;
        }
        self.idle += 1;
        if self.idle >= PROBE_EVERY {
            self.idle = 0;
            self.min.max(1)
        } else {
            0
        }
    }

    /// The best length and its expected tokens per unit of cost.
    fn best(&self) -> (usize, f64) {
        let a = self.rate().min(0.999);
        let per_token = self.c_verify + self.c_draft;
        let mut best = (self.min.max(1), f64::MIN);
        let mut ak = a; // a^(k+1) for k = 0
        for k in 1..=self.max {
            ak *= a;
            let gain = (1.0 - ak) / (1.0 - a) / (1.0 + k as f64 * per_token);
            if k >= self.min && gain > best.1 {
                best = (k, gain);
            }
        }
        best
    }

    /// Records a verification: `accepted` of `drafted` tokens kept.
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        let keep = FORGET.powi(drafted as i32);
        self.accepted = self.accepted * keep + accepted as f64;
        self.rejected = self.rejected * keep + if accepted < drafted { 1.0 } else { 0.0 };
    }
}

/// Scratch for [`verify`], kept between steps.
#[derive(Default)]
pub struct VerifyScratch {
    p: Vec<(u32, f32)>,
    q_by_id: Vec<(u32, f32)>,
    residual: Vec<(u32, f32)>,
}

/// Verifies `draft` against the target's logits `rows`: `draft.len() + 1` rows of `n_vocab`
/// values, row `i` being the target's logits after the pending token and the first `i`
/// drafted tokens. Pushes the tokens the step produces to `out`: the accepted drafted
/// tokens, then one token of the target's (the correction after a rejection, or a bonus
/// token when every draft was accepted). Each is recorded in the sampler's history as it
/// is chosen, so penalties see exactly what plain decoding would. Returns the number of
/// drafted tokens accepted.
pub fn verify(
    sampler: &mut Sampler,
    rows: &[f32],
    n_vocab: usize,
    draft: &Draft,
    scratch: &mut VerifyScratch,
    out: &mut Vec<u32>,
) -> usize {
    let k = draft.len();
    debug_assert!(rows.len() >= (k + 1) * n_vocab);
    let row = |i: usize| &rows[i * n_vocab..(i + 1) * n_vocab];
    if sampler.is_greedy() {
        for i in 0..=k {
            let t = sampler.sample(row(i));
            sampler.accept(t);
            out.push(t);
            if i == k || t != draft.tokens[i] {
                return i;
            }
        }
        unreachable!("the loop returns at i == k");
    }
    for i in 0..k {
        let x = draft.tokens[i];
        sampler.distribution(row(i), &mut scratch.p);
        let px = prob_of(&scratch.p, x);
        let q = draft.probs.get(i).filter(|q| !q.is_empty());
        let qx = q.map_or(1.0, |q| prob_of(q, x));
        // accept with probability min(1, p/q)
        let u = sampler.uniform();
        if qx > 0.0 && u * qx < px {
            sampler.accept(x);
            out.push(x);
            continue;
        }
        // rejected: draw from the residual max(0, p - q), normalised
        scratch.residual.clear();
        match q {
            None => scratch.residual.extend(
                scratch
                    .p
                    .iter()
                    .map(|&(t, pt)| (t, if t == x { 0.0 } else { pt })),
            ),
            Some(q) => {
                scratch.q_by_id.clear();
                scratch.q_by_id.extend_from_slice(q);
                scratch.q_by_id.sort_unstable_by_key(|e| e.0);
                let q_by_id = &scratch.q_by_id;
                scratch.residual.extend(scratch.p.iter().map(|&(t, pt)| {
                    let qt = q_by_id
                        .binary_search_by_key(&t, |e| e.0)
                        .map_or(0.0, |j| q_by_id[j].1);
                    (t, (pt - qt).max(0.0))
                }));
            }
        }
        let t = sampler
            .draw_from(&scratch.residual)
            .or_else(|| sampler.draw_from(&scratch.p))
            .unwrap_or(x);
        sampler.accept(t);
        out.push(t);
        return i;
    }
    let t = sampler.sample(row(k));
    sampler.accept(t);
    out.push(t);
    k
}

fn prob_of(dist: &[(u32, f32)], t: u32) -> f32 {
    dist.iter().find(|e| e.0 == t).map_or(0.0, |e| e.1)
}

/// Rewinds sequence `seq` after a verification pass that evaluated `evaluated` (the pending
/// token and the drafts, from position `start`) of which the first `keep` are kept. With
/// recurrent layers the state is restored from the checkpoint taken at `start` and the kept
/// tokens are evaluated again (with one-token arithmetic, so the state equals plain
/// decoding's); attention caches are simply truncated.
pub fn rollback(
    model: &dyn engine_models::Model,
    ctx: &mut Context,
    batch: &mut Batch,
    seq: usize,
    start: usize,
    evaluated: &[u32],
    keep: usize,
    logits: &mut Vec<f32>,
) -> Result<()> {
    if keep >= evaluated.len() {
        return Ok(());
    }
    if !ctx.is_recurrent() {
        ctx.truncate_seq(seq, start + keep)?;
        return Ok(());
    }
    let at = ctx.restore_seq(seq)?;
    debug_assert_eq!(at, start);
    if keep > 0 {
        batch.clear();
        for (i, &t) in evaluated[..keep].iter().enumerate() {
            batch.push_single(t, (start + i) as u32, seq as u32, false);
        }
        model.forward(ctx, batch, logits)?;
    }
    Ok(())
}

/// Most tokens the target and draft vocabularies may differ by (llama.cpp's
/// `SPEC_VOCAB_MAX_SIZE_DIFFERENCE`): extra tokens past the common range are never drafted
/// by a well-trained drafter, and the target checks every drafted id anyway.
pub const VOCAB_MAX_SIZE_DIFFERENCE: usize = 128;

/// Checks that a draft model's tokenizer can draft for the target's: the same tokenizer
/// kind, the same special tokens and BOS handling, sizes within
/// [`VOCAB_MAX_SIZE_DIFFERENCE`], and every token of the common range spelled the same.
pub fn check_vocab_compatible(target: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    let bad = |why: String| {
        Err(Error::Options(format!(
            "the draft model cannot draft for this model: {why}"
        )))
    };
    if target.kind() != draft.kind() {
        return bad(format!(
            "its tokenizer is {:?}, the target's {:?}",
            draft.kind(),
            target.kind()
        ));
    }
    if target.add_bos() != draft.add_bos() || target.bos() != draft.bos() {
        return bad(format!(
            "BOS differs (target {:?} added {}, draft {:?} added {})",
            target.bos(),
            target.add_bos(),
            draft.bos(),
            draft.add_bos()
        ));
    }
    if target.eos() != draft.eos() {
        return bad(format!(
            "EOS differs (target {:?}, draft {:?})",
            target.eos(),
            draft.eos()
        ));
    }
    let (nt, nd) = (target.n_vocab(), draft.n_vocab());
    if nt.abs_diff(nd) > VOCAB_MAX_SIZE_DIFFERENCE {
        return bad(format!(
            "its vocabulary has {nd} tokens, the target's {nt} (at most {VOCAB_MAX_SIZE_DIFFERENCE} apart)"
        ));
    }
    for id in 0..nt.min(nd) as u32 {
        if target.token_text(id) != draft.token_text(id) {
            return bad(format!(
                "token {id} is {:?} in the target and {:?} in the draft",
                target.token_text(id).unwrap_or(""),
                draft.token_text(id).unwrap_or("")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_length_follows_acceptance() {
        let p = SpecParams {
            draft_max: 16,
            draft_min: 2,
            ..Default::default()
        };
        let mut a = AdaptiveLength::new(&p, 0.0);
        for _ in 0..40 {
            a.update(8, 8);
        }
        assert!(a.rate() > 0.95);
        assert!(a.next() >= 12, "high acceptance drafts long: {}", a.next());
        for _ in 0..40 {
            a.update(4, 0);
        }
        assert!(a.rate() < 0.2, "{}", a.rate());
        let probes: Vec<usize> = (0..2 * PROBE_EVERY).map(|_| a.next()).collect();
        assert_eq!(
            probes.iter().filter(|&&k| k > 0).count(),
            2,
            "speculation that does not pay pauses, probing now and then: {probes:?}"
        );
        assert!(
            probes.iter().all(|&k| k == 0 || k == 2),
            "probes use draft_min"
        );
        // an expensive drafter drafts shorter at the same rate
        let mut cheap = AdaptiveLength::new(&p, 0.0);
        let mut dear = AdaptiveLength::new(&p, 0.5);
        for _ in 0..40 {
            cheap.update(4, 3);
            dear.update(4, 3);
        }
        assert!(
            dear.next() < cheap.next(),
            "{} {}",
            dear.next(),
            cheap.next()
        );
        let mut fixed = AdaptiveLength::new(
            &SpecParams {
                adaptive: false,
                ..p
            },
            0.0,
        );
        assert_eq!(fixed.next(), 16);
    }

    fn one_hot_rows(ids: &[u32], n_vocab: usize) -> Vec<f32> {
        let mut rows = vec![0.0; ids.len() * n_vocab];
        for (i, &t) in ids.iter().enumerate() {
            rows[i * n_vocab + t as usize] = 10.0;
        }
        rows
    }

    #[test]
    fn greedy_verification_keeps_the_agreeing_prefix() {
        let nv = 8;
        // target's argmax after each prefix: 3, 4, 5, 6
        let rows = one_hot_rows(&[3, 4, 5, 6], nv);
        let mut s = Sampler::new(SamplingParams::greedy());
        let mut sc = VerifyScratch::default();
        let mut out = vec![];
        let d = |t: &[u32]| Draft {
            tokens: t.to_vec(),
            probs: vec![],
        };
        assert_eq!(
            verify(&mut s, &rows, nv, &d(&[3, 4, 5]), &mut sc, &mut out),
            3
        );
        assert_eq!(out, [3, 4, 5, 6], "all accepted plus the bonus token");
        out.clear();
        assert_eq!(
            verify(&mut s, &rows, nv, &d(&[3, 1, 5]), &mut sc, &mut out),
            1
        );
        assert_eq!(out, [3, 4], "the correction replaces the first miss");
        out.clear();
        assert_eq!(verify(&mut s, &rows, nv, &d(&[]), &mut sc, &mut out), 0);
        assert_eq!(out, [3]);
    }
}
