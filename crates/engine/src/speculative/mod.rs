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
//! * The draft length adapts to the observed acceptance and to the measured costs of
//!   verifying and drafting ([`AdaptiveLength`], [`CostModel`]).
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
    /// Tokens of the sequence the drafter evaluated before drafting (a draft model
    /// catching up); 0 for drafters that evaluate nothing.
    pub caught_up: usize,
}

impl Draft {
    /// Removes every token (keeps the allocations).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.probs.clear();
        self.caught_up = 0;
    }

    /// Whether the drafting time of this draft shows what drafting costs while speculation
    /// runs step after step: the drafter caught up by at most [`STEADY_CATCH_UP`] tokens.
    /// A draft after plain steps also evaluated every token decoded meanwhile, a cost
    /// consecutive drafting never pays; counting it made each drafted token look worth
    /// several target steps, so drafting stopped, plain steps followed, and every later
    /// probe caught up again.
    pub fn steady(&self) -> bool {
        self.caught_up <= STEADY_CATCH_UP
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

/// Tokens a drafter catches up with between consecutive drafts: the last drafted token it
/// proposed but did not evaluate, and the target's own token after it.
pub const STEADY_CATCH_UP: usize = 2;

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

    /// Catches up with a new sequence's history (a draft model evaluates the prompt, a
    /// remote drafter receives it) before drafting is timed: the first call's cost is a
    /// prefill, not drafting, and counted as drafting it made one drafted token look worth
    /// several target steps. The default drafts one token and drops it.
    fn warm_up(&mut self, req: &DraftRequest<'_>) -> Result<()> {
        let mut scratch = Draft::default();
        self.draft(&DraftRequest { max: 1, ..*req }, &mut scratch)
    }

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

/// Chooses the draft length from the acceptance seen so far and the measured costs.
///
/// Acceptance is tracked per draft position as a survival curve: `p_j`, the share of
/// drafts reaching position `j` whose token `j` was accepted (counts forgotten
/// exponentially, so the curve follows the text). A draft of `k` tokens then yields
/// `E(k) = 1 + sum_{j=1..k} p_1 * ... * p_j` tokens per verification pass. Unlike a single
/// i.i.d. rate, the curve captures how acceptance comes in runs: once a quoted passage is
/// being repeated, the next drafted token is very likely right too, so long drafts pay even
/// when the average rate is modest.
///
/// A pass verifying `k` tokens costs `1 + k * (c_verify + c_draft)` one-token steps, with
/// the costs measured as generation goes ([`CostModel`]). The length maximising
/// `E(k) / cost(k)` within `[draft_min, draft_max]` is used. When no length is expected to
/// beat plain decoding by [`MIN_GAIN`], the step decodes plainly; a short probing draft
/// every few steps (8, doubling to 128 while speculation keeps not paying) notices when the
/// text becomes predictable again.
///
/// The choice depends on measured times, so a sampled generation with a fixed seed is
/// reproducible only with a fixed length (`adaptive: false`); greedy output never depends
/// on it (verification is exact).
#[derive(Clone, Debug)]
pub struct AdaptiveLength {
    min: usize,
    max: usize,
    adaptive: bool,
    /// Weighted count of drafts that reached each position.
    reached: Vec<f64>,
    /// Weighted count of those whose token at the position was accepted.
    passed: Vec<f64>,
    idle: usize,
    probe_every: usize,
}

/// First probing interval while speculation does not pay (steps).
pub const PROBE_EVERY: usize = 8;
/// Longest probing interval.
const PROBE_MAX: usize = 128;
/// Probing interval while speculation could not pay even at full acceptance.
const DORMANT_PROBE: usize = 1024;
/// Expected speedup below which a step decodes plainly (covers estimation error).
pub const MIN_GAIN: f64 = 1.05;

/// Prior for the marginal cost of one more verified row, relative to a one-token step,
/// until [`CostModel`] has measured it. On the 2-core reference machine a verified row of
/// Gemma 3 270M costs about 0.55 of a step (its 262,144-token output head is computed for
/// every row; `examples/verify_cost.rs`), a memory-bound larger model much less.
pub const VERIFY_ROW_COST: f64 = 0.3;

/// Weighted count of drafts reaching a position below which the next step drafts one
/// token past the best length, to measure it (with [`FORGET`], about one step in eight
/// while the best length stays the same).
const EXPLORE_BELOW: f64 = 0.5;

/// How much of the acceptance evidence survives each verification (about the last 12
/// verifications count).
const FORGET: f64 = 0.92;
/// Prior acceptance at each position (pseudo-counts accepted / rejected): optimistic (0.8),
/// so drafts are tried before evidence arrives, and light, so evidence wins quickly.
const PRIOR: (f64, f64) = (1.0, 0.25);

impl AdaptiveLength {
    /// A controller for `params`.
    pub fn new(params: &SpecParams) -> AdaptiveLength {
        let max = params.draft_max.max(1);
        AdaptiveLength {
            min: params.draft_min,
            max,
            adaptive: params.adaptive,
            reached: vec![0.0; max],
            passed: vec![0.0; max],
            idle: 0,
            probe_every: PROBE_EVERY,
        }
    }

    /// The estimated acceptance of the token at draft position `j` (0-based) given that
    /// the tokens before it were accepted.
    pub fn rate_at(&self, j: usize) -> f64 {
        let j = j.min(self.max - 1);
        (self.passed[j] + PRIOR.0) / (self.reached[j] + PRIOR.0 + PRIOR.1)
    }

    /// The draft length to ask for next (0: decode this step plainly), given the costs.
    /// 0 whenever the cost model needs a plain step timed ([`CostModel::needs_plain_step`]).
    pub fn next(&mut self, cost: &CostModel) -> usize {
        if cost.needs_plain_step() {
            return 0;
        }
        if !self.adaptive {
            return self.max;
        }
        let per_token = cost.c_verify() + cost.c_draft();
        // even if every drafted token were accepted, drafting `max` tokens could not beat
        // plain decoding by MIN_GAIN: draft only once every DORMANT_PROBE steps, to notice
        // if the costs change (a draft model costing as much as the target would otherwise
        // re-read every token on each probe to catch up, slowing generation down)
        let ceiling = (self.max + 1) as f64 / (1.0 + self.max as f64 * per_token);
        if ceiling < MIN_GAIN {
            self.idle += 1;
            if self.idle >= DORMANT_PROBE {
                self.idle = 0;
                return self.min.max(1);
            }
            return 0;
        }
        let (k, gain) = self.best(per_token);
        if gain >= MIN_GAIN {
            self.idle = 0;
            self.probe_every = PROBE_EVERY;
            // one token further when that position has gone unmeasured lately: its rate
            // is otherwise only the prior, and a prior below the measured rates would keep
            // the length from ever growing (a draft model accepted at 0.97 stayed at one
            // token, because the second was assumed to pass at 0.8 and never tried)
            if k < self.max && self.reached[k] < EXPLORE_BELOW {
                return k + 1;
            }
            return k;
        }
        self.idle += 1;
        if self.idle >= self.probe_every {
            self.idle = 0;
            self.probe_every = (self.probe_every * 2).min(PROBE_MAX);
            self.min.max(1)
        } else {
            0
        }
    }

    /// The best length for a per-token cost, and its expected speedup over plain decoding.
    fn best(&self, per_token: f64) -> (usize, f64) {
        let mut best = (self.min.max(1), f64::MIN);
        let (mut expected, mut survive) = (1.0, 1.0);
        for k in 1..=self.max {
            survive *= self.rate_at(k - 1);
            expected += survive;
            let gain = expected / (1.0 + k as f64 * per_token);
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
        for j in 0..self.max {
            self.reached[j] *= FORGET;
            self.passed[j] *= FORGET;
            // token j was judged only if every drafted token before it was accepted
            if j < drafted && j <= accepted {
                self.reached[j] += 1.0;
            }
            if j < accepted {
                self.passed[j] += 1.0;
            }
        }
    }
}

/// What speculation costs on this machine, measured as generation runs: forward passes of
/// `n` rows take `T(n) = a + b * n` (exponentially weighted least squares over recent
/// passes), so a verified row costs `c_verify = b / T(1)` steps; drafting costs
/// `c_draft` = its time per drafted token over `T(1)`. Until there is data, the priors are
/// used: [`VERIFY_ROW_COST`] and the drafter's own estimate.
#[derive(Clone, Debug)]
pub struct CostModel {
    prior_verify: f64,
    prior_draft: f64,
    // weighted sums over (rows, secs) of recent passes
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    // weighted count of plain (draft-free) passes
    w_plain: f64,
    // weighted drafting time and drafted tokens
    draft_secs: f64,
    draft_tokens: f64,
}

/// Weight each older observation keeps per new one.
const COST_FORGET: f64 = 0.98;
/// Least variance of the passes' row counts for the fitted slope to be used: a few percent
/// of passes of another size. (It was 0.25, which passes of one and two rows reach only
/// when half of them are plain: one-token drafts then forced a plain step every other
/// pass, and the draft model lost its gain.)
const MIN_ROWS_VARIANCE: f64 = 0.02;
/// Weight of the plain passes seen below which they are too old to anchor the fit: a plain
/// pass weighs 1 when seen and `COST_FORGET^n` after `n` more passes (below 0.25 after 69).
const PLAIN_STALE: f64 = 0.25;

impl CostModel {
    /// A model starting from `prior_draft` (the drafter's [`Drafter::relative_cost`]).
    pub fn new(prior_draft: f64) -> CostModel {
        CostModel {
            prior_verify: VERIFY_ROW_COST,
            prior_draft: prior_draft.max(0.0),
            w: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
            w_plain: 0.0,
            draft_secs: 0.0,
            draft_tokens: 0.0,
        }
    }

    /// Records a forward pass of `rows` rows that took `secs`; `plain` when no row of it
    /// verified a draft (one-token steps only).
    pub fn observe_pass(&mut self, rows: usize, secs: f64, plain: bool) {
        if rows == 0 || !secs.is_finite() || secs <= 0.0 {
            return;
        }
        let (x, y) = (rows as f64, secs);
        self.w_plain = self.w_plain * COST_FORGET + if plain { 1.0 } else { 0.0 };
        self.w = self.w * COST_FORGET + 1.0;
        self.sx = self.sx * COST_FORGET + x;
        self.sy = self.sy * COST_FORGET + y;
        self.sxx = self.sxx * COST_FORGET + x * x;
        self.sxy = self.sxy * COST_FORGET + x * y;
    }

    /// Records drafting `tokens` tokens in `secs` (drafter time the target waits for).
    pub fn observe_draft(&mut self, tokens: usize, secs: f64) {
        if tokens == 0 || !secs.is_finite() || secs < 0.0 {
            return;
        }
        self.draft_secs = self.draft_secs * COST_FORGET + secs;
        self.draft_tokens = self.draft_tokens * COST_FORGET + tokens as f64;
    }

    /// The fitted `(a, b)` of `T(n) = a + b n`, once passes of different sizes were seen.
    fn fit(&self) -> Option<(f64, f64)> {
        if self.w < 3.0 {
            return None;
        }
        let mean_x = self.sx / self.w;
        let var_x = self.sxx / self.w - mean_x * mean_x;
        if var_x < MIN_ROWS_VARIANCE {
            return None; // (nearly) every pass the same size: the slope is unknown
        }
        let mean_y = self.sy / self.w;
        let b = (self.sxy / self.w - mean_x * mean_y) / var_x;
        let a = mean_y - b * mean_x;
        (a + b > 0.0).then_some((a, b))
    }

    /// True when the next step should be plain (no drafts), to time one: when every pass
    /// so far verified the same number of rows (the slope is unknown), or when the last
    /// plain pass is too old. The fit extrapolates to the one-token step, and verifications
    /// alone mislead it: on a CPU where one-token decoding waits on memory and several rows
    /// on arithmetic, passes of 4 to 7 rows put the line's intercept far too low and made
    /// every verified row look like 0.85 of a step, which then shrank every draft to one
    /// token for good (seen in `engine serve`).
    pub fn needs_plain_step(&self) -> bool {
        self.w >= 2.0
            && (self.w_plain < PLAIN_STALE || (self.sx / self.w > 1.5 && self.fit().is_none()))
    }

    /// The time of a one-token step, if measured.
    pub fn step_secs(&self) -> Option<f64> {
        self.fit().map(|(a, b)| a + b)
    }

    /// Marginal cost of a verified row, in one-token steps.
    pub fn c_verify(&self) -> f64 {
        match self.fit() {
            Some((a, b)) => (b / (a + b)).clamp(0.01, 2.0),
            None => self.prior_verify,
        }
    }

    /// Cost of drafting one token, in one-token steps of the target.
    pub fn c_draft(&self) -> f64 {
        match (self.step_secs(), self.draft_tokens > 0.5) {
            (Some(t1), true) => (self.draft_secs / self.draft_tokens / t1).clamp(0.0, 10.0),
            _ => self.prior_draft,
        }
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
/// decoding's); attention caches are simply truncated. `scratch` is a batch and a logits
/// buffer for that evaluation.
pub fn rollback(
    model: &dyn engine_models::Model,
    ctx: &mut Context,
    scratch: (&mut Batch, &mut Vec<f32>),
    seq: usize,
    start: usize,
    evaluated: &[u32],
    keep: usize,
) -> Result<()> {
    let (batch, logits) = scratch;
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
        let cheap = CostModel::new(0.0);
        let mut a = AdaptiveLength::new(&p);
        for _ in 0..40 {
            a.update(8, 8);
        }
        assert!(a.rate_at(0) > 0.95);
        assert!(
            a.next(&cheap) >= 8,
            "high acceptance drafts long: {}",
            a.next(&cheap)
        );
        for _ in 0..40 {
            a.update(4, 0);
        }
        assert!(a.rate_at(0) < 0.2, "{}", a.rate_at(0));
        let probes: Vec<usize> = (0..3 * PROBE_EVERY).map(|_| a.next(&cheap)).collect();
        assert_eq!(
            probes.iter().filter(|&&k| k > 0).count(),
            2,
            "speculation that does not pay pauses, probing less and less often: {probes:?}"
        );
        assert!(
            probes.iter().all(|&k| k == 0 || k == 2),
            "probes use draft_min"
        );
        // runs: position 0 is a coin flip, but a run once started continues
        let mut runs = AdaptiveLength::new(&p);
        for i in 0..60 {
            runs.update(12, if i % 2 == 0 { 12 } else { 0 });
        }
        assert!(runs.rate_at(0) < 0.6 && runs.rate_at(5) > 0.95);
        // (an i.i.d. acceptance of 0.5 would draft 1 or 2 tokens at this cost)
        assert!(
            runs.next(&cheap) >= 6,
            "runs favour long drafts: {}",
            runs.next(&cheap)
        );
        // an expensive drafter drafts shorter at the same acceptance (0.8 at every position)
        let dear = CostModel::new(0.2);
        let mut m = AdaptiveLength::new(&SpecParams { draft_min: 0, ..p });
        m.reached.fill(100.0);
        m.passed.fill(80.0);
        let (kc, kd) = (m.next(&cheap), m.next(&dear));
        assert!(kd < kc, "{kd} {kc}");
        let mut fixed = AdaptiveLength::new(&SpecParams {
            adaptive: false,
            ..p
        });
        assert_eq!(fixed.next(&dear), 16);
        // a drafter costing as much as the target cannot pay at any acceptance: it rests
        let mut same = AdaptiveLength::new(&SpecParams { draft_min: 0, ..p });
        let steps: Vec<usize> = (0..1000).map(|_| same.next(&CostModel::new(1.0))).collect();
        assert!(steps.iter().all(|&k| k == 0), "never worth a draft");
    }

    #[test]
    fn costs_are_measured() {
        let mut c = CostModel::new(0.2);
        assert_eq!(c.c_verify(), VERIFY_ROW_COST);
        assert_eq!(c.c_draft(), 0.2);
        // T(n) = 20 ms + 10 ms * n: a row costs 10 / 30 of a step
        for n in [1, 5, 1, 9, 3, 1, 7] {
            c.observe_pass(n, 0.020 + 0.010 * n as f64, n == 1);
        }
        assert!((c.c_verify() - 1.0 / 3.0).abs() < 1e-6, "{}", c.c_verify());
        assert!((c.step_secs().unwrap() - 0.030).abs() < 1e-9);
        c.observe_draft(4, 0.060);
        assert!((c.c_draft() - 0.5).abs() < 1e-6, "{}", c.c_draft());
        // passes of one size only: the slope stays unknown
        let mut same = CostModel::new(0.0);
        for _ in 0..10 {
            same.observe_pass(5, 0.1, false);
        }
        assert_eq!(same.c_verify(), VERIFY_ROW_COST);
        assert!(same.needs_plain_step(), "a plain step separates the costs");
        same.observe_pass(1, 0.04, true);
        assert!(!same.needs_plain_step());
        // verifications of varied sizes fit a line, but without a recent plain pass its
        // intercept is a guess: a plain step is asked for again
        let mut varied = CostModel::new(0.0);
        varied.observe_pass(1, 0.020, true);
        for i in 0..200 {
            // (the first passes are too few for a fit at all)
            if i >= 3 {
                assert_eq!(varied.needs_plain_step(), i >= 69, "pass {i}");
            }
            varied.observe_pass(4 + i % 4, 0.010 + 0.012 * (4 + i % 4) as f64, false);
        }
        assert!(varied.needs_plain_step());
        varied.observe_pass(1, 0.020, true);
        assert!(!varied.needs_plain_step());
        // one-token drafts (passes of two rows) with a plain pass now and then: the slope
        // is known without a plain step every other pass
        let mut short = CostModel::new(0.0);
        let mut plain = 0;
        for i in 0..300 {
            let rows = if short.needs_plain_step() { 1 } else { 2 };
            plain += usize::from(rows == 1 && i >= 10);
            short.observe_pass(rows, 0.040 + 0.005 * rows as f64, rows == 1);
        }
        assert!(plain < 15, "{plain} plain steps in 290 passes");
        assert!((short.c_verify() - 0.005 / 0.045).abs() < 1e-6);
    }

    #[test]
    fn draft_length_grows_past_an_unmeasured_position() {
        // every drafted token accepted, rows cheap: starting from one-token drafts, the
        // controller tries a longer draft whenever the next position has no recent
        // evidence, and the measured acceptance then carries the length up
        let p = SpecParams {
            draft_max: 16,
            ..SpecParams::default()
        };
        let mut a = AdaptiveLength::new(&p);
        let mut cost = CostModel::new(0.5);
        for n in [1, 2, 1, 3] {
            cost.observe_pass(n, 0.040 + 0.004 * n as f64, n == 1);
        }
        let mut lengths = Vec::new();
        for _ in 0..60 {
            let k = a.next(&cost);
            lengths.push(k);
            a.update(k, k);
        }
        assert!(lengths[59] >= 4, "lengths {lengths:?}");
        // a steady draft: caught up by at most two tokens
        let mut d = Draft::default();
        assert!(d.steady());
        d.caught_up = 9;
        assert!(!d.steady());
        d.clear();
        assert!(d.steady());
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
            ..Draft::default()
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
