// Matrix products over every block format: one generic kernel, instantiated per format.
//
// y[r][row] = sum_k x[r][k] * W[row][k]. A warp owns one weight row and up to MM_COLS
// activation rows: each lane decodes 16-element chunks of the row once and applies them
// to all of its activation rows, so a prefill batch reads the weights n/MM_COLS times.
// Accumulation is in f32 on decoded weights (no int8 dot products yet).
#include "common.cuh"
#include "quant.cuh"

#define MM_COLS 8

template <class F>
__device__ __forceinline__ void mm_impl(const u8* __restrict__ w, i64 row_bytes,
                                        const float* __restrict__ x, float* __restrict__ y,
                                        int n, int m, int k) {
    const int lane = threadIdx.x % EG_WARP;
    const int warp = threadIdx.x / EG_WARP;
    const int row = blockIdx.x * (blockDim.x / EG_WARP) + warp;
    const int r0 = blockIdx.y * MM_COLS;
    if (row >= m) return;
    const int nr = min(MM_COLS, n - r0);
    const u8* wr = w + (i64)row * row_bytes;
    const int per_block = F::QK / 16;
    const int chunks = k / 16;
    float acc[MM_COLS];
#pragma unroll
    for (int r = 0; r < MM_COLS; r++) acc[r] = 0.0f;
    for (int c = lane; c < chunks; c += EG_WARP) {
        float v[16];
        F::decode16(wr + (i64)(c / per_block) * F::BYTES, c % per_block, v);
#pragma unroll
        for (int r = 0; r < MM_COLS; r++) {
            if (r < nr) {
                const float4* xr = (const float4*)(x + (i64)(r0 + r) * k + 16 * c);
                float s = 0.0f;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const float4 t = xr[q];
                    s += v[4 * q] * t.x + v[4 * q + 1] * t.y + v[4 * q + 2] * t.z + v[4 * q + 3] * t.w;
                }
                acc[r] += s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < MM_COLS; r++) {
        if (r < nr) {
            const float s = eg_warp_sum(acc[r]);
            if (lane == 0) y[(i64)(r0 + r) * m + row] = s;
        }
    }
}

// out[i] = decoded row ids[i] of the table.
template <class F>
__device__ __forceinline__ void embed_impl(const u8* __restrict__ table, i64 row_bytes,
                                           const u32* __restrict__ ids, float* __restrict__ out,
                                           int k) {
    const u8* src = table + (i64)ids[blockIdx.x] * row_bytes;
    float* dst = out + (i64)blockIdx.x * k;
    const int per_block = F::QK / 16;
    for (int c = threadIdx.x; c < k / 16; c += blockDim.x) {
        F::decode16(src + (i64)(c / per_block) * F::BYTES, c % per_block, dst + 16 * c);
    }
}

#define EG_MM_KERNELS(name, F)                                                                 \
    EG_KERNEL void matmul_##name(const u8* w, i64 row_bytes, const float* x, float* y, int n,  \
                                 int m, int k) {                                               \
        mm_impl<F>(w, row_bytes, x, y, n, m, k);                                               \
    }                                                                                          \
    EG_KERNEL void embed_##name(const u8* table, i64 row_bytes, const u32* ids, float* out,    \
                                int k) {                                                       \
        embed_impl<F>(table, row_bytes, ids, out, k);                                          \
    }

EG_FORMATS(EG_MM_KERNELS)
