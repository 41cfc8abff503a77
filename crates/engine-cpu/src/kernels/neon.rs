//! NEON dot products (aarch64: Raspberry Pi 5, Jetson CPUs, Apple silicon).
//!
//! Products of 8-bit codes are formed with widening multiplies (`smull`, exact in i16) and
//! pairwise-accumulated into i32 lanes, so each routine computes exactly the integer block
//! sums of its [`super::scalar`] twin; only the f32 accumulation order differs. NEON is part
//! of the aarch64 baseline, so these need no run-time check.

#![allow(clippy::missing_safety_doc)]

use std::arch::aarch64::*;

use engine_core::quant::kquants::{q3k_scales, scale_min_k4};
use engine_core::quant::nonlinear::{e8m0_to_f32_half, iq4xs_scale, KVALUES_IQ4NL, KVALUES_MXFP4};
use engine_core::DType;

use super::act::f16_at;
use super::DotFn;

/// The NEON routine for a weight type, if there is one.
pub fn dot_fn(w: DType) -> Option<DotFn> {
    macro_rules! wrap {
        ($f:ident) => {{
            fn safe(n: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: NEON is mandatory on aarch64; the routine reads whole blocks only.
                unsafe { $f(n, w, a) }
            }
            safe as DotFn
        }};
    }
    Some(match w {
        DType::F32 => wrap!(dot_f32),
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

/// Sum of products of two 32-byte signed vectors (as two halves each), exact, as i32x4.
#[inline(always)]
unsafe fn dot32(x0: int8x16_t, x1: int8x16_t, y0: int8x16_t, y1: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(x0), vget_low_s8(y0));
    let p1 = vmull_s8(vget_high_s8(x0), vget_high_s8(y0));
    let p2 = vmull_s8(vget_low_s8(x1), vget_low_s8(y1));
    let p3 = vmull_s8(vget_high_s8(x1), vget_high_s8(y1));
    let acc = vpaddlq_s16(p0);
    let acc = vpadalq_s16(acc, p1);
    let acc = vpadalq_s16(acc, p2);
    vpadalq_s16(acc, p3)
}

/// Sum of products of one 16-byte signed vector pair, exact, as i32x4.
#[inline(always)]
unsafe fn dot16(x: int8x16_t, y: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(x), vget_low_s8(y));
    let p1 = vmull_s8(vget_high_s8(x), vget_high_s8(y));
    vpadalq_s16(vpaddlq_s16(p0), p1)
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// 16 bytes of nibbles to (low nibbles, high nibbles) as unsigned values in signed vectors.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(p);
    let m4 = vdupq_n_u8(0x0f);
    (
        vreinterpretq_s8_u8(vandq_u8(v, m4)),
        vreinterpretq_s8_u8(vshrq_n_u8(v, 4)),
    )
}

/// The fifth bits of a Q5 block (`qh`) as 0x10 bytes for elements 0..16 and 16..32.
#[inline(always)]
unsafe fn q5_high(qh: u32) -> (int8x16_t, int8x16_t) {
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    for j in 0..16 {
        lo[j] = (((qh >> j) & 1) << 4) as u8;
        hi[j] = (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    (
        vreinterpretq_s8_u8(vld1q_u8(lo.as_ptr())),
        vreinterpretq_s8_u8(vld1q_u8(hi.as_ptr())),
    )
}

unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    let mut acc = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        acc = vfmaq_f32(acc, vld1q_f32(pw.add(i)), vld1q_f32(pa.add(i)));
        i += 4;
    }
    let mut s = vaddvq_f32(acc);
    while i < n {
        s += *pw.add(i) * *pa.add(i);
        i += 1;
    }
    s
}

unsafe fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(34 * b), a.as_ptr().add(34 * b));
        let s = dot32(ld(x.add(2)), ld(x.add(18)), ld(y.add(2)), ld(y.add(18)));
        let d = f16_at(w, 34 * b) * f16_at(a, 34 * b);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

unsafe fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let off = vdupq_n_s8(8);
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(18 * b), a.as_ptr().add(34 * b));
        let (lo, hi) = nibbles(x.add(2));
        let s = dot32(
            vsubq_s8(lo, off),
            vsubq_s8(hi, off),
            ld(y.add(2)),
            ld(y.add(18)),
        );
        let d = f16_at(w, 18 * b) * f16_at(a, 34 * b);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

unsafe fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut mins = 0.0f32;
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(20 * b), a.as_ptr().add(36 * b));
        let (lo, hi) = nibbles(x.add(4));
        let s = dot32(lo, hi, ld(y.add(4)), ld(y.add(20)));
        let d = f16_at(w, 20 * b) * f16_at(a, 36 * b);
        mins += f16_at(w, 20 * b + 2) * f16_at(a, 36 * b + 2);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc) + mins
}

unsafe fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let off = vdupq_n_s8(16);
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(22 * b), a.as_ptr().add(34 * b));
        let qh = (x.add(2) as *const u32).read_unaligned();
        let (h0, h1) = q5_high(qh);
        let (lo, hi) = nibbles(x.add(6));
        let x0 = vsubq_s8(vorrq_s8(lo, h0), off);
        let x1 = vsubq_s8(vorrq_s8(hi, h1), off);
        let s = dot32(x0, x1, ld(y.add(2)), ld(y.add(18)));
        let d = f16_at(w, 22 * b) * f16_at(a, 34 * b);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

unsafe fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut mins = 0.0f32;
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(24 * b), a.as_ptr().add(36 * b));
        let qh = (x.add(4) as *const u32).read_unaligned();
        let (h0, h1) = q5_high(qh);
        let (lo, hi) = nibbles(x.add(8));
        let s = dot32(
            vorrq_s8(lo, h0),
            vorrq_s8(hi, h1),
            ld(y.add(4)),
            ld(y.add(20)),
        );
        let d = f16_at(w, 24 * b) * f16_at(a, 36 * b);
        mins += f16_at(w, 24 * b + 2) * f16_at(a, 36 * b + 2);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc) + mins
}

#[inline(always)]
unsafe fn lut(table: int8x16_t, p: *const u8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(p);
    let lo = vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0x0f)));
    let hi = vqtbl1q_s8(table, vshrq_n_u8(v, 4));
    (lo, hi)
}

unsafe fn dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let table = vld1q_s8(KVALUES_IQ4NL.as_ptr());
    let mut acc = vdupq_n_f32(0.0);
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(18 * b), a.as_ptr().add(34 * b));
        let (lo, hi) = lut(table, x.add(2));
        let s = dot32(lo, hi, ld(y.add(2)), ld(y.add(18)));
        let d = f16_at(w, 18 * b) * f16_at(a, 34 * b);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

unsafe fn dot_mxfp4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let table = vld1q_s8(KVALUES_MXFP4.as_ptr());
    let mut acc = vdupq_n_f32(0.0);
    for b in 0..n / 32 {
        let (x, y) = (w.as_ptr().add(17 * b), a.as_ptr().add(34 * b));
        let (lo, hi) = lut(table, x.add(1));
        let s = dot32(lo, hi, ld(y.add(2)), ld(y.add(18)));
        let d = f16_at(a, 34 * b) * e8m0_to_f32_half(*x);
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

#[inline(always)]
unsafe fn q8k_d(y: *const u8) -> f32 {
    (y as *const f32).read_unaligned()
}

#[inline(always)]
unsafe fn q8k_bsum(y: *const u8, i: usize) -> i32 {
    (y.add(260 + 2 * i) as *const i16).read_unaligned() as i32
}

unsafe fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut mins = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(144 * b), a.as_ptr().add(292 * b));
        let xs = &w[144 * b..144 * b + 144];
        let mut isum = 0i32;
        let mut summ = 0i32;
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, &xs[4..16]);
            let (s2, m2) = scale_min_k4(2 * j + 1, &xs[4..16]);
            summ += m1 as i32 * (q8k_bsum(y, 4 * j) + q8k_bsum(y, 4 * j + 1))
                + m2 as i32 * (q8k_bsum(y, 4 * j + 2) + q8k_bsum(y, 4 * j + 3));
            let q8 = y.add(4 + 64 * j);
            let (l0, h0) = nibbles(x.add(16 + 32 * j));
            let (l1, h1) = nibbles(x.add(16 + 32 * j + 16));
            let lo = vaddvq_s32(dot32(l0, l1, ld(q8), ld(q8.add(16))));
            let hi = vaddvq_s32(dot32(h0, h1, ld(q8.add(32)), ld(q8.add(48))));
            isum += s1 as i32 * lo + s2 as i32 * hi;
        }
        let dy = q8k_d(y);
        sum += dy * f16_at(xs, 0) * isum as f32;
        mins += dy * f16_at(xs, 2) * summ as f32;
    }
    sum - mins
}

unsafe fn dot_q5_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let one = vdupq_n_u8(1);
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(176 * b), a.as_ptr().add(292 * b));
        let xs = &w[176 * b..176 * b + 176];
        let qh0 = vld1q_u8(x.add(16));
        let qh1 = vld1q_u8(x.add(32));
        let mut isum = 0i32;
        let mut summ = 0i32;
        for j in 0..4 {
            let (s1, m1) = scale_min_k4(2 * j, &xs[4..16]);
            let (s2, m2) = scale_min_k4(2 * j + 1, &xs[4..16]);
            summ += m1 as i32 * (q8k_bsum(y, 4 * j) + q8k_bsum(y, 4 * j + 1))
                + m2 as i32 * (q8k_bsum(y, 4 * j + 2) + q8k_bsum(y, 4 * j + 3));
            let sh_lo = vdupq_n_s8(-(2 * j as i8));
            let sh_hi = vdupq_n_s8(-(2 * j as i8 + 1));
            let hb = |v: uint8x16_t, sh: int8x16_t| {
                vreinterpretq_s8_u8(vshlq_n_u8(vandq_u8(vshlq_u8(v, sh), one), 4))
            };
            let (l0, h0) = nibbles(x.add(48 + 32 * j));
            let (l1, h1) = nibbles(x.add(48 + 32 * j + 16));
            let q8 = y.add(4 + 64 * j);
            let lo = vaddvq_s32(dot32(
                vorrq_s8(l0, hb(qh0, sh_lo)),
                vorrq_s8(l1, hb(qh1, sh_lo)),
                ld(q8),
                ld(q8.add(16)),
            ));
            let hi = vaddvq_s32(dot32(
                vorrq_s8(h0, hb(qh0, sh_hi)),
                vorrq_s8(h1, hb(qh1, sh_hi)),
                ld(q8.add(32)),
                ld(q8.add(48)),
            ));
            isum += s1 as i32 * lo + s2 as i32 * hi;
        }
        let dy = q8k_d(y);
        sum += dy * f16_at(xs, 0) * isum as f32 - dy * f16_at(xs, 2) * summ as f32;
    }
    sum
}

unsafe fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let m4 = vdupq_n_u8(0x0f);
    let m2 = vdupq_n_u8(0x03);
    let off = vdupq_n_s8(32);
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(210 * b), a.as_ptr().add(292 * b));
        let mut isum = 0i32;
        for chunk in 0..2 {
            let ql = x.add(64 * chunk);
            let qh = x.add(128 + 32 * chunk);
            let sc = x.add(192 + 8 * chunk) as *const i8;
            let q8 = y.add(4 + 128 * chunk);
            for half in 0..2 {
                // 16 of the 32 columns at a time: l in [16*half, 16*half + 16)
                let l0 = vld1q_u8(ql.add(16 * half));
                let l1 = vld1q_u8(ql.add(32 + 16 * half));
                let h = vld1q_u8(qh.add(16 * half));
                let codes = [
                    vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(h, m2), 4)),
                    vorrq_u8(
                        vandq_u8(l1, m4),
                        vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 2), m2), 4),
                    ),
                    vorrq_u8(
                        vshrq_n_u8(l0, 4),
                        vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 4), m2), 4),
                    ),
                    vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(h, 6), 4)),
                ];
                for (g, c) in codes.iter().enumerate() {
                    let v = vsubq_s8(vreinterpretq_s8_u8(*c), off);
                    let s = vaddvq_s32(dot16(v, ld(q8.add(32 * g + 16 * half))));
                    isum += *sc.add(2 * g + half) as i32 * s;
                }
            }
        }
        sum += q8k_d(y) * f16_at(w, 210 * b + 208) * isum as f32;
    }
    sum
}

unsafe fn dot_q3_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let m3 = vdupq_n_u8(3);
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(110 * b), a.as_ptr().add(292 * b));
        let xs = &w[110 * b..110 * b + 110];
        let scales = q3k_scales(&xs[96..108]);
        let mut isum = 0i32;
        let mut sub = 0;
        for chunk in 0..2 {
            for j in 0..4 {
                let bit = vdupq_n_u8(1u8 << (4 * chunk + j));
                let sh = vdupq_n_s8(-(2 * j as i8));
                for half in 0..2 {
                    let q = vld1q_u8(x.add(32 + 32 * chunk + 16 * half));
                    let hm = vld1q_u8(x.add(16 * half));
                    let low = vandq_u8(vshlq_u8(q, sh), m3);
                    // subtract 4 where the high bit is clear
                    let clear = vceqq_u8(vandq_u8(hm, bit), vdupq_n_u8(0));
                    let code = vsubq_s8(
                        vreinterpretq_s8_u8(low),
                        vreinterpretq_s8_u8(vandq_u8(clear, vdupq_n_u8(4))),
                    );
                    let s = vaddvq_s32(dot16(code, ld(y.add(4 + 16 * (sub + half)))));
                    isum += scales[sub + half] as i32 * s;
                }
                sub += 2;
            }
        }
        sum += q8k_d(y) * f16_at(xs, 108) * isum as f32;
    }
    sum
}

unsafe fn dot_q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let m3 = vdupq_n_u8(3);
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(84 * b), a.as_ptr().add(292 * b));
        let xs = &w[84 * b..84 * b + 84];
        let mut summ = 0i32;
        for s in 0..16 {
            summ += (xs[s] >> 4) as i32 * q8k_bsum(y, s);
        }
        let mut isum = 0i32;
        let mut sub = 0;
        for chunk in 0..2 {
            for j in 0..4 {
                let sh = vdupq_n_s8(-(2 * j as i8));
                for half in 0..2 {
                    let q = vld1q_u8(x.add(16 + 32 * chunk + 16 * half));
                    let code = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q, sh), m3));
                    let s = vaddvq_s32(dot16(code, ld(y.add(4 + 16 * (sub + half)))));
                    isum += (xs[sub + half] & 0x0f) as i32 * s;
                }
                sub += 2;
            }
        }
        let dy = q8k_d(y);
        sum += dy * f16_at(xs, 80) * isum as f32 - dy * f16_at(xs, 82) * summ as f32;
    }
    sum
}

unsafe fn dot_iq4_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let table = vld1q_s8(KVALUES_IQ4NL.as_ptr());
    let mut sum = 0.0f32;
    for b in 0..n / 256 {
        let (x, y) = (w.as_ptr().add(136 * b), a.as_ptr().add(292 * b));
        let xs = &w[136 * b..136 * b + 136];
        let scales_h = u16::from_le_bytes([xs[2], xs[3]]);
        let mut isum = 0i32;
        for ib in 0..8 {
            let (lo, hi) = lut(table, x.add(8 + 16 * ib));
            let q8 = y.add(4 + 32 * ib);
            let s = vaddvq_s32(dot32(lo, hi, ld(q8), ld(q8.add(16))));
            isum += iq4xs_scale(scales_h, &xs[4..8], ib) * s;
        }
        sum += q8k_d(y) * f16_at(xs, 0) * isum as f32;
    }
    sum
}
