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
        // SAFETY: this task alone writes rows r0..r1 of every column.
        unsafe {
            multiply_rows(
                kern,
                m,
                k,
                &w[r0 * w_row..r1 * w_row],
                r1 - r0,
                acts,
                a_row,
                0..n,
                groups,
                op.at(r0),
                m,
            )
        };
    });
    Ok(())
}

/// Multiplies the `nr` weight rows `w_rows` (of a matrix of `m` rows, which picks the
/// routines) with the activation columns `cols` (rows of
/// `acts`, `a_row` bytes each) into `out[(j - cols.start) * ldo + i]`. `groups` partitions
/// the columns from `cols.start` on into batch groups; each column gets the routine
/// [`Kernel::select`] would give it in a batch of its own group alone, and consecutive
/// columns with the same routine go through its many-rows `gemm` together (a pair's result
/// depends only on its routine, never on its neighbours).
///
/// # Safety
/// `out` must be valid for writes at every `(j - cols.start) * ldo + i`, `i < nr`, and no
/// other thread may write those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn multiply_rows(
    kern: &Kernel,
    m: usize,
    k: usize,
    w_rows: &[u8],
    nr: usize,
    acts: &[u8],
    a_row: usize,
    cols: std::ops::Range<usize>,
    groups: &[u32],
    out: *mut f32,
    ldo: usize,
) {
    if cols.is_empty() {
        return;
    }
    let w_row = w_rows.len() / nr;
    let (mut g, mut g_start) = (0usize, cols.start);
    let mut routine_of = |col: usize| {
        while col >= g_start + groups[g] as usize {
            g_start += groups[g] as usize;
            g += 1;
        }
        kern.select(m, groups[g] as usize, col - g_start)
    };
    let mut col = cols.start;
    let mut current = routine_of(col);
    while col < cols.end {
        let mut end = col + 1;
        let mut next = None;
        while end < cols.end {
            let r = routine_of(end);
            if !r.same(&current) {
                next = Some(r);
                break;
            }
            end += 1;
        }
        let o = out.add((col - cols.start) * ldo);
        match current.gemm {
            // SAFETY: the caller owns these outputs; the routine came from the table for
            // the detected instruction set.
            Some(gemm) => gemm(
                k,
                w_rows,
                nr,
                &acts[col * a_row..],
                a_row,
                end - col,
                o,
                ldo,
            ),
            None => {
                for j in col..end {
                    let aj = &acts[j * a_row..(j + 1) * a_row];
                    let oj = o.add((j - col) * ldo);
                    for i in 0..nr {
                        *oj.add(i) = (current.dot)(k, &w_rows[i * w_row..(i + 1) * w_row], aj);
                    }
                }
            }
        }
        col = end;
        if let Some(r) = next {
            current = r;
        }
    }
}
