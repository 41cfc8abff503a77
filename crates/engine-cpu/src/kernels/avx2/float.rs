//! Float weights (F32, F16) against many activation rows: a GEMM whose results are
//! bit-identical to the pair routine ([`F32`], [`F16`] of [`super::formats`]).
//!
//! ggml's float `vec_dot` keeps `CHAINS` independent 8-lane accumulators: chain `j` sums the
//! products of the elements `8j..8j+8` of every block of `8 * CHAINS`, in order, and only the
//! final reduction combines them. Because the chains never meet before that reduction, each
//! one can be computed on its own, and its elements can be laid out back to back first:
//! the activations are converted to f32 once per call with every row *chain-major* (chain
//! 0's elements, then chain 1's, ..., then the tail), and the weights a few rows at a time
//! into a small panel the same way. A chain is then a plain contiguous dot product, so a
//! register tile needs one accumulator per (row, column) pair and no load is wasted.
//!
//! Blocking, for the caches:
//! * the activation columns are taken in blocks that stay in the L2 cache
//!   (`COL_BLOCK_BYTES`);
//! * for each block, `TILE_R` weight rows at a time are converted into the panel, one
//!   segment of one chain at a time (at most `SEG` elements per row, so the panel stays in
//!   the L1 cache while every column of the block passes over it);
//! * a `TILE_R` × `TILE_C` register tile (4 × 3: twelve FMAs per seven loads, three of them
//!   from the L2 cache) runs over a segment, its accumulators carried from one segment of
//!   a chain to the next in a small buffer (a store and a reload are exact).

#![allow(clippy::too_many_arguments)] // kernel signatures: matrix sizes, pointers, strides

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::formats::{f16, F16, F32};
use super::tile::BlockDot;

/// A float block format whose weights and activations share the element type. Its
/// [`BlockDot`] block is `QK / 8` chains of eight lanes; `finish` is the chains' reduction.
pub(crate) trait FloatFormat: BlockDot {
    /// Bytes per element.
    const BYTES: usize;
    /// Accumulator chains of the pair routine.
    const CHAINS: usize = Self::QK / 8;
    /// Eight elements from `p`, as f32.
    unsafe fn load8(p: *const u8) -> __m256;
    /// One element, as f32.
    unsafe fn load1(p: *const u8) -> f32;
    /// The pair routine's reduction (its `finish`) of the first `CHAINS` chains.
    unsafe fn reduce(chains: &[__m256; 4]) -> f32;
}

impl FloatFormat for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f16(p)
    }
    #[inline(always)]
    unsafe fn reduce(c: &[__m256; 4]) -> f32 {
        Self::finish([c[0], c[1]])
    }
}

impl FloatFormat for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
    #[inline(always)]
    unsafe fn reduce(c: &[__m256; 4]) -> f32 {
        Self::finish(*c)
    }
}

/// Rows and columns of a full register tile (the row dispatch in [`gemm`] and the column
/// edges in [`row_group`] cover these sizes).
const TILE_R: usize = 4;
const TILE_C: usize = 3;
/// Most elements of one chain of one row in the panel at a time (4 rows: 16 KiB).
const SEG: usize = 1024;
/// Bytes of f32 activations kept in cache while the weight rows pass over them.
const COL_BLOCK_BYTES: usize = 192 * 1024;

thread_local! {
    /// Per-thread f32 copies of the activation columns and of one group of weight rows,
    /// and the tiles' accumulators between segments, reused between calls.
    static ACTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACCS: RefCell<Vec<[f32; 8]>> = const { RefCell::new(Vec::new()) };
}

/// The thread's buffer in `cell`, at least `len` long. Only sizes it: a closure does not
/// inherit the caller's target features, so it must not do the arithmetic.
fn buffer<T: Copy + Default>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
) -> *mut T {
    cell.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < len {
            v.resize(len, T::default());
        }
        v.as_mut_ptr()
    })
}

/// Where the pair routine reads element `p` of chain `j` (`step = 8 * CHAINS`).
#[inline(always)]
fn chain_index(p: usize, j: usize, step: usize) -> usize {
    p / 8 * step + 8 * j + p % 8
}

/// `n` elements (a multiple of 8) of chain `j` from element `p0` on, of the row at `src`,
/// to f32 at `dst` (exact: f16 and f32 both convert without rounding).
#[inline(always)]
unsafe fn chain_to_f32<E: FloatFormat>(
    src: *const u8,
    j: usize,
    p0: usize,
    n: usize,
    dst: *mut f32,
) {
    let step = 8 * E::CHAINS;
    for q in (0..n).step_by(8) {
        let i = chain_index(p0 + q, j, step);
        _mm256_storeu_ps(dst.add(q), E::load8(src.add(i * E::BYTES)));
    }
}

/// The `k` elements of the row at `src` as f32 at `dst`, chain-major: every chain's
/// elements back to back (`len` each), then the tail past the last whole block.
#[inline(always)]
unsafe fn row_to_chains<E: FloatFormat>(src: *const u8, k: usize, len: usize, dst: *mut f32) {
    for j in 0..E::CHAINS {
        chain_to_f32::<E>(src, j, 0, len, dst.add(j * len));
    }
    for i in E::CHAINS * len..k {
        *dst.add(i) = E::load1(src.add(i * E::BYTES));
    }
}

/// `out[c * ldo + r]` = the pair routine's dot product of weight row `r` (`nr` rows of `k`
/// elements back to back in `w`) and activation row `c` (`nc` rows, `a_row` bytes apart).
///
/// # Safety
/// As for [`super::super::GemmFn`]: `out` valid for those writes, the slices hold the rows,
/// and the CPU has AVX2, FMA and F16C.
#[inline(always)]
pub(crate) unsafe fn gemm<E: FloatFormat>(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    debug_assert!(w.len() >= nr * k * E::BYTES);
    debug_assert!(nc == 0 || a.len() >= (nc - 1) * a_row + k * E::BYTES);
    let body = k - k % (8 * E::CHAINS);
    let len = body / E::CHAINS;
    let seg = SEG.min(len);
    let block_cols = (COL_BLOCK_BYTES / (4 * k.max(1))).max(TILE_C) / TILE_C * TILE_C;
    // SAFETY of the buffers' use below: only this function touches this thread's buffers,
    // and it does not call itself, so they are neither resized nor shared while in use.
    // Row strides one cache line past a whole number of lines, so that the rows of a tile
    // (whose lengths are often multiples of 4 KiB) do not all fall in the same L1 set.
    let (a_stride, w_stride) = (k.next_multiple_of(16) + 16, seg + 16);
    let acts = buffer(&ACTS, nc * a_stride);
    let panel = buffer(&PANEL, TILE_R * w_stride);
    let accs = buffer(&ACCS, block_cols.min(nc) * TILE_R * E::CHAINS) as *mut f32;
    for c in 0..nc {
        row_to_chains::<E>(a.as_ptr().add(c * a_row), k, len, acts.add(c * a_stride));
    }
    let w_row = k * E::BYTES;
    let mut c0 = 0;
    while c0 < nc {
        let cb = block_cols.min(nc - c0);
        let block = acts.add(c0 * a_stride);
        let mut r0 = 0;
        while r0 < nr {
            let rows = TILE_R.min(nr - r0);
            let wr = w.as_ptr().add(r0 * w_row);
            for j in 0..E::CHAINS {
                let mut p0 = 0;
                while p0 < len {
                    let n = seg.min(len - p0);
                    for i in 0..rows {
                        chain_to_f32::<E>(wr.add(i * w_row), j, p0, n, panel.add(i * w_stride));
                    }
                    let a_seg = block.add(j * len + p0);
                    let acc = accs.add(8 * j);
                    let first = p0 == 0;
                    match rows {
                        4 => row_group::<E, 4>(n, panel, w_stride, a_seg, a_stride, cb, acc, first),
                        3 => row_group::<E, 3>(n, panel, w_stride, a_seg, a_stride, cb, acc, first),
                        2 => row_group::<E, 2>(n, panel, w_stride, a_seg, a_stride, cb, acc, first),
                        _ => row_group::<E, 1>(n, panel, w_stride, a_seg, a_stride, cb, acc, first),
                    }
                    p0 += n;
                }
            }
            for c in 0..cb {
                let ac = block.add(c * a_stride);
                for i in 0..rows {
                    let mut chains = [_mm256_setzero_ps(); 4];
                    if len > 0 {
                        let acc = accs.add(8 * (c * TILE_R + i) * E::CHAINS);
                        for (j, ch) in chains.iter_mut().enumerate().take(E::CHAINS) {
                            *ch = _mm256_loadu_ps(acc.add(8 * j));
                        }
                    }
                    let mut s = E::reduce(&chains);
                    let wi = wr.add(i * w_row);
                    for t in body..k {
                        s += E::load1(wi.add(t * E::BYTES)) * *ac.add(t);
                    }
                    *out.add((c0 + c) * ldo + r0 + i) = s;
                }
            }
            r0 += rows;
        }
        c0 += cb;
    }
}

/// `R` panel rows (`w_stride` apart) against `nc` activation columns (`a_stride` apart),
/// `n` elements of one chain, in tiles of `TILE_C` columns. The accumulator of row `r`,
/// column `c` is the eight f32 at `acc + 8 * (c * TILE_R + r) * CHAINS`; `first` starts it
/// from zero.
#[inline(always)]
unsafe fn row_group<E: FloatFormat, const R: usize>(
    n: usize,
    w: *const f32,
    w_stride: usize,
    acts: *const f32,
    a_stride: usize,
    nc: usize,
    acc: *mut f32,
    first: bool,
) {
    let tile_acc = |c: usize| acc.add(8 * c * TILE_R * E::CHAINS);
    let mut c = 0;
    while c + TILE_C <= nc {
        let ac = acts.add(c * a_stride);
        tile::<E, R, TILE_C>(n, w, w_stride, ac, a_stride, tile_acc(c), first);
        c += TILE_C;
    }
    let ac = acts.add(c * a_stride);
    match nc - c {
        0 => {}
        1 => tile::<E, R, 1>(n, w, w_stride, ac, a_stride, tile_acc(c), first),
        _ => tile::<E, R, 2>(n, w, w_stride, ac, a_stride, tile_acc(c), first),
    }
}

/// An `R` × `C` tile over `n` contiguous elements of one chain: row `r`'s elements at
/// `w + r * w_stride`, column `c`'s at `acts + c * a_stride`; the accumulators as in
/// [`row_group`].
#[inline(always)]
unsafe fn tile<E: FloatFormat, const R: usize, const C: usize>(
    n: usize,
    w: *const f32,
    w_stride: usize,
    acts: *const f32,
    a_stride: usize,
    acc: *mut f32,
    first: bool,
) {
    let slot = |r: usize, c: usize| acc.add(8 * (c * TILE_R + r) * E::CHAINS);
    let mut sum = [[_mm256_setzero_ps(); C]; R];
    if !first {
        for (r, sum_r) in sum.iter_mut().enumerate() {
            for (c, s) in sum_r.iter_mut().enumerate() {
                *s = _mm256_loadu_ps(slot(r, c));
            }
        }
    }
    for i in (0..n).step_by(8) {
        let mut av = [_mm256_setzero_ps(); C];
        for (c, v) in av.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(acts.add(c * a_stride + i));
        }
        for (r, sum_r) in sum.iter_mut().enumerate() {
            let wv = _mm256_loadu_ps(w.add(r * w_stride + i));
            for (s, a) in sum_r.iter_mut().zip(av.iter()) {
                *s = _mm256_fmadd_ps(wv, *a, *s);
            }
        }
    }
    for (r, sum_r) in sum.iter().enumerate() {
        for (c, s) in sum_r.iter().enumerate() {
            _mm256_storeu_ps(slot(r, c), *s);
        }
    }
}
