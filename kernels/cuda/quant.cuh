// Block formats as a table of decoders, the kernels' view of ggml's type traits.
//
// Every format is a struct with QK (elements per block), BYTES (bytes per block) and
// decode16(block, c, y): the 16 values at elements [16c, 16c + 16) of the block, c < QK/16.
// The matmul and embedding kernels are written once over this interface. Float formats
// use 16-element "blocks". These functions also compile as host C++, where the decoder
// tests check them against the engine's reference codecs.
#pragma once
#include "common.cuh"

EG_FN float eg_rd_f16(const u8* p) { return eg_f16_to_f32((u16)(p[0] | (p[1] << 8))); }

EG_FN u32 eg_rd_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

#ifdef EG_DEVICE
__constant__ i8 EG_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
__constant__ i8 EG_MXFP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
#else
static const i8 EG_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static const i8 EG_MXFP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
#endif

struct FmtF32 {
    static const int QK = 16, BYTES = 64;
    EG_FN static void decode16(const u8* b, int, float* y) {
        for (int l = 0; l < 16; l++) y[l] = eg_bits_to_f32(eg_rd_u32(b + 4 * l));
    }
};

struct FmtF16 {
    static const int QK = 16, BYTES = 32;
    EG_FN static void decode16(const u8* b, int, float* y) {
        for (int l = 0; l < 16; l++) y[l] = eg_rd_f16(b + 2 * l);
    }
};

struct FmtBF16 {
    static const int QK = 16, BYTES = 32;
    EG_FN static void decode16(const u8* b, int, float* y) {
        for (int l = 0; l < 16; l++) y[l] = eg_bits_to_f32(((u32)b[2 * l] | ((u32)b[2 * l + 1] << 8)) << 16);
    }
};

// Legacy 32-element formats: byte j of qs holds element j (low nibble) and j + 16 (high).
struct FmtQ4_0 {
    static const int QK = 32, BYTES = 18;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) y[l] = (float)(((b[2 + l] >> sh) & 15) - 8) * d;
    }
};

struct FmtQ4_1 {
    static const int QK = 32, BYTES = 20;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b), m = eg_rd_f16(b + 2);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) y[l] = (float)((b[4 + l] >> sh) & 15) * d + m;
    }
};

struct FmtQ5_0 {
    static const int QK = 32, BYTES = 22;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b);
        const u32 qh = eg_rd_u32(b + 2);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) {
            const int q = ((b[6 + l] >> sh) & 15) | (((qh >> (l + 16 * c)) & 1) << 4);
            y[l] = (float)(q - 16) * d;
        }
    }
};

struct FmtQ5_1 {
    static const int QK = 32, BYTES = 24;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b), m = eg_rd_f16(b + 2);
        const u32 qh = eg_rd_u32(b + 4);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) {
            const int q = ((b[8 + l] >> sh) & 15) | (((qh >> (l + 16 * c)) & 1) << 4);
            y[l] = (float)q * d + m;
        }
    }
};

struct FmtQ8_0 {
    static const int QK = 32, BYTES = 34;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b);
        for (int l = 0; l < 16; l++) y[l] = (float)(i8)b[2 + 16 * c + l] * d;
    }
};

struct FmtIQ4_NL {
    static const int QK = 32, BYTES = 18;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) y[l] = d * (float)EG_IQ4NL[(b[2 + l] >> sh) & 15];
    }
};

// 2^(e-128): half the E8M0 scale, matching the doubled FP4 table.
EG_FN float eg_e8m0_half(u8 e) {
    return eg_bits_to_f32(e < 2 ? (0x00200000u << e) : ((u32)(e - 1) << 23));
}

struct FmtMXFP4 {
    static const int QK = 32, BYTES = 17;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_e8m0_half(b[0]);
        const int sh = 4 * c;
        for (int l = 0; l < 16; l++) y[l] = (float)EG_MXFP4[(b[1 + l] >> sh) & 15] * d;
    }
};

// K-quants: 256-element super-blocks.
// Q2_K (84): scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
struct FmtQ2_K {
    static const int QK = 256, BYTES = 84;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b + 80), dmin = eg_rd_f16(b + 82);
        const int n = c / 8, shift = 2 * ((c % 8) / 2), half = c % 2;
        const u8 sc = b[c];
        const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
        const u8* q = b + 16 + 32 * n + 16 * half;
        for (int l = 0; l < 16; l++) y[l] = dl * (float)((q[l] >> shift) & 3) - ml;
    }
};

// Signed 6-bit scale `i` (0..16) of a Q3_K block, packed in 12 bytes.
EG_FN int eg_q3k_scale(const u8* s, int i) {
    const int lo = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
    const int hi = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// Q3_K (110): hmask[32], qs[64], scales[12], d.
struct FmtQ3_K {
    static const int QK = 256, BYTES = 110;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b + 108);
        const int n = c / 8, s = (c % 8) / 2, half = c % 2;
        const float dl = d * (float)eg_q3k_scale(b + 96, c);
        const u8 m = (u8)(1u << (4 * n + s));
        const u8* q = b + 32 + 32 * n + 16 * half;
        const u8* hm = b + 16 * half;
        for (int l = 0; l < 16; l++) {
            const int low = (q[l] >> (2 * s)) & 3;
            const int hi = (hm[l] & m) ? 0 : 4;
            y[l] = dl * (float)(low - hi);
        }
    }
};

// Scale and min of sub-block j (0..8) of Q4_K/Q5_K.
EG_FN void eg_scale_min_k4(int j, const u8* q, int* sc, int* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K and Q5_K: the scale and minimum of 16-element chunk c (sub-block 2j + hi), from
// d, dmin and the 6-bit packed scales at b + 4.
EG_FN void eg_k4_chunk_scale(const u8* b, int c, float* dl, float* ml) {
    const int j = c / 4, hi = (c % 4) / 2;
    int sc, mn;
    eg_scale_min_k4(2 * j + hi, b + 4, &sc, &mn);
    *dl = eg_rd_f16(b) * (float)sc;
    *ml = eg_rd_f16(b + 2) * (float)mn;
}

// Q4_K (144): d, dmin, scales[12], qs[128]; 64-element groups, low nibbles then high.
struct FmtQ4_K {
    static const int QK = 256, BYTES = 144;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const int j = c / 4, hi = (c % 4) / 2, part = c % 2;
        float dl, ml;
        eg_k4_chunk_scale(b, c, &dl, &ml);
        const u8* q = b + 16 + 32 * j + 16 * part;
        const int sh = 4 * hi;
        for (int l = 0; l < 16; l++) y[l] = dl * (float)((q[l] >> sh) & 15) - ml;
    }
};

// Q5_K (176): d, dmin, scales[12], qh[32], qs[128].
struct FmtQ5_K {
    static const int QK = 256, BYTES = 176;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const int j = c / 4, hi = (c % 4) / 2, part = c % 2;
        float dl, ml;
        eg_k4_chunk_scale(b, c, &dl, &ml);
        const u8* ql = b + 48 + 32 * j + 16 * part;
        const u8* qh = b + 16 + 16 * part;
        const u8 u = (u8)(1u << (2 * j + hi));
        const int sh = 4 * hi;
        for (int l = 0; l < 16; l++) {
            const int q = ((ql[l] >> sh) & 15) + ((qh[l] & u) ? 16 : 0);
            y[l] = dl * (float)q - ml;
        }
    }
};

// Q6_K (210): ql[128], qh[64], scales[16] (i8), d.
struct FmtQ6_K {
    static const int QK = 256, BYTES = 210;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b + 208);
        const int n = c / 8, r = c % 8, quarter = r / 2, l0 = 16 * (r % 2);
        const u8* ql = b + 64 * n + 32 * (quarter % 2);
        const u8* qh = b + 128 + 32 * n;
        const float dl = d * (float)(i8)b[192 + 8 * n + l0 / 16 + 2 * quarter];
        const int lsh = 4 * (quarter / 2), hsh = 2 * quarter;
        for (int i = 0; i < 16; i++) {
            const int l = l0 + i;
            const int q = (((ql[l] >> lsh) & 15) | (((qh[l] >> hsh) & 3) << 4)) - 32;
            y[i] = dl * (float)q;
        }
    }
};

// IQ4_XS (136): d, scales_h (u16), scales_l[4], qs[128]; 8 sub-blocks of 32.
struct FmtIQ4_XS {
    static const int QK = 256, BYTES = 136;
    EG_FN static void decode16(const u8* b, int c, float* y) {
        const float d = eg_rd_f16(b);
        const int ib = c / 2, sh = 4 * (c % 2);
        const u32 scales_h = (u32)b[2] | ((u32)b[3] << 8);
        const int lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 15;
        const int hi = (scales_h >> (2 * ib)) & 3;
        const float dl = d * (float)((lo | (hi << 4)) - 32);
        const u8* q = b + 8 + 16 * ib;
        for (int l = 0; l < 16; l++) y[l] = dl * (float)EG_IQ4NL[(q[l] >> sh) & 15];
    }
};

// Every format, for the kernels' instantiation tables: X(suffix, struct).
#define EG_FORMATS(X) \
    X(f32, FmtF32) X(f16, FmtF16) X(bf16, FmtBF16) X(q4_0, FmtQ4_0) X(q4_1, FmtQ4_1) \
    X(q5_0, FmtQ5_0) X(q5_1, FmtQ5_1) X(q8_0, FmtQ8_0) X(q2_k, FmtQ2_K) X(q3_k, FmtQ3_K) \
    X(q4_k, FmtQ4_K) X(q5_k, FmtQ5_K) X(q6_k, FmtQ6_K) X(iq4_nl, FmtIQ4_NL) \
    X(iq4_xs, FmtIQ4_XS) X(mxfp4, FmtMXFP4)
