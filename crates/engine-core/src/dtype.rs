//! Element and block types: every ggml tensor type, with its id, name and block geometry.
//!
//! This is the type-traits table of the engine (after ggml's `type_traits`): one row per
//! type, saying how many elements a block holds and how many bytes it takes. Codecs live in
//! [`crate::quant`]; backends attach their own kernels to the same [`DType`] keys.

use std::fmt;

/// A ggml tensor type. The discriminant is the id stored in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum DType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// 4-bit, blocks of 32, one f16 scale.
    Q4_0 = 2,
    /// 4-bit, blocks of 32, f16 scale and minimum.
    Q4_1 = 3,
    /// 5-bit, blocks of 32, one f16 scale.
    Q5_0 = 6,
    /// 5-bit, blocks of 32, f16 scale and minimum.
    Q5_1 = 7,
    /// 8-bit, blocks of 32, one f16 scale.
    Q8_0 = 8,
    /// 8-bit, blocks of 32, f16 scale and f16 scaled sum (activation type).
    Q8_1 = 9,
    /// 2-bit K-quant, super-blocks of 256.
    Q2_K = 10,
    /// 3-bit K-quant, super-blocks of 256.
    Q3_K = 11,
    /// 4-bit K-quant, super-blocks of 256.
    Q4_K = 12,
    /// 5-bit K-quant, super-blocks of 256.
    Q5_K = 13,
    /// 6-bit K-quant, super-blocks of 256.
    Q6_K = 14,
    /// 8-bit K-quant with f32 scale and block sums (activation type).
    Q8_K = 15,
    /// 2.06-bit importance quant.
    IQ2_XXS = 16,
    /// 2.31-bit importance quant.
    IQ2_XS = 17,
    /// 3.06-bit importance quant.
    IQ3_XXS = 18,
    /// 1.56-bit importance quant.
    IQ1_S = 19,
    /// 4-bit non-linear, blocks of 32.
    IQ4_NL = 20,
    /// 3.44-bit importance quant.
    IQ3_S = 21,
    /// 2.5-bit importance quant.
    IQ2_S = 22,
    /// 4.25-bit non-linear, super-blocks of 256.
    IQ4_XS = 23,
    /// 8-bit integer.
    I8 = 24,
    /// 16-bit integer.
    I16 = 25,
    /// 32-bit integer.
    I32 = 26,
    /// 64-bit integer.
    I64 = 27,
    /// 64-bit float.
    F64 = 28,
    /// 1.75-bit importance quant.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary, 1.69 bits.
    TQ1_0 = 34,
    /// Ternary, 2.06 bits.
    TQ2_0 = 35,
    /// OCP microscaling FP4 (E2M1 values, E8M0 shared exponent), blocks of 32.
    MXFP4 = 39,
}

/// Static facts about one [`DType`].
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    /// The type.
    pub dtype: DType,
    /// Name as ggml prints it (`q4_K`, `f16`, ...), upper-cased like llama.cpp's file types.
    pub name: &'static str,
    /// Elements per block (1 for plain scalar types).
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
    /// True for block-quantized types.
    pub quantized: bool,
}

macro_rules! type_table {
    ($( $t:ident => ($name:expr, $bs:expr, $ts:expr, $q:expr) ),* $(,)?) => {
        /// Every type, in id order.
        pub const ALL_TYPES: &[DType] = &[$(DType::$t),*];

        impl DType {
            /// The type's row in the traits table.
            pub const fn info(self) -> TypeInfo {
                match self {
                    $(DType::$t => TypeInfo { dtype: DType::$t, name: $name, block_size: $bs, type_size: $ts, quantized: $q },)*
                }
            }

            /// Looks up a type by its GGUF/ggml id.
            pub const fn from_id(id: u32) -> Option<DType> {
                $(if id == DType::$t as u32 { return Some(DType::$t); })*
                None
            }
        }
    };
}

type_table! {
    F32 => ("F32", 1, 4, false),
    F16 => ("F16", 1, 2, false),
    Q4_0 => ("Q4_0", 32, 18, true),
    Q4_1 => ("Q4_1", 32, 20, true),
    Q5_0 => ("Q5_0", 32, 22, true),
    Q5_1 => ("Q5_1", 32, 24, true),
    Q8_0 => ("Q8_0", 32, 34, true),
    Q8_1 => ("Q8_1", 32, 36, true),
    Q2_K => ("Q2_K", 256, 84, true),
    Q3_K => ("Q3_K", 256, 110, true),
    Q4_K => ("Q4_K", 256, 144, true),
    Q5_K => ("Q5_K", 256, 176, true),
    Q6_K => ("Q6_K", 256, 210, true),
    Q8_K => ("Q8_K", 256, 292, true),
    IQ2_XXS => ("IQ2_XXS", 256, 66, true),
    IQ2_XS => ("IQ2_XS", 256, 74, true),
    IQ3_XXS => ("IQ3_XXS", 256, 98, true),
    IQ1_S => ("IQ1_S", 256, 50, true),
    IQ4_NL => ("IQ4_NL", 32, 18, true),
    IQ3_S => ("IQ3_S", 256, 110, true),
    IQ2_S => ("IQ2_S", 256, 82, true),
    IQ4_XS => ("IQ4_XS", 256, 136, true),
    I8 => ("I8", 1, 1, false),
    I16 => ("I16", 1, 2, false),
    I32 => ("I32", 1, 4, false),
    I64 => ("I64", 1, 8, false),
    F64 => ("F64", 1, 8, false),
    IQ1_M => ("IQ1_M", 256, 56, true),
    BF16 => ("BF16", 1, 2, false),
    TQ1_0 => ("TQ1_0", 256, 54, true),
    TQ2_0 => ("TQ2_0", 256, 66, true),
    MXFP4 => ("MXFP4", 32, 17, true),
}

impl DType {
    /// Name as llama.cpp prints it.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        self.info().block_size
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.info().type_size
    }

    /// True for block-quantized types.
    pub const fn is_quantized(self) -> bool {
        self.info().quantized
    }

    /// Bytes taken by a row of `n` elements, or `None` when `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let info = self.info();
        if !n.is_multiple_of(info.block_size) {
            return None;
        }
        (n / info.block_size).checked_mul(info.type_size)
    }

    /// Parses a type name such as `q4_k`, `Q8_0` or `f16` (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bits per weight, as llama.cpp reports them.
    pub fn bits_per_weight(self) -> f64 {
        let info = self.info();
        info.type_size as f64 * 8.0 / info.block_size as f64
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for &t in ALL_TYPES {
            assert_eq!(DType::from_id(t as u32), Some(t));
            assert_eq!(DType::from_name(t.name()), Some(t));
        }
        assert_eq!(DType::from_id(4), None);
        assert_eq!(DType::from_id(1000), None);
    }

    #[test]
    fn row_bytes_checks_blocks() {
        assert_eq!(DType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(DType::Q4_K.row_bytes(640), None);
        assert_eq!(DType::Q8_0.row_bytes(640), Some(680));
        assert_eq!(DType::F32.row_bytes(3), Some(12));
        assert_eq!(DType::F32.row_bytes(usize::MAX), None);
    }
}
