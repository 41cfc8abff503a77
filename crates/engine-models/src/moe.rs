//! Mixture-of-experts feed-forward layers: the router, top-k selection and weighting
//! (softmax, sigmoid with a selection bias, or softmax over the selected logits; optional
//! renormalisation and scaling), the experts, and an optional shared expert.
//!
//! Each expert is a view of its rows of the stacked `*_exps` tensors, so nothing is copied
//! at load time and a forward pass reads only the experts its tokens were routed to. The
//! router's logits come to the host (a few values per token); the host picks the experts and
//! sorts the (token, slot) pairs by expert, and one [`Backend::matmul_experts`] call per
//! projection multiplies every selected expert with all of its tokens' rows. Within an expert
//! the rows keep their sequence runs as row groups, and each token's expert outputs are added
//! in selection order, so a sequence's numbers do not depend on what else is in the batch.

use engine_core::{Activation, Backend, DType, ExpertSpan, Tensor, Weight};

use crate::error::{ModelError, Result};
use crate::ffn::{is_gated, DenseFfn};
use crate::weights::WeightLoader;

/// How router logits become expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts; select the top k (qwen3moe, Mixtral).
    Softmax,
    /// Sigmoid per expert; select by sigmoid plus a selection bias, weight by the unbiased
    /// sigmoid (GLM-4.5, DeepSeek-V3 style).
    Sigmoid,
    /// Select the top k raw logits, weight by a softmax over those k (GPT-OSS).
    SoftmaxSelected,
}

impl Gating {
    /// llama.cpp's `expert_gating_func` code: 1 softmax, 2 sigmoid, 3 softmax over the selected.
    pub fn from_code(code: u32) -> Result<Gating> {
        Ok(match code {
            1 => Gating::Softmax,
            2 => Gating::Sigmoid,
            3 => Gating::SoftmaxSelected,
            other => {
                return Err(ModelError::HParam(format!(
                    "expert_gating_func {other} is not supported (1 softmax, 2 sigmoid, 3 softmax over the selected)"
                )))
            }
        })
    }
}

/// A MoE layer's routing and expert shape.
#[derive(Clone, Copy, Debug)]
pub struct MoeConfig {
    /// Experts.
    pub n_expert: usize,
    /// Experts per token.
    pub n_used: usize,
    /// Hidden width of one expert.
    pub n_ff: usize,
    /// Router weighting.
    pub gating: Gating,
    /// Renormalise the selected weights to sum to 1.
    pub norm_weights: bool,
    /// Multiply the weights by this (0 or 1 = no scaling).
    pub weights_scale: f32,
    /// Expert activation.
    pub act: Activation,
}

/// One projection of all experts: a view per expert of its rows of the stacked tensor.
pub struct ExpertProj {
    weights: Vec<Weight>,
    biases: Option<Vec<Weight>>,
}

impl ExpertProj {
    fn parts(&self) -> (&[Weight], Option<&[Weight]>) {
        (&self.weights, self.biases.as_deref())
    }

    /// Loads `blk.{i}.ffn_{proj}_exps.{weight,bias}` of shape `[n_expert, rows, cols]`.
    fn load(
        wl: &mut WeightLoader,
        i: usize,
        proj: &str,
        n_expert: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Option<ExpertProj>> {
        let name = format!("blk.{i}.ffn_{proj}_exps");
        let Some(weights) = wl.stacked(&format!("{name}.weight"), &[n_expert, rows, cols])? else {
            return Ok(None);
        };
        let biases = wl.stacked(&format!("{name}.bias"), &[n_expert, rows])?;
        Ok(Some(ExpertProj { weights, biases }))
    }
}

/// A MoE layer's weights.
pub struct MoeWeights {
    router: Weight,
    router_b: Option<Weight>,
    sel_bias: Option<Vec<f32>>,
    gate: Option<ExpertProj>,
    up: ExpertProj,
    down: ExpertProj,
    shared: Option<DenseFfn>,
}

impl MoeWeights {
    /// Loads layer `i`'s router, experts (`ffn_{gate,up,down}_exps` and their biases),
    /// selection bias (`exp_probs_b`) and shared expert (`ffn_*_shexp`, if present).
    pub fn load(
        wl: &mut WeightLoader,
        i: usize,
        cfg: &MoeConfig,
        n_embd: usize,
        shared_act: Activation,
    ) -> Result<MoeWeights> {
        let (ne, ff) = (cfg.n_expert, cfg.n_ff);
        let t = |s: &str| format!("blk.{i}.{s}");
        let missing = |name: String| ModelError::Tensor {
            name,
            problem: "required by the architecture but missing from the file".into(),
        };
        let up = ExpertProj::load(wl, i, "up", ne, ff, n_embd)?
            .ok_or_else(|| missing(t("ffn_up_exps.weight")))?;
        let down = ExpertProj::load(wl, i, "down", ne, n_embd, ff)?
            .ok_or_else(|| missing(t("ffn_down_exps.weight")))?;
        let gate = ExpertProj::load(wl, i, "gate", ne, ff, n_embd)?;
        if gate.is_none() && is_gated(cfg.act) {
            return Err(missing(t("ffn_gate_exps.weight")));
        }
        let shared = match wl.gguf_shape(&t("ffn_up_shexp.weight")) {
            Some(shape) => {
                let n_ff_sh = shape.first().copied().unwrap_or(0);
                Some(DenseFfn::load(
                    wl, i, "_shexp", n_embd, n_ff_sh, shared_act,
                )?)
            }
            None => None,
        };
        Ok(MoeWeights {
            router: wl.get(&t("ffn_gate_inp.weight"), Some(&[ne, n_embd]))?,
            router_b: wl.opt(&t("ffn_gate_inp.bias"), Some(&[ne]))?,
            sel_bias: wl.host_f32(&t("exp_probs_b.bias"), ne)?,
            gate,
            up,
            down,
            shared,
        })
    }

    /// Hidden width of the shared expert (0 without one).
    pub fn shared_ff(&self) -> usize {
        self.shared.as_ref().map_or(0, DenseFfn::n_ff)
    }
}

/// Preallocated buffers of a MoE forward pass.
pub struct MoeScratch {
    router: Tensor,
    logits: Vec<f32>,
    probs: Vec<f32>,
    taken: Vec<bool>,
    /// Expert of each (token, slot), `[n * k]`.
    sel: Vec<u32>,
    /// Weight of each (token, slot).
    wts: Vec<f32>,
    /// Start of each expert's slots in `order` (counting sort), `[n_expert + 1]`.
    start: Vec<u32>,
    /// Slots grouped by expert, token order within an expert.
    order: Vec<u32>,
    /// Token of each entry of `order`.
    tok: Vec<u32>,
    spans: Vec<ExpertSpan>,
    groups: Vec<u32>,
    xe: Tensor,
    ge: Tensor,
    ue: Tensor,
    ye: Tensor,
    mix: Tensor,
    sh_gate: Tensor,
    sh_up: Tensor,
    sh_out: Tensor,
}

impl MoeScratch {
    /// Buffers for batches of up to `n_batch` tokens.
    pub fn new(
        be: &dyn Backend,
        cfg: &MoeConfig,
        n_embd: usize,
        shared_ff: usize,
        n_batch: usize,
    ) -> Result<MoeScratch> {
        let (ne, k, ff) = (cfg.n_expert, cfg.n_used, cfg.n_ff);
        let sh = shared_ff.max(1);
        let nk = n_batch * k;
        Ok(MoeScratch {
            router: be.alloc(DType::F32, &[n_batch, ne])?,
            logits: vec![0.0; n_batch * ne],
            probs: vec![0.0; ne],
            taken: vec![false; ne],
            sel: Vec::with_capacity(nk),
            wts: Vec::with_capacity(nk),
            start: vec![0; ne + 1],
            order: vec![0; nk],
            tok: Vec::with_capacity(nk),
            spans: Vec::with_capacity(ne),
            groups: Vec::with_capacity(nk),
            xe: be.alloc(DType::F32, &[nk, n_embd])?,
            ge: be.alloc(DType::F32, &[nk, ff])?,
            ue: be.alloc(DType::F32, &[nk, ff])?,
            ye: be.alloc(DType::F32, &[nk, n_embd])?,
            mix: be.alloc(DType::F32, &[nk, n_embd])?,
            sh_gate: be.alloc(DType::F32, &[n_batch, sh])?,
            sh_up: be.alloc(DType::F32, &[n_batch, sh])?,
            sh_out: be.alloc(DType::F32, &[n_batch, n_embd])?,
        })
    }

    /// Bytes these buffers take on the device (the estimate before allocating).
    pub fn device_bytes(cfg: &MoeConfig, n_embd: usize, shared_ff: usize, n_batch: usize) -> u64 {
        let (ne, k, ff) = (cfg.n_expert, cfg.n_used, cfg.n_ff);
        let sh = shared_ff.max(1);
        4 * (n_batch * (ne + 2 * sh + n_embd) + n_batch * k * (2 * ff + 3 * n_embd)) as u64
    }
}

/// Picks one token's experts and weights from its router logits, appending them to `sel`
/// and `wts`; `probs` and `taken` are scratch of `n_expert` entries.
fn route(
    cfg: &MoeConfig,
    sel_bias: Option<&[f32]>,
    logits: &[f32],
    probs: &mut [f32],
    taken: &mut [bool],
    sel: &mut Vec<u32>,
    wts: &mut Vec<f32>,
) {
    let ne = cfg.n_expert;
    let probs = &mut probs[..ne];
    match cfg.gating {
        Gating::Softmax => {
            let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0.0f32;
            for (p, &l) in probs.iter_mut().zip(logits) {
                *p = (l - m).exp();
                sum += *p;
            }
            for p in probs.iter_mut() {
                *p /= sum;
            }
        }
        Gating::Sigmoid => {
            for (p, &l) in probs.iter_mut().zip(logits) {
                *p = 1.0 / (1.0 + (-l).exp());
            }
        }
        Gating::SoftmaxSelected => probs.copy_from_slice(logits),
    }
    // top k by selection score (probability plus selection bias), lowest index on ties
    let first = sel.len();
    taken[..ne].fill(false);
    for _ in 0..cfg.n_used {
        let mut best = usize::MAX;
        let mut best_v = f32::NEG_INFINITY;
        for e in 0..ne {
            if taken[e] {
                continue;
            }
            let v = probs[e] + sel_bias.map_or(0.0, |b| b[e]);
            if best == usize::MAX || v > best_v {
                best = e;
                best_v = v;
            }
        }
        taken[best] = true;
        sel.push(best as u32);
        wts.push(probs[best]);
    }
    let w = &mut wts[first..];
    if cfg.gating == Gating::SoftmaxSelected {
        let m = w.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0.0f32;
        for v in w.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        for v in w.iter_mut() {
            *v /= sum;
        }
    }
    if cfg.norm_weights {
        let sum = w.iter().sum::<f32>().max(6.103_515_6e-5);
        for v in w.iter_mut() {
            *v /= sum;
        }
    }
    if cfg.weights_scale != 0.0 && cfg.weights_scale != 1.0 {
        for v in w.iter_mut() {
            *v *= cfg.weights_scale;
        }
    }
}

impl MoeWeights {
    /// `out = sum over each row's selected experts of weight * expert(h)` (plus the shared
    /// expert). `seqs[i]` is row `i`'s group number (consecutive rows computed together:
    /// a sequence's run, or one token evaluated as a one-token step); `groups` are those
    /// groups' lengths; `shared_act` is the shared expert's activation.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        cfg: &MoeConfig,
        shared_act: Activation,
        h: &Tensor,
        seqs: &[u32],
        groups: &[u32],
        s: &mut MoeScratch,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, e) = (h.rows(), h.cols());
        let (ne, k) = (cfg.n_expert, cfg.n_used);
        s.router.reshape(&[n, ne])?;
        be.matmul_groups(h, &self.router, &mut s.router, groups)?;
        if let Some(b) = &self.router_b {
            be.add_bias(&mut s.router, b)?;
        }
        be.read_f32(&s.router, &mut s.logits[..n * ne])?;
        s.sel.clear();
        s.wts.clear();
        for t in 0..n {
            route(
                cfg,
                self.sel_bias.as_deref(),
                &s.logits[t * ne..(t + 1) * ne],
                &mut s.probs,
                &mut s.taken,
                &mut s.sel,
                &mut s.wts,
            );
        }
        // counting sort of the (token, slot) pairs by expert, keeping token order
        s.start[..=ne].fill(0);
        for &x in &s.sel {
            s.start[x as usize + 1] += 1;
        }
        for x in 0..ne {
            s.start[x + 1] += s.start[x];
        }
        for (slot, &x) in s.sel.iter().enumerate() {
            let at = &mut s.start[x as usize];
            s.order[*at as usize] = slot as u32;
            *at += 1;
        }
        // `start[x]` now holds the end of expert x's slots: one span per selected expert,
        // its rows in token order, cut into row groups
        s.spans.clear();
        s.tok.clear();
        s.groups.clear();
        let mut begin = 0usize;
        for x in 0..ne {
            let end = s.start[x] as usize;
            if end == begin {
                continue;
            }
            s.spans.push(ExpertSpan {
                expert: x as u32,
                rows: (end - begin) as u32,
            });
            for j in begin..end {
                let t = s.order[j] as usize / k;
                match s.groups.last_mut() {
                    Some(g) if j > begin && seqs[t] == seqs[s.tok[j - 1] as usize] => *g += 1,
                    _ => s.groups.push(1),
                }
                s.tok.push(t as u32);
            }
            begin = end;
        }
        let nk = n * k;
        let ff = cfg.n_ff;
        s.xe.reshape(&[nk, e])?;
        s.ue.reshape(&[nk, ff])?;
        s.ge.reshape(&[nk, ff])?;
        s.ye.reshape(&[nk, e])?;
        s.mix.reshape(&[nk, e])?;
        be.gather_rows(h, &s.tok, &mut s.xe)?;
        let (w, b) = self.up.parts();
        be.matmul_experts(&s.xe, w, b, &s.spans, &s.groups, &mut s.ue)?;
        let act_out = match &self.gate {
            Some(gate) => {
                let (w, b) = gate.parts();
                be.matmul_experts(&s.xe, w, b, &s.spans, &s.groups, &mut s.ge)?;
                be.glu(cfg.act, &mut s.ge, &s.ue)?;
                &s.ge
            }
            None => {
                be.glu(cfg.act, &mut s.ue, &s.ge)?;
                &s.ue
            }
        };
        let (w, b) = self.down.parts();
        be.matmul_experts(act_out, w, b, &s.spans, &s.groups, &mut s.ye)?;
        // back to (token, slot) order, then each token's weighted sum in selection order
        be.scatter_rows(&s.ye, &s.order[..nk], &mut s.mix)?;
        be.weighted_row_sum(&s.mix, &s.wts, k, out)?;
        if let Some(sh) = &self.shared {
            s.sh_out.reshape(&[n, e])?;
            sh.forward(
                be,
                shared_act,
                h,
                &mut s.sh_gate,
                &mut s.sh_up,
                &mut s.sh_out,
                groups,
            )?;
            be.add(out, &s.sh_out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gating: Gating, norm: bool, scale: f32) -> MoeConfig {
        MoeConfig {
            n_expert: 4,
            n_used: 2,
            n_ff: 8,
            gating,
            norm_weights: norm,
            weights_scale: scale,
            act: Activation::Silu,
        }
    }

    fn run(c: &MoeConfig, bias: Option<&[f32]>, logits: &[f32]) -> (Vec<u32>, Vec<f32>) {
        let (mut probs, mut taken) = (vec![0.0; 4], vec![false; 4]);
        let (mut sel, mut wts) = (vec![], vec![]);
        route(c, bias, logits, &mut probs, &mut taken, &mut sel, &mut wts);
        (sel, wts)
    }

    #[test]
    fn softmax_top_k_renormalised() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let (sel, w) = run(&cfg(Gating::Softmax, true, 0.0), None, &logits);
        assert_eq!(sel, [1, 2]);
        let (e1, e2) = (1f32.exp(), 0f32.exp()); // relative to logit 2
        assert!((w[0] - e1 / (e1 + e2)).abs() < 1e-6 && (w[0] + w[1] - 1.0).abs() < 1e-6);
        // without renormalisation the weights are the full softmax's
        let (_, w) = run(&cfg(Gating::Softmax, false, 0.0), None, &logits);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((w[0] - 3f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn sigmoid_selects_with_bias_weights_without_it() {
        let logits = [0.5f32, 0.0, 1.0, -2.0];
        let bias = [0.0f32, 0.9, 0.0, 0.0];
        let (sel, w) = run(&cfg(Gating::Sigmoid, true, 2.5), Some(&bias), &logits);
        // selection scores: s(0.5)=.62, s(0)+.9=1.4, s(1)=.73 -> experts 1 then 2
        assert_eq!(sel, [1, 2]);
        let sg = |x: f32| 1.0 / (1.0 + (-x).exp());
        let sum = sg(0.0) + sg(1.0);
        assert!((w[0] - 2.5 * sg(0.0) / sum).abs() < 1e-6);
        assert!((w[1] - 2.5 * sg(1.0) / sum).abs() < 1e-6);
    }

    #[test]
    fn softmax_over_the_selected_logits() {
        let logits = [0.3f32, -1.0, 2.0, 1.5];
        let (sel, w) = run(&cfg(Gating::SoftmaxSelected, false, 0.0), None, &logits);
        assert_eq!(sel, [2, 3]);
        let z = 2f32.exp() + 1.5f32.exp();
        assert!((w[0] - 2f32.exp() / z).abs() < 1e-6 && (w[1] - 1.5f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn ties_pick_the_lower_index_and_never_repeat() {
        let (sel, _) = run(
            &cfg(Gating::Softmax, true, 0.0),
            None,
            &[1.0, 1.0, 1.0, 1.0],
        );
        assert_eq!(sel, [0, 1]);
    }

    #[test]
    fn gating_codes() {
        assert_eq!(Gating::from_code(2).unwrap(), Gating::Sigmoid);
        assert!(Gating::from_code(7).unwrap_err().to_string().contains("7"));
    }
}
