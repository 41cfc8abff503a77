//! Portable reference dot products, one per weight format.
//!
//! Each computes, per block, an exact integer sum of weight codes times activation codes and
//! accumulates `scale * sum` in f32, the way ggml's generic kernels do. They are the ground
//! truth that the SIMD kernels are tested against, and the fallback on other CPUs.

use engine_core::quant::kquants::{q3k_scales, scale_min_k4};
use engine_core::quant::nonlinear::{e8m0_to_f32_half, iq4xs_scale, KVALUES_IQ4NL, KVALUES_MXFP4};
use engine_core::DType;

use super::act::f16_at;
use super::DotFn;

/// The scalar routine for a weight type.
pub fn dot_fn(w: DType) -> Option<DotFn> {
    Some(match w {
        DType::F32 => dot_f32,
        DType::F16 => dot_f16,
        DType::BF16 => dot_bf16,
        DType::Q4_0 => dot_q4_0,
        DType::Q4_1 => dot_q4_1,
        DType::Q5_0 => dot_q5_0,
        DType::Q5_1 => dot_q5_1,
        DType::Q8_0 => dot_q8_0,
        DType::Q2_K => dot_q2_k,
        DType::Q3_K => dot_q3_k,
        DType::Q4_K => dot_q4_k,
        DType::Q5_K => dot_q5_k,
        DType::Q6_K => dot_q6_k,
        DType::IQ4_NL => dot_iq4_nl,
        DType::IQ4_XS => dot_iq4_xs,
        DType::MXFP4 => dot_mxfp4,
        _ => return None,
    })
}

#[inline(always)]
fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| v as i8 as i32)
}

#[inline(always)]
fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0.0f64;
    for i in 0..n {
        s += (f32_at(w, 4 * i) * f32_at(a, 4 * i)) as f64;
    }
    s as f32
}

fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0.0f64;
    for i in 0..n {
        s += (f16_at(w, 2 * i) * f16_at(a, 2 * i)) as f64;
    }
    s as f32
}

fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let bf = |b: &[u8], i: usize| {
        f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16)
    };
    let mut s = 0.0f64;
    for i in 0..n {
        s += (bf(w, i) * bf(a, i)) as f64;
    }
    s as f32
}

fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)).take(n / 32) {
        let qy = &y[2..34];
        let mut s = 0i32;
        for j in 0..16 {
            s += ((x[2 + j] & 0x0f) as i32 - 8) * qy[j] as i8 as i32;
            s += ((x[2 + j] >> 4) as i32 - 8) * qy[j + 16] as i8 as i32;
        }
        sum += s as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)).take(n / 32) {
        let qy = &y[4..36];
        let mut s = 0i32;
        for j in 0..16 {
            s += (x[4 + j] & 0x0f) as i32 * qy[j] as i8 as i32;
            s += (x[4 + j] >> 4) as i32 * qy[j + 16] as i8 as i32;
        }
        sum += (f16_at(x, 0) * f16_at(y, 0)) * s as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sum
}

#[inline(always)]
fn q5_codes(qh: u32, qs: &[u8], j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (
        ((qs[j] & 0x0f) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)).take(n / 32) {
        let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
        let qy = &y[2..34];
        let mut s = 0i32;
        for j in 0..16 {
            let (x0, x1) = q5_codes(qh, &x[6..22], j);
            s += (x0 - 16) * qy[j] as i8 as i32 + (x1 - 16) * qy[j + 16] as i8 as i32;
        }
        sum += s as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)).take(n / 32) {
        let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
        let qy = &y[4..36];
        let mut s = 0i32;
        for j in 0..16 {
            let (x0, x1) = q5_codes(qh, &x[8..24], j);
            s += x0 * qy[j] as i8 as i32 + x1 * qy[j + 16] as i8 as i32;
        }
        sum += (f16_at(x, 0) * f16_at(y, 0)) * s as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sum
}

fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)).take(n / 32) {
        let s: i32 = i8s(&x[2..34]).zip(i8s(&y[2..34])).map(|(p, q)| p * q).sum();
        sum += s as f32 * (f16_at(x, 0) * f16_at(y, 0));
    }
    sum
}

fn dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)).take(n / 32) {
        let qy = &y[2..34];
        let mut s = 0i32;
        for j in 0..16 {
            s += KVALUES_IQ4NL[(x[2 + j] & 0x0f) as usize] as i32 * qy[j] as i8 as i32;
            s += KVALUES_IQ4NL[(x[2 + j] >> 4) as usize] as i32 * qy[j + 16] as i8 as i32;
        }
        sum += (f16_at(x, 0) * f16_at(y, 0)) * s as f32;
    }
    sum
}

fn dot_mxfp4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(17).zip(a.chunks_exact(34)).take(n / 32) {
        let qy = &y[2..34];
        let mut s = 0i32;
        for j in 0..16 {
            s += KVALUES_MXFP4[(x[1 + j] & 0x0f) as usize] as i32 * qy[j] as i8 as i32;
            s += KVALUES_MXFP4[(x[1 + j] >> 4) as usize] as i32 * qy[j + 16] as i8 as i32;
        }
        sum += (f16_at(y, 0) * e8m0_to_f32_half(x[0])) * s as f32;
    }
    sum
}

/// Q8_K block fields: scale, codes, and the 16 sums of 16 codes.
#[inline(always)]
fn q8k(y: &[u8]) -> (f32, &[u8], [i32; 16]) {
    let mut bsums = [0i32; 16];
    for (i, b) in bsums.iter_mut().enumerate() {
        *b = i16::from_le_bytes([y[260 + 2 * i], y[261 + 2 * i]]) as i32;
    }
    (f32_at(y, 0), &y[4..260], bsums)
}

fn dot_q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(84).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, bsums) = q8k(y);
        let scales = &x[0..16];
        let mut summ = 0i32;
        for s in 0..16 {
            summ += (scales[s] >> 4) as i32 * bsums[s];
        }
        let mut isum = 0i32;
        let mut sub = 0;
        for chunk in 0..2 {
            let q = &x[16 + 32 * chunk..16 + 32 * chunk + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let mut s = 0i32;
                    for l in 0..16 {
                        let code = ((q[16 * half + l] >> shift) & 3) as i32;
                        s += code * q8[16 * sub + l] as i8 as i32;
                    }
                    isum += (scales[sub] & 0x0f) as i32 * s;
                    sub += 1;
                }
            }
        }
        sum += dy * f16_at(x, 80) * isum as f32 - dy * f16_at(x, 82) * summ as f32;
    }
    sum
}

fn dot_q3_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(110).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, _) = q8k(y);
        let hm = &x[0..32];
        let scales = q3k_scales(&x[96..108]);
        let mut isum = 0i32;
        let mut sub = 0;
        let mut m = 1u8;
        for chunk in 0..2 {
            let q = &x[32 + 32 * chunk..32 + 32 * chunk + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let mut s = 0i32;
                    for l in 0..16 {
                        let idx = 16 * half + l;
                        let code =
                            ((q[idx] >> shift) & 3) as i32 - if hm[idx] & m != 0 { 0 } else { 4 };
                        s += code * q8[16 * sub + l] as i8 as i32;
                    }
                    isum += scales[sub] as i32 * s;
                    sub += 1;
                }
                m <<= 1;
            }
        }
        sum += dy * f16_at(x, 108) * isum as f32;
    }
    sum
}

fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut mins = 0.0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, bsums) = q8k(y);
        let packed = &x[4..16];
        let mut isum = 0i32;
        let mut summ = 0i32;
        for j in 0..4 {
            let q = &x[16 + 32 * j..16 + 32 * j + 32];
            let (s1, m1) = scale_min_k4(2 * j, packed);
            let (s2, m2) = scale_min_k4(2 * j + 1, packed);
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (q[l] & 0x0f) as i32 * q8[64 * j + l] as i8 as i32;
                hi += (q[l] >> 4) as i32 * q8[64 * j + 32 + l] as i8 as i32;
            }
            isum += s1 as i32 * lo + s2 as i32 * hi;
            summ += m1 as i32 * (bsums[4 * j] + bsums[4 * j + 1])
                + m2 as i32 * (bsums[4 * j + 2] + bsums[4 * j + 3]);
        }
        sum += dy * f16_at(x, 0) * isum as f32;
        mins += dy * f16_at(x, 2) * summ as f32;
    }
    sum - mins
}

fn dot_q5_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(176).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, bsums) = q8k(y);
        let packed = &x[4..16];
        let qh = &x[16..48];
        let mut isum = 0i32;
        let mut summ = 0i32;
        for j in 0..4 {
            let ql = &x[48 + 32 * j..48 + 32 * j + 32];
            let (s1, m1) = scale_min_k4(2 * j, packed);
            let (s2, m2) = scale_min_k4(2 * j + 1, packed);
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * j)) & 1) as i32 * 16;
                let h2 = ((qh[l] >> (2 * j + 1)) & 1) as i32 * 16;
                lo += ((ql[l] & 0x0f) as i32 + h1) * q8[64 * j + l] as i8 as i32;
                hi += ((ql[l] >> 4) as i32 + h2) * q8[64 * j + 32 + l] as i8 as i32;
            }
            isum += s1 as i32 * lo + s2 as i32 * hi;
            summ += m1 as i32 * (bsums[4 * j] + bsums[4 * j + 1])
                + m2 as i32 * (bsums[4 * j + 2] + bsums[4 * j + 3]);
        }
        sum += dy * f16_at(x, 0) * isum as f32 - dy * f16_at(x, 2) * summ as f32;
    }
    sum
}

fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, _) = q8k(y);
        let mut isum = 0i32;
        for chunk in 0..2 {
            let ql = &x[64 * chunk..64 * chunk + 64];
            let qh = &x[128 + 32 * chunk..128 + 32 * chunk + 32];
            let sc = &x[192 + 8 * chunk..192 + 8 * chunk + 8];
            let q8 = &q8[128 * chunk..128 * chunk + 128];
            let mut sub = [0i32; 8];
            for l in 0..32 {
                let is = l / 16;
                let c1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let c2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let c3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let c4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                sub[is] += c1 * q8[l] as i8 as i32;
                sub[is + 2] += c2 * q8[l + 32] as i8 as i32;
                sub[is + 4] += c3 * q8[l + 64] as i8 as i32;
                sub[is + 6] += c4 * q8[l + 96] as i8 as i32;
            }
            for s in 0..8 {
                isum += sc[s] as i8 as i32 * sub[s];
            }
        }
        sum += dy * f16_at(x, 208) * isum as f32;
    }
    sum
}

fn dot_iq4_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)).take(n / 256) {
        let (dy, q8, _) = q8k(y);
        let scales_h = u16::from_le_bytes([x[2], x[3]]);
        let mut isum = 0i32;
        for ib in 0..8 {
            let ls = iq4xs_scale(scales_h, &x[4..8], ib);
            let qs = &x[8 + 16 * ib..8 + 16 * ib + 16];
            let q8 = &q8[32 * ib..32 * ib + 32];
            let mut s = 0i32;
            for j in 0..16 {
                s += KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as i32 * q8[j] as i8 as i32;
                s += KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32 * q8[j + 16] as i8 as i32;
            }
            isum += ls * s;
        }
        sum += dy * f16_at(x, 0) * isum as f32;
    }
    sum
}
