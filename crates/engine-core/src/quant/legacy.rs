//! The original ggml block formats: 32 elements per block, one f16 scale (and minimum).
//!
//! In every 4-bit/5-bit layout here, byte `j` of `qs` holds element `j` in its low nibble and
//! element `j + 16` in its high nibble. Q5 types keep the fifth bits in a 32-bit `qh` word.

use super::{f16_at, put_f16, round_i};

const QK: usize = 32;

/// Q4_0: `d: f16, qs: [u8; 16]`; value = (nibble - 8) * d.
pub fn dequant_q4_0(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        let qs = &blk[2..18];
        for j in 0..16 {
            y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
            y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; value = nibble * d + m.
pub fn dequant_q4_1(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qs = &blk[4..20];
        for j in 0..16 {
            y[j] = (qs[j] & 0x0f) as f32 * d + m;
            y[j + 16] = (qs[j] >> 4) as f32 * d + m;
        }
    }
}

#[inline(always)]
fn q5_values(qh: u32, qs: &[u8], j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (
        ((qs[j] & 0x0f) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; value = (5-bit - 16) * d.
pub fn dequant_q5_0(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let qs = &blk[6..22];
        for j in 0..16 {
            let (x0, x1) = q5_values(qh, qs, j);
            y[j] = (x0 - 16) as f32 * d;
            y[j + 16] = (x1 - 16) as f32 * d;
        }
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; value = 5-bit * d + m.
pub fn dequant_q5_1(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(24).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        let m = f16_at(blk, 2);
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let qs = &blk[8..24];
        for j in 0..16 {
            let (x0, x1) = q5_values(qh, qs, j);
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; value = q * d.
pub fn dequant_q8_0(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for j in 0..QK {
            y[j] = blk[2 + j] as i8 as f32 * d;
        }
    }
}

/// Q8_1: `d: f16, s: f16, qs: [i8; 32]`; value = q * d (`s` = d * sum(q)).
pub fn dequant_q8_1(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(36).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(blk, 0);
        for j in 0..QK {
            y[j] = blk[4 + j] as i8 as f32 * d;
        }
    }
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, v| a.max(v.abs()))
}

/// Signed max: the element of largest magnitude, keeping its sign (first one on ties).
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Q4_0 encoder (ggml's reference: scale from the signed max, d = max / -8).
pub fn quant_q4_0(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(18)) {
        let max = signed_max(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        for j in 0..16 {
            let x0 = (x[j] * id + 8.5) as i32;
            let x1 = (x[j + 16] * id + 8.5) as i32;
            blk[2 + j] = (x0.min(15) as u8) | ((x1.min(15) as u8) << 4);
        }
    }
}

/// Q4_1 encoder (min/max affine).
pub fn quant_q4_1(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(20)) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        put_f16(blk, 2, min);
        for j in 0..16 {
            let x0 = ((x[j] - min) * id + 0.5) as i32;
            let x1 = ((x[j + 16] - min) * id + 0.5) as i32;
            blk[4 + j] = (x0.min(15) as u8) | ((x1.min(15) as u8) << 4);
        }
    }
}

/// Q5_0 encoder (signed max, d = max / -16).
pub fn quant_q5_0(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(22)) {
        let max = signed_max(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = ((x[j] * id + 16.5) as i32).min(31) as u32;
            let x1 = ((x[j + 16] * id + 16.5) as i32).min(31) as u32;
            blk[6 + j] = ((x0 & 0x0f) | ((x1 & 0x0f) << 4)) as u8;
            qh |= ((x0 & 0x10) >> 4) << j;
            qh |= ((x1 & 0x10) >> 4) << (j + 16);
        }
        blk[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Q5_1 encoder (min/max affine).
pub fn quant_q5_1(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(24)) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        put_f16(blk, 2, min);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = ((x[j] - min) * id + 0.5) as u32;
            let x1 = ((x[j + 16] - min) * id + 0.5) as u32;
            blk[8 + j] = ((x0 & 0x0f) | ((x1 & 0x0f) << 4)) as u8;
            qh |= ((x0 & 0x10) >> 4) << j;
            qh |= ((x1 & 0x10) >> 4) << (j + 16);
        }
        blk[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Q8_0 encoder (ggml's reference: d = amax/127, q = round(x/d), ties away from zero).
pub fn quant_q8_0(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        for j in 0..QK {
            blk[2 + j] = round_i(x[j] * id) as i8 as u8;
        }
    }
}

/// Q8_1 encoder: as Q8_0, plus `s = d * sum(q)`.
pub fn quant_q8_1(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(QK).zip(out.chunks_exact_mut(36)) {
        let d = absmax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        let mut sum = 0i32;
        for j in 0..QK {
            let q = round_i(x[j] * id);
            sum += q;
            blk[4 + j] = q as i8 as u8;
        }
        put_f16(blk, 2, sum as f32 * d);
    }
}
