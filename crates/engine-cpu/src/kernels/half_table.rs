//! f16 → f32 by table lookup: 64 Ki entries computed at compile time.
//!
//! Kernels convert one f16 scale per block. A table load costs no arithmetic unit, which
//! matters on CPUs whose vector ALUs are the bottleneck, and avoids the false register
//! dependencies a single-lane `vcvtph2ps` can drag into a loop. The values are exactly the
//! IEEE conversions (checked against the `half` crate in the tests).

/// Bits of the f32 equal to the f16 with bits `h`.
const fn f16_bits_to_f32_bits(h: u16) -> u32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    if exp == 0 {
        if man == 0 {
            return sign;
        }
        // subnormal: shift the mantissa up until its leading bit is the implicit one
        let mut e: i32 = -14;
        let mut m = man;
        while m & 0x400 == 0 {
            m <<= 1;
            e -= 1;
        }
        return sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13);
    }
    if exp == 31 {
        return sign | 0x7f80_0000 | (man << 13);
    }
    sign | ((exp + 112) << 23) | (man << 13)
}

/// `F16_TO_F32[h]` is the f16 with bits `h` as an f32.
pub static F16_TO_F32: [f32; 65536] = {
    let mut t = [0.0f32; 65536];
    let mut i = 0;
    while i < 65536 {
        t[i] = f32::from_bits(f16_bits_to_f32_bits(i as u16));
        i += 1;
    }
    t
};

/// The f16 with bits `h` as an f32.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    F16_TO_F32[h as usize]
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_the_ieee_conversion() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = super::f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }
}
