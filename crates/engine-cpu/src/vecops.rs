//! Small vector routines used by attention and normalisation: dot products and `y += a*x`
//! on f32 and f16 rows, with AVX2 versions picked at run time.

use half::f16;

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
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
    for (o, b) in y.iter_mut().zip(x) {
        *o = f16::from_bits(*b).to_f32();
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
}
