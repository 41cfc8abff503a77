//! The mixture-of-experts matmul driver: many weights (the selected experts), each applied
//! to its own span of activation rows, in one pass over the thread pool.
//!
//! A decode step multiplies `k` experts with one row each; doing that as `k` separate
//! matmuls costs `k` pool dispatches per projection, most of it waiting. Here the activation
//! rows are converted to the weights' partner type once, and the tasks are (span, chunk of
//! weight rows) pairs of all spans together. Each output element is computed exactly as the
//! single-weight driver ([`crate::matmul`]) computes it for the same row group (through the
//! same [`multiply_rows`]), so batching never changes a sequence's numbers.
//! Only the weights named by the spans are read.

use engine_core::{Error, ExpertSpan, Result};

use crate::kernels::{self, Kernel};
use crate::matmul::multiply_rows;
use crate::pool::{SendPtr, ThreadPool};

/// Weight rows per task when a span has few rows (decode).
const FEW_ROWS_CHUNK: usize = 64;
/// Weight rows per task when spans share weights over many rows.
const MANY_ROWS_CHUNK: usize = 16;

/// `out[r] = x[r] @ w_e^T (+ b_e)` for the rows of each span, `e` its expert. `x` is `n`
/// rows of `k` f32, `weights[e]` the bytes of expert `e` (`m` rows of `k` elements in
/// `kern.weight`'s layout), `biases[e]` its `m` biases, `out` `n` rows of `m`. `groups`
/// partitions the rows into independent groups, each inside one span.
#[allow(clippy::too_many_arguments)]
pub fn matmul_experts(
    pool: &ThreadPool,
    kern: &Kernel,
    x: &[f32],
    n: usize,
    k: usize,
    weights: &[&[u8]],
    biases: Option<&[&[f32]]>,
    m: usize,
    spans: &[ExpertSpan],
    groups: &[u32],
    out: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let shape_err = |what: String| Error::Shape(format!("expert matmul: {what}"));
    let w_row = kern
        .weight
        .row_bytes(k)
        .ok_or_else(|| shape_err(format!("row of {k} is not whole {} blocks", kern.weight)))?;
    let a_row = kern
        .act
        .row_bytes(k)
        .ok_or_else(|| shape_err(format!("row of {k} is not whole {} blocks", kern.act)))?;
    if x.len() < n * k || out.len() < n * m {
        return Err(shape_err(format!(
            "x {} (need {}), out {} (need {})",
            x.len(),
            n * k,
            out.len(),
            n * m
        )));
    }
    if spans.iter().map(|s| s.rows as usize).sum::<usize>() != n {
        return Err(shape_err(format!("spans {spans:?} do not cover {n} rows")));
    }
    for s in spans {
        let e = s.expert as usize;
        match weights.get(e) {
            Some(w) if w.len() >= w_row * m => {}
            _ => {
                return Err(shape_err(format!(
                    "expert {e} of {} is missing or smaller than {m} rows",
                    weights.len()
                )))
            }
        }
        if let Some(b) = biases {
            if b.get(e).is_none_or(|b| b.len() < m) {
                return Err(shape_err(format!("expert {e} has no bias of {m}")));
            }
        }
    }
    // every group must lie inside one span
    {
        let (mut gi, mut g_end) = (0usize, 0usize);
        let mut span_end = 0usize;
        for s in spans {
            span_end += s.rows as usize;
            while g_end < span_end {
                let g = *groups
                    .get(gi)
                    .ok_or_else(|| shape_err(format!("groups {groups:?} end before {n} rows")))?;
                if g == 0 {
                    return Err(shape_err("empty row group".into()));
                }
                g_end += g as usize;
                gi += 1;
            }
            if g_end != span_end {
                return Err(shape_err(format!(
                    "row groups {groups:?} cross the spans {spans:?}"
                )));
            }
        }
        if gi != groups.len() {
            return Err(shape_err(format!("groups {groups:?} exceed {n} rows")));
        }
    }
    if scratch.len() < n * a_row {
        scratch.resize(n * a_row, 0);
    }
    let acts = &mut scratch[..n * a_row];
    if n == 1 {
        kernels::act::quantize_row(kern.act, &x[..k], acts);
    } else {
        let ap = SendPtr(acts.as_mut_ptr());
        pool.run(n, &|r| {
            // SAFETY: each task writes its own row of the scratch buffer.
            let dst = unsafe { ap.slice(r * a_row, a_row) };
            kernels::act::quantize_row(kern.act, &x[r * k..(r + 1) * k], dst);
        });
    }
    let acts: &[u8] = acts;
    let max_rows = spans.iter().map(|s| s.rows).max().unwrap_or(0) as usize;
    let chunk = if max_rows <= 2 {
        FEW_ROWS_CHUNK
    } else {
        MANY_ROWS_CHUNK
    };
    let per_span = m.div_ceil(chunk);
    let op = SendPtr(out.as_mut_ptr());
    pool.run(spans.len() * per_span, &|task| {
        let (si, c) = (task / per_span, task % per_span);
        let span = spans[si];
        let first: usize = spans[..si].iter().map(|s| s.rows as usize).sum();
        let e = span.expert as usize;
        let w = weights[e];
        let bias = biases.map(|b| b[e]);
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(m));
        // the groups from this span's first row on
        let (mut g, mut g_start) = (0usize, 0usize);
        while g_start < first {
            g_start += groups[g] as usize;
            g += 1;
        }
        let rows = first..first + span.rows as usize;
        // SAFETY: this task alone writes rows r0..r1 of this span's output rows.
        unsafe {
            multiply_rows(
                kern,
                m,
                k,
                &w[r0 * w_row..r1 * w_row],
                r1 - r0,
                acts,
                a_row,
                rows.clone(),
                &groups[g..],
                op.at(first * m + r0),
                m,
            )
        };
        if let Some(b) = bias {
            for row in rows {
                // SAFETY: as above.
                let o = unsafe { op.slice(row * m + r0, r1 - r0) };
                for (o, &bv) in o.iter_mut().zip(&b[r0..r1]) {
                    *o += bv;
                }
            }
        }
    });
    Ok(())
}
