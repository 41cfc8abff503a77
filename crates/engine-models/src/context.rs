//! Per-session state: the memory of every layer for each sequence slot (a KV cache of
//! `n_ctx` positions for attention layers, a rolling convolution state and an SSM state for
//! recurrent layers), sequence lengths, and the model's preallocated scratch buffers.
//!
//! The cache row of position `p` of sequence `s` is `s * n_ctx + p`, so a sequence's keys
//! are contiguous and attention needs only a base row and a position per query. Recurrent
//! state is one row per sequence and summarises all of its tokens, so it can only continue
//! at the sequence's length or restart at position 0: truncating or copying a part of a
//! sequence is refused for models that have recurrent layers. Speculative decoding rewinds
//! them through a checkpoint instead ([`Context::checkpoint_seq`], [`Context::restore_seq`]):
//! the state is saved before drafted tokens are verified, restored when some are rejected,
//! and the accepted tokens are evaluated again.

use std::any::Any;
use std::sync::Arc;

use engine_core::{Backend, DType, Tensor};

use crate::batch::Batch;
use crate::error::{ModelError, Result};

/// Sizes of a context.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Positions per sequence.
    pub n_ctx: usize,
    /// Sequences held at once (parallel slots).
    pub n_seq: usize,
    /// Most tokens evaluated per internal step (larger batches are split).
    pub n_batch: usize,
    /// Storage type of the KV cache (F16 or F32).
    pub kv_type: DType,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            n_ctx: 4096,
            n_seq: 1,
            n_batch: 512,
            kv_type: DType::F16,
        }
    }
}

/// Receives intermediate tensors during a forward pass, for debugging and inspection:
/// `(name, values, rows, cols)`. Names follow llama.cpp's graph (`attn_norm-3`, `Qcur-3`,
/// `kqv_out-3`, `l_out-3`, ...), so dumps of both engines line up.
pub type TensorObserver = Box<dyn FnMut(&str, &[f32], usize, usize) + Send>;

/// Cached keys and values of one attention layer: `[n_seq * n_ctx, n_kv_head * head_dim]`.
pub struct LayerKv {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Recurrent state of one Mamba layer, one F32 row per sequence slot.
pub struct LayerRecurrent {
    /// The last `d_conv - 1` convolution inputs, `[n_seq, (d_conv - 1) * channels]`.
    pub conv: Tensor,
    /// The SSM state, `[n_seq, d_inner * d_state]`.
    pub ssm: Tensor,
}

/// What a layer keeps between forward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMemory {
    /// Nothing (feed-forward-only layers).
    None,
    /// A KV cache with rows of these widths (keys, values).
    Kv(usize, usize),
    /// Recurrent state with rows of these widths (convolution, SSM).
    Recurrent(usize, usize),
}

/// A model's mutable state for one or more sequences.
pub struct Context {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) opts: ContextOptions,
    pub(crate) seq_len: Vec<usize>,
    pub(crate) kv: Vec<Option<LayerKv>>,
    pub(crate) recurrent: Vec<Option<LayerRecurrent>>,
    pub(crate) scratch: Option<Box<dyn Any + Send>>,
    pub(crate) observer: Option<TensorObserver>,
    pub(crate) observe_buf: Vec<f32>,
    pending: Vec<(u32, usize)>,
    checkpoints: Vec<Option<Checkpoint>>,
}

/// A sequence's saved length and recurrent state (one row per recurrent layer).
struct Checkpoint {
    len: usize,
    /// False once the sequence was cut below `len` (cleared, truncated, overwritten).
    valid: bool,
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl Context {
    /// Makes a context holding each layer's memory for `opts.n_seq` sequences.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        opts: ContextOptions,
        memory: &[LayerMemory],
    ) -> Result<Context> {
        if opts.n_ctx == 0 || opts.n_seq == 0 || opts.n_batch == 0 {
            return Err(ModelError::Input("context sizes must be positive".into()));
        }
        if !matches!(opts.kv_type, DType::F16 | DType::F32) {
            return Err(ModelError::Input(format!(
                "KV cache type {} is not supported (use f16 or f32)",
                opts.kv_type
            )));
        }
        let rows = opts
            .n_ctx
            .checked_mul(opts.n_seq)
            .ok_or_else(|| ModelError::Input("context too large".into()))?;
        let mut kv = Vec::with_capacity(memory.len());
        let mut recurrent = Vec::with_capacity(memory.len());
        for m in memory {
            kv.push(match *m {
                LayerMemory::Kv(kw, vw) => Some(LayerKv {
                    k: backend.alloc(opts.kv_type, &[rows, kw])?,
                    v: backend.alloc(opts.kv_type, &[rows, vw])?,
                }),
                _ => None,
            });
            recurrent.push(match *m {
                LayerMemory::Recurrent(cw, sw) => Some(LayerRecurrent {
                    conv: backend.alloc(DType::F32, &[opts.n_seq, cw])?,
                    ssm: backend.alloc(DType::F32, &[opts.n_seq, sw])?,
                }),
                _ => None,
            });
        }
        Ok(Context {
            backend,
            seq_len: vec![0; opts.n_seq],
            pending: Vec::with_capacity(opts.n_seq),
            opts,
            kv,
            recurrent,
            scratch: None,
            observer: None,
            observe_buf: Vec::new(),
            checkpoints: Vec::new(),
        })
    }

    /// Bytes the layer memory (KV cache and recurrent state) of these sizes takes.
    pub fn kv_bytes_for(opts: &ContextOptions, memory: &[LayerMemory]) -> u64 {
        let per_elem = opts.kv_type.type_size() as u64;
        let rows = (opts.n_ctx * opts.n_seq) as u64;
        memory
            .iter()
            .map(|m| match *m {
                LayerMemory::None => 0,
                LayerMemory::Kv(k, v) => rows * (k + v) as u64 * per_elem,
                LayerMemory::Recurrent(c, s) => opts.n_seq as u64 * (c + s) as u64 * 4,
            })
            .sum()
    }

    /// True when some layer keeps recurrent state (then sequences cannot be partly rewound).
    pub fn is_recurrent(&self) -> bool {
        self.recurrent.iter().any(Option::is_some)
    }

    /// Installs (or removes) an observer of intermediate tensors. Observing copies every
    /// intermediate to the host, so it is for debugging, not for speed.
    pub fn set_observer(&mut self, observer: Option<TensorObserver>) {
        self.observer = observer;
    }

    /// Hands `t` to the observer, if one is installed.
    pub(crate) fn observe(&mut self, name: std::fmt::Arguments, t: &Tensor) -> Result<()> {
        if let Some(obs) = self.observer.as_mut() {
            let n = t.shape().numel();
            self.observe_buf.resize(n, 0.0);
            self.backend.read_f32(t, &mut self.observe_buf)?;
            obs(&name.to_string(), &self.observe_buf, t.rows(), t.cols());
        }
        Ok(())
    }

    /// The sizes this context was made with.
    pub fn options(&self) -> &ContextOptions {
        &self.opts
    }

    /// Positions per sequence.
    pub fn n_ctx(&self) -> usize {
        self.opts.n_ctx
    }

    /// Number of sequence slots.
    pub fn n_seq(&self) -> usize {
        self.opts.n_seq
    }

    /// Tokens currently cached for sequence `seq`.
    pub fn seq_len(&self, seq: usize) -> usize {
        self.seq_len[seq]
    }

    /// Forgets sequence `seq` (its slot can be reused at once; a cancelled request). The next
    /// batch for it starts at position 0, which also resets any recurrent state.
    pub fn clear_seq(&mut self, seq: usize) {
        self.seq_len[seq] = 0;
        self.cut(seq, 0);
    }

    /// Keeps only the first `len` positions of `seq` (rollback after rejected drafts).
    /// Recurrent state cannot be rewound, so for models with recurrent layers only `len` 0
    /// (a clear) or at least the current length is accepted.
    pub fn truncate_seq(&mut self, seq: usize, len: usize) -> Result<()> {
        if seq >= self.n_seq() {
            return Err(ModelError::Input(format!(
                "truncate_seq: sequence {seq} but the context has {} slots",
                self.n_seq()
            )));
        }
        if len != 0 && len < self.seq_len[seq] && self.is_recurrent() {
            return Err(ModelError::Input(format!(
                "cannot truncate sequence {seq} from {} to {len} tokens: recurrent layers keep \
                 only the state after the last token (clear it and evaluate again instead)",
                self.seq_len[seq]
            )));
        }
        self.seq_len[seq] = self.seq_len[seq].min(len);
        self.cut(seq, len);
        Ok(())
    }

    /// Saves sequence `seq`'s length and recurrent state, so that [`Context::restore_seq`]
    /// can return to this point after later tokens are rejected. Attention layers need no
    /// copy (their rows past a length are simply overwritten later); recurrent layers copy
    /// their state row into buffers allocated on the first checkpoint of the slot.
    pub fn checkpoint_seq(&mut self, seq: usize) -> Result<()> {
        if seq >= self.n_seq() {
            return Err(ModelError::Input(format!(
                "checkpoint_seq: sequence {seq} but the context has {} slots",
                self.n_seq()
            )));
        }
        if self.checkpoints.len() < self.n_seq() {
            self.checkpoints.resize_with(self.n_seq(), || None);
        }
        if self.checkpoints[seq].is_none() {
            let mut layers = Vec::with_capacity(self.recurrent.len());
            for r in &self.recurrent {
                layers.push(match r {
                    Some(r) => Some((
                        self.backend.alloc(DType::F32, &[1, r.conv.cols()])?,
                        self.backend.alloc(DType::F32, &[1, r.ssm.cols()])?,
                    )),
                    None => None,
                });
            }
            self.checkpoints[seq] = Some(Checkpoint {
                len: 0,
                valid: false,
                layers,
            });
        }
        let cp = self.checkpoints[seq].as_mut().expect("made above");
        let row = [seq as u32];
        for (r, c) in self.recurrent.iter().zip(cp.layers.iter_mut()) {
            if let (Some(r), Some((conv, ssm))) = (r, c) {
                self.backend.gather_rows(&r.conv, &row, conv)?;
                self.backend.gather_rows(&r.ssm, &row, ssm)?;
            }
        }
        cp.len = self.seq_len[seq];
        cp.valid = true;
        Ok(())
    }

    /// Forgets the checkpoint of `seq` if the sequence is cut below it.
    fn cut(&mut self, seq: usize, len: usize) {
        if let Some(Some(cp)) = self.checkpoints.get_mut(seq) {
            if len < cp.len {
                cp.valid = false;
            }
        }
    }

    /// Returns sequence `seq` to its last [`Context::checkpoint_seq`]: its length and its
    /// recurrent state. Returns the restored length. Fails when the slot has no checkpoint
    /// or was cleared below it since.
    pub fn restore_seq(&mut self, seq: usize) -> Result<usize> {
        let cp = self
            .checkpoints
            .get(seq)
            .and_then(Option::as_ref)
            .filter(|cp| cp.valid)
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "restore_seq: sequence {seq} has no checkpoint (or was cut below it)"
                ))
            })?;
        let row = [seq as u32];
        for (r, c) in self.recurrent.iter_mut().zip(cp.layers.iter()) {
            if let (Some(r), Some((conv, ssm))) = (r, c) {
                self.backend.scatter_rows(conv, &row, &mut r.conv)?;
                self.backend.scatter_rows(ssm, &row, &mut r.ssm)?;
            }
        }
        self.seq_len[seq] = cp.len;
        Ok(cp.len)
    }

    /// Copies the first `len` cached positions of `src` into `dst` (prefix reuse). With
    /// recurrent layers the state is copied too, which is only possible for the whole
    /// sequence (`len == seq_len(src)`) or nothing (`len == 0`).
    pub fn copy_prefix(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        if src >= self.n_seq() || dst >= self.n_seq() || len > self.seq_len[src] {
            return Err(ModelError::Input(format!(
                "copy_prefix {src}->{dst} of {len} tokens: sequence {src} holds {} of {} slots",
                self.seq_len.get(src).copied().unwrap_or(0),
                self.n_seq()
            )));
        }
        let whole = len == self.seq_len[src];
        if self.is_recurrent() && len != 0 && !whole {
            return Err(ModelError::Input(format!(
                "cannot copy the first {len} of {} tokens of sequence {src}: recurrent layers \
                 keep only the state after the last token, so only a whole sequence can be copied",
                self.seq_len[src]
            )));
        }
        if src != dst {
            let n_ctx = self.opts.n_ctx;
            for l in self.kv.iter_mut().flatten() {
                self.backend
                    .kv_copy(&mut l.k, src * n_ctx, dst * n_ctx, len)?;
                self.backend
                    .kv_copy(&mut l.v, src * n_ctx, dst * n_ctx, len)?;
            }
            if len > 0 {
                for r in self.recurrent.iter_mut().flatten() {
                    self.backend.kv_copy(&mut r.conv, src, dst, 1)?;
                    self.backend.kv_copy(&mut r.ssm, src, dst, 1)?;
                }
            }
        }
        self.seq_len[dst] = len;
        self.cut(dst, 0);
        Ok(())
    }

    /// Fraction of the cache holding live positions.
    pub fn kv_usage(&self) -> f64 {
        let used: usize = self.seq_len.iter().sum();
        used as f64 / (self.opts.n_ctx * self.opts.n_seq) as f64
    }

    /// Bytes held by the KV cache and the recurrent state.
    pub fn kv_bytes(&self) -> u64 {
        Self::kv_bytes_for(
            &self.opts,
            &self
                .kv
                .iter()
                .zip(&self.recurrent)
                .map(|(k, r)| match (k, r) {
                    (Some(k), _) => LayerMemory::Kv(k.k.cols(), k.v.cols()),
                    (_, Some(r)) => LayerMemory::Recurrent(r.conv.cols(), r.ssm.cols()),
                    _ => LayerMemory::None,
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Checks that a batch extends its sequences contiguously and fits the context; returns
    /// nothing but records the new lengths, applied by [`Context::commit`].
    pub(crate) fn validate(&mut self, batch: &Batch, n_vocab: usize) -> Result<()> {
        let n = batch.tokens.len();
        if batch.pos.len() != n
            || batch.seq.len() != n
            || batch.output.len() != n
            || batch.single.len() != n
        {
            return Err(ModelError::Input("batch arrays differ in length".into()));
        }
        self.pending.clear();
        let recurrent = self.is_recurrent();
        for i in 0..n {
            let (t, p, s) = (batch.tokens[i], batch.pos[i] as usize, batch.seq[i]);
            if t as usize >= n_vocab {
                return Err(ModelError::Input(format!(
                    "token id {t} is outside the vocabulary of {n_vocab}"
                )));
            }
            if s as usize >= self.opts.n_seq {
                return Err(ModelError::Input(format!(
                    "sequence {s} but the context has {} slots",
                    self.opts.n_seq
                )));
            }
            if p >= self.opts.n_ctx {
                return Err(ModelError::ContextFull(format!(
                    "position {p} is past the context size of {} tokens",
                    self.opts.n_ctx
                )));
            }
            let cur = match self.pending.iter_mut().find(|(q, _)| *q == s) {
                Some((_, len)) => {
                    if p != *len {
                        return Err(ModelError::Input(format!(
                            "sequence {s}: position {p} does not follow {} in the same batch",
                            *len - 1
                        )));
                    }
                    len
                }
                None => {
                    let have = self.seq_len[s as usize];
                    if p > have {
                        return Err(ModelError::Input(format!(
                            "sequence {s}: position {p} leaves a gap after {have} cached tokens"
                        )));
                    }
                    if p != have && p != 0 && recurrent {
                        return Err(ModelError::Input(format!(
                            "sequence {s}: cannot resume at position {p} of {have}: recurrent \
                             layers hold only the state after the last token (continue at \
                             {have} or restart at 0)"
                        )));
                    }
                    if p < have {
                        self.cut(s as usize, p);
                    }
                    self.pending.push((s, p));
                    &mut self.pending.last_mut().expect("just pushed").1
                }
            };
            *cur = p + 1;
        }
        Ok(())
    }

    /// Applies the lengths recorded by the last [`Context::validate`].
    pub(crate) fn commit(&mut self) {
        for &(s, len) in &self.pending {
            self.seq_len[s as usize] = len;
        }
    }
}
