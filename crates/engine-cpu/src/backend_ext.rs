//! The CPU implementations of the backend operations that mixture-of-experts and hybrid
//! (Mamba-2 + attention) models need: the expert matmul, row scatter and per-row scaling,
//! weighted sums of expert outputs, grouped RMS norm, and the recurrent convolution and scan. The
//! [`engine_core::Backend`] impl in the crate root forwards to these.

use engine_core::{Error, ExpertSpan, Result, SeqRun, SsmScanSpec, Tensor, Weight};

use crate::buffer::{cpu_weight, f32s, f32s_mut};
use crate::ops;
use crate::pool::SendPtr;
use crate::{check, weight_f32, CpuBackend};

/// Most experts one MoE layer may have on the CPU backend.
pub const MAX_EXPERTS: usize = 1024;

/// Checks that `runs` partition `n` rows and address existing state slots; returns whether
/// every run has its own slot (then runs may be processed in parallel).
fn check_runs(runs: &[SeqRun], n: usize, slots: usize) -> Result<bool> {
    let total: usize = runs.iter().map(|r| r.len as usize).sum();
    check(total == n && runs.iter().all(|r| r.len > 0), || {
        format!("sequence runs cover {total} rows of {n}")
    })?;
    if let Some(r) = runs.iter().find(|r| r.slot as usize >= slots) {
        return Err(Error::Shape(format!(
            "state slot {} past the {slots} slots",
            r.slot
        )));
    }
    Ok(runs
        .iter()
        .enumerate()
        .all(|(i, r)| runs[..i].iter().all(|q| q.slot != r.slot)))
}

/// First row of each run.
fn run_starts(runs: &[SeqRun], i: usize) -> usize {
    runs[..i].iter().map(|r| r.len as usize).sum()
}

impl CpuBackend {
    pub(crate) fn matmul_experts_impl(
        &self,
        x: &Tensor,
        weights: &[Weight],
        biases: Option<&[Weight]>,
        spans: &[ExpertSpan],
        groups: &[u32],
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, k) = (x.rows(), x.cols());
        let first = weights
            .first()
            .ok_or_else(|| Error::Shape("expert matmul without experts".into()))?;
        let (dtype, m) = (first.dtype(), first.rows());
        check(out.rows() == n && out.cols() == m, || {
            format!(
                "expert matmul {:?} x {}{:?}^T into {:?}",
                x.shape(),
                first.name(),
                first.shape(),
                out.shape()
            )
        })?;
        if let Some(w) = weights
            .iter()
            .find(|w| w.dtype() != dtype || w.rows() != m || w.cols() != k)
        {
            return Err(Error::Shape(format!(
                "expert weights differ: {} is {} {:?}, {} is {dtype} {:?}",
                w.name(),
                w.dtype(),
                w.shape(),
                first.name(),
                first.shape()
            )));
        }
        let (kern, _) = self.kernel_of(first)?;
        // at most a few hundred experts: small fixed arrays would do, but the slices are
        // borrowed views and cost no copy
        let mut ws: [&[u8]; MAX_EXPERTS] = [&[]; MAX_EXPERTS];
        let mut bs: [&[f32]; MAX_EXPERTS] = [&[]; MAX_EXPERTS];
        check(weights.len() <= MAX_EXPERTS, || {
            format!("{} experts (at most {MAX_EXPERTS})", weights.len())
        })?;
        for (slot, w) in ws.iter_mut().zip(weights) {
            let store = cpu_weight(w)?;
            check(store.layout(dtype) == kern.weight, || {
                format!(
                    "expert {} is stored differently from {}",
                    w.name(),
                    first.name()
                )
            })?;
            *slot = store.bytes();
        }
        if let Some(b) = biases {
            check(b.len() == weights.len(), || {
                format!("{} biases for {} experts", b.len(), weights.len())
            })?;
            for (slot, w) in bs.iter_mut().zip(b) {
                *slot = weight_f32(w, "expert bias")?;
            }
        }
        let xs = f32s(x)?;
        let os = f32s_mut(out)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        crate::matmul_experts::matmul_experts(
            &self.pool,
            &kern,
            xs,
            n,
            k,
            &ws[..weights.len()],
            biases.map(|_| &bs[..weights.len()]),
            m,
            spans,
            groups,
            os,
            &mut scratch,
        )
    }

    pub(crate) fn scatter_rows_impl(
        &self,
        src: &Tensor,
        rows: &[u32],
        dst: &mut Tensor,
    ) -> Result<()> {
        let cols = src.cols();
        check(dst.cols() == cols && src.rows() == rows.len(), || {
            format!(
                "scatter {} rows of {:?} into {:?}",
                rows.len(),
                src.shape(),
                dst.shape()
            )
        })?;
        let n_dst = dst.rows();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n_dst) {
            return Err(Error::Shape(format!("row {bad} past {n_dst} rows")));
        }
        let s = f32s(src)?;
        let d = f32s_mut(dst)?;
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            d[r * cols..(r + 1) * cols].copy_from_slice(&s[i * cols..(i + 1) * cols]);
        }
        Ok(())
    }

    pub(crate) fn scale_rows_impl(&self, x: &mut Tensor, scales: &[f32]) -> Result<()> {
        let cols = x.cols();
        check(x.rows() == scales.len(), || {
            format!("{} row scales for {:?}", scales.len(), x.shape())
        })?;
        for (row, &s) in f32s_mut(x)?.chunks_exact_mut(cols).zip(scales) {
            for v in row {
                *v *= s;
            }
        }
        Ok(())
    }

    pub(crate) fn weighted_row_sum_impl(
        &self,
        src: &Tensor,
        weights: &[f32],
        k: usize,
        dst: &mut Tensor,
    ) -> Result<()> {
        let (n, cols) = (dst.rows(), dst.cols());
        check(
            k > 0 && src.cols() == cols && src.rows() == n * k && weights.len() == n * k,
            || {
                format!(
                    "weighted sum of {:?} in groups of {k} with {} weights into {:?}",
                    src.shape(),
                    weights.len(),
                    dst.shape()
                )
            },
        )?;
        let s = f32s(src)?;
        let d = f32s_mut(dst)?;
        let dp = SendPtr(d.as_mut_ptr());
        self.par_rows(n, 8, &|a, b| {
            for t in a..b {
                // SAFETY: disjoint output rows per task.
                let o = unsafe { dp.slice(t * cols, cols) };
                ops::rows::weighted_sum(
                    &s[t * k * cols..(t + 1) * k * cols],
                    &weights[t * k..(t + 1) * k],
                    o,
                );
            }
        });
        Ok(())
    }

    pub(crate) fn rms_norm_groups_inplace_impl(
        &self,
        x: &mut Tensor,
        w: Option<&Weight>,
        group: usize,
        eps: f32,
    ) -> Result<()> {
        let cols = x.cols();
        let rows = x.rows();
        check(group > 0 && cols.is_multiple_of(group), || {
            format!("groups of {group} in rows of {cols}")
        })?;
        let w = w.map(|w| weight_f32(w, "norm weight")).transpose()?;
        if let Some(w) = w {
            check(w.len() == cols, || {
                format!("grouped norm weight of {} for rows of {cols}", w.len())
            })?;
        }
        let xs = f32s_mut(x)?;
        let xp = SendPtr(xs.as_mut_ptr());
        let n_groups = rows * (cols / group);
        self.par_rows(n_groups, 64, &|a, b| {
            for g in a..b {
                let col = (g * group) % cols;
                // SAFETY: disjoint groups per task.
                let v = unsafe { xp.slice(g * group, group) };
                ops::norm::rms_norm_row_inplace(v, w.map(|w| &w[col..col + group]), eps);
            }
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ssm_conv_impl(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
        runs: &[SeqRun],
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, ch) = (x.rows(), x.cols());
        let dc = w.cols();
        check(
            w.rows() == ch && (2..=ops::ssm::MAX_CONV).contains(&dc),
            || format!("conv kernel {:?} for {ch} channels", w.shape()),
        )?;
        check(out.rows() == n && out.cols() == ch, || {
            format!("conv of {:?} into {:?}", x.shape(), out.shape())
        })?;
        let h = dc - 1;
        check(state.cols() == h * ch, || {
            format!(
                "conv state rows of {} for {ch} channels of history {h}",
                state.cols()
            )
        })?;
        let distinct = check_runs(runs, n, state.rows())?;
        let wv = weight_f32(w, "conv kernel")?;
        let bv = b.map(|b| weight_f32(b, "conv bias")).transpose()?;
        if let Some(bv) = bv {
            check(bv.len() == ch, || {
                format!("conv bias of {} for {ch}", bv.len())
            })?;
        }
        let xs = f32s(x)?;
        let state_cols = state.cols();
        let sp = SendPtr(f32s_mut(state)?.as_mut_ptr());
        let op = SendPtr(f32s_mut(out)?.as_mut_ptr());
        // Channel blocks per run: enough tasks for the pool, each a contiguous state slice.
        let per = ch.div_ceil(self.n_threads() * 2).max(16).min(ch);
        let blocks = ch.div_ceil(per);
        let do_block = |i: usize, blk: usize| {
            let r = runs[i];
            let r0 = run_starts(runs, i);
            let len = r.len as usize;
            let (c0, c1) = (blk * per, ((blk + 1) * per).min(ch));
            let run = ops::ssm::ConvRun {
                x: &xs[r0 * ch..(r0 + len) * ch],
                w: wv,
                b: bv,
                channels: ch,
                d_conv: dc,
                len,
                fresh: r.fresh,
            };
            // SAFETY: each (slot, channel block) is handled by one task at a time (runs that
            // share a slot are processed one after the other), and each (row, channel block)
            // output slice by exactly one task.
            let st = unsafe { sp.slice(r.slot as usize * state_cols + c0 * h, (c1 - c0) * h) };
            ops::ssm::conv_channels(&run, c0, c1, st, |t| unsafe {
                op.slice((r0 + t) * ch + c0, c1 - c0)
            });
        };
        if distinct {
            self.pool.run(runs.len() * blocks, &|task| {
                do_block(task / blocks, task % blocks)
            });
        } else {
            for i in 0..runs.len() {
                self.pool.run(blocks, &|blk| do_block(i, blk));
            }
        }
        Ok(())
    }

    pub(crate) fn ssm_scan_impl(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        state: &mut Tensor,
        spec: &SsmScanSpec,
        y: &mut Tensor,
    ) -> Result<()> {
        let (nh, hd, ds, ng) = (spec.n_head, spec.head_dim, spec.d_state, spec.n_group);
        let n = xbc.rows();
        let d_inner = nh * hd;
        check(ng > 0 && nh > 0 && nh.is_multiple_of(ng), || {
            format!("{nh} SSM heads in {ng} groups")
        })?;
        check(xbc.cols() == d_inner + 2 * ng * ds, || {
            format!(
                "scan input rows of {} for {nh}x{hd} channels, {ng} groups of state {ds}",
                xbc.cols()
            )
        })?;
        check(dt.rows() == n && dt.cols() == nh, || {
            format!("time steps {:?} for {n} rows of {nh} heads", dt.shape())
        })?;
        check(y.rows() == n && y.cols() == d_inner, || {
            format!("scan output {:?} for {n} rows of {d_inner}", y.shape())
        })?;
        check(state.cols() == d_inner * ds, || {
            format!("SSM state rows of {} for {d_inner}x{ds}", state.cols())
        })?;
        let a = weight_f32(spec.a, "ssm_a")?;
        let d = weight_f32(spec.d, "ssm_d")?;
        let dtb = weight_f32(spec.dt_bias, "ssm_dt bias")?;
        check(a.len() == nh && d.len() == nh && dtb.len() == nh, || {
            format!(
                "per-head SSM parameters of {}/{}/{} for {nh} heads",
                a.len(),
                d.len(),
                dtb.len()
            )
        })?;
        let distinct = check_runs(spec.runs, n, state.rows())?;
        let runs = spec.runs;
        let (xs, dts) = (f32s(xbc)?, f32s(dt)?);
        let cols = xbc.cols();
        let state_cols = state.cols();
        let sp = SendPtr(f32s_mut(state)?.as_mut_ptr());
        let yp = SendPtr(f32s_mut(y)?.as_mut_ptr());
        let do_head = |i: usize, h: usize| {
            let r = runs[i];
            let r0 = run_starts(runs, i);
            let len = r.len as usize;
            let run = ops::ssm::ScanRun {
                xbc: &xs[r0 * cols..(r0 + len) * cols],
                xbc_cols: cols,
                dt: &dts[r0 * nh..(r0 + len) * nh],
                a,
                dt_bias: dtb,
                d,
                n_head: nh,
                head_dim: hd,
                d_state: ds,
                n_group: ng,
                len,
                fresh: r.fresh,
            };
            // SAFETY: each (slot, head) state slice and each (row, head) output slice is
            // written by one task at a time (runs sharing a slot run one after the other).
            let st = unsafe { sp.slice(r.slot as usize * state_cols + h * hd * ds, hd * ds) };
            ops::ssm::scan_head(&run, h, st, |t| unsafe {
                yp.slice((r0 + t) * d_inner + h * hd, hd)
            });
        };
        if distinct {
            self.pool
                .run(runs.len() * nh, &|task| do_head(task / nh, task % nh));
        } else {
            for i in 0..runs.len() {
                self.pool.run(nh, &|h| do_head(i, h));
            }
        }
        Ok(())
    }
}
