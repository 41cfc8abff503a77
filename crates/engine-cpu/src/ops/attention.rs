//! Attention for one (query row, head) over cached keys and values, computed in tiles with
//! an online softmax, so the score matrix is never materialised whatever the context length.
//!
//! Keys visible from a query at position `p` are positions `lo..=p` of its sequence, where
//! `lo = p + 1 - window` for sliding-window layers (key `j` visible iff `p - j < window`)
//! and 0 otherwise. Sinks add `exp(sink)` to the softmax denominator.

use half::f16;

use crate::vecops;

/// Keys scored per tile.
const TILE: usize = 64;
/// Largest value head size supported.
pub const MAX_HEAD_DIM: usize = 1024;

/// Cached rows in f32 or f16.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 bit patterns.
    F16(&'a [u16]),
}

impl Rows<'_> {
    #[inline(always)]
    fn dot(&self, q: &[f32], off: usize, len: usize) -> f32 {
        match self {
            Rows::F32(r) => vecops::dot_f32(q, &r[off..off + len]),
            Rows::F16(r) => vecops::dot_f32_f16(q, &r[off..off + len]),
        }
    }

    #[inline(always)]
    fn axpy(&self, acc: &mut [f32], s: f32, off: usize) {
        let len = acc.len();
        match self {
            Rows::F32(r) => vecops::axpy_f32(acc, s, &r[off..off + len]),
            Rows::F16(r) => vecops::axpy_f16(acc, s, &r[off..off + len]),
        }
    }
}

/// Parameters shared by all heads of one call.
pub struct HeadJob<'a> {
    /// Cached keys, `row_stride_k` values per cache row.
    pub k: Rows<'a>,
    /// Cached values, `row_stride_v` values per cache row.
    pub v: Rows<'a>,
    /// Values per key cache row.
    pub row_stride_k: usize,
    /// Values per value cache row.
    pub row_stride_v: usize,
    /// Key/query head size.
    pub head_dim: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Score multiplier.
    pub scale: f32,
    /// Soft-cap (0 = none).
    pub softcap: f32,
    /// Sliding window.
    pub window: Option<u32>,
}

/// Attends one query head. `q` is the head's query (already rounded to the key precision
/// by the caller if emulating f16 attention), `kv_head` selects the cached head, `base` is
/// the cache row of position 0, `pos` the query position, `sink` an optional sink logit.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    job: &HeadJob,
    q: &[f32],
    kv_head: usize,
    base: usize,
    pos: usize,
    sink: Option<f32>,
    out: &mut [f32],
) {
    let hd = job.head_dim;
    let hv = job.head_dim_v;
    let lo = match job.window {
        Some(w) => (pos + 1).saturating_sub(w as usize),
        None => 0,
    };
    let mut acc = [0.0f32; MAX_HEAD_DIM];
    let acc = &mut acc[..hv];
    let mut m = f32::NEG_INFINITY;
    let mut l = 0.0f32;
    let mut scores = [0.0f32; TILE];
    let mut j0 = lo;
    while j0 <= pos {
        let j1 = (j0 + TILE).min(pos + 1);
        let mut tile_max = f32::NEG_INFINITY;
        for (t, j) in (j0..j1).enumerate() {
            let row = base + j;
            let mut s = job.k.dot(q, row * job.row_stride_k + kv_head * hd, hd) * job.scale;
            if job.softcap != 0.0 {
                s = job.softcap * (s / job.softcap).tanh();
            }
            scores[t] = s;
            tile_max = tile_max.max(s);
        }
        if tile_max > m {
            let c = (m - tile_max).exp();
            if l != 0.0 {
                vecops::scale(acc, c);
                l *= c;
            }
            m = tile_max;
        }
        for (t, j) in (j0..j1).enumerate() {
            let p = (scores[t] - m).exp();
            l += p;
            job.v
                .axpy(acc, p, (base + j) * job.row_stride_v + kv_head * hv);
        }
        j0 = j1;
    }
    if let Some(s) = sink {
        if s > m {
            let c = (m - s).exp();
            vecops::scale(acc, c);
            l *= c;
            m = s;
        }
        l += (s - m).exp();
    }
    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

/// Rounds a query to f16 precision, as ggml's flash attention does with an f16 cache.
pub fn round_to_f16(q: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(q) {
        *o = f16::from_f32(*v).to_f32();
    }
}
