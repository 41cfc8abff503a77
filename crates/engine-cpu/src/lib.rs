//! The CPU backend: implements [`engine_core::Backend`] with quantized integer-dot kernels
//! (AVX2 or NEON, selected at run time, with a scalar fallback) and a thread pool.
//!
//! * [`kernels`]: the per-format dot products and activation conversion.
//! * [`matmul`]: the matrix-multiplication driver (one weight, any format).
//! * [`matmul_experts`]: the mixture-of-experts driver (many weights in one pass).
//! * [`ops`]: normalisation, rope, activations, attention.
//! * [`pool`]: the thread pool.
//! * [`buffer`]: CPU storage for tensors and weights.

#![warn(missing_docs)]
// Kernels index several block arrays with one counter that mirrors the block layout.
#![allow(clippy::needless_range_loop)]

mod backend_ext;
pub mod buffer;
pub mod fma;
pub mod kernels;
pub mod matmul;
pub mod matmul_experts;
pub mod ops;
pub mod pool;
pub mod vecops;

use std::sync::{Arc, Mutex};

use engine_core::tensor::{tensor_bytes, HostBytes, Shape};
use engine_core::{
    Activation, AttentionSpec, Backend, DType, Error, ExpertSpan, Result, RopeSpec, SeqRun,
    SsmScanSpec, Tensor, Weight,
};

use buffer::{cpu, cpu_mut, cpu_weight, f32s, f32s_mut, CpuBuffer, CpuWeight};
use kernels::Isa;
use pool::{SendPtr, ThreadPool};

/// Runs on the host CPU with `n_threads` threads.
pub struct CpuBackend {
    pool: ThreadPool,
    isa: Isa,
    scratch: Mutex<Vec<u8>>,
    label: String,
    repack: bool,
}

impl CpuBackend {
    /// A backend using `n_threads` threads (at least 1) and the best instruction set found.
    pub fn new(n_threads: usize) -> CpuBackend {
        Self::with_isa(n_threads, Isa::detect())
    }

    /// A backend forced to an instruction set (tests compare them).
    pub fn with_isa(n_threads: usize, isa: Isa) -> CpuBackend {
        let n_threads = n_threads.max(1);
        CpuBackend {
            pool: ThreadPool::new(n_threads),
            isa,
            scratch: Mutex::new(Vec::new()),
            label: format!("CPU ({}, {} threads)", isa.name(), n_threads),
            repack: true,
        }
    }

    /// Whether weights whose unpacking is slower than their memory saving are expanded at
    /// load time into a layout with the same values (on by default; see
    /// [`kernels::repack`]). Results are bit-identical either way; repacking trades memory
    /// (Q5_0: 34 instead of 22 bytes per 32 weights) for generation speed.
    pub fn with_repack(mut self, on: bool) -> CpuBackend {
        self.repack = on;
        self
    }

    /// The storage format of `dtype` weights on this backend.
    fn layout_for(&self, dtype: DType) -> DType {
        match kernels::repack::repacked_layout(dtype, self.isa) {
            Some(l)
                if self.repack
                    && kernels::repack::kernel_for_layout(dtype, l, self.isa).is_some() =>
            {
                l
            }
            _ => dtype,
        }
    }

    /// The kernel for a loaded weight.
    fn kernel_of<'w>(&self, w: &'w Weight) -> Result<(kernels::Kernel, &'w [u8])> {
        let store = cpu_weight(w)?;
        let kern = kernels::repack::kernel_for_layout(w.dtype(), store.layout(w.dtype()), self.isa)
            .ok_or(Error::UnsupportedType(w.dtype()))?;
        Ok((kern, store.bytes()))
    }

    /// Threads in use.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Instruction set of the kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Number of rows per task so that there are a few tasks per thread.
    fn rows_per_task(&self, rows: usize) -> usize {
        rows.div_ceil(self.pool.n_threads() * 4).max(1)
    }

    /// Runs `f(row_start, row_end)` over `rows` split across the pool.
    fn par_rows(
        &self,
        rows: usize,
        min_rows_for_threads: usize,
        f: &(dyn Fn(usize, usize) + Sync),
    ) {
        if rows < min_rows_for_threads || self.pool.n_threads() == 1 {
            f(0, rows);
            return;
        }
        let per = self.rows_per_task(rows);
        let n = rows.div_ceil(per);
        self.pool.run(n, &|t| f(t * per, ((t + 1) * per).min(rows)));
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Shape(msg()))
    }
}

fn cache_rows_of(t: &Tensor) -> Result<ops::attention::Rows<'_>> {
    Ok(match t.dtype() {
        DType::F32 => ops::attention::Rows::F32(cpu(t)?.f32s()),
        DType::F16 => {
            let b = cpu(t)?.bytes();
            // SAFETY: the buffer is 64-byte aligned and u16 has no invalid bit patterns.
            ops::attention::Rows::F16(unsafe {
                std::slice::from_raw_parts(b.as_ptr() as *const u16, b.len() / 2)
            })
        }
        other => return Err(Error::UnsupportedType(other)),
    })
}

fn weight_f32<'a>(w: &'a Weight, what: &str) -> Result<&'a [f32]> {
    check(w.dtype() == DType::F32, || {
        format!("{what} must be F32, '{}' is {}", w.name(), w.dtype())
    })?;
    Ok(cpu_weight(w)?.f32s())
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "CPU"
    }

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn supports(&self, dtype: DType) -> bool {
        kernels::SUPPORTED.contains(&dtype)
    }

    fn weight_bytes(&self, dtype: DType, shape: &[usize]) -> Result<usize> {
        tensor_bytes(self.layout_for(dtype), &Shape::new(shape)?)
    }

    fn load_weight(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: HostBytes,
    ) -> Result<Weight> {
        let shape = Shape::new(shape)?;
        let need = tensor_bytes(dtype, &shape)?;
        check(data.len() == need, || {
            format!(
                "weight '{name}': {} bytes given, {need} expected for {dtype} {shape:?}",
                data.len()
            )
        })?;
        if engine_core::quant::dequant_fn(dtype).is_none() {
            return Err(Error::Backend(format!(
                "weight '{name}' has type {dtype}, which the CPU backend cannot compute with"
            )));
        }
        let aligned = (data.as_slice().as_ptr() as usize).is_multiple_of(4);
        let layout = self.layout_for(dtype);
        let store = if layout != dtype {
            let mut b = CpuBuffer::zeroed(tensor_bytes(layout, &shape)?)?;
            kernels::repack::repack(dtype, layout, data.as_slice(), b.bytes_mut());
            CpuWeight::Repacked { buf: b, layout }
        } else if dtype == DType::F32 && !aligned {
            let mut b = CpuBuffer::zeroed(need)?;
            b.bytes_mut().copy_from_slice(data.as_slice());
            CpuWeight::Owned(b)
        } else {
            CpuWeight::View(data)
        };
        Ok(Weight::from_buffer(name, dtype, shape, Arc::new(store)))
    }

    fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(shape)?;
        let bytes = tensor_bytes(dtype, &shape)?;
        Tensor::from_buffer(dtype, shape, Box::new(CpuBuffer::zeroed(bytes)?))
    }

    fn write_f32(&self, dst: &mut Tensor, src: &[f32]) -> Result<()> {
        let d = f32s_mut(dst)?;
        check(src.len() <= d.len(), || {
            format!("write of {} values into {}", src.len(), d.len())
        })?;
        d[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn read_f32(&self, src: &Tensor, dst: &mut [f32]) -> Result<()> {
        let s = f32s(src)?;
        check(dst.len() <= s.len(), || {
            format!("read of {} values from {}", dst.len(), s.len())
        })?;
        dst.copy_from_slice(&s[..dst.len()]);
        Ok(())
    }

    fn embed(&self, table: &Weight, ids: &[u32], out: &mut Tensor) -> Result<()> {
        let cols = table.cols();
        let rows = table.rows();
        check(out.cols() == cols && out.rows() == ids.len(), || {
            format!(
                "embed into {:?} from {} ids of width {cols}",
                out.shape(),
                ids.len()
            )
        })?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::Shape(format!(
                "token id {bad} is outside the vocabulary of {rows}"
            )));
        }
        let store = cpu_weight(table)?;
        let dt = store.layout(table.dtype());
        let row_bytes = dt.row_bytes(cols).ok_or(Error::UnsupportedType(dt))?;
        let src = store.bytes();
        let dst = f32s_mut(out)?;
        let f = engine_core::quant::dequant_fn(dt).ok_or(Error::UnsupportedType(dt))?;
        let dp = SendPtr(dst.as_mut_ptr());
        self.par_rows(ids.len(), 8, &|a, b| {
            for (i, &id) in ids.iter().enumerate().take(b).skip(a) {
                let r = id as usize;
                // SAFETY: each task writes its own output rows.
                let o = unsafe { dp.slice(i * cols, cols) };
                f(&src[r * row_bytes..(r + 1) * row_bytes], o);
            }
        });
        Ok(())
    }

    fn matmul_groups(
        &self,
        x: &Tensor,
        w: &Weight,
        out: &mut Tensor,
        groups: &[u32],
    ) -> Result<()> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        check(w.cols() == k && out.cols() == m && out.rows() == n, || {
            format!(
                "matmul {:?} x {}{:?}^T into {:?}",
                x.shape(),
                w.name(),
                w.shape(),
                out.shape()
            )
        })?;
        check(
            groups.iter().map(|&g| g as usize).sum::<usize>() == n && !groups.contains(&0),
            || format!("row groups {groups:?} do not partition {n} rows"),
        )?;
        let (kern, ws) = self.kernel_of(w)?;
        let xs = f32s(x)?;
        let os = f32s_mut(out)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        matmul::matmul(&self.pool, &kern, xs, n, k, ws, m, os, groups, &mut scratch)
    }

    fn matmul_experts(
        &self,
        x: &Tensor,
        weights: &[Weight],
        biases: Option<&[Weight]>,
        spans: &[ExpertSpan],
        groups: &[u32],
        out: &mut Tensor,
    ) -> Result<()> {
        self.matmul_experts_impl(x, weights, biases, spans, groups, out)
    }

    fn add_bias(&self, x: &mut Tensor, bias: &Weight) -> Result<()> {
        let b = weight_f32(bias, "bias")?;
        let cols = x.cols();
        check(b.len() == cols, || {
            format!("bias of {} for rows of {cols}", b.len())
        })?;
        for row in f32s_mut(x)?.chunks_exact_mut(cols) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Tensor, w: Option<&Weight>, eps: f32, out: &mut Tensor) -> Result<()> {
        let cols = x.cols();
        check(
            out.shape().numel() == x.shape().numel() && out.cols() == cols,
            || format!("rms_norm {:?} into {:?}", x.shape(), out.shape()),
        )?;
        let w = w.map(|w| weight_f32(w, "norm weight")).transpose()?;
        if let Some(w) = w {
            check(w.len() == cols, || {
                format!("norm weight of {} for rows of {cols}", w.len())
            })?;
        }
        let xs = f32s(x)?;
        let os = f32s_mut(out)?;
        let op = SendPtr(os.as_mut_ptr());
        self.par_rows(x.rows(), 16, &|a, b| {
            for r in a..b {
                // SAFETY: disjoint rows per task.
                let o = unsafe { op.slice(r * cols, cols) };
                ops::norm::rms_norm_row(&xs[r * cols..(r + 1) * cols], w, eps, o);
            }
        });
        Ok(())
    }

    fn rms_norm_inplace(&self, x: &mut Tensor, w: Option<&Weight>, eps: f32) -> Result<()> {
        let cols = x.cols();
        let rows = x.rows();
        let w = w.map(|w| weight_f32(w, "norm weight")).transpose()?;
        if let Some(w) = w {
            check(w.len() == cols, || {
                format!("norm weight of {} for rows of {cols}", w.len())
            })?;
        }
        let xs = f32s_mut(x)?;
        let xp = SendPtr(xs.as_mut_ptr());
        self.par_rows(rows, 64, &|a, b| {
            for r in a..b {
                // SAFETY: disjoint rows per task.
                ops::norm::rms_norm_row_inplace(unsafe { xp.slice(r * cols, cols) }, w, eps);
            }
        });
        Ok(())
    }

    fn add(&self, dst: &mut Tensor, src: &Tensor) -> Result<()> {
        check(dst.shape().numel() == src.shape().numel(), || {
            format!("add {:?} += {:?}", dst.shape(), src.shape())
        })?;
        let s = f32s(src)?;
        for (d, v) in f32s_mut(dst)?.iter_mut().zip(s) {
            *d += v;
        }
        Ok(())
    }

    fn scale(&self, x: &mut Tensor, s: f32) -> Result<()> {
        for v in f32s_mut(x)? {
            *v *= s;
        }
        Ok(())
    }

    fn glu(&self, act: Activation, gate: &mut Tensor, up: &Tensor) -> Result<()> {
        let gated = !matches!(act, Activation::ReluSquared);
        if gated {
            check(gate.shape().numel() == up.shape().numel(), || {
                format!("glu gate {:?} with up {:?}", gate.shape(), up.shape())
            })?;
        }
        let cols = gate.cols();
        let rows = gate.rows();
        let u = if gated { f32s(up)? } else { &[][..] };
        let g = f32s_mut(gate)?;
        let gp = SendPtr(g.as_mut_ptr());
        self.par_rows(rows, 4, &|a, b| {
            // SAFETY: disjoint rows per task.
            let gs = unsafe { gp.slice(a * cols, (b - a) * cols) };
            let us = if gated {
                &u[a * cols..b * cols]
            } else {
                &[][..]
            };
            ops::activation::glu_row(act, gs, us);
        });
        Ok(())
    }

    fn rope(&self, x: &mut Tensor, pos: &[u32], spec: &RopeSpec) -> Result<()> {
        let width = spec.n_head * spec.head_dim;
        check(x.cols() == width && x.rows() == pos.len(), || {
            format!(
                "rope on {:?} with {} positions, {} heads of {}",
                x.shape(),
                pos.len(),
                spec.n_head,
                spec.head_dim
            )
        })?;
        check(
            spec.n_rot <= spec.head_dim
                && spec.n_rot.is_multiple_of(2)
                && spec.n_rot / 2 <= ops::rope::MAX_PAIRS,
            || {
                format!(
                    "rope: {} rotated dims of a {}-dim head",
                    spec.n_rot, spec.head_dim
                )
            },
        )?;
        let factors = spec
            .freq_factors
            .map(|w| weight_f32(w, "rope factors"))
            .transpose()?;
        if let Some(f) = factors {
            check(f.len() >= spec.n_rot / 2, || {
                format!("{} rope factors for {} pairs", f.len(), spec.n_rot / 2)
            })?;
        }
        let xs = f32s_mut(x)?;
        let xp = SendPtr(xs.as_mut_ptr());
        self.par_rows(pos.len(), 8, &|a, b| {
            let mut cs = [0.0f32; 2 * ops::rope::MAX_PAIRS];
            for (t, &p) in pos.iter().enumerate().take(b).skip(a) {
                ops::rope::cos_sin(p as f32, spec, factors, &mut cs);
                // SAFETY: disjoint rows per task.
                ops::rope::apply(unsafe { xp.slice(t * width, width) }, spec, &cs);
            }
        });
        Ok(())
    }

    fn kv_store(&self, cache: &mut Tensor, src: &Tensor, rows: &[u32]) -> Result<()> {
        let cols = cache.cols();
        check(src.cols() == cols && src.rows() == rows.len(), || {
            format!(
                "kv_store {:?} into cache {:?} at {} rows",
                src.shape(),
                cache.shape(),
                rows.len()
            )
        })?;
        let n_rows = cache.rows();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n_rows) {
            return Err(Error::Shape(format!(
                "cache row {bad} past the cache's {n_rows} rows"
            )));
        }
        let s = f32s(src)?;
        let dt = cache.dtype();
        let c = cpu_mut(cache)?;
        match dt {
            DType::F32 => {
                let d = c.f32s_mut();
                for (i, &r) in rows.iter().enumerate() {
                    let r = r as usize;
                    d[r * cols..(r + 1) * cols].copy_from_slice(&s[i * cols..(i + 1) * cols]);
                }
            }
            DType::F16 => {
                let bytes = c.bytes_mut();
                for (i, &r) in rows.iter().enumerate() {
                    let r = r as usize;
                    let dst = &mut bytes[r * cols * 2..(r + 1) * cols * 2];
                    engine_core::quant::float::quant_f16(&s[i * cols..(i + 1) * cols], dst);
                }
            }
            other => return Err(Error::UnsupportedType(other)),
        }
        Ok(())
    }

    fn kv_copy(
        &self,
        cache: &mut Tensor,
        src_start: usize,
        dst_start: usize,
        n: usize,
    ) -> Result<()> {
        let row_bytes = cache
            .dtype()
            .row_bytes(cache.cols())
            .ok_or(Error::UnsupportedType(cache.dtype()))?;
        let rows = cache.rows();
        check(src_start + n <= rows && dst_start + n <= rows, || {
            format!("kv_copy {src_start}+{n} -> {dst_start} in {rows} rows")
        })?;
        let b = cpu_mut(cache)?.bytes_mut();
        b.copy_within(
            src_start * row_bytes..(src_start + n) * row_bytes,
            dst_start * row_bytes,
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spec: &AttentionSpec,
        out: &mut Tensor,
    ) -> Result<()> {
        let n = spec.queries.len();
        let (nh, nkv, hd, hv) = (spec.n_head, spec.n_kv_head, spec.head_dim, spec.head_dim_v);
        check(nkv > 0 && nh % nkv == 0, || {
            format!("{nh} query heads over {nkv} kv heads")
        })?;
        check(
            q.rows() == n && q.cols() == nh * hd && out.rows() == n && out.cols() == nh * hv,
            || {
                format!(
                    "attention q {:?} out {:?} for {n} queries of {nh}x{hd}",
                    q.shape(),
                    out.shape()
                )
            },
        )?;
        check(
            k.cols() == nkv * hd && v.cols() == nkv * hv && k.rows() == v.rows(),
            || format!("attention caches k {:?} v {:?}", k.shape(), v.shape()),
        )?;
        check(
            hv <= ops::attention::MAX_HEAD_DIM && hd <= ops::attention::MAX_HEAD_DIM,
            || format!("head size {hd}/{hv} above {}", ops::attention::MAX_HEAD_DIM),
        )?;
        let cache_rows = k.rows();
        for qp in spec.queries {
            check((qp.kv_base as usize + qp.pos as usize) < cache_rows, || {
                format!(
                    "query at position {} (base {}) past the cache's {cache_rows} rows",
                    qp.pos, qp.kv_base
                )
            })?;
        }
        let sinks = spec
            .sinks
            .map(|w| weight_f32(w, "attention sinks"))
            .transpose()?;
        let job = ops::attention::HeadJob {
            k: cache_rows_of(k)?,
            v: cache_rows_of(v)?,
            row_stride_k: nkv * hd,
            row_stride_v: nkv * hv,
            head_dim: hd,
            head_dim_v: hv,
            scale: spec.scale,
            softcap: spec.softcap,
            window: spec.window,
        };
        // Numerics follow llama.cpp's CPU flash attention with an f16 cache, path by path,
        // chosen per group (by default a sequence's run of queries with the same kv_base) so
        // that sequences batched together give the results they give alone, and a query in
        // a group of its own gets exactly a one-token step's result: a single query over a long
        // cache is split across threads, fewer than 64 queries accumulate in f16, more use
        // f32 tiles.
        let f16_cache = k.dtype() == DType::F16 && v.dtype() == DType::F16;
        let n_threads = self.pool.n_threads();
        let qs = f32s(q)?;
        let os = f32s_mut(out)?;
        let op = SendPtr(os.as_mut_ptr());
        let group = nh / nkv;
        let queries = spec.queries;
        if let Some(g) = spec.groups {
            check(g.iter().map(|&l| l as usize).sum::<usize>() == n, || {
                format!("attention groups cover {:?} rows, not {n}", g)
            })?;
        }
        // The group holding query `t`: its first row and its length.
        let group_of = |t: usize| -> (usize, usize) {
            match spec.groups {
                Some(groups) => {
                    let mut s = 0;
                    for &l in groups {
                        let l = l as usize;
                        if t < s + l {
                            return (s, l);
                        }
                        s += l;
                    }
                    (t, 1)
                }
                None => {
                    let b = queries[t].kv_base;
                    let lo = (0..t)
                        .rev()
                        .take_while(|&i| queries[i].kv_base == b)
                        .count();
                    let hi = (t + 1..n).take_while(|&i| queries[i].kv_base == b).count();
                    (t - lo, lo + 1 + hi)
                }
            }
        };
        const ROWS: usize = ops::attention::MAX_TILED_ROWS;
        let chunks = n.div_ceil(ROWS);
        self.pool.run(nh * chunks, &|task| {
            let (h, c) = (task % nh, task / nh);
            let (r0, r1) = (c * ROWS, ((c + 1) * ROWS).min(n));
            let (kvh, sink) = (h / group, sinks.map(|s| s[h]));
            let qrow = |t: usize| &qs[t * nh * hd + h * hd..t * nh * hd + (h + 1) * hd];
            let mut start = r0;
            while start < r1 {
                let base = queries[start].kv_base;
                let (g_start, run) = group_of(start);
                let end = start
                    + (start..r1.min(g_start + run))
                        .take_while(|&i| queries[i].kv_base == base)
                        .count();
                if f16_cache && run >= ops::attention::F16_ACCUM_MAX_QUERIES {
                    // Tiled path: the sub-run shares converted K/V tiles.
                    let mut rows: [ops::attention::TiledRow; ROWS] =
                        std::array::from_fn(|_| ops::attention::TiledRow {
                            q: &[],
                            pos: 0,
                            out: &mut [],
                        });
                    for (slot, t) in rows.iter_mut().zip(start..end) {
                        // SAFETY: each task writes its own (token, head) slices.
                        let out = unsafe { op.slice(t * nh * hv + h * hv, hv) };
                        *slot = ops::attention::TiledRow {
                            q: qrow(t),
                            pos: queries[t].pos as usize,
                            out,
                        };
                    }
                    ops::attention::attend_tiled(
                        &job,
                        &mut rows[..end - start],
                        kvh,
                        base as usize,
                        sink,
                    );
                } else {
                    for t in start..end {
                        // SAFETY: each task writes its own (token, head) slice.
                        let o = unsafe { op.slice(t * nh * hv + h * hv, hv) };
                        let pos = queries[t].pos as usize;
                        if f16_cache {
                            let mut qbuf = [0u16; ops::attention::MAX_HEAD_DIM];
                            ops::attention::to_f16_bits(qrow(t), &mut qbuf[..hd]);
                            let padded =
                                (pos + 1).div_ceil(ops::attention::KV_PAD) * ops::attention::KV_PAD;
                            if run == 1 && padded >= ops::attention::SPLIT_KV_MIN {
                                ops::attention::attend_split_kv(
                                    &job,
                                    &qbuf[..hd],
                                    kvh,
                                    base as usize,
                                    pos,
                                    sink,
                                    n_threads,
                                    o,
                                );
                            } else {
                                ops::attention::attend_f16_accum(
                                    &job,
                                    &qbuf[..hd],
                                    kvh,
                                    base as usize,
                                    pos,
                                    sink,
                                    o,
                                );
                            }
                        } else {
                            ops::attention::attend(&job, qrow(t), kvh, base as usize, pos, sink, o);
                        }
                    }
                }
                start = end;
            }
        });
        Ok(())
    }

    fn gather_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        let cols = src.cols();
        check(dst.cols() == cols && dst.rows() == rows.len(), || {
            format!(
                "gather {} rows of {:?} into {:?}",
                rows.len(),
                src.shape(),
                dst.shape()
            )
        })?;
        let n_src = src.rows();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n_src) {
            return Err(Error::Shape(format!("row {bad} past {n_src} rows")));
        }
        let s = f32s(src)?;
        let d = f32s_mut(dst)?;
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            d[i * cols..(i + 1) * cols].copy_from_slice(&s[r * cols..(r + 1) * cols]);
        }
        Ok(())
    }

    fn scatter_rows(&self, src: &Tensor, rows: &[u32], dst: &mut Tensor) -> Result<()> {
        self.scatter_rows_impl(src, rows, dst)
    }

    fn scale_rows(&self, x: &mut Tensor, scales: &[f32]) -> Result<()> {
        self.scale_rows_impl(x, scales)
    }

    fn weighted_row_sum(
        &self,
        src: &Tensor,
        weights: &[f32],
        k: usize,
        dst: &mut Tensor,
    ) -> Result<()> {
        self.weighted_row_sum_impl(src, weights, k, dst)
    }

    fn rms_norm_groups_inplace(
        &self,
        x: &mut Tensor,
        w: Option<&Weight>,
        group: usize,
        eps: f32,
    ) -> Result<()> {
        self.rms_norm_groups_inplace_impl(x, w, group, eps)
    }

    fn ssm_conv(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
        runs: &[SeqRun],
        out: &mut Tensor,
    ) -> Result<()> {
        self.ssm_conv_impl(x, w, b, state, runs, out)
    }

    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        state: &mut Tensor,
        spec: &SsmScanSpec,
        y: &mut Tensor,
    ) -> Result<()> {
        self.ssm_scan_impl(xbc, dt, state, spec, y)
    }
}
