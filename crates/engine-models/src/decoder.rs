//! The one decoder driver every architecture uses: a stack of blocks, each a mixer
//! (attention or Mamba-2, or none) and a feed-forward part (dense, mixture of experts, or
//! none), each with its pre-norm, optional post-norm and residual. A [`DecoderConfig`] says
//! what each layer is (attention variant, rope, window, FFN kind); optional tensors (biases,
//! q/k norms, sinks, rope factors, fused QKV) are picked up from the file by their llama.cpp
//! names.
//!
//! Every step is a [`Backend`] call on preallocated scratch tensors, so a decode step
//! allocates nothing.

use std::sync::Arc;

use engine_core::{
    Activation, AttentionSpec, Backend, DType, QueryPos, RopeMode, RopeSpec, SeqRun, Tensor, Weight,
};

use crate::batch::Batch;
use crate::context::{Context, ContextOptions, LayerMemory};
use crate::error::{ModelError, Result};
use crate::ffn::DenseFfn;
use crate::hparams::{HParams, MoeHParams, SsmHParams};
use crate::mamba::{MambaScratch, MambaWeights};
use crate::moe::{Gating, MoeConfig, MoeScratch, MoeWeights};
use crate::weights::WeightLoader;
use crate::{MemoryEstimate, Model, ModelInfo};

/// Rows of logits computed per output matmul (bounds the logits scratch).
const OUT_CHUNK: usize = 32;

/// Rotary embedding of one attention layer (ggml's `rope_ext` parameters).
#[derive(Clone, Copy, Debug)]
pub struct RopeConfig {
    /// Pairing of dimensions.
    pub mode: RopeMode,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// Base frequency.
    pub base: f32,
    /// Linear position scale (1 / factor).
    pub scale: f32,
    /// YaRN extrapolation mix (0 = no YaRN).
    pub ext_factor: f32,
    /// Magnitude multiplier on cos and sin.
    pub attn_factor: f32,
    /// YaRN ramp start.
    pub beta_fast: f32,
    /// YaRN ramp end.
    pub beta_slow: f32,
    /// Original training context (YaRN, LongRoPE factor choice).
    pub n_ctx_orig: u32,
}

impl RopeConfig {
    /// The file's global rope settings with the given pairing.
    pub fn from_hparams(hp: &HParams, mode: RopeMode) -> RopeConfig {
        RopeConfig {
            mode,
            n_rot: hp.n_rot,
            base: hp.rope_base,
            scale: hp.effective_freq_scale(),
            ext_factor: hp.yarn_ext_factor(),
            attn_factor: hp.rope_attn_factor_effective(),
            beta_fast: hp.yarn_beta_fast,
            beta_slow: hp.yarn_beta_slow,
            n_ctx_orig: hp.n_ctx_orig as u32,
        }
    }
}

/// An attention layer's settings.
#[derive(Clone, Copy, Debug)]
pub struct AttnConfig {
    /// Rotary embedding (`None`: no positional rotation, as in Nemotron-H).
    pub rope: Option<RopeConfig>,
    /// Sliding window, for local-attention layers.
    pub window: Option<u32>,
}

/// What mixes information across positions in a layer.
#[derive(Clone, Copy, Debug)]
pub enum MixerConfig {
    /// Self-attention over the KV cache.
    Attention(AttnConfig),
    /// A Mamba-2 mixer with recurrent state.
    Mamba2,
    /// Nothing (feed-forward-only layers).
    None,
}

/// A layer's feed-forward part.
#[derive(Clone, Copy, Debug)]
pub enum FfnConfig {
    /// A dense feed-forward block with the decoder's activation.
    Dense,
    /// A mixture of experts.
    Moe(MoeConfig),
    /// None (mixer-only layers).
    None,
}

/// One block.
#[derive(Clone, Copy, Debug)]
pub struct LayerConfig {
    /// The mixer.
    pub mixer: MixerConfig,
    /// The feed-forward part.
    pub ffn: FfnConfig,
}

/// Query temperature scaling (llama 4, Ministral 3): after rope, queries at position `p` are
/// multiplied by `1 + beta * ln(1 + floor(p / floor_scale))`.
#[derive(Clone, Copy, Debug)]
pub struct AttnTemperature {
    /// `attention.temperature_scale`.
    pub beta: f32,
    /// Positions per step (the original context length).
    pub floor_scale: u32,
}

/// Everything that distinguishes one family from another.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Hyperparameters from the file.
    pub hp: HParams,
    /// Every block of the file (`hp.n_layer`), including trailing next-token blocks.
    pub layers: Vec<LayerConfig>,
    /// Multiplier on token embeddings (gemma: sqrt(n_embd)).
    pub embed_scale: Option<f32>,
    /// Multiply queries by this before attention instead of scaling scores (gemma, phi3).
    pub q_prescale: Option<f32>,
    /// Score scale inside attention.
    pub attn_scale: f32,
    /// Attention logit soft-cap (0 = none).
    pub attn_softcap: f32,
    /// Final logit soft-cap (0 = none).
    pub final_softcap: f32,
    /// Activation of dense feed-forward blocks and shared experts.
    pub act: Activation,
    /// Query temperature scaling.
    pub attn_temperature: Option<AttnTemperature>,
    /// Name of each FFN's pre-norm (`ffn_norm`; `post_attention_norm` for gpt-oss and
    /// glm4moe; `attn_norm` for Nemotron-H, whose blocks have one norm).
    pub ffn_norm: &'static str,
    /// Norms after the attention and after the FFN output (`post_attention_norm`,
    /// `post_ffw_norm`; gemma), applied when present.
    pub post_norms: bool,
    /// Mamba-2 shape, for models with Mamba layers.
    pub ssm: Option<SsmHParams>,
}

impl DecoderConfig {
    /// Defaults for a plain llama-style decoder: every layer attention with the file's rope
    /// settings and a dense SwiGLU FFN.
    pub fn standard(hp: HParams, rope_mode: RopeMode) -> DecoderConfig {
        let rope = RopeConfig::from_hparams(&hp, rope_mode);
        let layers = (0..hp.n_layer)
            .map(|_| LayerConfig {
                mixer: MixerConfig::Attention(AttnConfig {
                    rope: Some(rope),
                    window: None,
                }),
                ffn: FfnConfig::Dense,
            })
            .collect();
        let attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
        DecoderConfig {
            hp,
            layers,
            embed_scale: None,
            q_prescale: None,
            attn_scale,
            attn_softcap: 0.0,
            final_softcap: 0.0,
            act: Activation::Silu,
            attn_temperature: None,
            ffn_norm: "ffn_norm",
            post_norms: false,
            ssm: None,
        }
    }

    /// Makes the feed-forward part of every layer from `moe.n_layer_dense_lead` on a mixture
    /// of experts with this routing, when the file has experts.
    pub fn with_moe(
        mut self,
        moe: &MoeHParams,
        gating: Gating,
        norm_weights: bool,
        act: Activation,
    ) -> DecoderConfig {
        if moe.n_expert == 0 {
            return self;
        }
        let cfg = MoeConfig {
            n_expert: moe.n_expert,
            n_used: moe.n_expert_used,
            n_ff: moe.n_ff_exp,
            gating,
            norm_weights,
            weights_scale: moe.weights_scale,
            act,
        };
        for l in self.layers.iter_mut().skip(moe.n_layer_dense_lead) {
            l.ffn = FfnConfig::Moe(cfg);
        }
        self
    }

    /// Blocks run by the forward pass (trailing next-token blocks are loaded, not run).
    pub fn n_layer_run(&self) -> usize {
        self.hp.n_layer_run()
    }
}

/// One attention layer's weights.
struct AttnWeights {
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
    sinks: Option<Weight>,
    rope_freqs: Option<Weight>,
    rope_long: Option<Weight>,
    rope_short: Option<Weight>,
}

enum MixerWeights {
    Attention(AttnConfig, Box<AttnWeights>),
    Mamba2(Box<MambaWeights>),
    None,
}

enum FfnWeights {
    Dense(Box<DenseFfn>),
    Moe(MoeConfig, Box<MoeWeights>),
    None,
}

/// One block's weights.
struct LayerWeights {
    attn_norm: Option<Weight>,
    mixer: MixerWeights,
    attn_post_norm: Option<Weight>,
    ffn_norm: Option<Weight>,
    ffn: FfnWeights,
    ffn_post_norm: Option<Weight>,
}

/// The extra weights of a next-token-prediction (NextN / MTP) block, kept for speculative
/// decoding; its attention and MoE weights are loaded like any block's. The forward pass
/// does not run it.
pub struct NextNWeights {
    /// Block index.
    pub layer: usize,
    /// Projection of `[embedding | hidden]` to the residual width, `[n_embd, 2 * n_embd]`.
    pub eh_proj: Weight,
    /// Norm of the token embedding.
    pub enorm: Weight,
    /// Norm of the hidden state.
    pub hnorm: Weight,
    /// Norm before the shared output head.
    pub shared_head_norm: Option<Weight>,
}

/// A loaded model.
pub struct Decoder {
    cfg: DecoderConfig,
    info: ModelInfo,
    backend: Arc<dyn Backend>,
    tok_embd: Weight,
    output_norm: Weight,
    output: Weight,
    layers: Vec<LayerWeights>,
    nextn: Vec<NextNWeights>,
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
    /// Lengths of the runs of consecutive tokens of one sequence (matmul row groups); a
    /// token marked [`Batch::single`] is a group of its own.
    groups: Vec<u32>,
    /// Each row's group number (MoE rows meet the expert matmuls in these groups).
    group_ids: Vec<u32>,
    /// The runs of consecutive tokens of one sequence with their slots (recurrent layers).
    runs: Vec<SeqRun>,
    /// Per-token query scales (temperature scaling).
    q_scales: Vec<f32>,
    out_groups: Vec<u32>,
    out_pieces: Vec<u32>,
    moe: Option<MoeScratch>,
    mamba: Option<MambaScratch>,
}

/// Widths that size the scratch buffers.
struct Widths {
    e: usize,
    q: usize,
    kv: usize,
    ff: usize,
    moe: Option<(MoeConfig, usize)>,
}

fn missing(name: String) -> ModelError {
    ModelError::Tensor {
        name,
        problem: "required by the architecture but missing from the file".into(),
    }
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
        let e = hp.n_embd;
        if cfg.layers.len() != hp.n_layer {
            return Err(ModelError::HParam(format!(
                "{} layer descriptions for {} blocks",
                cfg.layers.len(),
                hp.n_layer
            )));
        }
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
        let rope_long = wl.opt("rope_factors_long.weight", Some(&[hp.n_rot / 2]))?;
        let rope_short = wl.opt("rope_factors_short.weight", Some(&[hp.n_rot / 2]))?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        for (i, lc) in cfg.layers.iter().enumerate() {
            let t = |s: &str| format!("blk.{i}.{s}");
            let mixer = match lc.mixer {
                MixerConfig::Attention(ac) => MixerWeights::Attention(
                    ac,
                    Box::new(Self::load_attention(
                        &mut wl,
                        hp,
                        i,
                        (&rope_freqs, &rope_long, &rope_short),
                    )?),
                ),
                MixerConfig::Mamba2 => {
                    let ssm = cfg.ssm.as_ref().ok_or_else(|| {
                        ModelError::HParam(format!("layer {i} is Mamba-2 but no SSM shape"))
                    })?;
                    MixerWeights::Mamba2(Box::new(MambaWeights::load(&mut wl, i, ssm, e)?))
                }
                MixerConfig::None => MixerWeights::None,
            };
            let has_mixer = !matches!(mixer, MixerWeights::None);
            let ffn = match lc.ffn {
                FfnConfig::Dense => {
                    let ff = hp.n_ff[i];
                    if ff == 0 {
                        return Err(ModelError::HParam(format!(
                            "layer {i} has a feed-forward block of width 0"
                        )));
                    }
                    FfnWeights::Dense(Box::new(DenseFfn::load(&mut wl, i, "", e, ff, cfg.act)?))
                }
                FfnConfig::Moe(mc) => {
                    FfnWeights::Moe(mc, Box::new(MoeWeights::load(&mut wl, i, &mc, e, cfg.act)?))
                }
                FfnConfig::None => FfnWeights::None,
            };
            let has_ffn = !matches!(ffn, FfnWeights::None);
            let post = |wl: &mut WeightLoader, s: &str, on: bool| -> Result<Option<Weight>> {
                if cfg.post_norms && on {
                    wl.opt(&t(s), Some(&[e]))
                } else {
                    Ok(None)
                }
            };
            layers.push(LayerWeights {
                attn_norm: if has_mixer {
                    Some(wl.get(&t("attn_norm.weight"), Some(&[e]))?)
                } else {
                    None
                },
                mixer,
                attn_post_norm: post(&mut wl, "post_attention_norm.weight", has_mixer)?,
                ffn_norm: if has_ffn {
                    let n = t(&format!("{}.weight", cfg.ffn_norm));
                    Some(wl.get(&n, Some(&[e]))?)
                } else {
                    None
                },
                ffn,
                ffn_post_norm: post(&mut wl, "post_ffw_norm.weight", has_ffn)?,
            });
        }
        let mut nextn = vec![];
        for i in hp.n_layer_run()..hp.n_layer {
            let t = |s: &str| format!("blk.{i}.nextn.{s}");
            nextn.push(NextNWeights {
                layer: i,
                eh_proj: wl.get(&t("eh_proj.weight"), Some(&[e, 2 * e]))?,
                enorm: wl.get(&t("enorm.weight"), Some(&[e]))?,
                hnorm: wl.get(&t("hnorm.weight"), Some(&[e]))?,
                shared_head_norm: wl.opt(&t("shared_head_norm.weight"), Some(&[e]))?,
            });
        }
        let weight_bytes = wl.bytes();
        let n_params: u64 = gguf.tensors().iter().map(|t| t.numel()).sum();
        let first_attn = (0..hp.n_layer_run())
            .find(|&i| matches!(cfg.layers[i].mixer, MixerConfig::Attention(_)))
            .unwrap_or(0);
        let info = ModelInfo {
            arch: hp.arch.clone(),
            name,
            n_vocab,
            n_ctx_train: hp.n_ctx_train,
            n_embd: e,
            n_layer: hp.n_layer_run(),
            n_head: hp.n_head[first_attn],
            n_head_kv: hp.n_head_kv[first_attn],
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
            nextn,
        })
    }

    fn load_attention(
        wl: &mut WeightLoader,
        hp: &HParams,
        i: usize,
        (rope_freqs, rope_long, rope_short): (&Option<Weight>, &Option<Weight>, &Option<Weight>),
    ) -> Result<AttnWeights> {
        let (e, hd, hv) = (hp.n_embd, hp.head_dim, hp.head_dim_v);
        let (nh, nkv) = (hp.n_head[i], hp.n_head_kv[i]);
        if nh == 0 || nkv == 0 {
            return Err(ModelError::HParam(format!(
                "layer {i} is an attention layer with {nh} query and {nkv} key/value heads"
            )));
        }
        let t = |s: &str| format!("blk.{i}.{s}");
        let (q, k, v) = (nh * hd, nkv * hd, nkv * hv);
        let (wq, wk, wv, bq, bk, bv) =
            match wl.split_rows(&t("attn_qkv.weight"), Some(&[q + k + v, e]), &[q, k, v])? {
                Some(w) => {
                    let mut w = w.into_iter();
                    let (wq, wk, wv) = (w.next(), w.next(), w.next());
                    let b = wl.split_rows(&t("attn_qkv.bias"), Some(&[q + k + v]), &[q, k, v])?;
                    let mut b = b.into_iter().flatten();
                    (wq, wk, wv, b.next(), b.next(), b.next())
                }
                None => (
                    Some(wl.get(&t("attn_q.weight"), Some(&[q, e]))?),
                    Some(wl.get(&t("attn_k.weight"), Some(&[k, e]))?),
                    Some(wl.get(&t("attn_v.weight"), Some(&[v, e]))?),
                    wl.opt(&t("attn_q.bias"), Some(&[q]))?,
                    wl.opt(&t("attn_k.bias"), Some(&[k]))?,
                    wl.opt(&t("attn_v.bias"), Some(&[v]))?,
                ),
            };
        let layer_freqs = wl.opt(&t("rope_freqs.weight"), Some(&[hp.n_rot / 2]))?;
        Ok(AttnWeights {
            wq: wq.ok_or_else(|| missing(t("attn_q.weight")))?,
            wk: wk.ok_or_else(|| missing(t("attn_k.weight")))?,
            wv: wv.ok_or_else(|| missing(t("attn_v.weight")))?,
            wo: wl.get(&t("attn_output.weight"), Some(&[e, nh * hv]))?,
            bq,
            bk,
            bv,
            bo: wl.opt(&t("attn_output.bias"), Some(&[e]))?,
            q_norm: wl.opt(&t("attn_q_norm.weight"), Some(&[hd]))?,
            k_norm: wl.opt(&t("attn_k_norm.weight"), Some(&[hd]))?,
            sinks: wl.opt(&t("attn_sinks.weight"), Some(&[nh]))?,
            rope_freqs: layer_freqs.or_else(|| rope_freqs.clone()),
            rope_long: rope_long.clone(),
            rope_short: rope_short.clone(),
        })
    }

    /// The next-token-prediction blocks of the file (loaded for speculative decoding; the
    /// forward pass does not run them).
    pub fn nextn(&self) -> &[NextNWeights] {
        &self.nextn
    }

    fn run_layers(&self) -> &[LayerWeights] {
        &self.layers[..self.cfg.n_layer_run()]
    }

    fn memory(&self) -> Vec<LayerMemory> {
        let hp = &self.cfg.hp;
        self.run_layers()
            .iter()
            .enumerate()
            .map(|(i, l)| match &l.mixer {
                MixerWeights::Attention(..) => LayerMemory::Kv(
                    hp.n_head_kv[i] * hp.head_dim,
                    hp.n_head_kv[i] * hp.head_dim_v,
                ),
                MixerWeights::Mamba2(_) => {
                    crate::mamba::memory(self.cfg.ssm.as_ref().expect("checked at load"))
                }
                MixerWeights::None => LayerMemory::None,
            })
            .collect()
    }

    fn widths(&self) -> Widths {
        let hp = &self.cfg.hp;
        let (mut q, mut kv, mut ff) = (0, 0, 0);
        let mut moe: Option<(MoeConfig, usize)> = None;
        for (i, l) in self.run_layers().iter().enumerate() {
            if let MixerWeights::Attention(..) = l.mixer {
                q = q.max(hp.n_head[i] * hp.head_dim.max(hp.head_dim_v));
                kv = kv.max(hp.n_head_kv[i] * hp.head_dim.max(hp.head_dim_v));
            }
            match &l.ffn {
                FfnWeights::Dense(d) => ff = ff.max(d.n_ff()),
                FfnWeights::Moe(mc, w) => {
                    let sh = w.shared_ff();
                    moe = Some(match moe {
                        None => (*mc, sh),
                        Some((m, s)) => (
                            MoeConfig {
                                n_expert: m.n_expert.max(mc.n_expert),
                                n_used: m.n_used.max(mc.n_used),
                                n_ff: m.n_ff.max(mc.n_ff),
                                ..m
                            },
                            s.max(sh),
                        ),
                    });
                }
                FfnWeights::None => {}
            }
        }
        Widths {
            e: hp.n_embd,
            q: q.max(1),
            kv: kv.max(1),
            ff: ff.max(1),
            moe,
        }
    }

    fn has_mamba(&self) -> bool {
        self.run_layers()
            .iter()
            .any(|l| matches!(l.mixer, MixerWeights::Mamba2(_)))
    }

    fn scratch(&self, n_batch: usize) -> Result<Scratch> {
        let be = &*self.backend;
        let w = self.widths();
        let e = w.e;
        let n_out = OUT_CHUNK.min(n_batch);
        Ok(Scratch {
            x: be.alloc(DType::F32, &[n_batch, e])?,
            h: be.alloc(DType::F32, &[n_batch, e])?,
            q: be.alloc(DType::F32, &[n_batch, w.q])?,
            k: be.alloc(DType::F32, &[n_batch, w.kv])?,
            v: be.alloc(DType::F32, &[n_batch, w.kv])?,
            attn: be.alloc(DType::F32, &[n_batch, w.q])?,
            o: be.alloc(DType::F32, &[n_batch, e])?,
            gate: be.alloc(DType::F32, &[n_batch, w.ff])?,
            up: be.alloc(DType::F32, &[n_batch, w.ff])?,
            sel: be.alloc(DType::F32, &[n_out, e])?,
            sel_norm: be.alloc(DType::F32, &[n_out, e])?,
            logits: be.alloc(DType::F32, &[n_out, self.info.n_vocab])?,
            rows: Vec::with_capacity(n_batch),
            queries: Vec::with_capacity(n_batch),
            out_idx: Vec::with_capacity(n_batch),
            groups: Vec::with_capacity(n_batch),
            group_ids: Vec::with_capacity(n_batch),
            runs: Vec::with_capacity(n_batch),
            q_scales: Vec::with_capacity(n_batch),
            out_groups: Vec::with_capacity(n_out),
            out_pieces: Vec::with_capacity(n_batch),
            moe: match &w.moe {
                Some((mc, sh)) => Some(MoeScratch::new(be, mc, e, *sh, n_batch)?),
                None => None,
            },
            mamba: match (&self.cfg.ssm, self.has_mamba()) {
                (Some(ssm), true) => Some(MambaScratch::new(be, ssm, n_batch)?),
                _ => None,
            },
        })
    }

    fn scratch_bytes(&self, n_batch: usize) -> u64 {
        let w = self.widths();
        let nb = n_batch as u64;
        let n_out = OUT_CHUNK.min(n_batch) as u64;
        let (e, q, kv, ff) = (w.e as u64, w.q as u64, w.kv as u64, w.ff as u64);
        let mut bytes = 4
            * (nb * (3 * e + 2 * q + 2 * kv + 2 * ff) + n_out * (2 * e + self.info.n_vocab as u64));
        if let Some((mc, sh)) = &w.moe {
            bytes += MoeScratch::device_bytes(mc, w.e, *sh, n_batch);
        }
        if let (Some(ssm), true) = (&self.cfg.ssm, self.has_mamba()) {
            bytes += MambaScratch::device_bytes(ssm, n_batch);
        }
        bytes
    }

    fn rope_spec<'a>(
        &self,
        rope: &RopeConfig,
        n_head: usize,
        factors: Option<&'a Weight>,
    ) -> RopeSpec<'a> {
        RopeSpec {
            mode: rope.mode,
            n_head,
            head_dim: self.cfg.hp.head_dim,
            n_rot: rope.n_rot,
            freq_base: rope.base,
            freq_scale: rope.scale,
            freq_factors: factors,
            ext_factor: rope.ext_factor,
            attn_factor: rope.attn_factor,
            beta_fast: rope.beta_fast,
            beta_slow: rope.beta_slow,
            n_ctx_orig: rope.n_ctx_orig,
        }
    }

    /// Self-attention of layer `l` on the normalised rows `s.h`, into `s.o`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        ctx: &mut Context,
        s: &mut Scratch,
        l: usize,
        ac: &AttnConfig,
        aw: &AttnWeights,
        pos: &[u32],
    ) -> Result<()> {
        let be = &*self.backend;
        let hp = &self.cfg.hp;
        let n = pos.len();
        let (nh, nkv) = (hp.n_head[l], hp.n_head_kv[l]);
        let (hd, hv) = (hp.head_dim, hp.head_dim_v);
        s.q.reshape(&[n, nh * hd])?;
        s.k.reshape(&[n, nkv * hd])?;
        s.v.reshape(&[n, nkv * hv])?;
        s.attn.reshape(&[n, nh * hv])?;
        be.matmul_groups(&s.h, &aw.wq, &mut s.q, &s.groups)?;
        be.matmul_groups(&s.h, &aw.wk, &mut s.k, &s.groups)?;
        be.matmul_groups(&s.h, &aw.wv, &mut s.v, &s.groups)?;
        if let Some(b) = &aw.bq {
            be.add_bias(&mut s.q, b)?;
        }
        if let Some(b) = &aw.bk {
            be.add_bias(&mut s.k, b)?;
        }
        if let Some(b) = &aw.bv {
            be.add_bias(&mut s.v, b)?;
        }
        if let Some(w) = &aw.q_norm {
            s.q.reshape(&[n * nh, hd])?;
            be.rms_norm_inplace(&mut s.q, Some(w), hp.rms_eps)?;
            s.q.reshape(&[n, nh * hd])?;
        }
        if let Some(w) = &aw.k_norm {
            s.k.reshape(&[n * nkv, hd])?;
            be.rms_norm_inplace(&mut s.k, Some(w), hp.rms_eps)?;
            s.k.reshape(&[n, nkv * hd])?;
        }
        ctx.observe(format_args!("Qcur_normed-{l}"), &s.q)?;
        ctx.observe(format_args!("Kcur_normed-{l}"), &s.k)?;
        ctx.observe(format_args!("Vcur-{l}"), &s.v)?;
        if let Some(rope) = &ac.rope {
            // LongRoPE: long factors once the context exceeds the original one
            let factors = aw
                .rope_freqs
                .as_ref()
                .or(if ctx.opts.n_ctx > rope.n_ctx_orig as usize {
                    aw.rope_long.as_ref()
                } else {
                    aw.rope_short.as_ref()
                });
            be.rope(&mut s.q, pos, &self.rope_spec(rope, nh, factors))?;
            be.rope(&mut s.k, pos, &self.rope_spec(rope, nkv, factors))?;
            ctx.observe(format_args!("Qcur_rope-{l}"), &s.q)?;
            ctx.observe(format_args!("Kcur_rope-{l}"), &s.k)?;
        }
        if let Some(t) = &self.cfg.attn_temperature {
            s.q_scales.clear();
            for &p in pos {
                let steps = (p as f64 / t.floor_scale as f64).floor();
                s.q_scales
                    .push(((steps + 1.0).ln() * t.beta as f64 + 1.0) as f32);
            }
            be.scale_rows(&mut s.q, &s.q_scales)?;
        }
        if let Some(sc) = self.cfg.q_prescale {
            be.scale(&mut s.q, sc)?;
        }
        let kv = ctx
            .kv
            .get_mut(l)
            .and_then(Option::as_mut)
            .ok_or_else(|| ModelError::Input("context was made by another model".into()))?;
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
            window: ac.window,
            sinks: aw.sinks.as_ref(),
            queries: &s.queries,
            groups: Some(&s.groups),
        };
        be.attention(&s.q, &kv.k, &kv.v, &spec, &mut s.attn)?;
        ctx.observe(format_args!("kqv_out-{l}"), &s.attn)?;
        be.matmul_groups(&s.attn, &aw.wo, &mut s.o, &s.groups)?;
        if let Some(b) = &aw.bo {
            be.add_bias(&mut s.o, b)?;
        }
        ctx.observe(format_args!("attn_out-{l}"), &s.o)?;
        Ok(())
    }

    /// Runs tokens `range` of `batch` and appends their requested outputs to `out`.
    fn run_chunk(
        &self,
        ctx: &mut Context,
        batch: &Batch,
        range: std::ops::Range<usize>,
        out: &mut Vec<f32>,
        output: Output,
    ) -> Result<()> {
        let n_ctx = ctx.opts.n_ctx;
        let mut s = ctx
            .scratch
            .take()
            .and_then(|b| b.downcast::<Scratch>().ok())
            .ok_or_else(|| ModelError::Input("context was made by another model".into()))?;
        let result = (|| -> Result<()> {
            s.rows.clear();
            s.queries.clear();
            s.groups.clear();
            s.group_ids.clear();
            s.runs.clear();
            for i in range.clone() {
                let same_seq = i > range.start && batch.seq[i] == batch.seq[i - 1];
                match s.runs.last_mut() {
                    Some(r) if same_seq => r.len += 1,
                    _ => s.runs.push(SeqRun {
                        slot: batch.seq[i],
                        len: 1,
                        fresh: batch.pos[i] == 0,
                    }),
                }
                // a token evaluated as a one-token step is a group of its own
                match s.groups.last_mut() {
                    Some(g) if same_seq && !batch.single[i] && !batch.single[i - 1] => *g += 1,
                    _ => s.groups.push(1),
                }
                s.group_ids.push(s.groups.len() as u32 - 1);
                let base = batch.seq[i] * n_ctx as u32;
                s.rows.push(base + batch.pos[i]);
                s.queries.push(QueryPos {
                    kv_base: base,
                    pos: batch.pos[i],
                });
            }
            self.layers_forward(ctx, &mut s, batch, range.clone())?;
            self.outputs(&mut s, batch, range, out, output)
        })();
        ctx.scratch = Some(s);
        result
    }

    /// Embeds the chunk's tokens and runs every block on them, leaving the residual in `s.x`.
    fn layers_forward(
        &self,
        ctx: &mut Context,
        s: &mut Scratch,
        batch: &Batch,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        let be = &*self.backend;
        let hp = &self.cfg.hp;
        let n = range.len();
        let tokens = &batch.tokens[range.clone()];
        let pos = &batch.pos[range];
        let e = hp.n_embd;
        s.x.reshape(&[n, e])?;
        s.h.reshape(&[n, e])?;
        s.o.reshape(&[n, e])?;
        be.embed(&self.tok_embd, tokens, &mut s.x)?;
        if let Some(sc) = self.cfg.embed_scale {
            be.scale(&mut s.x, sc)?;
        }
        ctx.observe(format_args!("inp_scaled"), &s.x)?;
        for (l, lw) in self.run_layers().iter().enumerate() {
            if let Some(norm) = &lw.attn_norm {
                be.rms_norm(&s.x, Some(norm), hp.rms_eps, &mut s.h)?;
                ctx.observe(format_args!("attn_norm-{l}"), &s.h)?;
                match &lw.mixer {
                    MixerWeights::Attention(ac, aw) => self.attention(ctx, s, l, ac, aw, pos)?,
                    MixerWeights::Mamba2(mw) => {
                        let ssm = self.cfg.ssm.as_ref().expect("checked at load");
                        let mem = ctx
                            .recurrent
                            .get_mut(l)
                            .and_then(Option::as_mut)
                            .ok_or_else(|| {
                                ModelError::Input("context was made by another model".into())
                            })?;
                        let ms = s.mamba.as_mut().expect("allocated with Mamba layers");
                        mw.forward(
                            be, ssm, hp.rms_eps, &s.h, &s.runs, &s.groups, mem, ms, &mut s.o,
                        )?;
                        ctx.observe(format_args!("mamba_out-{l}"), &s.o)?;
                    }
                    MixerWeights::None => unreachable!("a norm implies a mixer"),
                }
                if let Some(w) = &lw.attn_post_norm {
                    be.rms_norm_inplace(&mut s.o, Some(w), hp.rms_eps)?;
                }
                be.add(&mut s.x, &s.o)?;
                ctx.observe(format_args!("sa_out-{l}"), &s.x)?;
            }
            if let Some(norm) = &lw.ffn_norm {
                be.rms_norm(&s.x, Some(norm), hp.rms_eps, &mut s.h)?;
                ctx.observe(format_args!("ffn_norm-{l}"), &s.h)?;
                match &lw.ffn {
                    FfnWeights::Dense(d) => d.forward(
                        be,
                        self.cfg.act,
                        &s.h,
                        &mut s.gate,
                        &mut s.up,
                        &mut s.o,
                        &s.groups,
                    )?,
                    FfnWeights::Moe(mc, mw) => {
                        let ms = s.moe.as_mut().expect("allocated with MoE layers");
                        mw.forward(
                            be,
                            mc,
                            self.cfg.act,
                            &s.h,
                            &s.group_ids,
                            &s.groups,
                            ms,
                            &mut s.o,
                        )?;
                    }
                    FfnWeights::None => unreachable!("a norm implies a feed-forward block"),
                }
                ctx.observe(format_args!("ffn_out-{l}"), &s.o)?;
                if let Some(w) = &lw.ffn_post_norm {
                    be.rms_norm_inplace(&mut s.o, Some(w), hp.rms_eps)?;
                }
                be.add(&mut s.x, &s.o)?;
            }
            ctx.observe(format_args!("l_out-{l}"), &s.x)?;
        }
        Ok(())
    }

    /// Final norm and output projection (or the normalised hidden states) of the rows marked
    /// for output, appended to `out`.
    fn outputs(
        &self,
        s: &mut Scratch,
        batch: &Batch,
        range: std::ops::Range<usize>,
        out: &mut Vec<f32>,
        output: Output,
    ) -> Result<()> {
        let be = &*self.backend;
        let e = self.cfg.hp.n_embd;
        s.out_idx.clear();
        for (j, i) in range.clone().enumerate() {
            if batch.output[i] {
                s.out_idx.push(j as u32);
            }
        }
        // Each group's outputs are cut into pieces of OUT_CHUNK rows counted from its own
        // first output, and whole pieces are packed into chunks, so a sequence's rows meet
        // the output matmul in the same row groups whatever else is in the batch.
        s.out_pieces.clear();
        let mut prev_group = None;
        for &r in &s.out_idx {
            let group = s.group_ids[r as usize];
            match s.out_pieces.last_mut() {
                Some(p) if prev_group == Some(group) && (*p as usize) < OUT_CHUNK => *p += 1,
                _ => s.out_pieces.push(1),
            }
            prev_group = Some(group);
        }
        let n_vocab = self.info.n_vocab;
        let (mut start, mut piece) = (0, 0);
        while piece < s.out_pieces.len() {
            s.out_groups.clear();
            let mut m = 0;
            while piece < s.out_pieces.len() && m + s.out_pieces[piece] as usize <= OUT_CHUNK {
                m += s.out_pieces[piece] as usize;
                s.out_groups.push(s.out_pieces[piece]);
                piece += 1;
            }
            let end = start + m;
            s.sel.reshape(&[m, e])?;
            s.sel_norm.reshape(&[m, e])?;
            s.logits.reshape(&[m, n_vocab])?;
            be.gather_rows(&s.x, &s.out_idx[start..end], &mut s.sel)?;
            be.rms_norm(
                &s.sel,
                Some(&self.output_norm),
                self.cfg.hp.rms_eps,
                &mut s.sel_norm,
            )?;
            if output == Output::Embeddings {
                let at = out.len();
                out.resize(at + m * e, 0.0);
                be.read_f32(&s.sel_norm, &mut out[at..])?;
                start = end;
                continue;
            }
            be.matmul_groups(&s.sel_norm, &self.output, &mut s.logits, &s.out_groups)?;
            let at = out.len();
            out.resize(at + m * n_vocab, 0.0);
            be.read_f32(&s.logits, &mut out[at..])?;
            if self.cfg.final_softcap != 0.0 {
                let c = self.cfg.final_softcap;
                for v in &mut out[at..] {
                    *v = c * (*v / c).tanh();
                }
            }
            start = end;
        }
        Ok(())
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
        let mut ctx = Context::new(self.backend.clone(), opts, &self.memory())?;
        ctx.scratch = Some(Box::new(self.scratch(ctx.opts.n_batch)?));
        Ok(ctx)
    }

    fn memory_estimate(&self, opts: &ContextOptions) -> MemoryEstimate {
        MemoryEstimate {
            weights: self.info.weight_bytes,
            kv_cache: Context::kv_bytes_for(opts, &self.memory()),
            scratch: self.scratch_bytes(opts.n_batch),
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
