//! AVX2 + FMA + F16C dot products (x86-64), selected at run time.
//!
//! Every routine does per block what its [`super::scalar`] twin does: integer products of
//! codes with `vpmaddubsw`/`vpmaddwd` (exact), then `scale * sum` accumulated in f32 lanes.
//! Only the order of the f32 additions differs from the scalar reference.
//!
//! The wrappers returned by [`dot_fn`] are safe to call only on a CPU with these features;
//! [`super::Isa::detect`] guarantees that before this table is used.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use engine_core::quant::kquants::{q3k_scales, scale_min_k4};
use engine_core::quant::nonlinear::{e8m0_to_f32_half, iq4xs_scale, KVALUES_IQ4NL, KVALUES_MXFP4};
use engine_core::DType;

use super::DotFn;

/// The AVX2 routine for a weight type, if there is one.
pub fn dot_fn(w: DType) -> Option<DotFn> {
    macro_rules! wrap {
        ($f:ident) => {{
            fn safe(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: this table is only used after runtime detection of avx2/fma/f16c,
                // and the routine reads only whole blocks within the slices' lengths.
                unsafe { $f(n, w, a) }
            }
            safe as DotFn
        }};
    }
    Some(match w {
        DType::F32 => wrap!(dot_f32),
        DType::F16 => wrap!(dot_f16),
        DType::Q4_0 => wrap!(dot_q4_0),
        DType::Q4_1 => wrap!(dot_q4_1),
        DType::Q5_0 => wrap!(dot_q5_0),
        DType::Q5_1 => wrap!(dot_q5_1),
        DType::Q8_0 => wrap!(dot_q8_0),
        DType::IQ4_NL => wrap!(dot_iq4_nl),
        DType::MXFP4 => wrap!(dot_mxfp4),
        DType::Q2_K => wrap!(dot_q2_k),
        DType::Q3_K => wrap!(dot_q3_k),
        DType::Q4_K => wrap!(dot_q4_k),
        DType::Q5_K => wrap!(dot_q5_k),
        DType::Q6_K => wrap!(dot_q6_k),
        DType::IQ4_XS => wrap!(dot_iq4_xs),
        _ => return None,
    })
}

/// The llama.cpp-order variants for a weight type (see [`super::Variants`]).
pub fn variants(w: DType) -> super::Variants {
    macro_rules! wrap {
        ($f:ident) => {{
            fn safe(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: as in `dot_fn`.
                unsafe { $f(n, w, a) }
            }
            Some(safe as DotFn)
        }};
    }
    match w {
        DType::Q4_K => super::Variants {
            repack_gemv: wrap!(dot_q4_k_gemv),
            repack_gemm: wrap!(dot_q4_k_gemm),
            tiled: wrap!(dot_q4_k_tiled),
        },
        DType::Q6_K => super::Variants {
            tiled: wrap!(dot_q6_k_tiled),
            ..Default::default()
        },
        _ => super::Variants::default(),
    }
}

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Signed bytes times signed bytes, summed in groups of four into eight i32 lanes.
#[inline(always)]
unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Unsigned bytes times signed bytes, summed in groups of four into eight i32 lanes.
#[inline(always)]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// 16 bytes of nibbles to 32 bytes: low nibbles in lanes 0..16, high nibbles in 16..32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0x0f))
}

/// 32 bits to 32 bytes: 0xFF where the bit is set, 0 elsewhere.
#[inline(always)]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let v = _mm256_shuffle_epi8(v, shuf);
    let v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
    _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(o)), _mm256_loadu_ps(pa.add(o)), *acc);
        }
        i += 32;
    }
    let mut s = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += pw.add(i).read_unaligned() * pa.add(i).read_unaligned();
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = 2 * (i + 8 * k);
            let x = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(o) as *const __m128i));
            let y = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(o) as *const __m128i));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 16;
    }
    let mut s = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    while i < n {
        s += f16(pw.add(2 * i)) * f16(pa.add(2 * i));
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (x, y) = (pw.add(34 * b), pa.add(34 * b));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let s = dot_i8(load(x.add(2)), load(y.add(2)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let off = _mm256_set1_epi8(8);
    for b in 0..n / 32 {
        let (x, y) = (pw.add(18 * b), pa.add(34 * b));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let qx = _mm256_sub_epi8(nibbles(x.add(2)), off);
        let s = dot_i8(qx, load(y.add(2)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    for b in 0..n / 32 {
        let (x, y) = (pw.add(20 * b), pa.add(36 * b));
        mins += f16(x.add(2)) * f16(y.add(2));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let s = dot_u8_i8(nibbles(x.add(4)), load(y.add(4)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let hi_off = _mm256_set1_epi8(0xf0u8 as i8);
    for b in 0..n / 32 {
        let (x, y) = (pw.add(22 * b), pa.add(34 * b));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let qh = (x.add(2) as *const u32).read_unaligned();
        // code - 16: nibble when the fifth bit is set, nibble | 0xF0 (= nibble - 16) otherwise.
        let hi = _mm256_andnot_si256(bits_to_bytes(qh), hi_off);
        let qx = _mm256_or_si256(nibbles(x.add(6)), hi);
        let s = dot_i8(qx, load(y.add(2)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    let bit5 = _mm256_set1_epi8(0x10);
    for b in 0..n / 32 {
        let (x, y) = (pw.add(24 * b), pa.add(36 * b));
        mins += f16(x.add(2)) * f16(y.add(2));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let qh = (x.add(4) as *const u32).read_unaligned();
        let qx = _mm256_or_si256(nibbles(x.add(8)), _mm256_and_si256(bits_to_bytes(qh), bit5));
        let s = dot_u8_i8(qx, load(y.add(4)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc) + mins
}

/// Looks 32 nibble codes up in a 16-entry signed table.
#[inline(always)]
unsafe fn lut_nibbles(table: __m128i, p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(t, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(t, 4), m4));
    _mm256_set_m128i(hi, lo)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (x, y) = (pw.add(18 * b), pa.add(34 * b));
        let d = _mm256_set1_ps(f16(x) * f16(y));
        let s = dot_i8(lut_nibbles(table, x.add(2)), load(y.add(2)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_mxfp4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let table = _mm_loadu_si128(KVALUES_MXFP4.as_ptr() as *const __m128i);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 32 {
        let (x, y) = (pw.add(17 * b), pa.add(34 * b));
        let d = _mm256_set1_ps(f16(y) * e8m0_to_f32_half(*x));
        let s = dot_i8(lut_nibbles(table, x.add(1)), load(y.add(2)));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum_ps(acc)
}

#[inline(always)]
unsafe fn q8k_d(y: *const u8) -> f32 {
    (y as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn q8k_bsum(y: *const u8, i: usize) -> i32 {
    (y.add(260 + 2 * i) as *const i16).read_unaligned() as i32
}

/// Two i16 scales: the first for lanes 0..8 (first 16 bytes), the second for lanes 8..16.
#[inline(always)]
unsafe fn scale_pair(lo: i32, hi: i32) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16))
}

/// One Q4_K super-block against Q8_K: the scaled products as eight i32 lanes (ggml's lane
/// layout) and the exact min corrections in the four groups ggml's `vec_dot` uses
/// (`m[2u]*b[2u] + m[2u+1]*b[2u+1]` over 32-element sums `b`).
#[inline(always)]
unsafe fn q4k_block(x: *const u8, y: *const u8) -> (__m256i, [i32; 4]) {
    let xs = std::slice::from_raw_parts(x, 144);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut mins = [0i32; 4];
    let mut isum = _mm256_setzero_si256();
    for j in 0..4 {
        let (s1, m1) = scale_min_k4(2 * j, &xs[4..16]);
        let (s2, m2) = scale_min_k4(2 * j + 1, &xs[4..16]);
        mins[j] = m1 as i32 * (q8k_bsum(y, 4 * j) + q8k_bsum(y, 4 * j + 1))
            + m2 as i32 * (q8k_bsum(y, 4 * j + 2) + q8k_bsum(y, 4 * j + 3));
        let q = load(x.add(16 + 32 * j));
        let q8 = y.add(4 + 64 * j);
        let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), load(q8));
        let hi = _mm256_maddubs_epi16(
            _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
            load(q8.add(32)),
        );
        let lo = _mm256_madd_epi16(_mm256_set1_epi16(s1 as i16), lo);
        let hi = _mm256_madd_epi16(_mm256_set1_epi16(s2 as i16), hi);
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(lo, hi));
    }
    (isum, mins)
}

/// Q4_K in ggml's `vec_dot` order: eight f32 lanes for the products, four for the mins.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for b in 0..n / 256 {
        let (x, y) = (pw.add(144 * b), pa.add(292 * b));
        let dy = q8k_d(y);
        let d = dy * f16(x);
        let dmin = -dy * f16(x.add(2));
        let (isum, mins) = q4k_block(x, y);
        let prod = _mm_setr_epi32(mins[0], mins[1], mins[2], mins[3]);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    hsum_ps(acc) + _mm_cvtss_f32(acc_m)
}

/// Q4_K as ggml's repacked x86 GEMV: one FMA per super-block for the products and one for
/// the mins, subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_gemv(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for b in 0..n / 256 {
        let (x, y) = (pw.add(144 * b), pa.add(292 * b));
        let dy = q8k_d(y);
        let (isum, mins) = q4k_block(x, y);
        let summ = mins.iter().sum::<i32>();
        acc = (hsum_epi32(isum) as f32).mul_add(f16(x) * dy, acc);
        acc_min = (summ as f32).mul_add(f16(x.add(2)) * dy, acc_min);
    }
    acc - acc_min
}

/// Q4_K as ggml's repacked x86 GEMM: one FMA per 64 elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_gemm(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let m4 = _mm256_set1_epi8(0x0f);
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for b in 0..n / 256 {
        let (x, y) = (pw.add(144 * b), pa.add(292 * b));
        let xs = std::slice::from_raw_parts(x, 144);
        let dy = q8k_d(y);
        let (d, dmin) = (f16(x) * dy, f16(x.add(2)) * dy);
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, &xs[4..16]);
            let (s2, m2) = scale_min_k4(2 * j + 1, &xs[4..16]);
            let summ = m1 as i32 * (q8k_bsum(y, 4 * j) + q8k_bsum(y, 4 * j + 1))
                + m2 as i32 * (q8k_bsum(y, 4 * j + 2) + q8k_bsum(y, 4 * j + 3));
            let q = load(x.add(16 + 32 * j));
            let q8 = y.add(4 + 64 * j);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), load(q8));
            let hi = _mm256_maddubs_epi16(
                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                load(q8.add(32)),
            );
            let lo = _mm256_madd_epi16(_mm256_set1_epi16(s1 as i16), lo);
            let hi = _mm256_madd_epi16(_mm256_set1_epi16(s2 as i16), hi);
            acc = (hsum_epi32(_mm256_add_epi32(lo, hi)) as f32).mul_add(d, acc);
            acc_min = (summ as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// Q4_K as ggml's tiled K-quant kernel: per super-block `fma(d*s1 - dmin*s2, dy, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (pw.add(144 * b), pa.add(292 * b));
        let (isum, mins) = q4k_block(x, y);
        let s2 = mins.iter().sum::<i32>() as f32;
        let res = (-f16(x.add(2))).mul_add(s2, f16(x) * hsum_epi32(isum) as f32);
        acc = res.mul_add(q8k_d(y), acc);
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (pw.add(176 * b), pa.add(292 * b));
        let xs = std::slice::from_raw_parts(x, 176);
        let dy = q8k_d(y);
        let hbits = load(x.add(16));
        let mut summ = 0i32;
        let mut isum = _mm256_setzero_si256();
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, &xs[4..16]);
            let (s2, m2) = scale_min_k4(2 * j + 1, &xs[4..16]);
            summ += m1 as i32 * (q8k_bsum(y, 4 * j) + q8k_bsum(y, 4 * j + 1))
                + m2 as i32 * (q8k_bsum(y, 4 * j + 2) + q8k_bsum(y, 4 * j + 3));
            let shift = _mm_cvtsi32_si128(2 * j as i32);
            let shift1 = _mm_cvtsi32_si128(2 * j as i32 + 1);
            let h_lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, shift), one), 4);
            let h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, shift1), one), 4);
            let q = load(x.add(48 + 32 * j));
            let q_lo = _mm256_or_si256(_mm256_and_si256(q, m4), h_lo);
            let q_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h_hi);
            let q8 = y.add(4 + 64 * j);
            let lo = _mm256_madd_epi16(
                _mm256_set1_epi16(s1 as i16),
                _mm256_maddubs_epi16(q_lo, load(q8)),
            );
            let hi = _mm256_madd_epi16(
                _mm256_set1_epi16(s2 as i16),
                _mm256_maddubs_epi16(q_hi, load(q8.add(32))),
            );
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(lo, hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * f16(x)), _mm256_cvtepi32_ps(isum), acc);
        mins += dy * f16(x.add(2)) * summ as f32;
    }
    hsum_ps(acc) - mins
}

/// Q6_K. The codes are multiplied unsigned (0..63) and the `-32` offset is removed per
/// i32 lane from the block sums at the end, as ggml's x86 kernel does, so the f32 lanes
/// (and hence the rounding) match llama.cpp's.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    q6_k::<false>(n, w, a)
}

/// Q6_K as ggml's tiled K-quant kernel.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    q6_k::<true>(n, w, a)
}

#[inline(always)]
unsafe fn q6_k<const TILED: bool>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = _mm256_setzero_ps();
    let mut tiled_acc = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (pw.add(210 * b), pa.add(292 * b));
        let d = q8k_d(y) * f16(x.add(208));
        let bsums = load(y.add(260));
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(192) as *const __m128i));
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
        let mut isum = _mm256_setzero_si256();
        for chunk in 0..2 {
            let ql = x.add(64 * chunk);
            let qh = load(x.add(128 + 32 * chunk));
            let sc = x.add(192 + 8 * chunk) as *const i8;
            let q8 = y.add(4 + 128 * chunk);
            let l0 = load(ql);
            let l1 = load(ql.add(32));
            let codes = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                ),
            ];
            for (g, c) in codes.iter().enumerate() {
                let p = _mm256_maddubs_epi16(*c, load(q8.add(32 * g)));
                let s = scale_pair(*sc.add(2 * g) as i32, *sc.add(2 * g + 1) as i32);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s, p));
            }
        }
        isum = _mm256_sub_epi32(isum, offset);
        if TILED {
            // ggml's tiled K-quant kernel: exact total, then fma(d_w * s1, d_a, acc)
            tiled_acc = (f16(x.add(208)) * hsum_epi32(isum) as f32).mul_add(q8k_d(y), tiled_acc);
        } else {
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
        }
    }
    if TILED {
        tiled_acc
    } else {
        hsum_ps(acc)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let m3 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for b in 0..n / 256 {
        let (x, y) = (pw.add(110 * b), pa.add(292 * b));
        let xs = std::slice::from_raw_parts(x, 110);
        let scales = q3k_scales(&xs[96..108]);
        let dy = q8k_d(y);
        let hm = load(x);
        let mut isum = _mm256_setzero_si256();
        let mut sub = 0;
        for chunk in 0..2 {
            let q = load(x.add(32 + 32 * chunk));
            for j in 0..4 {
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let bit = 1u8 << (4 * chunk + j);
                let set = _mm256_cmpeq_epi8(
                    _mm256_and_si256(hm, _mm256_set1_epi8(bit as i8)),
                    _mm256_set1_epi8(bit as i8),
                );
                // 4 where the high bit is clear: code = low - 4.
                let sub4 = _mm256_andnot_si256(set, four);
                let y8 = load(y.add(4 + 32 * sub / 2));
                let p = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(low, y8),
                    _mm256_maddubs_epi16(sub4, y8),
                );
                let s = scale_pair(scales[sub] as i32, scales[sub + 1] as i32);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s, p));
                sub += 2;
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16(x.add(108))),
            _mm256_cvtepi32_ps(isum),
            acc,
        );
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let m3 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (pw.add(84 * b), pa.add(292 * b));
        let dy = q8k_d(y);
        let mut summ = 0i32;
        for s in 0..16 {
            summ += (*x.add(s) >> 4) as i32 * q8k_bsum(y, s);
        }
        let mut isum = _mm256_setzero_si256();
        let mut sub = 0;
        for chunk in 0..2 {
            let q = load(x.add(16 + 32 * chunk));
            for j in 0..4 {
                let codes = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j)), m3);
                let y8 = load(y.add(4 + 16 * sub));
                let p = _mm256_maddubs_epi16(codes, y8);
                let s = scale_pair((*x.add(sub) & 0x0f) as i32, (*x.add(sub + 1) & 0x0f) as i32);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s, p));
                sub += 2;
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16(x.add(80))),
            _mm256_cvtepi32_ps(isum),
            acc,
        );
        mins += dy * f16(x.add(82)) * summ as f32;
    }
    hsum_ps(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let mut sum = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (pw.add(136 * b), pa.add(292 * b));
        let xs = std::slice::from_raw_parts(x, 136);
        let scales_h = u16::from_le_bytes([xs[2], xs[3]]);
        let mut isum = _mm256_setzero_si256();
        for ib in 0..8 {
            let ls = iq4xs_scale(scales_h, &xs[4..8], ib);
            let p = dot_i8(
                lut_nibbles(table, x.add(8 + 16 * ib)),
                load(y.add(4 + 32 * ib)),
            );
            isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(p, _mm256_set1_epi32(ls)));
        }
        sum += q8k_d(y) * f16(x) * hsum_epi32(isum) as f32;
    }
    sum
}
