//! The one matrix-multiplication driver: `out = x @ w^T` for any weight format.
//!
//! Activation rows are converted to the weight's partner type once, then the weight rows are
//! split into chunks handed to the thread pool; each chunk multiplies its rows with every
//! activation row through the kernel's many-rows routine (register tiles, weights unpacked
//! once per chunk), so a chunk of weights stays in cache while the activations stream by.

use engine_core::{Error, Result};

use crate::kernels::{self, Kernel};
use crate::pool::{SendPtr, ThreadPool};

/// Tasks per thread a matrix is cut into (so uneven progress still balances).
const TASKS_PER_THREAD: usize = 4;
/// Most weight rows per task (a large matrix is cut finer than `TASKS_PER_THREAD` asks).
const MAX_ROWS_PER_TASK: usize = 256;

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
    // Rows per task: small enough to give every thread several tasks, a multiple of 8.
    let target = m.div_ceil(pool.n_threads() * TASKS_PER_THREAD);
    let chunk = target.next_multiple_of(8).clamp(8, MAX_ROWS_PER_TASK);
    let n_chunks = m.div_ceil(chunk);
    let op = SendPtr(out.as_mut_ptr());
    pool.run(n_chunks, &|c| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(m);
        let w_rows = &w[r0 * w_row..r1 * w_row];
        // Consecutive columns computed by the same routine form one run, whatever batch
        // group they belong to: a pair's result depends only on its routine.
        let (mut g, mut g_start) = (0usize, 0usize);
        let mut routine_of = |col: usize| {
            while col >= g_start + groups[g] as usize {
                g_start += groups[g] as usize;
                g += 1;
            }
            // the routine this column would get if its group were a batch of its own
            kern.select(m, groups[g] as usize, col - g_start)
        };
        let mut col = 0;
        let mut current = routine_of(0);
        while col < n {
            let mut end = col + 1;
            let mut next = None;
            while end < n {
                let r = routine_of(end);
                if !r.same(&current) {
                    next = Some(r);
                    break;
                }
                end += 1;
            }
            let a = &acts[col * a_row..];
            match current.gemm {
                // SAFETY: this task alone writes rows r0..r1 of columns col..end; the
                // routine came from the table for the detected instruction set.
                Some(gemm) => unsafe {
                    gemm(
                        k,
                        w_rows,
                        r1 - r0,
                        a,
                        a_row,
                        end - col,
                        op.at(col * m + r0),
                        m,
                    )
                },
                None => {
                    for j in col..end {
                        let aj = &acts[j * a_row..(j + 1) * a_row];
                        // SAFETY: this task alone writes out[j * m + r0 .. j * m + r1].
                        let o = unsafe { op.slice(j * m + r0, r1 - r0) };
                        for (i, r) in (r0..r1).enumerate() {
                            o[i] = (current.dot)(k, &w[r * w_row..(r + 1) * w_row], aj);
                        }
                    }
                }
            }
            col = end;
            if let Some(r) = next {
                current = r;
            }
        }
    });
    Ok(())
}
