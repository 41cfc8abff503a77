//! The device-neutral backend trait: every operation a transformer forward pass needs.
//!
//! Model code is written against [`Backend`] only and never names a device. A backend owns
//! its buffers ([`Tensor`], [`Weight`]) and executes each call in order; an asynchronous
//! backend (a GPU stream) may queue work and synchronise in [`Backend::read_f32`].
//!
//! Conventions:
//! * Activations are row-major `[n_tokens, width]` tensors of F32 unless stated otherwise.
//! * Matrices are weights of shape `[n_out, n_in]` (ggml's `ne = [n_in, n_out]`).
//! * Host-side index arrays (token ids, positions, cache rows) are passed as slices, so the
//!   decode loop needs no allocation.

use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{HostBytes, Tensor, Weight};

/// Gated activations: `out = act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// SiLU (SwiGLU).
    Silu,
    /// GELU, tanh approximation (GEGLU).
    GeluTanh,
    /// ReLU squared; no gate (the `up` operand is ignored).
    ReluSquared,
    /// GPT-OSS's clamped SwiGLU: `min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, -limit, limit) + 1)`.
    SwigluOai {
        /// Sigmoid sharpness (1.702).
        alpha: f32,
        /// Clamp limit (7.0).
        limit: f32,
    },
}

/// How rotary embeddings pair up dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Consecutive pairs `(x[2i], x[2i+1])` (llama, mistral).
    Norm,
    /// Split halves `(x[i], x[i + n_rot/2])` (GPT-NeoX, qwen, gemma).
    Neox,
}

/// Rotary position embedding parameters, as ggml's `rope_ext` takes them.
#[derive(Clone, Copy, Debug)]
pub struct RopeSpec<'a> {
    /// Pairing of dimensions.
    pub mode: RopeMode,
    /// Heads in the tensor.
    pub n_head: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Rotated dimensions per head (<= head_dim); the rest pass through.
    pub n_rot: usize,
    /// Base frequency.
    pub freq_base: f32,
    /// Linear position scale (1 / rope scaling factor).
    pub freq_scale: f32,
    /// Optional per-pair frequency divisors (`rope_freqs`, long/short factors).
    pub freq_factors: Option<&'a Weight>,
    /// YaRN extrapolation mix (0 disables YaRN).
    pub ext_factor: f32,
    /// Magnitude multiplier on cos and sin.
    pub attn_factor: f32,
    /// YaRN low correction dimension parameter.
    pub beta_fast: f32,
    /// YaRN high correction dimension parameter.
    pub beta_slow: f32,
    /// Training context length before scaling (YaRN).
    pub n_ctx_orig: u32,
}

impl<'a> RopeSpec<'a> {
    /// The YaRN correction range `[low, high]` in rotated-pair indices (ggml's
    /// `rope_yarn_corr_dims`), shared by every backend.
    pub fn yarn_corr_dims(&self) -> [f32; 2] {
        let n_rot = self.n_rot as f32;
        let dim = |n_r: f32| {
            n_rot * (self.n_ctx_orig as f32 / (n_r * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * self.freq_base.ln())
        };
        let start = dim(self.beta_fast).floor();
        let end = dim(self.beta_slow).ceil();
        [start.max(0.0), end.min(n_rot - 1.0)]
    }

    /// Plain rope with no scaling.
    pub fn plain(mode: RopeMode, n_head: usize, head_dim: usize, freq_base: f32) -> Self {
        RopeSpec {
            mode,
            n_head,
            head_dim,
            n_rot: head_dim,
            freq_base,
            freq_scale: 1.0,
            freq_factors: None,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }
}

/// Where one query row sits: its sequence's first cache row and its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryPos {
    /// Cache row holding position 0 of this query's sequence.
    pub kv_base: u32,
    /// Position of the query; keys at positions `0..=pos` (within the window) are visible.
    pub pos: u32,
}

/// One attention call over cached keys and values.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec<'a> {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Dimensions per key/query head.
    pub head_dim: usize,
    /// Dimensions per value head.
    pub head_dim_v: usize,
    /// Multiplier on `q . k`.
    pub scale: f32,
    /// `tanh` soft-capping of scores (0 = none).
    pub softcap: f32,
    /// Sliding window: key `j` is visible from query `i` iff `i - j < window`.
    pub window: Option<u32>,
    /// Per-head sink logits added to the softmax denominator (GPT-OSS).
    pub sinks: Option<&'a Weight>,
    /// One entry per query row.
    pub queries: &'a [QueryPos],
    /// The rows' groups, as in [`Backend::matmul_groups`]: consecutive rows of one sequence
    /// that are computed together, each group's results the same as the group's alone. A
    /// group never spans two sequences. `None`: each run of queries with the same `kv_base`
    /// is one group.
    pub groups: Option<&'a [u32]>,
}

/// One sequence's consecutive rows in a call to a recurrent-state operation
/// ([`Backend::ssm_conv`], [`Backend::ssm_scan`]): the runs of a call cover its rows in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRun {
    /// Row of the state tensors holding this sequence's state.
    pub slot: u32,
    /// Number of consecutive rows (tokens) of this sequence.
    pub len: u32,
    /// The sequence starts here (position 0): its previous state is taken as zero.
    pub fresh: bool,
}

/// One expert's consecutive rows in a [`Backend::matmul_experts`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertSpan {
    /// Index of the expert's weight.
    pub expert: u32,
    /// Number of consecutive rows multiplied by it.
    pub rows: u32,
}

/// Shape and parameters of a Mamba-2 selective scan ([`Backend::ssm_scan`]).
#[derive(Clone, Copy, Debug)]
pub struct SsmScanSpec<'a> {
    /// SSM heads (`ssm.time_step_rank`).
    pub n_head: usize,
    /// Channels per head (`ssm.inner_size / n_head`).
    pub head_dim: usize,
    /// State size per channel (`ssm.state_size`).
    pub d_state: usize,
    /// Groups sharing B and C (`ssm.group_count`); head `h` uses group `h / (n_head / n_group)`.
    pub n_group: usize,
    /// Per-head decay `A` (already negative), `[n_head]`.
    pub a: &'a Weight,
    /// Per-head skip `D`, `[n_head]`.
    pub d: &'a Weight,
    /// Per-head time-step bias, `[n_head]`.
    pub dt_bias: &'a Weight,
    /// The sequences, in row order.
    pub runs: &'a [SeqRun],
}

/// A compute device. See the module documentation for conventions.
pub trait Backend: Send + Sync {
    /// Short name, e.g. `CPU`.
    fn name(&self) -> &str;

    /// One line describing the device (features, threads, memory).
    fn describe(&self) -> String;

    /// True if `matmul` and `embed` accept weights of this type.
    fn supports(&self, dtype: DType) -> bool;

    /// Bytes a weight will occupy once loaded (it may be repacked).
    fn weight_bytes(&self, dtype: DType, shape: &[usize]) -> Result<usize> {
        crate::tensor::tensor_bytes(dtype, &crate::tensor::Shape::new(shape)?)
    }

    /// Makes a weight from host bytes in ggml layout. A host backend may keep a view.
    fn load_weight(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: HostBytes,
    ) -> Result<Weight>;

    /// Allocates a zeroed activation tensor.
    fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Tensor>;

    /// Copies host f32 values into an F32 tensor (its first `src.len()` elements).
    fn write_f32(&self, dst: &mut Tensor, src: &[f32]) -> Result<()>;

    /// Copies the first `dst.len()` elements of an F32 tensor to the host.
    fn read_f32(&self, src: &Tensor, dst: &mut [f32]) -> Result<()>;

    /// `out[i] = table[ids[i]]` as f32; `out` is `[ids.len(), table.cols()]`.
    fn embed(&self, table: &Weight, ids: &[u32], out: &mut Tensor) -> Result<()>;

    /// `out = x @ w^T`: `x` is `[n, k]`, `w` is `[m, k]`, `out` is `[n, m]`.
    fn matmul(&self, x: &Tensor, w: &Weight, out: &mut Tensor) -> Result<()> {
        self.matmul_groups(x, w, out, &[x.rows() as u32])
    }

    /// [`Backend::matmul`] for a batch made of independent row groups (one per sequence):
    /// `groups` holds their lengths in order, summing to `x.rows()`. Each group must give
    /// the same results it would give as a batch of its own, so batching sequences
    /// together never changes their numbers. Backends whose arithmetic does not depend on
    /// the batch shape may ignore the grouping.
    fn matmul_groups(&self, x: &Tensor, w: &Weight, out: &mut Tensor, groups: &[u32])
        -> Result<()>;

    /// Mixture-of-experts matmul: the rows of `x` come in consecutive spans, span `i` holding
    /// `spans[i].rows` rows for expert `spans[i].expert`, and each row is multiplied by its
    /// expert's weight (all of one shape and type), plus its bias if `biases` is given:
    /// `out[r] = x[r] @ weights[e]^T + biases[e]`. Only the named experts' weights are read.
    /// `groups` are the independent row groups (sequence runs, each inside one span) as for
    /// [`Backend::matmul_groups`], whose guarantee this shares: a group's results do not
    /// depend on the other rows.
    fn matmul_experts(
        &self,
        x: &Tensor,
        weights: &[Weight],
        biases: Option<&[Weight]>,
        spans: &[ExpertSpan],
        groups: &[u32],
        out: &mut Tensor,
    ) -> Result<()>;

    /// Adds a bias row (`[cols]`) to every row of `x`.
    fn add_bias(&self, x: &mut Tensor, bias: &Weight) -> Result<()>;

    /// RMS-normalises each row of `x` (row length = `x.cols()`), times `w` if given.
    fn rms_norm(&self, x: &Tensor, w: Option<&Weight>, eps: f32, out: &mut Tensor) -> Result<()>;

    /// In-place [`Backend::rms_norm`].
    fn rms_norm_inplace(&self, x: &mut Tensor, w: Option<&Weight>, eps: f32) -> Result<()>;

    /// `dst += src`, elementwise, same shapes.
    fn add(&self, dst: &mut Tensor, src: &Tensor) -> Result<()>;

    /// `x *= s`.
    fn scale(&self, x: &mut Tensor, s: f32) -> Result<()>;

    /// `gate = act(gate) * up` (`up` unused for ungated activations).
    fn glu(&self, act: Activation, gate: &mut Tensor, up: &Tensor) -> Result<()>;

    /// Rotates `x` (`[n_tokens, n_head * head_dim]`) in place; `pos[i]` is token `i`'s position.
    fn rope(&self, x: &mut Tensor, pos: &[u32], spec: &RopeSpec) -> Result<()>;

    /// Writes row `i` of `src` into row `rows[i]` of `cache`, converting to the cache's type.
    fn kv_store(&self, cache: &mut Tensor, src: &Tensor, rows: &[u32]) -> Result<()>;

    /// Copies rows `src_start..src_start + n` of `cache` to `dst_start..` (prefix reuse).
    fn kv_copy(
        &self,
        cache: &mut Tensor,
        src_start: usize,
        dst_start: usize,
        n: usize,
    ) -> Result<()>;

    /// Attention for each query row over the cached keys `k` and values `v`. Consecutive
    /// queries with the same `kv_base` form one sequence's group; as with
    /// [`Backend::matmul_groups`], each group's results must not depend on the others
    /// (`[rows, n_kv_head * head_dim]` each). `q` is `[n, n_head * head_dim]`,
    /// `out` is `[n, n_head * head_dim_v]`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()>;

    /// Gathers rows: `dst[i] = src[rows[i]]`.
    fn gather_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()>;

    /// Scatters rows: `dst[rows[i]] = src[i]` (rows distinct).
    fn scatter_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()>;

    /// Multiplies row `i` of `x` by `scales[i]` (one scale per row).
    fn scale_rows(&self, x: &mut Tensor, scales: &[f32]) -> Result<()>;

    /// Weighted sums of consecutive groups of `k` rows (mixing expert outputs):
    /// `dst[t] = sum_j weights[t*k + j] * src[t*k + j]` for `j` in order `0..k`.
    /// `src` is `[n*k, cols]`, `weights` holds `n*k` values, `dst` is `[n, cols]`.
    fn weighted_row_sum(
        &self,
        src: &Tensor,
        weights: &[f32],
        k: usize,
        dst: &mut Tensor,
    ) -> Result<()>;

    /// RMS-normalises every `group`-wide slice of each row separately, then multiplies by
    /// `w` (`[x.cols()]`, one slice per group) if given: grouped RMS norm.
    fn rms_norm_groups_inplace(
        &self,
        x: &mut Tensor,
        w: Option<&Weight>,
        group: usize,
        eps: f32,
    ) -> Result<()>;

    /// Mamba's causal depthwise convolution over time, plus bias and SiLU:
    /// `out[t, c] = silu(b[c] + sum_j w[c, j] * in[t - (d_conv - 1) + j, c])`, where inputs
    /// before a run's first row come from that sequence's rolling state (zero when the run is
    /// `fresh`). `x` and `out` are `[n, channels]`, `w` is `[channels, d_conv]`, `state` is
    /// `[slots, (d_conv - 1) * channels]` holding the last `d_conv - 1` inputs oldest first;
    /// it is updated to end at each run's last row. Runs are independent of each other.
    fn ssm_conv(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
        runs: &[SeqRun],
        out: &mut Tensor,
    ) -> Result<()>;

    /// Mamba-2 selective scan. `xbc` is `[n, d_inner + 2 * n_group * d_state]` laid out as
    /// `[x | B | C]` (the convolution's output), `dt` is `[n, n_head]` before bias and
    /// softplus, `state` is `[slots, n_head * head_dim * d_state]`, `y` is `[n, d_inner]`.
    /// Per head `h` and token: `dt' = softplus(dt + dt_bias)`,
    /// `s = s * exp(dt' * A) + dt' * x ⊗ B`, `y = s · C + D * x`; the state is updated to end
    /// at each run's last row (zero before a `fresh` run).
    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        state: &mut Tensor,
        spec: &SsmScanSpec,
        y: &mut Tensor,
    ) -> Result<()>;
}
