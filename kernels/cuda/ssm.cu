// Mamba-2 recurrent operators with per-sequence state: the causal depthwise convolution
// (plus bias and SiLU) and the selective scan. runs: (slot, len, fresh, first row) per run.
#include "common.cuh"

// Grid (runs, ceil(channels / blockDim)): one thread per channel walks the run's rows.
EG_KERNEL void ssm_conv(const float* __restrict__ x, const float* __restrict__ w,
                        const float* __restrict__ b, float* __restrict__ state,
                        const u32* __restrict__ runs, float* __restrict__ out, int ch, int dc) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= ch) return;
    const u32* r = runs + 4 * blockIdx.x;
    const u32 slot = r[0], len = r[1], fresh = r[2], first = r[3];
    const int h = dc - 1;
    float* hist = state + (i64)slot * h * ch + (i64)c * h;
    if (fresh)
        for (int j = 0; j < h; j++) hist[j] = 0.0f;
    const float* wc = w + (i64)c * dc;
    for (u32 t = 0; t < len; t++) {
        const i64 row = first + t;
        const float xv = x[row * ch + c];
        float sum = 0.0f;
        for (int j = 0; j < h; j++) sum += hist[j] * wc[j];
        sum += xv * wc[h];
        for (int j = 0; j + 1 < h; j++) hist[j] = hist[j + 1];
        if (h > 0) hist[h - 1] = xv;
        if (b) sum += b[c];
        out[row * ch + c] = sum / (1.0f + expf(-sum));
    }
}

__device__ __forceinline__ float eg_softplus(float x) { return x > 20.0f ? x : logf(1.0f + expf(x)); }

// Grid (runs, n_head): threads take the head's channels.
EG_KERNEL void ssm_scan(const float* __restrict__ xbc, const float* __restrict__ dt,
                        float* __restrict__ state, const u32* __restrict__ runs,
                        const float* __restrict__ a, const float* __restrict__ dskip,
                        const float* __restrict__ dt_bias, float* __restrict__ y, int n_head,
                        int head_dim, int d_state, int n_group, int cols) {
    const int h = blockIdx.y;
    const u32* r = runs + 4 * blockIdx.x;
    const u32 slot = r[0], len = r[1], fresh = r[2], first = r[3];
    const int d_inner = n_head * head_dim;
    const int g = h / (n_head / n_group);
    float* st = state + (i64)slot * d_inner * d_state + (i64)h * head_dim * d_state;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float* s = st + (i64)i * d_state;
        if (fresh)
            for (int k = 0; k < d_state; k++) s[k] = 0.0f;
        for (u32 t = 0; t < len; t++) {
            const i64 row = first + t;
            const float* xr = xbc + row * cols;
            const float dtv = eg_softplus(dt[row * n_head + h] + dt_bias[h]);
            const float da = expf(dtv * a[h]);
            const float* bb = xr + d_inner + g * d_state;
            const float* cc = xr + d_inner + (n_group + g) * d_state;
            const float xv = xr[h * head_dim + i];
            const float x_dt = xv * dtv;
            float sum = 0.0f;
            for (int k = 0; k < d_state; k++) {
                const float nv = s[k] * da + bb[k] * x_dt;
                sum += nv * cc[k];
                s[k] = nv;
            }
            y[row * d_inner + h * head_dim + i] = sum + xv * dskip[h];
        }
    }
}
