//! K-quants: super-blocks of 256 elements with 6-bit (or 8-bit) sub-block scales.
//!
//! Layouts (bytes, in struct order):
//! * Q2_K (84): `scales[16]` (low nibble scale, high nibble min), `qs[64]`, `d`, `dmin`.
//! * Q3_K (110): `hmask[32]`, `qs[64]`, `scales[12]` (16 packed 6-bit scales), `d`.
//! * Q4_K (144): `d`, `dmin`, `scales[12]` (8 packed 6-bit scale/min pairs), `qs[128]`.
//! * Q5_K (176): `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`.
//! * Q6_K (210): `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`.
//! * Q8_K (292): `d: f32`, `qs[256]` (i8), `bsums[16]` (i16, sums of 16 quants).

use super::f16_at;

const QK_K: usize = 256;

/// Scale and min of sub-block `j` (0..8) from the 12-byte packed field of Q4_K/Q5_K.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 unsigned 6-bit scales of a Q3_K block (before the -32 offset), four bytes per
/// little-endian word.
#[inline(always)]
pub fn q3k_scale_words(packed: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let rd =
        |o: usize| u32::from_le_bytes([packed[o], packed[o + 1], packed[o + 2], packed[o + 3]]);
    let (a0, a1, tmp) = (rd(0), rd(4), rd(8));
    [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ]
}

/// The 16 signed 6-bit scales of a Q3_K block, already offset by -32.
#[inline(always)]
pub fn q3k_scales(packed: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, w) in q3k_scale_words(packed).iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            out[i * 4 + k] = (*byte as i32 - 32) as i8;
        }
    }
    out
}

/// Q2_K decoder.
pub fn dequant_q2_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(84).zip(out.chunks_exact_mut(QK_K)) {
        let scales = &blk[0..16];
        let d = f16_at(blk, 80);
        let dmin = f16_at(blk, 82);
        let mut is = 0;
        let mut o = 0;
        for n in 0..2 {
            let q = &blk[16 + 32 * n..16 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[o] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                        o += 1;
                    }
                }
            }
        }
    }
}

/// Q3_K decoder.
pub fn dequant_q3_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(110).zip(out.chunks_exact_mut(QK_K)) {
        let hm = &blk[0..32];
        let scales = q3k_scales(&blk[96..108]);
        let d_all = f16_at(blk, 108);
        let mut is = 0;
        let mut o = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &blk[32 + 32 * n..32 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    for l in 0..16 {
                        let idx = l + 16 * half;
                        let low = ((q[idx] >> shift) & 3) as i32;
                        let hi = if hm[idx] & m != 0 { 0 } else { 4 };
                        y[o] = dl * (low - hi) as f32;
                        o += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Q4_K decoder.
pub fn dequant_q4_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        for j in 0..4 {
            let q = &blk[16 + 32 * j..16 + 32 * j + 32];
            let (s1, m1) = scale_min_k4(2 * j, scales);
            let (s2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
            let y = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q5_K decoder.
pub fn dequant_q5_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        let qh = &blk[16..48];
        for j in 0..4 {
            let ql = &blk[48 + 32 * j..48 + 32 * j + 32];
            let (s1, m1) = scale_min_k4(2 * j, scales);
            let (s2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let y = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// Q6_K decoder.
pub fn dequant_q6_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(blk, 208);
        for n in 0..2 {
            let ql = &blk[64 * n..64 * n + 64];
            let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
            let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// Q8_K decoder.
pub fn dequant_q8_k(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(292).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
        for j in 0..QK_K {
            y[j] = d * blk[4 + j] as i8 as f32;
        }
    }
}

/// Rounds half to even, as ggml's `nearest_int` does for K-quant encoders.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Q8_K encoder, exactly ggml's: scale from the signed max so that it maps to -127.
pub fn quant_q8_k(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            blk.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for j in 0..QK_K {
            blk[4 + j] = nearest_int(iscale * x[j]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let s: i32 = (0..16).map(|i| blk[4 + 16 * j + i] as i8 as i32).sum();
            blk[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
        }
        blk[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
