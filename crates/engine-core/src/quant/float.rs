//! Plain float types: F32, F16 and BF16, little-endian.

use half::{bf16, f16};

/// Decodes little-endian f32 values.
pub fn dequant_f32(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Decodes little-endian f16 values.
pub fn dequant_f16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// Decodes little-endian bf16 values.
pub fn dequant_bf16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// Encodes as little-endian f32.
pub fn quant_f32(src: &[f32], out: &mut [u8]) {
    for (v, c) in src.iter().zip(out.chunks_exact_mut(4)) {
        c.copy_from_slice(&v.to_le_bytes());
    }
}

/// Encodes as little-endian f16 (round to nearest even).
pub fn quant_f16(src: &[f32], out: &mut [u8]) {
    for (v, c) in src.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// Encodes as little-endian bf16, rounding to nearest even like ggml (NaN kept quiet).
pub fn quant_bf16(src: &[f32], out: &mut [u8]) {
    for (v, c) in src.iter().zip(out.chunks_exact_mut(2)) {
        c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}
