//! Reference block codecs: every supported ggml type to and from f32.
//!
//! These are the scalar, obviously-correct versions. They define the numbers; the fast
//! kernels in the backends are tested against them. Layouts follow ggml's `block_*` structs
//! byte for byte (little-endian), so a block is read straight from a GGUF mapping.
//!
//! * [`float`]: F32, F16, BF16.
//! * [`legacy`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (blocks of 32).
//! * [`kquants`]: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (super-blocks of 256).
//! * [`nonlinear`]: IQ4_NL, IQ4_XS and MXFP4 (lookup-table values).

pub mod float;
pub mod kquants;
pub mod legacy;
pub mod nonlinear;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Reads a little-endian f16 at `off` as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Writes `v` as a little-endian f16 at `off`.
#[inline(always)]
pub fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// Signature of a row decoder: `bytes` holds whole blocks, `out` receives their elements.
pub type DequantFn = fn(bytes: &[u8], out: &mut [f32]);
/// Signature of a row encoder: `src` holds whole blocks' worth of elements.
pub type QuantFn = fn(src: &[f32], out: &mut [u8]);

/// The decoder for `dtype`, if the engine can decode it.
pub fn dequant_fn(dtype: DType) -> Option<DequantFn> {
    Some(match dtype {
        DType::F32 => float::dequant_f32,
        DType::F16 => float::dequant_f16,
        DType::BF16 => float::dequant_bf16,
        DType::Q4_0 => legacy::dequant_q4_0,
        DType::Q4_1 => legacy::dequant_q4_1,
        DType::Q5_0 => legacy::dequant_q5_0,
        DType::Q5_1 => legacy::dequant_q5_1,
        DType::Q8_0 => legacy::dequant_q8_0,
        DType::Q8_1 => legacy::dequant_q8_1,
        DType::Q2_K => kquants::dequant_q2_k,
        DType::Q3_K => kquants::dequant_q3_k,
        DType::Q4_K => kquants::dequant_q4_k,
        DType::Q5_K => kquants::dequant_q5_k,
        DType::Q6_K => kquants::dequant_q6_k,
        DType::Q8_K => kquants::dequant_q8_k,
        DType::IQ4_NL => nonlinear::dequant_iq4_nl,
        DType::IQ4_XS => nonlinear::dequant_iq4_xs,
        DType::MXFP4 => nonlinear::dequant_mxfp4,
        _ => return None,
    })
}

/// The encoder for `dtype`, if the engine can encode it.
///
/// Activation types (Q8_0, Q8_1, Q8_K) and the simple weight types have encoders; the
/// importance-matrix K-quant searches are not reproduced here.
pub fn quant_fn(dtype: DType) -> Option<QuantFn> {
    Some(match dtype {
        DType::F32 => float::quant_f32,
        DType::F16 => float::quant_f16,
        DType::BF16 => float::quant_bf16,
        DType::Q4_0 => legacy::quant_q4_0,
        DType::Q4_1 => legacy::quant_q4_1,
        DType::Q5_0 => legacy::quant_q5_0,
        DType::Q5_1 => legacy::quant_q5_1,
        DType::Q8_0 => legacy::quant_q8_0,
        DType::Q8_1 => legacy::quant_q8_1,
        DType::Q8_K => kquants::quant_q8_k,
        DType::IQ4_NL => nonlinear::quant_iq4_nl,
        DType::MXFP4 => nonlinear::quant_mxfp4,
        _ => return None,
    })
}

/// Decodes `n` elements of `dtype` from `bytes` into `out[..n]`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let f = dequant_fn(dtype).ok_or(Error::UnsupportedType(dtype))?;
    let n = out.len();
    let need = dtype.row_bytes(n).ok_or_else(|| {
        Error::Shape(format!(
            "{n} elements is not a whole number of {dtype} blocks"
        ))
    })?;
    if bytes.len() < need {
        return Err(Error::Shape(format!(
            "{dtype}: {n} elements need {need} bytes, have {}",
            bytes.len()
        )));
    }
    f(&bytes[..need], out);
    Ok(())
}

/// Encodes `src` as `dtype` into `out`, which must hold exactly the encoded size.
pub fn quantize(dtype: DType, src: &[f32], out: &mut [u8]) -> Result<()> {
    let f = quant_fn(dtype).ok_or(Error::UnsupportedType(dtype))?;
    let need = dtype.row_bytes(src.len()).ok_or_else(|| {
        Error::Shape(format!(
            "{} elements is not a whole number of {dtype} blocks",
            src.len()
        ))
    })?;
    if out.len() != need {
        return Err(Error::Shape(format!(
            "{dtype}: output holds {} bytes, need {need}",
            out.len()
        )));
    }
    f(src, out);
    Ok(())
}

/// Convenience: decode to a fresh vector.
pub fn dequantize_to_vec(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut v = vec![0.0; n];
    dequantize(dtype, bytes, &mut v)?;
    Ok(v)
}

/// Rounds to nearest, ties away from zero, like C's `roundf`/`nearest_int` on these ranges.
#[inline(always)]
pub(crate) fn round_i(x: f32) -> i32 {
    x.round() as i32
}
