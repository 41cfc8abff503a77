//! The dense decoder-only transformer shared by llama, qwen2, qwen3 and gemma3: one forward
//! pass parameterised by a [`DecoderConfig`] and the optional tensors each family has
//! (biases, q/k norms, post-norms, rope factors).
//!
//! Every step is a [`Backend`] call on preallocated scratch tensors, so a decode step
//! allocates nothing.

use std::sync::Arc;

use engine_core::{
    Activation, AttentionSpec, Backend, DType, QueryPos, RopeMode, RopeSpec, Tensor, Weight,
};

use crate::batch::Batch;
use crate::context::{Context, ContextOptions};
use crate::error::{ModelError, Result};
use crate::hparams::HParams;
use crate::weights::WeightLoader;
use crate::{MemoryEstimate, Model, ModelInfo};

/// Rows of logits computed per output matmul (bounds the logits scratch).
const OUT_CHUNK: usize = 32;

/// Per-layer settings.
#[derive(Clone, Debug)]
pub struct LayerConfig {
    /// Rope base frequency for this layer.
    pub rope_base: f32,
    /// Rope linear scale (1 / factor) for this layer.
    pub rope_scale: f32,
    /// Sliding window, for local-attention layers.
    pub window: Option<u32>,
}

/// Everything that distinguishes one dense decoder family from another.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Hyperparameters from the file.
    pub hp: HParams,
    /// Rope pairing.
    pub rope_mode: RopeMode,
    /// Per-layer rope and window settings.
    pub layers: Vec<LayerConfig>,
    /// Multiplier on token embeddings (gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Multiply queries by this before attention instead of scaling scores (gemma).
    pub q_prescale: Option<f32>,
    /// Score scale inside attention.
    pub attn_scale: f32,
    /// Attention logit soft-cap (0 = none).
    pub attn_softcap: f32,
    /// Final logit soft-cap (0 = none).
    pub final_softcap: f32,
    /// Feed-forward activation.
    pub act: Activation,
    /// YaRN extrapolation factor (0 disables).
    pub yarn_ext_factor: f32,
}

impl DecoderConfig {
    /// Defaults for a plain llama-style decoder from its hyperparameters.
    pub fn standard(hp: HParams, rope_mode: RopeMode) -> DecoderConfig {
        let layers = (0..hp.n_layer)
            .map(|_| LayerConfig {
                rope_base: hp.rope_base,
                rope_scale: hp.rope_freq_scale,
                window: None,
            })
            .collect();
        let attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
        let yarn = if hp.rope_scaling == "yarn" { 1.0 } else { 0.0 };
        DecoderConfig {
            hp,
            rope_mode,
            layers,
            embed_scale: None,
            q_prescale: None,
            attn_scale,
            attn_softcap: 0.0,
            final_softcap: 0.0,
            act: Activation::Silu,
            yarn_ext_factor: yarn,
        }
    }
}

/// One block's weights.
pub struct LayerWeights {
    attn_norm: Weight,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    bq: Option<Weight>,
    bk: Option<Weight>,
    bv: Option<Weight>,
    bo: Option<Weight>,
    q_norm: Option<Weight>,
    k_norm: Option<Weight>,
    attn_post_norm: Option<Weight>,
    ffn_norm: Weight,
    ffn_gate: Option<Weight>,
    ffn_up: Weight,
    ffn_down: Weight,
    ffn_post_norm: Option<Weight>,
    rope_freqs: Option<Weight>,
}

/// A loaded dense decoder.
pub struct Decoder {
    cfg: DecoderConfig,
    info: ModelInfo,
    backend: Arc<dyn Backend>,
    tok_embd: Weight,
    output_norm: Weight,
    output: Weight,
    layers: Vec<LayerWeights>,
}

struct Scratch {
    x: Tensor,
    h: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    sel: Tensor,
    sel_norm: Tensor,
    logits: Tensor,
    rows: Vec<u32>,
    queries: Vec<QueryPos>,
    out_idx: Vec<u32>,
    /// Lengths of the runs of consecutive tokens of one sequence (matmul row groups).
    groups: Vec<u32>,
    out_groups: Vec<u32>,
}

impl Decoder {
    /// Loads the weights named as llama.cpp names them for this family.
    pub fn load(
        gguf: &engine_gguf::GgufModel,
        backend: Arc<dyn Backend>,
        cfg: DecoderConfig,
        name: String,
    ) -> Result<Decoder> {
        let hp = &cfg.hp;
        let (e, hd, hv) = (hp.n_embd, hp.head_dim, hp.head_dim_v);
        let mut wl = WeightLoader::new(gguf, &backend);
        let tok_embd = wl.get("token_embd.weight", None)?;
        if tok_embd.cols() != e {
            return Err(ModelError::Tensor {
                name: "token_embd.weight".into(),
                problem: format!("rows of {} for an embedding width of {e}", tok_embd.cols()),
            });
        }
        let n_vocab = tok_embd.rows();
        let output_norm = wl.get("output_norm.weight", Some(&[e]))?;
        let output = match wl.opt("output.weight", Some(&[n_vocab, e]))? {
            Some(w) => w,
            None => tok_embd.clone(),
        };
        let rope_freqs = wl.opt("rope_freqs.weight", Some(&[hp.n_rot / 2]))?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for i in 0..hp.n_layer {
            let (nh, nkv, ff) = (hp.n_head[i], hp.n_head_kv[i], hp.n_ff[i]);
            if nh == 0 || nkv == 0 || ff == 0 {
                return Err(ModelError::HParam(format!(
                    "layer {i}: {nh} heads, {nkv} kv heads, feed-forward {ff}: this architecture needs all three"
                )));
            }
            let t = |s: &str| format!("blk.{i}.{s}");
            let layer_freqs = wl.opt(&t("rope_freqs.weight"), Some(&[hp.n_rot / 2]))?;
            layers.push(LayerWeights {
                attn_norm: wl.get(&t("attn_norm.weight"), Some(&[e]))?,
                wq: wl.get(&t("attn_q.weight"), Some(&[nh * hd, e]))?,
                wk: wl.get(&t("attn_k.weight"), Some(&[nkv * hd, e]))?,
                wv: wl.get(&t("attn_v.weight"), Some(&[nkv * hv, e]))?,
                wo: wl.get(&t("attn_output.weight"), Some(&[e, nh * hv]))?,
                bq: wl.opt(&t("attn_q.bias"), Some(&[nh * hd]))?,
                bk: wl.opt(&t("attn_k.bias"), Some(&[nkv * hd]))?,
                bv: wl.opt(&t("attn_v.bias"), Some(&[nkv * hv]))?,
                bo: wl.opt(&t("attn_output.bias"), Some(&[e]))?,
                q_norm: wl.opt(&t("attn_q_norm.weight"), Some(&[hd]))?,
                k_norm: wl.opt(&t("attn_k_norm.weight"), Some(&[hd]))?,
                attn_post_norm: wl.opt(&t("post_attention_norm.weight"), Some(&[e]))?,
                ffn_norm: wl.get(&t("ffn_norm.weight"), Some(&[e]))?,
                ffn_gate: wl.opt(&t("ffn_gate.weight"), Some(&[ff, e]))?,
                ffn_up: wl.get(&t("ffn_up.weight"), Some(&[ff, e]))?,
                ffn_down: wl.get(&t("ffn_down.weight"), Some(&[e, ff]))?,
                ffn_post_norm: wl.opt(&t("post_ffw_norm.weight"), Some(&[e]))?,
                rope_freqs: layer_freqs.or_else(|| rope_freqs.clone()),
            });
        }
        let weight_bytes = wl.bytes();
        let n_params: u64 = gguf.tensors().iter().map(|t| t.numel()).sum();
        let info = ModelInfo {
            arch: hp.arch.clone(),
            name,
            n_vocab,
            n_ctx_train: hp.n_ctx_train,
            n_embd: e,
            n_layer: hp.n_layer,
            n_head: hp.n_head[0],
            n_head_kv: hp.n_head_kv[0],
            n_params,
            weight_bytes,
        };
        Ok(Decoder {
            cfg,
            info,
            backend,
            tok_embd,
            output_norm,
            output,
            layers,
        })
    }

    fn kv_widths(&self) -> Vec<Option<(usize, usize)>> {
        let hp = &self.cfg.hp;
        (0..hp.n_layer)
            .map(|i| {
                Some((
                    hp.n_head_kv[i] * hp.head_dim,
                    hp.n_head_kv[i] * hp.head_dim_v,
                ))
            })
            .collect()
    }

    fn max_widths(&self) -> (usize, usize, usize, usize) {
        let hp = &self.cfg.hp;
        let q = (0..hp.n_layer)
            .map(|i| hp.n_head[i] * hp.head_dim.max(hp.head_dim_v))
            .max()
            .unwrap_or(0);
        let kv = (0..hp.n_layer)
            .map(|i| hp.n_head_kv[i] * hp.head_dim.max(hp.head_dim_v))
            .max()
            .unwrap_or(0);
        let ff = hp.n_ff.iter().copied().max().unwrap_or(0);
        (hp.n_embd, q, kv, ff)
    }

    fn scratch(&self, n_batch: usize) -> Result<Scratch> {
        let be = &self.backend;
        let (e, q, kv, ff) = self.max_widths();
        let n_out = OUT_CHUNK.min(n_batch);
        Ok(Scratch {
            x: be.alloc(DType::F32, &[n_batch, e])?,
            h: be.alloc(DType::F32, &[n_batch, e])?,
            q: be.alloc(DType::F32, &[n_batch, q])?,
            k: be.alloc(DType::F32, &[n_batch, kv])?,
            v: be.alloc(DType::F32, &[n_batch, kv])?,
            attn: be.alloc(DType::F32, &[n_batch, q])?,
            o: be.alloc(DType::F32, &[n_batch, e])?,
            gate: be.alloc(DType::F32, &[n_batch, ff])?,
            up: be.alloc(DType::F32, &[n_batch, ff])?,
            sel: be.alloc(DType::F32, &[n_out, e])?,
            sel_norm: be.alloc(DType::F32, &[n_out, e])?,
            logits: be.alloc(DType::F32, &[n_out, self.info.n_vocab])?,
            rows: Vec::with_capacity(n_batch),
            queries: Vec::with_capacity(n_batch),
            out_idx: Vec::with_capacity(n_batch),
            groups: Vec::with_capacity(n_batch),
            out_groups: Vec::with_capacity(n_out),
        })
    }

    fn rope_spec<'a>(&'a self, l: usize, n_head: usize) -> RopeSpec<'a> {
        let hp = &self.cfg.hp;
        let lc = &self.cfg.layers[l];
        RopeSpec {
            mode: self.cfg.rope_mode,
            n_head,
            head_dim: hp.head_dim,
            n_rot: hp.n_rot,
            freq_base: lc.rope_base,
            freq_scale: lc.rope_scale,
            freq_factors: self.layers[l].rope_freqs.as_ref(),
            ext_factor: self.cfg.yarn_ext_factor,
            attn_factor: hp.rope_attn_factor,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: hp.n_ctx_orig as u32,
        }
    }

    /// Runs tokens `range` of `batch` and appends their requested logits to `logits`.
    fn run_chunk(
        &self,
        ctx: &mut Context,
        batch: &Batch,
        range: std::ops::Range<usize>,
        logits: &mut Vec<f32>,
        output: Output,
    ) -> Result<()> {
        let be = &*self.backend;
        let hp = &self.cfg.hp;
        let n = range.len();
        let n_ctx = ctx.opts.n_ctx;
        let mut s = ctx
            .scratch
            .take()
            .and_then(|b| b.downcast::<Scratch>().ok())
            .ok_or_else(|| ModelError::Input("context was made by another model".into()))?;
        let result = (|| -> Result<()> {
            let tokens = &batch.tokens[range.clone()];
            let pos = &batch.pos[range.clone()];
            s.rows.clear();
            s.queries.clear();
            s.groups.clear();
            for i in range.clone() {
                match s.groups.last_mut() {
                    Some(g) if batch.seq[i] == batch.seq[i - 1] => *g += 1,
                    _ => s.groups.push(1),
                }
                let base = batch.seq[i] * n_ctx as u32;
                s.rows.push(base + batch.pos[i]);
                s.queries.push(QueryPos {
                    kv_base: base,
                    pos: batch.pos[i],
                });
            }
            let e = hp.n_embd;
            s.x.reshape(&[n, e])?;
            s.h.reshape(&[n, e])?;
            s.o.reshape(&[n, e])?;
            be.embed(&self.tok_embd, tokens, &mut s.x)?;
            if let Some(sc) = self.cfg.embed_scale {
                be.scale(&mut s.x, sc)?;
            }
            ctx.observe(format_args!("inp_scaled"), &s.x)?;
            for (l, lw) in self.layers.iter().enumerate() {
                let (nh, nkv, ff) = (hp.n_head[l], hp.n_head_kv[l], hp.n_ff[l]);
                let (hd, hv) = (hp.head_dim, hp.head_dim_v);
                s.q.reshape(&[n, nh * hd])?;
                s.k.reshape(&[n, nkv * hd])?;
                s.v.reshape(&[n, nkv * hv])?;
                s.attn.reshape(&[n, nh * hv])?;
                s.gate.reshape(&[n, ff])?;
                s.up.reshape(&[n, ff])?;

                be.rms_norm(&s.x, Some(&lw.attn_norm), hp.rms_eps, &mut s.h)?;
                ctx.observe(format_args!("attn_norm-{l}"), &s.h)?;
                be.matmul_groups(&s.h, &lw.wq, &mut s.q, &s.groups)?;
                be.matmul_groups(&s.h, &lw.wk, &mut s.k, &s.groups)?;
                be.matmul_groups(&s.h, &lw.wv, &mut s.v, &s.groups)?;
                if let Some(b) = &lw.bq {
                    be.add_bias(&mut s.q, b)?;
                }
                if let Some(b) = &lw.bk {
                    be.add_bias(&mut s.k, b)?;
                }
                if let Some(b) = &lw.bv {
                    be.add_bias(&mut s.v, b)?;
                }
                if let Some(w) = &lw.q_norm {
                    s.q.reshape(&[n * nh, hd])?;
                    be.rms_norm_inplace(&mut s.q, Some(w), hp.rms_eps)?;
                    s.q.reshape(&[n, nh * hd])?;
                }
                if let Some(w) = &lw.k_norm {
                    s.k.reshape(&[n * nkv, hd])?;
                    be.rms_norm_inplace(&mut s.k, Some(w), hp.rms_eps)?;
                    s.k.reshape(&[n, nkv * hd])?;
                }
                ctx.observe(format_args!("Qcur_normed-{l}"), &s.q)?;
                ctx.observe(format_args!("Kcur_normed-{l}"), &s.k)?;
                ctx.observe(format_args!("Vcur-{l}"), &s.v)?;
                be.rope(&mut s.q, pos, &self.rope_spec(l, nh))?;
                be.rope(&mut s.k, pos, &self.rope_spec(l, nkv))?;
                ctx.observe(format_args!("Qcur_rope-{l}"), &s.q)?;
                ctx.observe(format_args!("Kcur_rope-{l}"), &s.k)?;
                if let Some(sc) = self.cfg.q_prescale {
                    be.scale(&mut s.q, sc)?;
                }
                let kv = ctx.kv[l].as_mut().expect("every decoder layer has a cache");
                be.kv_store(&mut kv.k, &s.k, &s.rows)?;
                be.kv_store(&mut kv.v, &s.v, &s.rows)?;
                let spec = AttentionSpec {
                    n_head: nh,
                    n_kv_head: nkv,
                    head_dim: hd,
                    head_dim_v: hv,
                    scale: if self.cfg.q_prescale.is_some() {
                        1.0
                    } else {
                        self.cfg.attn_scale
                    },
                    softcap: self.cfg.attn_softcap,
                    window: self.cfg.layers[l].window,
                    sinks: None,
                    queries: &s.queries,
                };
                be.attention(&s.q, &kv.k, &kv.v, &spec, &mut s.attn)?;
                ctx.observe(format_args!("kqv_out-{l}"), &s.attn)?;
                be.matmul_groups(&s.attn, &lw.wo, &mut s.o, &s.groups)?;
                ctx.observe(format_args!("attn_out-{l}"), &s.o)?;
                if let Some(b) = &lw.bo {
                    be.add_bias(&mut s.o, b)?;
                }
                if let Some(w) = &lw.attn_post_norm {
                    be.rms_norm_inplace(&mut s.o, Some(w), hp.rms_eps)?;
                }
                be.add(&mut s.x, &s.o)?;
                ctx.observe(format_args!("sa_out-{l}"), &s.x)?;

                be.rms_norm(&s.x, Some(&lw.ffn_norm), hp.rms_eps, &mut s.h)?;
                ctx.observe(format_args!("ffn_norm-{l}"), &s.h)?;
                be.matmul_groups(&s.h, &lw.ffn_up, &mut s.up, &s.groups)?;
                match &lw.ffn_gate {
                    Some(g) => {
                        be.matmul_groups(&s.h, g, &mut s.gate, &s.groups)?;
                        ctx.observe(format_args!("ffn_gate-{l}"), &s.gate)?;
                        ctx.observe(format_args!("ffn_up-{l}"), &s.up)?;
                        be.glu(self.cfg.act, &mut s.gate, &s.up)?;
                        ctx.observe(format_args!("ffn_geglu-{l}"), &s.gate)?;
                        be.matmul_groups(&s.gate, &lw.ffn_down, &mut s.o, &s.groups)?;
                    }
                    None => {
                        be.glu(self.cfg.act, &mut s.up, &s.gate)?;
                        be.matmul_groups(&s.up, &lw.ffn_down, &mut s.o, &s.groups)?;
                    }
                }
                ctx.observe(format_args!("ffn_out-{l}"), &s.o)?;
                if let Some(w) = &lw.ffn_post_norm {
                    be.rms_norm_inplace(&mut s.o, Some(w), hp.rms_eps)?;
                }
                be.add(&mut s.x, &s.o)?;
                ctx.observe(format_args!("l_out-{l}"), &s.x)?;
            }

            s.out_idx.clear();
            for (j, i) in range.clone().enumerate() {
                if batch.output[i] {
                    s.out_idx.push(j as u32);
                }
            }
            let n_vocab = self.info.n_vocab;
            let mut start = 0;
            while start < s.out_idx.len() {
                let end = (start + OUT_CHUNK).min(s.out_idx.len());
                let m = end - start;
                s.sel.reshape(&[m, e])?;
                s.sel_norm.reshape(&[m, e])?;
                s.logits.reshape(&[m, n_vocab])?;
                be.gather_rows(&s.x, &s.out_idx[start..end], &mut s.sel)?;
                be.rms_norm(&s.sel, Some(&self.output_norm), hp.rms_eps, &mut s.sel_norm)?;
                s.out_groups.clear();
                for (j, &r) in s.out_idx[start..end].iter().enumerate() {
                    let seq = batch.seq[range.start + r as usize];
                    match s.out_groups.last_mut() {
                        Some(g)
                            if j > 0
                                && batch.seq[range.start + s.out_idx[start + j - 1] as usize]
                                    == seq =>
                        {
                            *g += 1
                        }
                        _ => s.out_groups.push(1),
                    }
                }
                if output == Output::Embeddings {
                    let at = logits.len();
                    logits.resize(at + m * e, 0.0);
                    be.read_f32(&s.sel_norm, &mut logits[at..])?;
                    start = end;
                    continue;
                }
                be.matmul_groups(&s.sel_norm, &self.output, &mut s.logits, &s.out_groups)?;
                let at = logits.len();
                logits.resize(at + m * n_vocab, 0.0);
                be.read_f32(&s.logits, &mut logits[at..])?;
                if self.cfg.final_softcap != 0.0 {
                    let c = self.cfg.final_softcap;
                    for v in &mut logits[at..] {
                        *v = c * (*v / c).tanh();
                    }
                }
                start = end;
            }
            Ok(())
        })();
        ctx.scratch = Some(s);
        result
    }
}

/// What a forward pass produces for the tokens marked for output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Logits,
    Embeddings,
}

impl Decoder {
    fn run(
        &self,
        ctx: &mut Context,
        batch: &Batch,
        out: &mut Vec<f32>,
        output: Output,
    ) -> Result<()> {
        ctx.validate(batch, self.info.n_vocab)?;
        out.clear();
        let step = ctx.opts.n_batch;
        let mut start = 0;
        while start < batch.len() {
            let end = (start + step).min(batch.len());
            self.run_chunk(ctx, batch, start..end, out, output)?;
            start = end;
        }
        ctx.commit();
        Ok(())
    }
}

impl Model for Decoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_context(&self, opts: ContextOptions) -> Result<Context> {
        let mut ctx = Context::new(self.backend.clone(), opts, &self.kv_widths())?;
        ctx.scratch = Some(Box::new(self.scratch(ctx.opts.n_batch)?));
        Ok(ctx)
    }

    fn memory_estimate(&self, opts: &ContextOptions) -> MemoryEstimate {
        let (e, q, kv, ff) = self.max_widths();
        let nb = opts.n_batch as u64;
        let n_out = OUT_CHUNK.min(opts.n_batch) as u64;
        let scratch = 4
            * (nb * (4 * e as u64 + 2 * q as u64 + 2 * kv as u64 + 2 * ff as u64)
                + n_out * (2 * e as u64 + self.info.n_vocab as u64));
        MemoryEstimate {
            weights: self.info.weight_bytes,
            kv_cache: Context::kv_bytes_for(opts, &self.kv_widths()),
            scratch,
        }
    }

    fn forward(&self, ctx: &mut Context, batch: &Batch, logits: &mut Vec<f32>) -> Result<()> {
        self.run(ctx, batch, logits, Output::Logits)
    }

    fn forward_embeddings(
        &self,
        ctx: &mut Context,
        batch: &Batch,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.run(ctx, batch, out, Output::Embeddings)
    }
}
