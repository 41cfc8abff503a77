//! Eight weight rows per vector: the many-column product of 32-element nibble formats
//! (Q4_0, IQ4_NL) in the arithmetic of llama.cpp's x86 kernels for weights repacked eight
//! rows at a time, which llama.cpp uses for these formats whenever a weight has a multiple
//! of eight rows.
//!
//! Those kernels keep one weight row per 32-bit lane, so a block's integer sum for eight rows
//! comes out of one `vpmaddwd` with no horizontal additions, and one f32 FMA per block folds
//! `sum * (d_w * d_a)` into eight accumulators at once ([`super::formats::Q0Sum`] is the
//! same arithmetic for one pair). Here the weights keep their file layout: a block of eight
//! rows is transposed in registers (four 4×4 dword transposes) into four vectors, vector `j`
//! holding code bytes `4j..4j+4` of every row, and the activation bytes they meet are
//! broadcast to every lane. The unpacked block is used for up to eight columns; for Q4_0,
//! whose values are at most 8 in magnitude, the eight `vpmaddubsw` results of a block are
//! added in 16 bits before a single `vpmaddwd` (at most 16 · 8 · 127 = 16256).
//!
//! Rows past the last whole group of eight go through the generic driver with `Q0Sum`, so
//! every output is bit-identical to the pair routine whatever the shape.

#![allow(clippy::too_many_arguments)] // kernel signatures: matrix sizes, pointers, strides

use std::arch::x86_64::*;

use super::formats::{f16, Codes32, Iq4Nl, Q0Sum, Q4_0};
use super::tile;
use engine_core::quant::nonlinear::KVALUES_IQ4NL;

/// A 32-element format whose codes are nibbles (byte `i` holds elements `i` and `i + 16`)
/// after a block scale.
pub(crate) trait Nibbles: Codes32 {
    /// Whether eight `vpmaddubsw` results of one block fit 16 bits (|value| <= 8).
    const SUM16: bool;
    /// Columns per register tile, at most 8. Criterion `gemm/avx2/*`: 8 for Q4_0 on Zen 1
    /// and Zen 3; for IQ4_NL 6 was the fastest on Zen 1, 8 is on Zen 3 (+11% over 6, median
    /// of three alternations), where the machines this is tuned on now run.
    const COLS: usize;
    /// The signed values of nibble codes (0..=15, one per byte).
    unsafe fn values(codes: __m256i) -> __m256i;
}

impl Nibbles for Q4_0 {
    const SUM16: bool = true;
    const COLS: usize = 8;
    #[inline(always)]
    unsafe fn values(codes: __m256i) -> __m256i {
        _mm256_sub_epi8(codes, _mm256_set1_epi8(8))
    }
}

impl Nibbles for Iq4Nl {
    const SUM16: bool = false;
    const COLS: usize = 8;
    #[inline(always)]
    unsafe fn values(codes: __m256i) -> __m256i {
        let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        _mm256_shuffle_epi8(_mm256_set_m128i(t, t), codes)
    }
}

/// `out[c * ldo + r]` = the [`Q0Sum`] dot product of weight row `r` and activation row `c`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm<N: Nibbles>(
    k: usize,
    w: &[u8],
    nr: usize,
    a: &[u8],
    a_row: usize,
    nc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let nb = k / 32;
    let row_bytes = nb * N::BYTES;
    // One column (decode) waits on memory: rows streamed one by one with prefetch beat the
    // transposes, which only pay for themselves when shared by several columns.
    let groups = if nc == 1 { 0 } else { nr / 8 };
    for g in 0..groups {
        let wg = w.as_ptr().add(g * 8 * row_bytes);
        let og = out.add(g * 8);
        let mut c = 0;
        while c < nc {
            let (ap, op) = (a.as_ptr().add(c * a_row), og.add(c * ldo));
            let n = (nc - c).min(N::COLS);
            match n {
                8 => cols::<N, 8>(nb, wg, row_bytes, ap, a_row, op, ldo),
                7 => cols::<N, 7>(nb, wg, row_bytes, ap, a_row, op, ldo),
                6 => cols::<N, 6>(nb, wg, row_bytes, ap, a_row, op, ldo),
                5 => cols::<N, 5>(nb, wg, row_bytes, ap, a_row, op, ldo),
                4 => cols::<N, 4>(nb, wg, row_bytes, ap, a_row, op, ldo),
                3 => cols::<N, 3>(nb, wg, row_bytes, ap, a_row, op, ldo),
                2 => cols::<N, 2>(nb, wg, row_bytes, ap, a_row, op, ldo),
                _ => cols::<N, 1>(nb, wg, row_bytes, ap, a_row, op, ldo),
            }
            c += n;
        }
    }
    let done = groups * 8;
    if done < nr {
        tile::gemm::<Q0Sum<N>>(
            k,
            &w[done * row_bytes..],
            nr - done,
            a,
            a_row,
            nc,
            out.add(done),
            ldo,
        );
    }
}

/// Eight weight rows at `w` (`row_bytes` apart) against `C` activation rows at `a`.
#[inline(always)]
unsafe fn cols<N: Nibbles, const C: usize>(
    nb: usize,
    w: *const u8,
    row_bytes: usize,
    a: *const u8,
    a_row: usize,
    out: *mut f32,
    ldo: usize,
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        let x = w.add(b * N::BYTES);
        // rows 0..4 in the low halves, 4..8 in the high halves; after the transposes lane i
        // of vector j holds code bytes 4j..4j+4 of row i
        let row =
            |i: usize| _mm_loadu_si128(x.add(i * row_bytes + N::BYTES - 16) as *const __m128i);
        let x0 = _mm256_set_m128i(row(4), row(0));
        let x1 = _mm256_set_m128i(row(5), row(1));
        let x2 = _mm256_set_m128i(row(6), row(2));
        let x3 = _mm256_set_m128i(row(7), row(3));
        let t0 = _mm256_unpacklo_epi32(x0, x1);
        let t1 = _mm256_unpackhi_epi32(x0, x1);
        let t2 = _mm256_unpacklo_epi32(x2, x3);
        let t3 = _mm256_unpackhi_epi32(x2, x3);
        let v = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let dw = _mm256_setr_ps(
            N::scale(x),
            N::scale(x.add(row_bytes)),
            N::scale(x.add(2 * row_bytes)),
            N::scale(x.add(3 * row_bytes)),
            N::scale(x.add(4 * row_bytes)),
            N::scale(x.add(5 * row_bytes)),
            N::scale(x.add(6 * row_bytes)),
            N::scale(x.add(7 * row_bytes)),
        );
        let ya = a.add(b * 34);
        let mut isum = [_mm256_setzero_si256(); C];
        for (j, &vj) in v.iter().enumerate() {
            // low nibbles are elements 4j..4j+4, high nibbles 16+4j..16+4j+4
            for half in 0..2 {
                let codes = if half == 0 {
                    _mm256_and_si256(vj, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(vj, 4), m4)
                };
                let q = N::values(codes);
                let aq = _mm256_sign_epi8(q, q);
                for (c, s) in isum.iter_mut().enumerate() {
                    let y4 =
                        (ya.add(c * a_row + 2 + 16 * half + 4 * j) as *const i32).read_unaligned();
                    let p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(_mm256_set1_epi32(y4), q));
                    *s = if N::SUM16 {
                        _mm256_add_epi16(*s, p)
                    } else {
                        _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones))
                    };
                }
            }
        }
        for (c, (acc, s)) in acc.iter_mut().zip(isum).enumerate() {
            let s = if N::SUM16 {
                _mm256_madd_epi16(s, ones)
            } else {
                s
            };
            let da = _mm256_set1_ps(f16(ya.add(c * a_row)));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), *acc);
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(c * ldo), *acc);
    }
}
