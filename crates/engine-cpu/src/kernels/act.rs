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
            for (v, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::BF16 => {
            for (v, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        DType::Q8_0 => q8_0(src, dst),
        DType::Q8_1 => q8_1(src, dst),
        DType::Q8_K => q8_k(src, dst),
        other => unreachable!("{other} is not an activation type"),
    }
}

#[inline(always)]
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

/// f16 bits to f32 through a 64K-entry table (the portable fast path).
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    F16_TABLE.get_or_init(build_f16_table)[bits as usize]
}

static F16_TABLE: std::sync::OnceLock<Box<[f32]>> = std::sync::OnceLock::new();

fn build_f16_table() -> Box<[f32]> {
    (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect()
}

/// Little-endian f16 at `off` through the table.
#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}
