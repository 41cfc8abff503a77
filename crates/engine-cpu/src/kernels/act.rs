//! Activation conversion: f32 rows to the partner type of a weight before a dot product.
//!
//! Q8_0 and Q8_1 follow ggml's x86 SIMD encoder (scale `amax / 127`, multiplier
//! `127 / amax`, round half to even), Q8_K follows ggml's reference (scale from the signed
//! maximum, round half to even, clamp to 127), so the integers match llama.cpp's.

use engine_core::DType;
use half::{bf16, f16};

/// Converts `src` (whole blocks) into `dst` (exactly `act.row_bytes(src.len())` bytes).
pub fn quantize_row(act: DType, src: &[f32], dst: &mut [u8]) {
    match act {
        DType::F32 => {
            for (v, c) in src.iter().zip(dst.chunks_exact_mut(4)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            #[cfg(target_arch = "x86_64")]
            if x86::available() {
                // SAFETY: features checked; `dst` holds two bytes per value.
                return unsafe { x86::f16(src, dst) };
            }
            f16_row(src, dst)
        }
        DType::BF16 => {
            for (v, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            if x86::available() {
                // SAFETY: features checked; whole blocks in both slices.
                return unsafe { x86::q8_0(src, dst) };
            }
            q8_0(src, dst)
        }
        DType::Q8_1 => q8_1(src, dst),
        DType::Q8_K => {
            #[cfg(target_arch = "x86_64")]
            if x86::available() {
                // SAFETY: as above.
                return unsafe { x86::q8_k(src, dst) };
            }
            q8_k(src, dst)
        }
        other => unreachable!("{other} is not an activation type"),
    }
}

#[inline(always)]
/// `src` as little-endian f16 (round to nearest even).
fn f16_row(src: &[f32], dst: &mut [u8]) {
    for (v, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, v| a.max(v.abs()))
}

fn q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, blk) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let m = amax(x);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        blk[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, v) in blk[2..].iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i32 as i8 as u8;
        }
    }
}

fn q8_1(src: &[f32], dst: &mut [u8]) {
    for (x, blk) in src.chunks_exact(32).zip(dst.chunks_exact_mut(36)) {
        let m = amax(x);
        let d = m / 127.0;
        let id = if m != 0.0 { 127.0 / m } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in blk[4..].iter_mut().zip(x) {
            let i = (v * id).round_ties_even() as i32;
            sum += i;
            *q = i as i8 as u8;
        }
        blk[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        blk[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_bits().to_le_bytes());
    }
}

fn q8_k(src: &[f32], dst: &mut [u8]) {
    engine_core::quant::kquants::quant_q8_k(src, dst)
}

/// The same encoders with AVX2: identical bytes (the tests compare them with the portable
/// ones), without a libm call per value.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        crate::vecops::has_avx2()
    }

    #[inline(always)]
    unsafe fn abs_max(v: [__m256; 4]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        // (loops, not `map`: a closure does not inherit the target features, and the
        // intrinsics in it would be calls)
        let mut a = v;
        for x in a.iter_mut() {
            *x = _mm256_andnot_ps(sign, *x);
        }
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }

    /// 32 values times `id`, rounded half to even, as 32 signed bytes in order.
    #[inline(always)]
    unsafe fn round_pack(v: [__m256; 4], id: f32, out: *mut u8) {
        let m = _mm256_set1_ps(id);
        let mut i = [_mm256_setzero_si256(); 4];
        for (i, x) in i.iter_mut().zip(v) {
            *i = _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(x, m),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ));
        }
        // packs interleave 128-bit lanes; the permute restores element order
        let a = _mm256_packs_epi32(i[0], i[1]);
        let b = _mm256_packs_epi32(i[2], i[3]);
        let q = _mm256_packs_epi16(a, b);
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out as *mut __m256i, q);
    }

    /// `src` as f16 (round to nearest even, as [`super::f16_row`]), eight at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16(src: &[f32], dst: &mut [u8]) {
        assert!(dst.len() >= 2 * src.len());
        let body = src.len() - src.len() % 8;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for i in (0..body).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
            _mm_storeu_si128(d.add(2 * i) as *mut __m128i, h);
        }
        super::f16_row(&src[body..], &mut dst[2 * body..]);
    }

    #[inline(always)]
    unsafe fn load4(p: *const f32) -> [__m256; 4] {
        let mut v = [_mm256_setzero_ps(); 4];
        for (j, v) in v.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(p.add(8 * j));
        }
        v
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0(src: &[f32], dst: &mut [u8]) {
        for (x, blk) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
            let v = load4(x.as_ptr());
            let m = abs_max(v);
            let d = m / 127.0;
            let id = if m != 0.0 { 127.0 / m } else { 0.0 };
            let h = _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(d)));
            blk[0..2].copy_from_slice(&(h as u16).to_le_bytes());
            round_pack(v, id, blk[2..].as_mut_ptr());
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_k(src: &[f32], dst: &mut [u8]) {
        for (x, blk) in src.chunks_exact(256).zip(dst.chunks_exact_mut(292)) {
            let mut amax = 0.0f32;
            for c in 0..8 {
                amax = amax.max(abs_max(load4(x.as_ptr().add(32 * c))));
            }
            if amax == 0.0 {
                blk.fill(0);
                continue;
            }
            // the first element of that magnitude, with its sign
            let max = *x.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
            let iscale = -127.0 / max;
            for c in 0..8 {
                round_pack(
                    load4(x.as_ptr().add(32 * c)),
                    iscale,
                    blk[4 + 32 * c..].as_mut_ptr(),
                );
            }
            // sums of 16 codes
            let q = blk[4..260].as_ptr();
            for j in 0..16 {
                let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(q.add(16 * j) as *const __m128i));
                let s = _mm256_madd_epi16(v, _mm256_set1_epi16(1));
                let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                let s = _mm_cvtsi128_si32(s) as i16;
                blk[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
            }
            blk[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }
}

/// f16 bits to f32 through the compile-time table.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    super::half_table::f16_to_f32(bits)
}

/// Little-endian f16 at `off` through the table.
#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_encoders_give_the_portable_bytes() {
        use rand::{Rng, SeedableRng};
        if !super::x86::available() {
            eprintln!("SKIPPED: no AVX2; the x86 activation encoders were not checked");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for trial in 0..200 {
            let n = 512;
            let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
            match trial % 5 {
                // exact ties after scaling, zero blocks, and +-max of equal magnitude
                0 => x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0),
                1 => x[..256].iter_mut().for_each(|v| *v = 0.0),
                2 => {
                    x[3] = -8.0;
                    x[200] = 8.0;
                    x[300] = 8.0;
                    x[301] = -8.0;
                }
                _ => {}
            }
            for (act, size) in [
                (engine_core::DType::Q8_0, 34),
                (engine_core::DType::Q8_K, 292),
            ] {
                let blocks = n / act.block_size();
                let (mut a, mut b) = (vec![0u8; blocks * size], vec![0u8; blocks * size]);
                // SAFETY: features checked above; whole blocks.
                unsafe {
                    if act == engine_core::DType::Q8_0 {
                        super::x86::q8_0(&x, &mut a);
                        super::q8_0(&x, &mut b);
                    } else {
                        super::x86::q8_k(&x, &mut a);
                        super::q8_k(&x, &mut b);
                    }
                }
                assert_eq!(a, b, "{act} trial {trial}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_f16_encoder_rounds_as_half_does() {
        use rand::{Rng, SeedableRng};
        if !super::x86::available() {
            eprintln!("SKIPPED: no AVX2/F16C; the x86 f16 encoder was not checked");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // random magnitudes over f16's whole range and past it (subnormals, overflow), exact
        // halfway cases between neighbouring f16 values, zeros and non-finite values; 1003
        // values, so the tail past the last group of eight is covered too
        let mut x: Vec<f32> = (0..1003)
            .map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-30..20)))
            .collect();
        for (i, v) in x.iter_mut().enumerate().take(200) {
            let h = half::f16::from_bits(rng.gen_range(0..0x7c00) as u16 | ((i as u16 & 1) << 15));
            let next = half::f16::from_bits(h.to_bits() + 1);
            *v = (h.to_f32() + next.to_f32()) / 2.0;
        }
        x[500..506].copy_from_slice(&[0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 65520.0, 1e-8]);
        let (mut a, mut b) = (vec![0u8; 2 * x.len()], vec![0u8; 2 * x.len()]);
        // SAFETY: features checked above; two bytes per value.
        unsafe { super::x86::f16(&x, &mut a) };
        super::f16_row(&x, &mut b);
        assert_eq!(a, b);
    }
}
