//! The block formats as [`BlockDot`] implementations: how each unpacks a weight block, which
//! activation block it pairs with, and the order in which llama.cpp's x86 routine folds
//! their product into f32 (integer parts are exact, so only that order matters).
//!
//! * 32-element formats against Q8_0 ([`Q0`]: Q8_0, Q4_0, Q5_0, IQ4_NL, MXFP4), all sharing
//!   ggml's `vec_dot` epilogue: `acc += (d_w * d_a) * sum` in eight f32 lanes.
//! * 32-element formats with a minimum against Q8_1 ([`Q1`]: Q4_1, Q5_1).
//! * K-quants against Q8_K (256 elements): Q2_K, Q3_K, Q4_K (four llama.cpp epilogues),
//!   Q5_K, Q6_K (two), IQ4_XS.
//! * Float weights: F32 and F16.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use engine_core::quant::kquants::q3k_scale_words;
use engine_core::quant::nonlinear::{e8m0_to_f32_half, iq4xs_scale, KVALUES_IQ4NL, KVALUES_MXFP4};

use super::tile::BlockDot;
use crate::kernels::half_table::f16_to_f32;

// ---------------------------------------------------------------------------------------
// Helpers

/// The f16 at `p` (unaligned), through the table.
#[inline(always)]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    f16_to_f32((p as *const u16).read_unaligned())
}

#[inline(always)]
pub(super) unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// ggml's `hsum_float_8`: (low half + high half), then pairs, then the last two.
#[inline(always)]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
pub(super) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    hsum_epi32x4(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256(v, 1),
    ))
}

/// Unsigned bytes times signed bytes, summed in groups of four into eight i32 lanes.
#[inline(always)]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// 16 bytes of nibbles to 32 bytes: low nibbles in lanes 0..16, high nibbles in 16..32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0x0f))
}

/// 32 bits to 32 bytes: 0xFF where the bit is set, 0 elsewhere.
#[inline(always)]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let v = _mm256_shuffle_epi8(v, shuf);
    let v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64));
    _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1))
}

/// Looks 32 nibble codes up in a 16-entry signed table.
#[inline(always)]
unsafe fn lut_nibbles(table: &[i8; 16], p: *const u8) -> __m256i {
    let table = _mm_loadu_si128(table.as_ptr() as *const __m128i);
    let t = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(t, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(t, 4), m4));
    _mm256_set_m128i(hi, lo)
}

/// Sixteen i16 scales (one per 16 codes) as the eight vectors that multiply `vpmaddubsw`
/// results of 32 codes: vector `i` holds scale `2i` in lanes 0..8 and `2i + 1` in lanes
/// 8..16. Byte shuffles of the widened scales, instead of a broadcast per scale.
#[inline(always)]
unsafe fn scale_pairs(scales16: __m256i) -> [__m256i; 8] {
    let halves = [
        _mm256_permute2x128_si256(scales16, scales16, 0x00),
        _mm256_permute2x128_si256(scales16, scales16, 0x11),
    ];
    let mut out = [_mm256_setzero_si256(); 8];
    for (i, o) in out.iter_mut().enumerate() {
        // bytes of i16 lane 2i (mod 8) in the low 128 bits, of lane 2i + 1 in the high
        let b = 4 * (i as i16 % 4);
        let lo = _mm_set1_epi16(((b + 1) << 8) | b);
        let hi = _mm_set1_epi16(((b + 3) << 8) | (b + 2));
        *o = _mm256_shuffle_epi8(halves[i / 4], _mm256_set_m128i(hi, lo));
    }
    out
}

/// The eight scales and eight minimums of a Q4_K / Q5_K super-block (6 bits each, packed
/// in the 12 bytes at `p`; ggml's `get_scale_min_k4` for all eight at once), widened to
/// i16: scales in the low 128 bits, minimums in the high 128 bits.
#[inline(always)]
unsafe fn k4_scales_mins(p: *const u8) -> __m256i {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| (p.add(4 * i) as *const u32).read_unaligned();
    let (a, b, c) = (w(0), w(1), w(2));
    // groups 0..4: the low six bits of bytes 0..4 (scales) and 4..8 (minimums); groups
    // 4..8: a nibble of bytes 8..12 below the top two bits of bytes 0..4 / 4..8
    let scales_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mins_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    _mm256_cvtepu8_epi16(_mm_setr_epi32(
        (a & LOW6) as i32,
        scales_hi as i32,
        (b & LOW6) as i32,
        mins_hi as i32,
    ))
}

/// One i16 scale per 32 codes (`scales16`'s lanes 0..8) broadcast, one vector per group.
#[inline(always)]
unsafe fn scale_each(scales16: __m256i) -> [__m256i; 8] {
    let low = _mm256_permute2x128_si256(scales16, scales16, 0x00);
    let mut out = [_mm256_setzero_si256(); 8];
    for (g, o) in out.iter_mut().enumerate() {
        let b = 2 * g as i16;
        *o = _mm256_shuffle_epi8(low, _mm256_set1_epi16(((b + 1) << 8) | b));
    }
    out
}

/// The sum of four i32 lanes.
#[inline(always)]
unsafe fn hsum_epi32x4(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Q8_K's block scale.
#[inline(always)]
unsafe fn q8k_d(y: *const u8) -> f32 {
    (y as *const f32).read_unaligned()
}

/// Q8_K's sum of the 16 codes of group `i`.
#[inline(always)]
unsafe fn q8k_bsum(y: *const u8, i: usize) -> i32 {
    (y.add(260 + 2 * i) as *const i16).read_unaligned() as i32
}

// ---------------------------------------------------------------------------------------
// 32-element formats against Q8_0

/// The signed codes and scale of one 32-element block of a format multiplied with Q8_0.
pub(crate) trait Codes32 {
    /// Bytes per block.
    const BYTES: usize;
    /// The 32 codes as signed bytes.
    unsafe fn codes(x: *const u8) -> __m256i;
    /// The block scale.
    unsafe fn scale(x: *const u8) -> f32;
}

/// A 32-element block ready for the sign trick: `|q|`, `q` and the scale.
#[derive(Clone, Copy)]
pub(crate) struct SignedBlock {
    abs: __m256i,
    q: __m256i,
    d: f32,
}

/// A Q8_0 activation block.
#[derive(Clone, Copy)]
pub(crate) struct Q8Block {
    q: __m256i,
    d: f32,
}

/// A 32-element format against Q8_0 with ggml's epilogue.
pub(crate) struct Q0<C>(PhantomData<C>);

impl<C: Codes32> BlockDot for Q0<C> {
    const QK: usize = 32;
    const W_BYTES: usize = C::BYTES;
    const A_BYTES: usize = 34;
    type W = SignedBlock;
    type A = Q8Block;
    type Acc = __m256;

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> SignedBlock {
        let q = C::codes(x);
        SignedBlock {
            abs: _mm256_sign_epi8(q, q),
            q,
            d: C::scale(x),
        }
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8Block {
        Q8Block {
            q: load(y.add(2)),
            d: f16(y),
        }
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn step(acc: &mut __m256, w: &SignedBlock, a: &Q8Block) {
        let sy = _mm256_sign_epi8(a.q, w.q);
        let s = _mm256_madd_epi16(_mm256_maddubs_epi16(w.abs, sy), _mm256_set1_epi16(1));
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * a.d), _mm256_cvtepi32_ps(s), *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: __m256) -> f32 {
        hsum_ps(acc)
    }
}

/// A 32-element format against Q8_0 with the epilogue of llama.cpp's x86 kernels for
/// weights repacked eight rows at a time (Q4_0, IQ4_NL, MXFP4 with `rows % 8 == 0`): each
/// block's exact integer sum, then one f32 FMA per block, `sum * (d_w * d_a) + acc`. The
/// pair routine of [`super::rows8`]'s eight-rows-per-vector GEMM.
pub(crate) struct Q0Sum<C>(PhantomData<C>);

impl<C: Codes32> BlockDot for Q0Sum<C> {
    const QK: usize = 32;
    const W_BYTES: usize = C::BYTES;
    const A_BYTES: usize = 34;
    type W = SignedBlock;
    type A = Q8Block;
    type Acc = f32;

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> SignedBlock {
        <Q0<C> as BlockDot>::unpack(x)
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8Block {
        <Q0<C> as BlockDot>::load(y)
    }
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn step(acc: &mut f32, w: &SignedBlock, a: &Q8Block) {
        let sy = _mm256_sign_epi8(a.q, w.q);
        let s = _mm256_madd_epi16(_mm256_maddubs_epi16(w.abs, sy), _mm256_set1_epi16(1));
        *acc = (hsum_epi32(s) as f32).mul_add(w.d * a.d, *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: f32) -> f32 {
        acc
    }
}

/// Q8_0 codes: `d`, then 32 signed bytes.
pub(crate) struct Q8_0;
impl Codes32 for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        load(x.add(2))
    }
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        f16(x)
    }
}

/// Q4_0 codes: `d`, then nibbles minus 8.
pub(crate) struct Q4_0;
impl Codes32 for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles(x.add(2)), _mm256_set1_epi8(8))
    }
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        f16(x)
    }
}

/// Q5_0 codes: `d`, 32 high bits, nibbles; code = (nibble | high << 4) - 16.
pub(crate) struct Q5_0;
impl Codes32 for Q5_0 {
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        let qh = (x.add(2) as *const u32).read_unaligned();
        // nibble when the fifth bit is set, nibble | 0xF0 (= nibble - 16) otherwise
        let hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0xf0u8 as i8));
        _mm256_or_si256(nibbles(x.add(6)), hi)
    }
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        f16(x)
    }
}

/// IQ4_NL codes: `d`, nibbles looked up in the non-linear table.
pub(crate) struct Iq4Nl;
impl Codes32 for Iq4Nl {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        lut_nibbles(&KVALUES_IQ4NL, x.add(2))
    }
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        f16(x)
    }
}

/// MXFP4 codes: an E8M0 exponent, nibbles looked up in the FP4 table (values doubled, so
/// the scale is halved).
pub(crate) struct Mxfp4;
impl Codes32 for Mxfp4 {
    const BYTES: usize = 17;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        lut_nibbles(&KVALUES_MXFP4, x.add(1))
    }
    #[inline(always)]
    unsafe fn scale(x: *const u8) -> f32 {
        e8m0_to_f32_half(*x)
    }
}

// ---------------------------------------------------------------------------------------
// 32-element formats with a minimum, against Q8_1

/// The unsigned codes, scale and minimum of a Q4_1 / Q5_1 block.
pub(crate) trait Codes32Min {
    const BYTES: usize;
    unsafe fn codes(x: *const u8) -> __m256i;
}

#[derive(Clone, Copy)]
pub(crate) struct MinBlock {
    q: __m256i,
    d: f32,
    m: f32,
}

#[derive(Clone, Copy)]
pub(crate) struct Q81Block {
    q: __m256i,
    d: f32,
    s: f32,
}

/// Q4_1 / Q5_1 against Q8_1: `acc += (d_w * d_a) * sum` in eight lanes, `m_w * s_a` summed
/// separately and added at the end.
pub(crate) struct Q1<C>(PhantomData<C>);

impl<C: Codes32Min> BlockDot for Q1<C> {
    const QK: usize = 32;
    const W_BYTES: usize = C::BYTES;
    const A_BYTES: usize = 36;
    type W = MinBlock;
    type A = Q81Block;
    type Acc = (__m256, f32);

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> MinBlock {
        MinBlock {
            q: C::codes(x),
            d: f16(x),
            m: f16(x.add(2)),
        }
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q81Block {
        Q81Block {
            q: load(y.add(4)),
            d: f16(y),
            s: f16(y.add(2)),
        }
    }
    #[inline(always)]
    unsafe fn zero() -> (__m256, f32) {
        (_mm256_setzero_ps(), 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut (__m256, f32), w: &MinBlock, a: &Q81Block) {
        // `summs += m * s` in ggml's C, which GCC contracts to an FMA (`vfmadd231ss`)
        acc.1 = w.m.mul_add(a.s, acc.1);
        let s = dot_u8_i8(w.q, a.q);
        acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(w.d * a.d), _mm256_cvtepi32_ps(s), acc.0);
    }
    #[inline(always)]
    unsafe fn finish(acc: (__m256, f32)) -> f32 {
        hsum_ps(acc.0) + acc.1
    }
}

/// Q4_1: `d`, `m`, nibbles.
pub(crate) struct Q4_1;
impl Codes32Min for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        nibbles(x.add(4))
    }
}

/// Q5_1: `d`, `m`, 32 high bits, nibbles.
pub(crate) struct Q5_1;
impl Codes32Min for Q5_1 {
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn codes(x: *const u8) -> __m256i {
        let qh = (x.add(4) as *const u32).read_unaligned();
        _mm256_or_si256(
            nibbles(x.add(8)),
            _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)),
        )
    }
}

// ---------------------------------------------------------------------------------------
// K-quants against Q8_K

/// A Q8_K activation block, read in place (256 codes do not fit in registers).
#[derive(Clone, Copy)]
pub(crate) struct Q8kBlock {
    y: *const u8,
    d: f32,
}

impl Q8kBlock {
    #[inline(always)]
    unsafe fn new(y: *const u8) -> Q8kBlock {
        Q8kBlock { y, d: q8k_d(y) }
    }
    /// Codes `32 * i .. 32 * i + 32`.
    #[inline(always)]
    unsafe fn q(&self, i: usize) -> __m256i {
        load(self.y.add(4 + 32 * i))
    }
    #[inline(always)]
    unsafe fn bsum(&self, i: usize) -> i32 {
        q8k_bsum(self.y, i)
    }
    /// The code sums of the eight groups of 32, as i16 (at most 32 · 127 in magnitude).
    #[inline(always)]
    unsafe fn bsums32(&self) -> __m128i {
        let b = load(self.y.add(260));
        _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1))
    }
}

/// A Q4_K super-block unpacked: eight groups of 32 unsigned codes, their scales as i16
/// vectors, their eight minimums (i16), and the two f16 scales.
#[derive(Clone, Copy)]
pub(crate) struct Q4kBlock {
    q: [__m256i; 8],
    s: [__m256i; 8],
    m: __m128i,
    d: f32,
    dmin: f32,
}

/// Q4_K's unpacking, shared by its llama.cpp epilogues.
#[inline(always)]
unsafe fn q4k_unpack(x: *const u8) -> Q4kBlock {
    let m4 = _mm256_set1_epi8(0x0f);
    let sm = k4_scales_mins(x.add(4));
    let mut b = Q4kBlock {
        q: [_mm256_setzero_si256(); 8],
        s: scale_each(sm),
        m: _mm256_extracti128_si256(sm, 1),
        d: f16(x),
        dmin: f16(x.add(2)),
    };
    for j in 0..4 {
        let q = load(x.add(16 + 32 * j));
        b.q[2 * j] = _mm256_and_si256(q, m4);
        b.q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    b
}

/// Q4_K's exact products per 64 elements (i32 lanes, ggml's layout) and minimum
/// corrections per 64 elements (`m[2u]*b[2u] + m[2u+1]*b[2u+1]` over 32-element sums, one
/// i32 lane each).
#[inline(always)]
unsafe fn q4k_groups(w: &Q4kBlock, a: &Q8kBlock) -> ([__m256i; 4], __m128i) {
    let mut prod = [_mm256_setzero_si256(); 4];
    for j in 0..4 {
        let lo = _mm256_madd_epi16(w.s[2 * j], _mm256_maddubs_epi16(w.q[2 * j], a.q(2 * j)));
        let hi = _mm256_madd_epi16(
            w.s[2 * j + 1],
            _mm256_maddubs_epi16(w.q[2 * j + 1], a.q(2 * j + 1)),
        );
        prod[j] = _mm256_add_epi32(lo, hi);
    }
    (prod, _mm_madd_epi16(w.m, a.bsums32()))
}

#[inline(always)]
unsafe fn sum4(v: [__m256i; 4]) -> __m256i {
    // ggml adds the groups in order
    let s = _mm256_add_epi32(v[0], v[1]);
    let s = _mm256_add_epi32(s, v[2]);
    _mm256_add_epi32(s, v[3])
}

/// Which of llama.cpp's Q4_K epilogues a [`Q4k`] reproduces.
pub(crate) trait Q4kEpilogue {
    type Acc: Copy;
    unsafe fn zero() -> Self::Acc;
    unsafe fn step(acc: &mut Self::Acc, w: &Q4kBlock, a: &Q8kBlock);
    unsafe fn finish(acc: Self::Acc) -> f32;
}

/// Q4_K against Q8_K with the epilogue `E`.
pub(crate) struct Q4k<E>(PhantomData<E>);

impl<E: Q4kEpilogue> BlockDot for Q4k<E> {
    const QK: usize = 256;
    const W_BYTES: usize = 144;
    const A_BYTES: usize = 292;
    type W = Q4kBlock;
    type A = Q8kBlock;
    type Acc = E::Acc;
    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> Q4kBlock {
        q4k_unpack(x)
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> E::Acc {
        E::zero()
    }
    #[inline(always)]
    unsafe fn step(acc: &mut E::Acc, w: &Q4kBlock, a: &Q8kBlock) {
        E::step(acc, w, a)
    }
    #[inline(always)]
    unsafe fn finish(acc: E::Acc) -> f32 {
        E::finish(acc)
    }
}

/// ggml's `vec_dot`: eight f32 lanes for the products, four for the minimums.
pub(crate) struct VecDot;
impl Q4kEpilogue for VecDot {
    type Acc = (__m256, __m128);
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (_mm256_setzero_ps(), _mm_setzero_ps())
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q4kBlock, a: &Q8kBlock) {
        let d = a.d * w.d;
        let dmin = -a.d * w.dmin;
        let (prod, mins) = q4k_groups(w, a);
        acc.1 = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins), acc.1);
        acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sum4(prod)), acc.0);
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        let m = _mm_add_ps(acc.1, _mm_movehl_ps(acc.1, acc.1));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        hsum_ps(acc.0) + _mm_cvtss_f32(m)
    }
}

/// ggml's repacked x86 GEMV: one FMA per super-block for the products and one for the
/// minimums, subtracted at the end.
pub(crate) struct RepackGemv;
impl Q4kEpilogue for RepackGemv {
    type Acc = (f32, f32);
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (0.0, 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q4kBlock, a: &Q8kBlock) {
        let (prod, mins) = q4k_groups(w, a);
        let summ = hsum_epi32x4(mins);
        acc.0 = (hsum_epi32(sum4(prod)) as f32).mul_add(w.d * a.d, acc.0);
        acc.1 = (summ as f32).mul_add(w.dmin * a.d, acc.1);
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        acc.0 - acc.1
    }
}

/// ggml's repacked x86 GEMM: one FMA per 64 elements.
pub(crate) struct RepackGemm;
impl Q4kEpilogue for RepackGemm {
    type Acc = (f32, f32);
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (0.0, 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q4kBlock, a: &Q8kBlock) {
        let (d, dmin) = (w.d * a.d, w.dmin * a.d);
        let (prod, mins) = q4k_groups(w, a);
        let mut m = [0i32; 4];
        _mm_storeu_si128(m.as_mut_ptr() as *mut __m128i, mins);
        for j in 0..4 {
            acc.0 = (hsum_epi32(prod[j]) as f32).mul_add(d, acc.0);
            acc.1 = (m[j] as f32).mul_add(dmin, acc.1);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        acc.0 - acc.1
    }
}

/// ggml's tiled K-quant kernel: per super-block `fma(d * s1 - dmin * s2, d_a, acc)`.
pub(crate) struct Tiled;
impl Q4kEpilogue for Tiled {
    type Acc = f32;
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn step(acc: &mut f32, w: &Q4kBlock, a: &Q8kBlock) {
        let (prod, mins) = q4k_groups(w, a);
        let s2 = hsum_epi32x4(mins) as f32;
        let res = (-w.dmin).mul_add(s2, w.d * hsum_epi32(sum4(prod)) as f32);
        *acc = res.mul_add(a.d, *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: f32) -> f32 {
        acc
    }
}

/// A Q5_K super-block unpacked: as Q4_K with five-bit codes.
pub(crate) struct Q5k;
impl BlockDot for Q5k {
    const QK: usize = 256;
    const W_BYTES: usize = 176;
    const A_BYTES: usize = 292;
    type W = Q4kBlock;
    type A = Q8kBlock;
    type Acc = (__m256, f32);

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> Q4kBlock {
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let hbits = load(x.add(16));
        let sm = k4_scales_mins(x.add(4));
        let mut b = Q4kBlock {
            q: [_mm256_setzero_si256(); 8],
            s: scale_each(sm),
            m: _mm256_extracti128_si256(sm, 1),
            d: f16(x),
            dmin: f16(x.add(2)),
        };
        for j in 0..4 {
            let shift = _mm_cvtsi32_si128(2 * j as i32);
            let shift1 = _mm_cvtsi32_si128(2 * j as i32 + 1);
            let h_lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, shift), one), 4);
            let h_hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hbits, shift1), one), 4);
            let q = load(x.add(48 + 32 * j));
            b.q[2 * j] = _mm256_or_si256(_mm256_and_si256(q, m4), h_lo);
            b.q[2 * j + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), h_hi);
        }
        b
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (_mm256_setzero_ps(), 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q4kBlock, a: &Q8kBlock) {
        let (prod, mins) = q4k_groups(w, a);
        let summ = hsum_epi32x4(mins);
        acc.0 = _mm256_fmadd_ps(
            _mm256_set1_ps(a.d * w.d),
            _mm256_cvtepi32_ps(sum4(prod)),
            acc.0,
        );
        // `summs += dmin * sum` in ggml's C (`dmin = -d_a * dmin_w`), contracted to an FMA by
        // GCC; kept here with the opposite sign and subtracted at the end
        acc.1 = (summ as f32).mul_add(a.d * w.dmin, acc.1);
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum_ps(acc.0) - acc.1
    }
}

/// A Q6_K super-block unpacked: eight groups of 32 unsigned codes (0..63) with their pairs
/// of i8 scales, the sixteen scales widened (for the `-32` offset), and `d`.
#[derive(Clone, Copy)]
pub(crate) struct Q6kBlock {
    q: [__m256i; 8],
    s: [__m256i; 8],
    scales16: __m256i,
    d: f32,
}

/// Q6_K in one of llama.cpp's two x86 epilogues: `vec_dot` (eight f32 lanes) or, with
/// `TILED`, the tiled K-quant kernel (exact total, then `fma(d_w * s, d_a, acc)`). The codes
/// are multiplied unsigned and the offset removed per i32 lane, as ggml's x86 kernel does.
pub(crate) struct Q6k<const TILED: bool>;

impl<const TILED: bool> BlockDot for Q6k<TILED> {
    const QK: usize = 256;
    const W_BYTES: usize = 210;
    const A_BYTES: usize = 292;
    type W = Q6kBlock;
    type A = Q8kBlock;
    type Acc = (__m256, f32);

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> Q6kBlock {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(0x03);
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(192) as *const __m128i));
        let mut b = Q6kBlock {
            q: [_mm256_setzero_si256(); 8],
            s: scale_pairs(scales16),
            scales16,
            d: f16(x.add(208)),
        };
        for chunk in 0..2 {
            let ql = x.add(64 * chunk);
            let qh = load(x.add(128 + 32 * chunk));
            let l0 = load(ql);
            let l1 = load(ql.add(32));
            let hi = |s: i32| {
                let h = match s {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            let q = &mut b.q[4 * chunk..4 * chunk + 4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), hi(0));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), hi(2));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), hi(4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), hi(6));
        }
        b
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (_mm256_setzero_ps(), 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q6kBlock, a: &Q8kBlock) {
        let bsums = load(a.y.add(260));
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, w.scales16), 5);
        let mut isum = _mm256_setzero_si256();
        for i in 0..8 {
            let p = _mm256_maddubs_epi16(w.q[i], a.q(i));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(w.s[i], p));
        }
        isum = _mm256_sub_epi32(isum, offset);
        if TILED {
            acc.1 = (w.d * hsum_epi32(isum) as f32).mul_add(a.d, acc.1);
        } else {
            acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(a.d * w.d), _mm256_cvtepi32_ps(isum), acc.0);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        if TILED {
            acc.1
        } else {
            hsum_ps(acc.0)
        }
    }
}

/// A super-block of signed codes with per-16 i16 scale pairs (Q3_K) or per-32 i16 scales
/// (IQ4_XS): `|q|`, `q` for the sign trick.
#[derive(Clone, Copy)]
pub(crate) struct SignedKBlock {
    abs: [__m256i; 8],
    q: [__m256i; 8],
    s: [__m256i; 8],
    d: f32,
}

/// Q3_K against Q8_K (`vec_dot`'s eight f32 lanes).
pub(crate) struct Q3k;
impl BlockDot for Q3k {
    const QK: usize = 256;
    const W_BYTES: usize = 110;
    const A_BYTES: usize = 292;
    type W = SignedKBlock;
    type A = Q8kBlock;
    type Acc = __m256;

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> SignedKBlock {
        let xs = std::slice::from_raw_parts(x, 110);
        let w = q3k_scale_words(&xs[96..108]);
        let scales = _mm_sub_epi8(
            _mm_setr_epi32(w[0] as i32, w[1] as i32, w[2] as i32, w[3] as i32),
            _mm_set1_epi8(32),
        );
        let m3 = _mm256_set1_epi8(3);
        let four = _mm256_set1_epi8(4);
        let hm = load(x);
        let mut b = SignedKBlock {
            abs: [_mm256_setzero_si256(); 8],
            q: [_mm256_setzero_si256(); 8],
            s: scale_pairs(_mm256_cvtepi8_epi16(scales)),
            d: f16(x.add(108)),
        };
        for chunk in 0..2 {
            let q = load(x.add(32 + 32 * chunk));
            for j in 0..4 {
                let i = 4 * chunk + j;
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let bit = _mm256_set1_epi8((1u8 << i) as i8);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit);
                // code = low - 4 where the high bit is clear
                let c = _mm256_sub_epi8(low, _mm256_andnot_si256(set, four));
                b.q[i] = c;
                b.abs[i] = _mm256_sign_epi8(c, c);
            }
        }
        b
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn step(acc: &mut __m256, w: &SignedKBlock, a: &Q8kBlock) {
        let mut isum = _mm256_setzero_si256();
        for i in 0..8 {
            let p = _mm256_maddubs_epi16(w.abs[i], _mm256_sign_epi8(a.q(i), w.q[i]));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(w.s[i], p));
        }
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(a.d * w.d), _mm256_cvtepi32_ps(isum), *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: __m256) -> f32 {
        hsum_ps(acc)
    }
}

/// IQ4_XS against Q8_K: exact total per super-block, then `sum += (d_a * d_w) * total`.
pub(crate) struct Iq4Xs;
impl BlockDot for Iq4Xs {
    const QK: usize = 256;
    const W_BYTES: usize = 136;
    const A_BYTES: usize = 292;
    type W = SignedKBlock;
    type A = Q8kBlock;
    type Acc = f32;

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> SignedKBlock {
        let xs = std::slice::from_raw_parts(x, 136);
        let scales_h = u16::from_le_bytes([xs[2], xs[3]]);
        let mut b = SignedKBlock {
            abs: [_mm256_setzero_si256(); 8],
            q: [_mm256_setzero_si256(); 8],
            s: [_mm256_setzero_si256(); 8],
            d: f16(x),
        };
        for i in 0..8 {
            let c = lut_nibbles(&KVALUES_IQ4NL, x.add(8 + 16 * i));
            b.q[i] = c;
            b.abs[i] = _mm256_sign_epi8(c, c);
            b.s[i] = _mm256_set1_epi16(iq4xs_scale(scales_h, &xs[4..8], i) as i16);
        }
        b
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn step(acc: &mut f32, w: &SignedKBlock, a: &Q8kBlock) {
        let mut isum = _mm256_setzero_si256();
        for i in 0..8 {
            let p = _mm256_maddubs_epi16(w.abs[i], _mm256_sign_epi8(a.q(i), w.q[i]));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, w.s[i]));
        }
        *acc += a.d * w.d * hsum_epi32(isum) as f32;
    }
    #[inline(always)]
    unsafe fn finish(acc: f32) -> f32 {
        acc
    }
}

/// A Q2_K super-block unpacked: codes 0..3, i16 scale pairs, minimums, `d`, `dmin`.
#[derive(Clone, Copy)]
pub(crate) struct Q2kBlock {
    q: [__m256i; 8],
    s: [__m256i; 8],
    m: [i32; 16],
    d: f32,
    dmin: f32,
}

/// Q2_K against Q8_K (`vec_dot`: eight f32 lanes, minimums summed apart).
pub(crate) struct Q2k;
impl BlockDot for Q2k {
    const QK: usize = 256;
    const W_BYTES: usize = 84;
    const A_BYTES: usize = 292;
    type W = Q2kBlock;
    type A = Q8kBlock;
    type Acc = (__m256, f32);

    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> Q2kBlock {
        let m3 = _mm256_set1_epi8(3);
        let low = _mm_and_si128(_mm_loadu_si128(x as *const __m128i), _mm_set1_epi8(0x0f));
        let mut b = Q2kBlock {
            q: [_mm256_setzero_si256(); 8],
            s: scale_pairs(_mm256_cvtepu8_epi16(low)),
            m: [0; 16],
            d: f16(x.add(80)),
            dmin: f16(x.add(82)),
        };
        for (s, m) in b.m.iter_mut().enumerate() {
            *m = (*x.add(s) >> 4) as i32;
        }
        for chunk in 0..2 {
            let q = load(x.add(16 + 32 * chunk));
            for j in 0..4 {
                let i = 4 * chunk + j;
                b.q[i] = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
            }
        }
        b
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> Q8kBlock {
        Q8kBlock::new(y)
    }
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        (_mm256_setzero_ps(), 0.0)
    }
    #[inline(always)]
    unsafe fn step(acc: &mut Self::Acc, w: &Q2kBlock, a: &Q8kBlock) {
        let mut summ = 0i32;
        for (s, m) in w.m.iter().enumerate() {
            summ += m * a.bsum(s);
        }
        let mut isum = _mm256_setzero_si256();
        for i in 0..8 {
            let p = _mm256_maddubs_epi16(w.q[i], a.q(i));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(w.s[i], p));
        }
        acc.0 = _mm256_fmadd_ps(_mm256_set1_ps(a.d * w.d), _mm256_cvtepi32_ps(isum), acc.0);
        acc.1 += a.d * w.dmin * summ as f32;
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum_ps(acc.0) - acc.1
    }
}

// ---------------------------------------------------------------------------------------
// Float weights

/// F32 rows against F32 activations, 32 elements at a time in four accumulators.
pub(crate) struct F32;
impl BlockDot for F32 {
    const QK: usize = 32;
    const W_BYTES: usize = 128;
    const A_BYTES: usize = 128;
    type W = [__m256; 4];
    type A = [__m256; 4];
    type Acc = [__m256; 4];
    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> [__m256; 4] {
        let p = x as *const f32;
        let mut v = [_mm256_setzero_ps(); 4];
        for (j, v) in v.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(p.add(8 * j));
        }
        v
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> [__m256; 4] {
        Self::unpack(y)
    }
    #[inline(always)]
    unsafe fn zero() -> [__m256; 4] {
        [_mm256_setzero_ps(); 4]
    }
    #[inline(always)]
    unsafe fn step(acc: &mut [__m256; 4], w: &[__m256; 4], a: &[__m256; 4]) {
        for i in 0..4 {
            acc[i] = _mm256_fmadd_ps(w[i], a[i], acc[i]);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: [__m256; 4]) -> f32 {
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// F16 rows against F16 activations, 16 elements at a time in two accumulators.
pub(crate) struct F16;
impl BlockDot for F16 {
    const QK: usize = 16;
    const W_BYTES: usize = 32;
    const A_BYTES: usize = 32;
    type W = [__m256; 2];
    type A = [__m256; 2];
    type Acc = [__m256; 2];
    #[inline(always)]
    unsafe fn unpack(x: *const u8) -> [__m256; 2] {
        let mut v = [_mm256_setzero_ps(); 2];
        for (j, v) in v.iter_mut().enumerate() {
            *v = _mm256_cvtph_ps(_mm_loadu_si128(x.add(16 * j) as *const __m128i));
        }
        v
    }
    #[inline(always)]
    unsafe fn load(y: *const u8) -> [__m256; 2] {
        Self::unpack(y)
    }
    #[inline(always)]
    unsafe fn zero() -> [__m256; 2] {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn step(acc: &mut [__m256; 2], w: &[__m256; 2], a: &[__m256; 2]) {
        for i in 0..2 {
            acc[i] = _mm256_fmadd_ps(w[i], a[i], acc[i]);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: [__m256; 2]) -> f32 {
        hsum_ps(_mm256_add_ps(acc[0], acc[1]))
    }
}
