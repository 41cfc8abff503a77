//! Lookup-table formats: IQ4_NL, IQ4_XS and MXFP4.
//!
//! Each 4-bit code indexes a table of signed values instead of being an integer itself.
//! Nibble layout as in the legacy formats: byte `j` holds element `j` (low) and `j + 16` (high).

use super::{f16_at, put_f16};

/// The 16 non-linear levels of IQ4_NL and IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 E2M1 (FP4) values, doubled so they are integers; the scale is halved to match.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// E8M0 exponent to f32: 2^(e-127) (e = 0 gives 2^-127, a subnormal).
#[inline(always)]
pub fn e8m0_to_f32(e: u8) -> f32 {
    let bits = if e == 0 {
        0x0040_0000
    } else {
        (e as u32) << 23
    };
    f32::from_bits(bits)
}

/// Half of [`e8m0_to_f32`]: 2^(e-128), the scale for [`KVALUES_MXFP4`].
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// IQ4_NL: `d: f16, qs: [u8; 16]`; value = `d * KVALUES_IQ4NL[nibble]`.
pub fn dequant_iq4_nl(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(blk, 0);
        for j in 0..16 {
            let q = blk[2 + j];
            y[j] = d * KVALUES_IQ4NL[(q & 0x0f) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

/// Sub-block scale `ib` (0..8) of an IQ4_XS block, offset by -32.
#[inline(always)]
pub fn iq4xs_scale(scales_h: u16, scales_l: &[u8], ib: usize) -> i32 {
    let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
    let hi = ((scales_h >> (2 * ib)) & 3) as u8;
    (lo | (hi << 4)) as i32 - 32
}

/// IQ4_XS: `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`, 8 sub-blocks of 32.
pub fn dequant_iq4_xs(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(136).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(blk, 0);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
        let scales_l = &blk[4..8];
        for ib in 0..8 {
            let dl = d * iq4xs_scale(scales_h, scales_l, ib) as f32;
            let qs = &blk[8 + 16 * ib..8 + 16 * ib + 16];
            let y = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// MXFP4: `e: u8` (E8M0), `qs: [u8; 16]`; value = `KVALUES_MXFP4[nibble] * 2^(e-128)`.
pub fn dequant_mxfp4(b: &[u8], out: &mut [f32]) {
    for (blk, y) in b.chunks_exact(17).zip(out.chunks_exact_mut(32)) {
        let d = e8m0_to_f32_half(blk[0]);
        for j in 0..16 {
            let q = blk[1 + j];
            y[j] = KVALUES_MXFP4[(q & 0x0f) as usize] as f32 * d;
            y[j + 16] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }
}

fn best_index(table: &[i8; 16], x: f32) -> u8 {
    let mut best = 0;
    let mut err = f32::INFINITY;
    for (i, &v) in table.iter().enumerate() {
        let e = (v as f32 - x).abs();
        if e < err {
            err = e;
            best = i;
        }
    }
    best as u8
}

/// IQ4_NL encoder: scale from the signed max so it maps to the table's -127 end, then the
/// nearest level per element (a plain, unweighted version of ggml's search).
pub fn quant_iq4_nl(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / KVALUES_IQ4NL[0] as f32;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(blk, 0, d);
        for j in 0..16 {
            let lo = best_index(&KVALUES_IQ4NL, x[j] * id);
            let hi = best_index(&KVALUES_IQ4NL, x[j + 16] * id);
            blk[2 + j] = lo | (hi << 4);
        }
    }
}

/// MXFP4 encoder, as ggml's reference: shared exponent `floor(log2(amax)) - 2`, then for each
/// element the level minimising `|d * level - x|` (first on ties).
pub fn quant_mxfp4(src: &[f32], out: &mut [u8]) {
    for (x, blk) in src.chunks_exact(32).zip(out.chunks_exact_mut(17)) {
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let e: u8 = if amax > 0.0 {
            (amax.log2().floor() as i32 - 2 + 127).clamp(0, 255) as u8
        } else {
            0
        };
        blk[0] = e;
        let d = e8m0_to_f32_half(e);
        let nearest = |v: f32| -> u8 {
            let mut best = 0;
            let mut err = f32::INFINITY;
            for (i, &k) in KVALUES_MXFP4.iter().enumerate() {
                let e = (d * k as f32 - v).abs();
                if e < err {
                    err = e;
                    best = i;
                }
            }
            best as u8
        };
        for j in 0..16 {
            blk[1 + j] = nearest(x[j]) | (nearest(x[j + 16]) << 4);
        }
    }
}
