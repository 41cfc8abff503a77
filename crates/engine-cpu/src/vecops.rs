//! Small vector routines used by attention and normalisation: dot products and `y += a*x`
//! on f32 and f16 rows, with AVX2 versions picked at run time.

use half::f16;

/// Whether this CPU has AVX2, FMA and F16C (what the x86 kernels here need).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// `sum(a[i] * b[i])`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `sum(a[i] * f32(b[i]))` with `b` in f16 bits.
pub fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::dot_f32_f16(a, b) };
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| x * f16::from_bits(*y).to_f32())
        .sum()
}

/// Dot product of two f16 rows in ggml's order for `ggml_vec_dot_f16` on AVX2: four
/// 8-lane FMA accumulators over steps of 32, reduced pairwise, the tail added in f64.
pub fn dot_f16_f16(a: &[u16], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::dot_f16_f16(a, b) };
    }
    let mut s = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        s += (f16::from_bits(*x).to_f32() * f16::from_bits(*y).to_f32()) as f64;
    }
    s as f32
}

/// `y[i] += s * x[i]`.
pub fn axpy_f32(y: &mut [f32], s: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::axpy_f32(y, s, x) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        *a += s * b;
    }
}

/// `y[i] += s * f32(x[i])` with `x` in f16 bits.
pub fn axpy_f16(y: &mut [f32], s: f32, x: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::axpy_f16(y, s, x) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        *a += s * f16::from_bits(*b).to_f32();
    }
}

/// `y[i] = f16(f32(y[i]) * s)` on f16 bit patterns.
pub fn scale_f16(y: &mut [u16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::scale_f16(y, s) };
    }
    for v in y {
        *v = f16::from_f32(f16::from_bits(*v).to_f32() * s).to_bits();
    }
}

/// `y[i] = f16(f32(y[i]) + s * f32(x[i]))`: an accumulator kept in f16, as ggml's
/// `vec_mad_f16` does.
pub fn axpy_f16_into_f16(y: &mut [u16], s: f32, x: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::axpy_f16_into_f16(y, s, x) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        let v = f16::from_bits(*a).to_f32() + f16::from_bits(*b).to_f32() * s;
        *a = f16::from_f32(v).to_bits();
    }
}

/// ggml's vectorised `expf` (`ggml_v_expf`), applied to 8 values: the same operations in
/// the same order, so the results are bit-identical to llama.cpp's softmax.
pub fn v_expf8(x: &mut [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::v_expf8(x) };
    }
    for v in x.iter_mut() {
        *v = v_expf_scalar(*v);
    }
}

/// One lane of [`v_expf8`], with correctly rounded software FMAs.
pub fn v_expf_scalar(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b);
    if !c {
        return j.mul_add(k, k);
    }
    let g = if n <= 0.0 { 0x8200_0000u32 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// The sum of 8 values in the order of ggml's AVX2 horizontal add
/// (`((v4+v0)+(v6+v2)) + ((v5+v1)+(v7+v3))`).
#[inline(always)]
pub fn hsum8_ggml(v: &[f32; 8]) -> f32 {
    let a = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// `out[t] = sum_d a[d*stride + t] * x[d]` for `t < n`, each an FMA chain over `d` in
/// order starting from 0 (ggml's `simd_gemm` summation order).
pub fn gemv_t_fma(a: &[f32], stride: usize, n: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::gemv_t_fma(a, stride, n, x, out) };
    }
    for t in 0..n {
        let mut acc = 0.0f32;
        for (d, xd) in x.iter().enumerate() {
            acc = a[d * stride + t].mul_add(*xd, acc);
        }
        out[t] = acc;
    }
}

/// Panics unless `rows` rows of `width` elements, `ld` apart, fit in `len` elements.
fn check_strided(what: &str, len: usize, rows: usize, ld: usize, width: usize) {
    assert!(
        rows == 0 || width == 0 || len >= (rows - 1) * ld + width,
        "{what} too short"
    );
}

/// Several rows of [`gemv_t_fma`] at once, sharing every load of `a`:
/// `out[r*ldo + t] = sum_d a[d*stride + t] * x[r*ldx + d]` for `r < rows`, `t < n`, `d < hd`.
/// Every output is the same FMA chain over `d` as [`gemv_t_fma`]'s, so the results are
/// bit-identical to calling it row by row.
#[allow(clippy::too_many_arguments)] // a strided matrix product: sizes and strides
pub fn gemm_t_fma(
    a: &[f32],
    stride: usize,
    n: usize,
    hd: usize,
    x: &[f32],
    ldx: usize,
    rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    if rows == 0 || n == 0 {
        return;
    }
    // (`fma_rows` checks `a` and `x`)
    check_strided("gemm_t_fma: out", out.len(), rows, ldo, n);
    // The same products as `fma_rows` onto zeroed rows, with the roles swapped: each
    // query value scales a row of the K tile (`fma(x, y, 0)` is `x*y` rounded, as the chain's
    // first FMA from 0 is).
    for r in 0..rows {
        out[r * ldo..r * ldo + n].fill(0.0);
    }
    if hd > 0 {
        fma_rows(out, ldo, rows, x, ldx, a, stride, hd, n);
    }
}

/// Several rows of [`fma_f32`] over several vectors, each accumulator kept in registers
/// across the vectors: for `r < rows`, then `t = 0, 1, .., n-1` in order,
/// `y[r*ldy + i] = fma(p[r*ldp + t], v[t*ldv + i], y[r*ldy + i])` for `i < len`. The same
/// operations in the same order as calling [`fma_f32`] once per (row, vector), so the
/// results are bit-identical.
#[allow(clippy::too_many_arguments)] // a strided matrix product: sizes and strides
pub fn fma_rows(
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    p: &[f32],
    ldp: usize,
    v: &[f32],
    ldv: usize,
    n: usize,
    len: usize,
) {
    if rows == 0 || n == 0 || len == 0 {
        return;
    }
    check_strided("fma_rows: y", y.len(), rows, ldy, len);
    check_strided("fma_rows: p", p.len(), rows, ldp, n);
    check_strided("fma_rows: v", v.len(), n, ldv, len);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above, bounds asserted above.
        return unsafe { x86::fma_rows(y, ldy, rows, p, ldp, v, ldv, n, len) };
    }
    for r in 0..rows {
        for t in 0..n {
            let s = p[r * ldp + t];
            for i in 0..len {
                y[r * ldy + i] = v[t * ldv + i].mul_add(s, y[r * ldy + i]);
            }
        }
    }
}

/// `y[i] = fma(f32(x[i]), s, y[i])` with `x` in f16 bits.
pub fn fma_f16_into_f32(y: &mut [f32], s: f32, x: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::axpy_f16(y, s, x) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        *a = f16::from_bits(*b).to_f32().mul_add(s, *a);
    }
}

/// f16 bits to f32 values.
pub fn f16_to_f32(x: &[u16], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::f16_to_f32(x, y) };
    }
    for (o, b) in y.iter_mut().zip(x) {
        *o = f16::from_bits(*b).to_f32();
    }
}

/// A block of f16 rows to f32, transposed: `y[c*ldy + r] = f32(x[r*ldx + c])` for
/// `r < rows`, `c < cols`.
#[allow(clippy::too_many_arguments)] // a strided transpose: sizes and strides
pub fn f16_to_f32_transposed(
    x: &[u16],
    ldx: usize,
    rows: usize,
    cols: usize,
    y: &mut [f32],
    ldy: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    check_strided("f16_to_f32_transposed: x", x.len(), rows, ldx, cols);
    check_strided("f16_to_f32_transposed: y", y.len(), cols, ldy, rows);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above, bounds asserted above.
        return unsafe { x86::f16_to_f32_transposed(x, ldx, rows, cols, y, ldy) };
    }
    for r in 0..rows {
        for c in 0..cols {
            y[c * ldy + r] = f16::from_bits(x[r * ldx + c]).to_f32();
        }
    }
}

/// `y[i] = fma(x[i], s, y[i])`.
pub fn fma_f32(y: &mut [f32], s: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked above.
        return unsafe { x86::axpy_f32(y, s, x) };
    }
    for (a, b) in y.iter_mut().zip(x) {
        *a = b.mul_add(s, *a);
    }
}

/// `y[i] *= s`.
pub fn scale(y: &mut [f32], s: f32) {
    for v in y {
        *v *= s;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_f16(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8) as *const __m128i));
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), b0, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), b1, s1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            s += a[i] * half::f16::from_bits(b[i]).to_f32();
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f32(y: &mut [f32], s: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(vs, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        while i < n {
            y[i] = x[i].mul_add(s, y[i]);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_f16(a: &[u16], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let np = n & !31;
        let mut i = 0;
        while i < np {
            for (j, s) in acc.iter_mut().enumerate() {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(i + 8 * j) as *const __m128i));
                let y = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * j) as *const __m128i));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
            i += 32;
        }
        let s0 = _mm256_add_ps(acc[0], acc[2]);
        let s1 = _mm256_add_ps(acc[1], acc[3]);
        let s0 = _mm256_add_ps(s0, s1);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
        while i < n {
            sum +=
                (half::f16::from_bits(a[i]).to_f32() * half::f16::from_bits(b[i]).to_f32()) as f64;
            i += 1;
        }
        sum as f32
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn v_expf8(x: &mut [f32; 8]) {
        let xv = _mm256_loadu_ps(x.as_ptr());
        let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
        let z = _mm256_fmadd_ps(xv, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), xv),
        );
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_castps_si256(_mm256_cmp_ps(absn, _mm256_set1_ps(126.0), _CMP_GT_OQ));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(
                    _mm256_set1_ps(f32::from_bits(0x3c07_2010)),
                    b,
                    _mm256_set1_ps(f32::from_bits(0x3d2b_9f17)),
                ),
                u,
                _mm256_fmadd_ps(
                    _mm256_set1_ps(f32::from_bits(0x3e2a_af33)),
                    b,
                    _mm256_set1_ps(f32::from_bits(0x3eff_fedb)),
                ),
            ),
            u,
            _mm256_mul_ps(_mm256_set1_ps(f32::from_bits(0x3f7f_fff6)), b),
        );
        let out = if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
            _mm256_fmadd_ps(j, k, k)
        } else {
            let g = _mm256_and_si256(
                _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                _mm256_set1_epi32(0x8200_0000u32 as i32),
            );
            let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
            let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
            let d = _mm256_castps_si256(_mm256_cmp_ps(absn, _mm256_set1_ps(192.0), _CMP_GT_OQ));
            _mm256_or_ps(
                _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
                _mm256_andnot_ps(
                    _mm256_castsi256_ps(d),
                    _mm256_or_ps(
                        _mm256_and_ps(
                            _mm256_castsi256_ps(c),
                            _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1),
                        ),
                        _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)),
                    ),
                ),
            )
        };
        _mm256_storeu_ps(x.as_mut_ptr(), out);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv_t_fma(a: &[f32], stride: usize, n: usize, x: &[f32], out: &mut [f32]) {
        let pa = a.as_ptr();
        let mut t = 0;
        while t + 8 <= n {
            let mut acc = _mm256_setzero_ps();
            for (d, xd) in x.iter().enumerate() {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(d * stride + t)),
                    _mm256_set1_ps(*xd),
                    acc,
                );
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(t), acc);
            t += 8;
        }
        while t < n {
            let mut acc = 0.0f32;
            for (d, xd) in x.iter().enumerate() {
                acc = a[d * stride + t].mul_add(*xd, acc);
            }
            out[t] = acc;
            t += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_f16(y: &mut [u16], s: f32) {
        let n = y.len();
        let py = y.as_mut_ptr();
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(py.add(i) as *const __m128i)),
                vs,
            );
            _mm_storeu_si128(
                py.add(i) as *mut __m128i,
                _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT),
            );
            i += 8;
        }
        while i < n {
            y[i] = half::f16::from_f32(half::f16::from_bits(y[i]).to_f32() * s).to_bits();
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16_into_f16(y: &mut [u16], s: f32, x: &[u16]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(py.add(i) as *const __m128i));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
            let v = _mm256_fmadd_ps(b, vs, a);
            _mm_storeu_si128(
                py.add(i) as *mut __m128i,
                _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT),
            );
            i += 8;
        }
        while i < n {
            let v = half::f16::from_bits(y[i]).to_f32() + half::f16::from_bits(x[i]).to_f32() * s;
            y[i] = half::f16::from_f32(v).to_bits();
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(y: &mut [f32], s: f32, x: &[u16]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let vs = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
            _mm256_storeu_ps(
                py.add(i),
                _mm256_fmadd_ps(vs, xv, _mm256_loadu_ps(py.add(i))),
            );
            i += 8;
        }
        while i < n {
            y[i] += s * half::f16::from_bits(x[i]).to_f32();
            i += 1;
        }
    }

    /// `R` rows × `8D` values of [`super::fma_rows`], the accumulators in registers.
    #[inline(always)]
    unsafe fn fma_rows_block<const R: usize, const D: usize>(
        py: *mut f32,
        ldy: usize,
        pp: *const f32,
        ldp: usize,
        pv: *const f32,
        ldv: usize,
        n: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); D]; R];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (i, a) in acc_r.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(py.add(r * ldy + 8 * i));
            }
        }
        for t in 0..n {
            let mut v = [_mm256_setzero_ps(); D];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = _mm256_loadu_ps(pv.add(t * ldv + 8 * i));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let s = _mm256_broadcast_ss(&*pp.add(r * ldp + t));
                for (a, vi) in acc_r.iter_mut().zip(v.iter()) {
                    *a = _mm256_fmadd_ps(s, *vi, *a);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (i, a) in acc_r.iter().enumerate() {
                _mm256_storeu_ps(py.add(r * ldy + 8 * i), *a);
            }
        }
    }

    /// All rows of [`super::fma_rows`] for the `8D` values at `py`/`pv`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn fma_rows_values<const D: usize>(
        py: *mut f32,
        ldy: usize,
        rows: usize,
        pp: *const f32,
        ldp: usize,
        pv: *const f32,
        ldv: usize,
        n: usize,
    ) {
        let mut r = 0;
        while r + 4 <= rows {
            fma_rows_block::<4, D>(py.add(r * ldy), ldy, pp.add(r * ldp), ldp, pv, ldv, n);
            r += 4;
        }
        let (py, pp) = (py.add(r * ldy), pp.add(r * ldp));
        match rows - r {
            3 => fma_rows_block::<3, D>(py, ldy, pp, ldp, pv, ldv, n),
            2 => fma_rows_block::<2, D>(py, ldy, pp, ldp, pv, ldv, n),
            1 => fma_rows_block::<1, D>(py, ldy, pp, ldp, pv, ldv, n),
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fma_rows(
        y: &mut [f32],
        ldy: usize,
        rows: usize,
        p: &[f32],
        ldp: usize,
        v: &[f32],
        ldv: usize,
        n: usize,
        len: usize,
    ) {
        let (py, pp, pv) = (y.as_mut_ptr(), p.as_ptr(), v.as_ptr());
        let mut i = 0;
        while i + 16 <= len {
            fma_rows_values::<2>(py.add(i), ldy, rows, pp, ldp, pv.add(i), ldv, n);
            i += 16;
        }
        while i + 8 <= len {
            fma_rows_values::<1>(py.add(i), ldy, rows, pp, ldp, pv.add(i), ldv, n);
            i += 8;
        }
        for r in 0..rows {
            for t in 0..n {
                let s = p[r * ldp + t];
                for ii in i..len {
                    y[r * ldy + ii] = v[t * ldv + ii].mul_add(s, y[r * ldy + ii]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(x: &[u16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        for (o, b) in y[i..n].iter_mut().zip(&x[i..n]) {
            *o = half::f16::from_bits(*b).to_f32();
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32_transposed(
        x: &[u16],
        ldx: usize,
        rows: usize,
        cols: usize,
        y: &mut [f32],
        ldy: usize,
    ) {
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let (r8, c8) = (rows & !7, cols & !7);
        for r in (0..r8).step_by(8) {
            for c in (0..c8).step_by(8) {
                // eight rows of eight values, then an 8x8 transpose in registers
                // (a loop, not `from_fn`: a closure does not inherit the target features)
                let mut v = [_mm256_setzero_ps(); 8];
                for (i, v) in v.iter_mut().enumerate() {
                    let p = px.add((r + i) * ldx + c) as *const __m128i;
                    *v = _mm256_cvtph_ps(_mm_loadu_si128(p));
                }
                let t0 = _mm256_unpacklo_ps(v[0], v[1]);
                let t1 = _mm256_unpackhi_ps(v[0], v[1]);
                let t2 = _mm256_unpacklo_ps(v[2], v[3]);
                let t3 = _mm256_unpackhi_ps(v[2], v[3]);
                let t4 = _mm256_unpacklo_ps(v[4], v[5]);
                let t5 = _mm256_unpackhi_ps(v[4], v[5]);
                let t6 = _mm256_unpacklo_ps(v[6], v[7]);
                let t7 = _mm256_unpackhi_ps(v[6], v[7]);
                let s0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (k, o) in out.iter().enumerate() {
                    _mm256_storeu_ps(py.add((c + k) * ldy + r), *o);
                }
            }
        }
        for r in 0..rows {
            let c0 = if r < r8 { c8 } else { 0 };
            for c in c0..cols {
                *py.add(c * ldy + r) = half::f16::from_bits(*px.add(r * ldx + c)).to_f32();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-2, 2) with varied exponents, so that any change in the
    /// order of the f32 operations shows in the last bits.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    // Exact equality is the contract: the blocked kernels only share loads between rows,
    // each output keeps the FMA chain of the one-row routine.
    #[test]
    fn gemm_t_fma_is_gemv_t_fma_row_by_row() {
        for (rows, n, hd) in [
            (1, 64, 256),
            (4, 64, 256),
            (7, 64, 64),
            (5, 29, 40),
            (9, 8, 3),
        ] {
            let stride = n + 3;
            let a = values(hd * stride, 1);
            let x = values(rows * (hd + 1), 2);
            let mut out = vec![0.0; rows * (n + 2)];
            gemm_t_fma(&a, stride, n, hd, &x, hd + 1, rows, &mut out, n + 2);
            for r in 0..rows {
                let mut one = vec![0.0; n];
                gemv_t_fma(&a, stride, n, &x[r * (hd + 1)..r * (hd + 1) + hd], &mut one);
                assert_eq!(
                    bits(&out[r * (n + 2)..r * (n + 2) + n]),
                    bits(&one),
                    "row {r} of {rows}, n {n}, hd {hd}"
                );
            }
        }
    }

    #[test]
    fn fma_rows_is_fma_f32_key_by_key() {
        for (rows, n, len) in [
            (1, 64, 256),
            (2, 64, 256),
            (5, 17, 256),
            (3, 9, 45),
            (4, 1, 7),
        ] {
            let (ldy, ldp, ldv) = (len + 1, n + 2, len + 5);
            let y0 = values(rows * ldy, 3);
            let p = values(rows * ldp, 4);
            let v = values(n * ldv, 5);
            let mut y = y0.clone();
            fma_rows(&mut y, ldy, rows, &p, ldp, &v, ldv, n, len);
            for r in 0..rows {
                let mut one = y0[r * ldy..r * ldy + len].to_vec();
                for t in 0..n {
                    fma_f32(&mut one, p[r * ldp + t], &v[t * ldv..t * ldv + len]);
                }
                assert_eq!(
                    bits(&y[r * ldy..r * ldy + len]),
                    bits(&one),
                    "row {r} of {rows}"
                );
            }
        }
    }

    #[test]
    fn f16_conversions_match_half() {
        let src: Vec<u16> = values(37 * 70, 6)
            .iter()
            .map(|&x| f16::from_f32(x * 1000.0).to_bits())
            .collect();
        let mut flat = vec![0.0; src.len()];
        f16_to_f32(&src, &mut flat);
        for (o, b) in flat.iter().zip(&src) {
            assert_eq!(o.to_bits(), f16::from_bits(*b).to_f32().to_bits());
        }
        // 19 rows of 67 values (both past a multiple of 8), row stride 70, into stride 21
        let (rows, cols, ldx, ldy) = (19, 67, 70, 21);
        let mut t = vec![f32::NAN; cols * ldy];
        f16_to_f32_transposed(&src, ldx, rows, cols, &mut t, ldy);
        for r in 0..rows {
            for c in 0..cols {
                let want = f16::from_bits(src[r * ldx + c]).to_f32();
                assert_eq!(t[c * ldy + r].to_bits(), want.to_bits(), "({r}, {c})");
            }
        }
    }
}
