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
/// Below this many queries per call an f16 cache is attended with an f16 accumulator.
pub const F16_ACCUM_MAX_QUERIES: usize = 64;
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

/// The running state of an f16-accumulated attention over some keys.
struct F16Partial {
    m: f32,
    l: f32,
    acc: [u16; MAX_HEAD_DIM],
}

/// Accumulates keys `range` (visible keys only) into `p` the way ggml's one-chunk flash
/// attention does: keys one at a time, the output kept in f16 (each update rounded), the
/// softmax sum in f32 (`S = S*ms + vs`, contracted to an FMA as GCC compiles it).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn accumulate_f16(
    job: &HeadJob,
    k: &[u16],
    v: &[u16],
    q: &[u16],
    kv_head: usize,
    base: usize,
    range: std::ops::Range<usize>,
    p: &mut F16Partial,
) {
    let hd = job.head_dim;
    let hv = job.head_dim_v;
    let acc = &mut p.acc[..hv];
    for j in range {
        let row = base + j;
        let koff = row * job.row_stride_k + kv_head * hd;
        let mut s = vecops::dot_f16_f16(&k[koff..koff + hd], q);
        if job.softcap != 0.0 {
            // ggml folds the cap into the scale: tanh(s * scale / cap) * cap
            s = job.softcap * (s * (job.scale / job.softcap)).tanh();
        } else {
            s *= job.scale;
        }
        let (ms, vs) = if s > p.m {
            let ms = (p.m - s).exp();
            p.m = s;
            vecops::scale_f16(acc, ms);
            (ms, 1.0)
        } else {
            (1.0, (s - p.m).exp())
        };
        let voff = row * job.row_stride_v + kv_head * hv;
        vecops::axpy_f16_into_f16(acc, vs, &v[voff..voff + hv]);
        p.l = p.l.mul_add(ms, vs);
    }
}

/// Applies a sink logit to an f32 partial result, as ggml does after the keys.
#[inline(always)]
fn apply_sink(sink: f32, m: &mut f32, l: &mut f32, acc: &mut [f32]) {
    let (ms, vs) = if sink > *m {
        let ms = (*m - sink).exp();
        *m = sink;
        (ms, 1.0)
    } else {
        (1.0, (sink - *m).exp())
    };
    vecops::scale(acc, ms);
    *l = l.mul_add(ms, vs);
}

fn visible_from(job: &HeadJob, pos: usize) -> usize {
    match job.window {
        Some(w) => (pos + 1).saturating_sub(w as usize),
        None => 0,
    }
}

/// Attends one query head the way ggml's CPU flash attention does for small batches with
/// an f16 cache (fewer than [`F16_ACCUM_MAX_QUERIES`] queries): keys one at a time, an f16 accumulator, an f32 softmax sum.
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_accum(
    job: &HeadJob,
    q: &[u16],
    kv_head: usize,
    base: usize,
    pos: usize,
    sink: Option<f32>,
    out: &mut [f32],
) {
    let (Rows::F16(k), Rows::F16(v)) = (job.k, job.v) else {
        let mut qf = [0.0f32; MAX_HEAD_DIM];
        for (o, b) in qf.iter_mut().zip(q) {
            *o = f16::from_bits(*b).to_f32();
        }
        return attend(job, &qf[..q.len()], kv_head, base, pos, sink, out);
    };
    crate::fma::with_fma(|| {
        let hv = job.head_dim_v;
        let mut p = F16Partial {
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: [0; MAX_HEAD_DIM],
        };
        accumulate_f16(
            job,
            k,
            v,
            q,
            kv_head,
            base,
            visible_from(job, pos)..pos + 1,
            &mut p,
        );
        let mut acc = [0.0f32; MAX_HEAD_DIM];
        let acc = &mut acc[..hv];
        for (t, a) in acc.iter_mut().zip(p.acc.iter()) {
            *t = f16::from_bits(*a).to_f32();
        }
        if let Some(s) = sink {
            apply_sink(s, &mut p.m, &mut p.l, acc);
        }
        let inv = if p.l > 0.0 { 1.0 / p.l } else { 0.0 };
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = a * inv;
        }
    })
}

/// KV cells are padded to this granularity in llama.cpp's flash attention view.
pub const KV_PAD: usize = 256;
/// Single-query attention over at least this many (padded) cells is split across threads.
pub const SPLIT_KV_MIN: usize = 512;

/// Single-query attention split into `n_chunks` ranges of the padded cache, each accumulated
/// as in [`attend_f16_accum`], then merged in f32: llama.cpp's split-KV decode path (used when
/// the padded KV view has at least [`SPLIT_KV_MIN`] cells, one chunk per thread).
#[allow(clippy::too_many_arguments)]
pub fn attend_split_kv(
    job: &HeadJob,
    q: &[u16],
    kv_head: usize,
    base: usize,
    pos: usize,
    sink: Option<f32>,
    n_chunks: usize,
    out: &mut [f32],
) {
    let (Rows::F16(k), Rows::F16(v)) = (job.k, job.v) else {
        return attend_f16_accum(job, q, kv_head, base, pos, sink, out);
    };
    crate::fma::with_fma(|| {
        let hv = job.head_dim_v;
        let padded = (pos + 1).div_ceil(KV_PAD) * KV_PAD;
        let n_chunks = n_chunks.max(1);
        let cs = padded.div_ceil(n_chunks);
        let lo = visible_from(job, pos);
        let mut m_final = f32::NEG_INFINITY;
        let mut l_final = 0.0f32;
        let mut fin = [0.0f32; MAX_HEAD_DIM];
        let fin = &mut fin[..hv];
        let mut part = [0.0f32; MAX_HEAD_DIM];
        let part = &mut part[..hv];
        for c in 0..n_chunks {
            let start = c * cs;
            if start >= padded {
                continue;
            }
            let end = (start + cs).min(padded);
            let mut p = F16Partial {
                m: f32::NEG_INFINITY,
                l: 0.0,
                acc: [0; MAX_HEAD_DIM],
            };
            accumulate_f16(
                job,
                k,
                v,
                q,
                kv_head,
                base,
                start.max(lo)..end.min(pos + 1),
                &mut p,
            );
            for (t, a) in part.iter_mut().zip(p.acc.iter()) {
                *t = f16::from_bits(*a).to_f32();
            }
            if let (Some(s), true) = (sink, start == 0) {
                apply_sink(s, &mut p.m, &mut p.l, part);
            }
            if p.l == 0.0 {
                continue;
            }
            let m_new = m_final.max(p.m);
            let so = (m_final - m_new).exp();
            let sn = (p.m - m_new).exp();
            for (f, x) in fin.iter_mut().zip(part.iter()) {
                *f = f.mul_add(so, x * sn);
            }
            l_final = l_final.mul_add(so, p.l * sn);
            m_final = m_new;
        }
        let inv = if l_final != 0.0 { 1.0 / l_final } else { 0.0 };
        for (o, a) in out.iter_mut().zip(fin.iter()) {
            *o = a * inv;
        }
    })
}

/// Keys per tile in llama.cpp's tiled flash attention.
const TILE_KV: usize = 64;
/// Most query rows [`attend_tiled`] takes at once.
pub const MAX_TILED_ROWS: usize = 64;

/// Per-thread buffers of the tiled path: transposed K tile, queries side by side, scores and
/// probabilities per row, V tile, per-row accumulators.
#[derive(Default)]
struct TileScratch {
    kt: Vec<f32>,
    q: Vec<f32>,
    sc: Vec<f32>,
    p: Vec<f32>,
    v32: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

thread_local! {
    static TILE_SCRATCH: std::cell::RefCell<TileScratch> = std::cell::RefCell::new(TileScratch::default());
}

/// One query row of a tiled group.
pub struct TiledRow<'a> {
    /// The query (f32, as ggml's tiled path uses it).
    pub q: &'a [f32],
    /// Its position.
    pub pos: usize,
    /// Where its output goes.
    pub out: &'a mut [f32],
}

/// Attends a group of query rows of one head and one sequence the way ggml's tiled flash
/// attention does for batches of [`F16_ACCUM_MAX_QUERIES`] queries or more: f32 queries, keys
/// in tiles of 64 aligned at position 0, scores as sequential FMA chains over the head
/// dimensions, one online-softmax update per tile with ggml's vectorised exp, values
/// accumulated in f32 by FMA chains. Each K and V tile is converted once for the whole
/// group, each pass over a K tile scores four rows ([`vecops::gemm_t_fma`]) and each pass
/// over a V tile feeds four rows' accumulators held in registers ([`vecops::fma_rows`]);
/// every row's arithmetic is the same as if it were alone.
pub fn attend_tiled(
    job: &HeadJob,
    rows: &mut [TiledRow],
    kv_head: usize,
    base: usize,
    sink: Option<f32>,
) {
    let (Rows::F16(k), Rows::F16(v)) = (job.k, job.v) else {
        for r in rows.iter_mut() {
            attend(job, r.q, kv_head, base, r.pos, sink, r.out);
        }
        return;
    };
    TILE_SCRATCH.with(|t| {
        let mut t = t.borrow_mut();
        let (hd, hv, n) = (job.head_dim, job.head_dim_v, rows.len());
        let t = &mut *t;
        t.kt.resize(hd * TILE_KV, 0.0);
        t.v32.resize(TILE_KV * hv, 0.0);
        t.acc.clear();
        t.acc.resize(n * hv, 0.0);
        t.m.clear();
        t.m.resize(n, f32::NEG_INFINITY);
        t.l.clear();
        t.l.resize(n, 0.0);
        crate::fma::with_fma(|| tiled_inner(job, k, v, rows, kv_head, base, sink, t))
    })
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tiled_inner(
    job: &HeadJob,
    k: &[u16],
    v: &[u16],
    rows: &mut [TiledRow],
    kv_head: usize,
    base: usize,
    sink: Option<f32>,
    t: &mut TileScratch,
) {
    let (hd, hv) = (job.head_dim, job.head_dim_v);
    let lo_of = |pos: usize| visible_from(job, pos);
    let first = rows.iter().map(|r| lo_of(r.pos)).min().unwrap_or(0) / TILE_KV;
    let max_pos = rows.iter().map(|r| r.pos).max().unwrap_or(0);
    let last = max_pos / TILE_KV;
    let n = rows.len();
    // The queries side by side, so that one pass over a K tile scores several rows.
    t.q.clear();
    for r in rows.iter() {
        t.q.extend_from_slice(&r.q[..hd]);
    }
    t.sc.resize(n * TILE_KV, 0.0);
    t.p.resize(n * TILE_KV, 0.0);
    // Visible keys of each row in the current tile, relative to its start (empty: none).
    let mut span = [(0usize, 0usize); MAX_TILED_ROWS];
    assert!(
        n <= MAX_TILED_ROWS,
        "attend_tiled: at most {MAX_TILED_ROWS} rows"
    );
    for tile in first..=last {
        let j0 = tile * TILE_KV;
        let j_end = (j0 + TILE_KV).min(max_pos + 1);
        // Convert the tile once: K transposed to [d][t], V to rows of f32.
        let koff = (base + j0) * job.row_stride_k + kv_head * hd;
        vecops::f16_to_f32_transposed(
            &k[koff..],
            job.row_stride_k,
            j_end - j0,
            hd,
            &mut t.kt,
            TILE_KV,
        );
        for (tt, j) in (j0..j_end).enumerate() {
            let voff = (base + j) * job.row_stride_v + kv_head * hv;
            vecops::f16_to_f32(&v[voff..voff + hv], &mut t.v32[tt * hv..(tt + 1) * hv]);
        }
        for (sp, r) in span.iter_mut().zip(rows.iter()) {
            let (jlo, jhi) = (j0.max(lo_of(r.pos)), (j0 + TILE_KV).min(r.pos + 1));
            *sp = if jlo < jhi {
                (jlo - j0, jhi - j0)
            } else {
                (0, 0) // every key of this tile is masked for this row
            };
        }
        // Scores of every run of rows that see the tile, the whole tile at once (each score
        // is the same FMA chain whatever the keys around it; masked ones are dropped below).
        let mut r0 = 0;
        while r0 < n {
            if span[r0].0 == span[r0].1 {
                r0 += 1;
                continue;
            }
            let r1 = r0 + span[r0..n].iter().take_while(|s| s.0 < s.1).count();
            vecops::gemm_t_fma(
                &t.kt,
                TILE_KV,
                TILE_KV,
                hd,
                &t.q[r0 * hd..],
                hd,
                r1 - r0,
                &mut t.sc[r0 * TILE_KV..],
                TILE_KV,
            );
            r0 = r1;
        }
        for ri in 0..n {
            let (a, b) = span[ri];
            if a == b {
                continue;
            }
            let sc = &mut t.sc[ri * TILE_KV..(ri + 1) * TILE_KV];
            sc[..a].fill(f32::NEG_INFINITY);
            sc[b..].fill(f32::NEG_INFINITY);
            for x in &mut sc[a..b] {
                *x = if job.softcap != 0.0 {
                    (*x * (job.scale / job.softcap)).tanh() * job.softcap
                } else {
                    *x * job.scale
                };
            }
            let tile_max = sc[a..b].iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let acc = &mut t.acc[ri * hv..(ri + 1) * hv];
            let m = &mut t.m[ri];
            let l = &mut t.l[ri];
            let m_new = m.max(tile_max);
            if m_new > *m {
                let ms = (*m - m_new).exp();
                vecops::scale(acc, ms);
                *l *= ms;
            }
            *m = m_new;
            let mut total = 0.0f64;
            let p = &mut t.p[ri * TILE_KV..(ri + 1) * TILE_KV];
            for g in 0..TILE_KV / 8 {
                let mut x = [0.0f32; 8];
                for (i, xi) in x.iter_mut().enumerate() {
                    *xi = sc[8 * g + i] - m_new;
                }
                vecops::v_expf8(&mut x);
                total += vecops::hsum8_ggml(&x) as f64;
                p[8 * g..8 * g + 8].copy_from_slice(&x);
            }
            *l = (*l as f64 + total) as f32;
        }
        // Values: runs of rows with the same visible keys share every V load.
        let mut r0 = 0;
        while r0 < n {
            let (a, b) = span[r0];
            let r1 = r0 + span[r0..n].iter().take_while(|&&s| s == (a, b)).count();
            if a < b {
                vecops::fma_rows(
                    &mut t.acc[r0 * hv..],
                    hv,
                    r1 - r0,
                    &t.p[r0 * TILE_KV + a..],
                    TILE_KV,
                    &t.v32[a * hv..],
                    hv,
                    b - a,
                    hv,
                );
            }
            r0 = r1;
        }
    }
    for (ri, r) in rows.iter_mut().enumerate() {
        let acc = &mut t.acc[ri * hv..(ri + 1) * hv];
        let (m, mut l) = (t.m[ri], t.l[ri]);
        if let Some(s) = sink {
            let (ms, vs) = if s > m {
                ((m - s).exp(), 1.0)
            } else {
                (1.0, (s - m).exp())
            };
            vecops::scale(acc, ms);
            l = l.mul_add(ms, vs);
        }
        let inv = if l == 0.0 { 0.0 } else { 1.0 / l };
        for (o, a) in r.out.iter_mut().zip(acc.iter()) {
            *o = a * inv;
        }
    }
}

/// Converts a query to f16 bits, as ggml's flash attention does with an f16 cache.
pub fn to_f16_bits(q: &[f32], out: &mut [u16]) {
    for (o, v) in out.iter_mut().zip(q) {
        *o = f16::from_f32(*v).to_bits();
    }
}
