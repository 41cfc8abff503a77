//! The one matrix-multiplication driver: `out = x @ w^T` for any weight format.
//!
//! Activation rows are converted to the weight's partner type once, then the weight rows are
//! split into chunks handed to the thread pool; each chunk multiplies its rows with every
//! activation row, so a chunk of weights stays in cache while the activations stream by.

use engine_core::{Error, Result};

use crate::kernels::{self, Kernel};
use crate::pool::{SendPtr, ThreadPool};

/// Rows per task in decode (one activation row); small enough to balance two to many threads.
const DECODE_ROWS: usize = 64;
/// Rows per task when many activation rows share the weights.
const PREFILL_ROWS: usize = 16;

/// Multiplies `x` (`n` rows of `k` f32) by the weight rows `w` (`m` rows of `k` elements in
/// `kern.weight`'s layout) into `out` (`n` rows of `m`). `groups` partitions the rows into
/// independent batches (see `Backend::matmul_groups`). `scratch` holds the converted
/// activations and is grown as needed (it is reused across calls).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    kern: &Kernel,
    x: &[f32],
    n: usize,
    k: usize,
    w: &[u8],
    m: usize,
    out: &mut [f32],
    groups: &[u32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let w_row = kern
        .weight
        .row_bytes(k)
        .ok_or_else(|| Error::Shape(format!("row of {k} is not whole {} blocks", kern.weight)))?;
    let a_row = kern
        .act
        .row_bytes(k)
        .ok_or_else(|| Error::Shape(format!("row of {k} is not whole {} blocks", kern.act)))?;
    if w.len() < w_row * m || x.len() < n * k || out.len() < n * m {
        return Err(Error::Shape(format!(
            "matmul sizes: x {} (need {}), w {} (need {}), out {} (need {})",
            x.len(),
            n * k,
            w.len(),
            w_row * m,
            out.len(),
            n * m
        )));
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
    let chunk = if n == 1 { DECODE_ROWS } else { PREFILL_ROWS };
    let n_chunks = m.div_ceil(chunk);
    let op = SendPtr(out.as_mut_ptr());
    pool.run(n_chunks, &|c| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(m);
        let (mut g, mut g_start) = (0usize, 0usize);
        for col in 0..n {
            // the variant this row would get if its group were a batch of its own
            while col >= g_start + groups[g] as usize {
                g_start += groups[g] as usize;
                g += 1;
            }
            let dot = kern.select(m, groups[g] as usize, col - g_start);
            let a = &acts[col * a_row..(col + 1) * a_row];
            // SAFETY: this task alone writes out[col * m + r0 .. col * m + r1].
            let o = unsafe { op.slice(col * m + r0, r1 - r0) };
            for (i, r) in (r0..r1).enumerate() {
                o[i] = dot(k, &w[r * w_row..(r + 1) * w_row], a);
            }
        }
    });
    Ok(())
}
