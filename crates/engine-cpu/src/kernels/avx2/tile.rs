//! The one generic kernel driver: a block format's arithmetic ([`BlockDot`]) applied to a
//! tile of `R` weight rows × `C` activation rows, for every format alike.
//!
//! A format says how to unpack one weight block into registers, load one activation block,
//! and fold their product into a per-(row, column) accumulator, in the order of the
//! llama.cpp routine it reproduces. The drivers only decide what is shared:
//!
//! * [`dot`]: one pair (the `vec_dot` of the table).
//! * [`gemm`]: many rows × many columns. Each unpacked weight block is used for `C` columns
//!   and each activation block for `R` rows; with enough columns the rows are first unpacked
//!   once into a panel (reused for every column), so unpacking costs nothing per column.
//!
//! Every pair goes through exactly the same `step` sequence whatever the tile shape, so a
//! tile's results are bit-identical to [`dot`]'s; the tests check that for every format.

#![allow(clippy::too_many_arguments)] // kernel signatures: matrix sizes, pointers, strides

use std::arch::x86_64::*;
use std::cell::RefCell;

/// A block format's product with its activation type, one block at a time.
pub(crate) trait BlockDot {
    /// Elements per block.
    const QK: usize;
    /// Bytes of one weight block.
    const W_BYTES: usize;
    /// Bytes of one activation block.
    const A_BYTES: usize;
    /// A weight block unpacked for arithmetic.
    type W: Copy;
    /// An activation block loaded for arithmetic.
    type A: Copy;
    /// Running state of one (row, column) pair.
    type Acc: Copy;
    /// Unpacks the weight block at `x`.
    unsafe fn unpack(x: *const u8) -> Self::W;
    /// Loads the activation block at `y`.
    unsafe fn load(y: *const u8) -> Self::A;
    /// The state before the first block.
    unsafe fn zero() -> Self::Acc;
    /// Folds one block product into `acc`.
    unsafe fn step(acc: &mut Self::Acc, w: &Self::W, a: &Self::A);
    /// The dot product.
    unsafe fn finish(acc: Self::Acc) -> f32;
}

/// Where a tile's weight blocks come from.
trait Source<F: BlockDot>: Copy {
    /// Block `b` of row `r`.
    unsafe fn block(self, r: usize, b: usize) -> F::W;
    /// The same source starting `r` rows further.
    unsafe fn skip(self, r: usize) -> Self;
    /// Hints that block `b` of row `r` will be needed soon.
    #[inline(always)]
    unsafe fn prefetch(self, _r: usize, _b: usize) {}
}

/// Weight rows in their file format, unpacked as they are used.
#[derive(Clone, Copy)]
struct Raw {
    p: *const u8,
    row_bytes: usize,
}

impl<F: BlockDot> Source<F> for Raw {
    #[inline(always)]
    unsafe fn block(self, r: usize, b: usize) -> F::W {
        F::unpack(self.p.add(r * self.row_bytes + b * F::W_BYTES))
    }
    #[inline(always)]
    unsafe fn prefetch(self, r: usize, b: usize) {
        let p = self
            .p
            .add(r * self.row_bytes + b * F::W_BYTES + PREFETCH_BYTES);
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[inline(always)]
    unsafe fn skip(self, r: usize) -> Self {
        Raw {
            p: self.p.add(r * self.row_bytes),
            row_bytes: self.row_bytes,
        }
    }
}

/// Weight rows unpacked beforehand into a panel, `nb` blocks per row.
struct Packed<W> {
    p: *const W,
    nb: usize,
}

impl<W> Clone for Packed<W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W> Copy for Packed<W> {}

impl<F: BlockDot> Source<F> for Packed<F::W> {
    #[inline(always)]
    unsafe fn block(self, r: usize, b: usize) -> F::W {
        *self.p.add(r * self.nb + b)
    }
    #[inline(always)]
    unsafe fn skip(self, r: usize) -> Self {
        Packed {
            p: self.p.add(r * self.nb),
            nb: self.nb,
        }
    }
}

/// `out[c * ldo + r] = dot(row r, column c)` for an `R` × `C` tile.
#[inline(always)]
unsafe fn tile<F: BlockDot, S: Source<F>, const R: usize, const C: usize>(
    nb: usize,
    w: S,
    a: *const u8,
    a_row: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[F::zero(); C]; R];
    for b in 0..nb {
        let mut av = [F::load(a.add(b * F::A_BYTES)); C];
        for (c, v) in av.iter_mut().enumerate().skip(1) {
            *v = F::load(a.add(c * a_row + b * F::A_BYTES));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            if PREFETCH {
                w.prefetch(r, b);
            }
            let wv = w.block(r, b);
            for (acc_rc, av_c) in acc_r.iter_mut().zip(av.iter()) {
                F::step(acc_rc, &wv, av_c);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (c, acc_rc) in acc_r.iter().enumerate() {
            *out.add(c * ldo + r) = F::finish(*acc_rc);
        }
    }
}

/// Covers `nr` rows × `nc` columns with `R` × `C` tiles and thinner tiles at the edges.
#[inline(always)]
unsafe fn tiles<F: BlockDot, S: Source<F>, const R: usize, const C: usize>(
    nb: usize,
    w: S,
    nr: usize,
    a: *const u8,
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let full_c = nc - nc % C;
    let mut c = 0;
    while c < full_c {
        columns::<F, S, R, C>(nb, w, nr, a.add(c * a_row), a_row, out.add(c * ldo), ldo);
        c += C;
    }
    // The last columns as one thinner tile, so the weights are read once for all of them
    // (a decode batch of a few sequences is exactly this case).
    let (ac, oc) = (a.add(c * a_row), out.add(c * ldo));
    match nc - c {
        0 => {}
        1 => columns::<F, S, R, 1>(nb, w, nr, ac, a_row, oc, ldo),
        2 => columns::<F, S, R, 2>(nb, w, nr, ac, a_row, oc, ldo),
        3 => columns::<F, S, R, 3>(nb, w, nr, ac, a_row, oc, ldo),
        4 => columns::<F, S, R, 4>(nb, w, nr, ac, a_row, oc, ldo),
        5 => columns::<F, S, R, 5>(nb, w, nr, ac, a_row, oc, ldo),
        _ => {
            // wider tiles than six columns are not used; keep it correct anyway
            for j in c..nc {
                let (aj, oj) = (a.add(j * a_row), out.add(j * ldo));
                columns::<F, S, R, 1>(nb, w, nr, aj, a_row, oj, ldo);
            }
        }
    }
}

/// All `nr` rows against exactly `C` columns, in `R`-row tiles and single rows at the end.
#[inline(always)]
unsafe fn columns<F: BlockDot, S: Source<F>, const R: usize, const C: usize>(
    nb: usize,
    w: S,
    nr: usize,
    a: *const u8,
    a_row: usize,
    out: *mut f32,
    ldo: usize,
) {
    let full_r = nr - nr % R;
    let mut r = 0;
    while r < full_r {
        tile::<F, S, R, C>(nb, w.skip(r), a, a_row, out.add(r), ldo);
        r += R;
    }
    while r < nr {
        tile::<F, S, 1, C>(nb, w.skip(r), a, a_row, out.add(r), ldo);
        r += 1;
    }
}

/// One weight row (`n` elements) against one activation row.
#[inline(always)]
pub(crate) unsafe fn dot<F: BlockDot>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut out = 0.0f32;
    let src = Raw {
        p: w.as_ptr(),
        row_bytes: 0,
    };
    tile::<F, Raw, 1, 1>(n / F::QK, src, a.as_ptr(), 0, &mut out, 1);
    out
}

/// How far ahead of the current weight block to prefetch.
const PREFETCH_BYTES: usize = 1024;
const PREFETCH: bool = true;

/// Columns from which unpacking the rows into a panel first pays off.
const PANEL_MIN_COLS: usize = 6;
/// Rows × columns of a tile when there are many of both.
const TILE_R: usize = 1;
const TILE_C: usize = 6;
/// Rows unpacked into the panel at a time (the panel stays in the L1 cache while every
/// column passes over it).
const PANEL_ROWS: usize = 8;
/// Rows per tile for a single column (matrix-vector).
const GEMV_R: usize = 1;

thread_local! {
    /// Per-thread panel memory, grown to the largest panel seen and then reused.
    static PANEL: RefCell<Vec<__m256i>> = const { RefCell::new(Vec::new()) };
}

/// `out[c * ldo + r] = dot(w row r, a row c)` for `nr` weight rows of `k` elements
/// (`w` holds them back to back) and `nc` activation rows (`a_row` bytes apart).
#[inline(always)]
pub(crate) unsafe fn gemm<F: BlockDot>(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let nb = k / F::QK;
    let raw = Raw {
        p: w.as_ptr(),
        row_bytes: nb * F::W_BYTES,
    };
    debug_assert!(w.len() >= nr * nb * F::W_BYTES);
    debug_assert!(nc == 0 || a.len() >= (nc - 1) * a_row + nb * F::A_BYTES);
    if nc == 1 {
        return tiles::<F, Raw, GEMV_R, 1>(nb, raw, nr, a.as_ptr(), a_row, 1, out, ldo);
    }
    if nc < PANEL_MIN_COLS {
        return tiles::<F, Raw, TILE_R, TILE_C>(nb, raw, nr, a.as_ptr(), a_row, nc, out, ldo);
    }
    let rows = PANEL_ROWS.min(nr);
    let need = (rows * nb * std::mem::size_of::<F::W>()).div_ceil(32);
    debug_assert!(std::mem::align_of::<F::W>() <= 32);
    // The panel is borrowed only to size it: the closure must not do the arithmetic (a
    // closure does not inherit the caller's target features, so nothing would be inlined).
    // SAFETY of the pointer's use below: only `gemm` touches this thread's panel, and it
    // does not call itself, so the memory is neither resized nor shared while in use.
    let p = PANEL.with(|cell| {
        let mut panel = cell.borrow_mut();
        if panel.len() < need {
            panel.resize(need, _mm256_setzero_si256());
        }
        panel.as_mut_ptr() as *mut F::W
    });
    let mut r0 = 0;
    while r0 < nr {
        let pr = rows.min(nr - r0);
        for r in 0..pr {
            for b in 0..nb {
                p.add(r * nb + b)
                    .write(<Raw as Source<F>>::block(raw, r0 + r, b));
            }
        }
        let packed = Packed {
            p: p as *const F::W,
            nb,
        };
        tiles::<F, Packed<F::W>, TILE_R, TILE_C>(
            nb,
            packed,
            pr,
            a.as_ptr(),
            a_row,
            nc,
            out.add(r0),
            ldo,
        );
        r0 += pr;
    }
}
