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
            y[i] += s * x[i];
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
