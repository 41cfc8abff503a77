//! Float weights (F32, F16) against many activation rows: a GEMM whose results are
//! bit-identical to the pair routine ([`F32`], [`F16`] of [`super::formats`]).
//!
//! ggml's float `vec_dot` keeps `CHAINS` independent 8-lane accumulators: chain `j` sums the
//! products of the elements `8j..8j+8` of every block of `8 * CHAINS`, in order, and only the
//! final reduction combines them. Because the chains never meet before that reduction, each
//! one can be computed in a pass of its own. A register tile then needs one accumulator per
//! (row, column) pair instead of `CHAINS`, so it can be 2 × 4 (eight FMAs per six loads)
//! where the block driver of [`super::tile`] fits only one row by a few columns, and the
//! activations are converted to f32 once per call instead of once per tile.
//!
//! Blocking: the activation columns are taken in blocks that stay in the L2 cache
//! (`COL_BLOCK_BYTES`); for each block, every pair of weight rows is converted to f32 into a
//! small panel and passes over it. (On the Zen 1 reference machine this runs at about
//! 12.5 G multiply-adds/s per core, at or above the 10.8–11.4 G a C loop of register-only
//! 256-bit FMAs reached there; 3 × 3, 3 × 4, 4 × 2 and 4 × 3 tiles were none faster on both
//! the 64-column and the 4-column bench.)

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
const TILE_R: usize = 2;
const TILE_C: usize = 4;
/// Bytes of f32 activations kept in cache while the weight rows pass over them.
const COL_BLOCK_BYTES: usize = 96 * 1024;

thread_local! {
    /// Per-thread f32 copies of the activation columns and of one group of weight rows,
    /// reused between calls.
    static ACTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The thread's buffer in `cell`, at least `len` long. Only sizes it: a closure does not
/// inherit the caller's target features, so it must not do the arithmetic.
fn buffer(cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, len: usize) -> *mut f32 {
    cell.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        v.as_mut_ptr()
    })
}

/// `k` elements at `src` to f32 at `dst` (exact: f16 and f32 both convert without rounding).
#[inline(always)]
unsafe fn to_f32<E: FloatFormat>(src: *const u8, dst: *mut f32, k: usize) {
    let body = k - k % 8;
    for i in (0..body).step_by(8) {
        _mm256_storeu_ps(dst.add(i), E::load8(src.add(i * E::BYTES)));
    }
    for i in body..k {
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
    // SAFETY of the buffers' use below: only this function touches this thread's buffers,
    // and it does not call itself, so they are neither resized nor shared while in use.
    let acts = buffer(&ACTS, nc * k);
    let panel = buffer(&PANEL, TILE_R * k);
    for c in 0..nc {
        to_f32::<E>(a.as_ptr().add(c * a_row), acts.add(c * k), k);
    }
    let w_row = k * E::BYTES;
    let block_cols = (COL_BLOCK_BYTES / (4 * k.max(1))).max(TILE_C) / TILE_C * TILE_C;
    let mut c0 = 0;
    while c0 < nc {
        let cb = block_cols.min(nc - c0);
        let mut r = 0;
        while r < nr {
            let rows = TILE_R.min(nr - r);
            for i in 0..rows {
                to_f32::<E>(w.as_ptr().add((r + i) * w_row), panel.add(i * k), k);
            }
            let ac = acts.add(c0 * k);
            let o = out.add(c0 * ldo + r);
            match rows {
                2 => row_group::<E, 2>(k, panel, ac, cb, o, ldo),
                _ => row_group::<E, 1>(k, panel, ac, cb, o, ldo),
            }
            r += rows;
        }
        c0 += cb;
    }
}

/// `R` f32 weight rows (`k` apart) against `nc` f32 activation columns (`k` apart), in
/// tiles of `TILE_C` columns.
#[inline(always)]
unsafe fn row_group<E: FloatFormat, const R: usize>(
    k: usize,
    w: *const f32,
    acts: *const f32,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut c = 0;
    while c + TILE_C <= nc {
        tile::<E, R, TILE_C>(k, w, acts.add(c * k), out.add(c * ldo), ldo);
        c += TILE_C;
    }
    let (ac, oc) = (acts.add(c * k), out.add(c * ldo));
    match nc - c {
        0 => {}
        1 => tile::<E, R, 1>(k, w, ac, oc, ldo),
        2 => tile::<E, R, 2>(k, w, ac, oc, ldo),
        _ => tile::<E, R, 3>(k, w, ac, oc, ldo),
    }
}

/// An `R` × `C` tile of f32 rows and columns (both `k` apart): each of the pair routine's
/// chains in a pass of its own, then its reduction and its element-by-element tail.
#[inline(always)]
unsafe fn tile<E: FloatFormat, const R: usize, const C: usize>(
    k: usize,
    w: *const f32,
    acts: *const f32,
    out: *mut f32,
    ldo: usize,
) {
    let step = 8 * E::CHAINS;
    let body = k - k % step;
    let mut chains = [[[_mm256_setzero_ps(); 4]; C]; R];
    for j in 0..E::CHAINS {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 8 * j;
        while i < body {
            let mut av = [_mm256_setzero_ps(); C];
            for (c, v) in av.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(acts.add(c * k + i));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(r * k + i));
                for (acc_rc, a) in acc_r.iter_mut().zip(av.iter()) {
                    *acc_rc = _mm256_fmadd_ps(wv, *a, *acc_rc);
                }
            }
            i += step;
        }
        for (ch_r, acc_r) in chains.iter_mut().zip(acc.iter()) {
            for (ch_rc, acc_rc) in ch_r.iter_mut().zip(acc_r.iter()) {
                ch_rc[j] = *acc_rc;
            }
        }
    }
    for (r, ch_r) in chains.iter().enumerate() {
        for (c, ch_rc) in ch_r.iter().enumerate() {
            let mut s = E::reduce(ch_rc);
            for i in body..k {
                s += *w.add(r * k + i) * *acts.add(c * k + i);
            }
            *out.add(c * ldo + r) = s;
        }
    }
}
