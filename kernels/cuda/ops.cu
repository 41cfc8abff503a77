// Row-wise and elementwise operations on f32 activations: norms, residual adds, scaling,
// gated activations, rotary embeddings, KV cache stores and row moves.
#include "common.cuh"

EG_KERNEL void rms_norm(const float* __restrict__ x, const float* __restrict__ w, float eps,
                        float* __restrict__ out, int cols) {
    const float* xr = x + (i64)blockIdx.x * cols;
    float* o = out + (i64)blockIdx.x * cols;
    float s = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += xr[i] * xr[i];
    s = eg_block_sum(s);
    const float scale = 1.0f / sqrtf(s / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = xr[i] * scale;
        o[i] = w ? v * w[i] : v;
    }
}

// Grid (rows, cols / group): each block normalises one group of one row in place.
EG_KERNEL void rms_norm_groups(float* __restrict__ x, const float* __restrict__ w, int group,
                               float eps, int cols) {
    const int off = blockIdx.y * group;
    float* xr = x + (i64)blockIdx.x * cols + off;
    float s = 0.0f;
    for (int i = threadIdx.x; i < group; i += blockDim.x) s += xr[i] * xr[i];
    s = eg_block_sum(s);
    const float scale = 1.0f / sqrtf(s / (float)group + eps);
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        const float v = xr[i] * scale;
        xr[i] = w ? v * w[off + i] : v;
    }
}

EG_KERNEL void add(float* __restrict__ dst, const float* __restrict__ src, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

EG_KERNEL void scale(float* __restrict__ x, float s, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// x[i] *= s[i / cols] (scale_rows) or x[i] += b[i % cols] (add_bias).
EG_KERNEL void scale_rows(float* __restrict__ x, const float* __restrict__ s, int cols, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s[i / cols];
}

EG_KERNEL void add_bias(float* __restrict__ x, const float* __restrict__ b, int cols, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += b[i % cols];
}

// tanh GELU evaluated as ggml's CPU table does: on the f16-rounded input, rounded to f16.
__device__ __forceinline__ float gelu_f16_table(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    const float h = eg_f16_to_f32(eg_f32_to_f16(x));
    const float g = (0.5f * h) * (1.0f + tanhf((0.7978846f * h) * fmaf(0.044715f * h, h, 1.0f)));
    return eg_f16_to_f32(eg_f32_to_f16(g));
}

// act: 0 SiLU, 1 GELU (tanh), 2 ReLU^2 (no gate), 3 clamped SwiGLU (alpha, limit).
EG_KERNEL void glu(int act, float alpha, float limit, float* __restrict__ gate,
                   const float* __restrict__ up, i64 n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    float r;
    switch (act) {
    case 0: r = g / (1.0f + expf(-g)) * up[i]; break;
    case 1: r = gelu_f16_table(g) * up[i]; break;
    case 2: { const float t = fmaxf(g, 0.0f); r = t * t; } break;
    default: {
        const float xg = fminf(g, limit);
        const float yu = fminf(fmaxf(up[i], -limit), limit);
        r = xg / (1.0f + expf(-alpha * xg)) * (yu + 1.0f);
    }
    }
    gate[i] = r;
}

// One thread per (token, head, rotated pair). mode 0: consecutive pairs, 1: NeoX halves.
// corr0/corr1: the YaRN correction range (pair indices), computed on the host.
EG_KERNEL void rope(float* __restrict__ x, const u32* __restrict__ pos,
                    const float* __restrict__ factors, int mode, int n_head, int head_dim,
                    int n_rot, float freq_base, float freq_scale, float ext_factor,
                    float attn_factor, float corr0, float corr1, int n_tokens) {
    const int half = n_rot / 2;
    const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (i64)n_tokens * n_head * half) return;
    const int i = (int)(t % half);
    const int h = (int)((t / half) % n_head);
    const int tok = (int)(t / ((i64)half * n_head));
    const float theta_base = (float)pos[tok] * powf(freq_base, -2.0f * (float)i / (float)n_rot);
    const float ff = factors ? factors[i] : 1.0f;
    const float extrap = theta_base / ff;
    const float interp = freq_scale * extrap;
    float mscale = attn_factor;
    float theta = interp;
    if (ext_factor != 0.0f) {
        const float y = ((float)i - corr0) / fmaxf(corr1 - corr0, 0.001f);
        const float ramp = 1.0f - fminf(fmaxf(y, 0.0f), 1.0f);
        const float mix = ramp * ext_factor;
        mscale *= 1.0f + 0.1f * logf(1.0f / freq_scale);
        theta = interp * (1.0f - mix) + extrap * mix;
    }
    const float c = cosf(theta) * mscale, s = sinf(theta) * mscale;
    float* row = x + ((i64)tok * n_head + h) * head_dim;
    const int a = mode == 0 ? 2 * i : i;
    const int b = mode == 0 ? 2 * i + 1 : i + half;
    const float x0 = row[a], x1 = row[b];
    row[a] = fmaf(x0, c, -(x1 * s));
    row[b] = fmaf(x0, s, x1 * c);
}

// Row i of src goes to row rows[i] of the cache (f32 or f16 bits).
EG_KERNEL void kv_store_f32(float* __restrict__ cache, const float* __restrict__ src,
                            const u32* __restrict__ rows, int cols) {
    const float* s = src + (i64)blockIdx.x * cols;
    float* d = cache + (i64)rows[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

EG_KERNEL void kv_store_f16(u16* __restrict__ cache, const float* __restrict__ src,
                            const u32* __restrict__ rows, int cols) {
    const float* s = src + (i64)blockIdx.x * cols;
    u16* d = cache + (i64)rows[blockIdx.x] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = eg_f32_to_f16(s[i]);
}

// dst[i] = src[rows[i]] (gather, scatter = 0) or dst[rows[i]] = src[i] (scatter = 1).
EG_KERNEL void move_rows(const float* __restrict__ src, const u32* __restrict__ rows,
                         float* __restrict__ dst, int cols, int scatter) {
    const i64 from = scatter ? blockIdx.x : rows[blockIdx.x];
    const i64 to = scatter ? rows[blockIdx.x] : blockIdx.x;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[to * cols + i] = src[from * cols + i];
}

// dst[t] = sum_j weights[t*k + j] * src[t*k + j], j in order.
EG_KERNEL void weighted_row_sum(const float* __restrict__ src, const float* __restrict__ weights,
                                int k, float* __restrict__ dst, int cols) {
    const i64 t = blockIdx.x;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < k; j++) s += weights[t * k + j] * src[(t * k + j) * cols + i];
        dst[t * cols + i] = s;
    }
}
