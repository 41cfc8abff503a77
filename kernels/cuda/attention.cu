// Attention over the cached keys and values with an online softmax: the score matrix is
// never materialised. One block per (query row, head) of ATT_WARPS warps: warp w takes keys
// w, w + ATT_WARPS, ... with its own running maximum, sum and output (each lane owns head
// dimensions lane, lane + WARP, ..., so scores are warp sums), and the warps' partial results
// are merged through shared memory at the end. Several warps keep several keys' loads in
// flight: one warp alone waits on every key in turn.
#include "common.cuh"

#define ATT_MAX_PER_LANE 16 // head_dim <= 16 * warp size (512 on a 32-lane warp)
#define ATT_WARPS 8         // warps per block (the host launches this many)

__device__ __forceinline__ float att_load(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float att_load(const u16* p, i64 i) { return eg_f16_to_f32(p[i]); }

// qpos: (kv_base, pos) per query. window 0: none. sinks: per-head logit or null.
// stride_k/stride_v: values per cache row.
template <class T>
__device__ __forceinline__ void attention_impl(const float* __restrict__ q, const T* __restrict__ k,
                                               const T* __restrict__ v, float* __restrict__ out,
                                               const u32* __restrict__ qpos,
                                               const float* __restrict__ sinks, int n_head,
                                               int n_kv_head, int hd, int hv, float scale,
                                               float softcap, u32 window, i64 stride_k,
                                               i64 stride_v) {
    const int lane = threadIdx.x % EG_WARP;
    const int w = threadIdx.x / EG_WARP;
    const int qi = blockIdx.x, h = blockIdx.y;
    const int kvh = h / (n_head / n_kv_head);
    const u32 base = qpos[2 * qi], pos = qpos[2 * qi + 1];
    const u32 lo = (window != 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const float* qr = q + ((i64)qi * n_head + h) * hd;
    const float neg_inf = __int_as_float(0xff800000);
    float qv[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; i++) {
        const int d = lane + i * EG_WARP;
        qv[i] = d < hd ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = neg_inf, l = 0.0f;
    for (u32 j = lo + w; j <= pos; j += ATT_WARPS) {
        const T* kr = k + (i64)(base + j) * stride_k + (i64)kvh * hd;
        float part = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; i++) {
            const int d = lane + i * EG_WARP;
            if (d < hd) part += qv[i] * att_load(kr, d);
        }
        float s = eg_warp_sum(part) * scale;
        if (softcap != 0.0f) s = softcap * tanhf(s / softcap);
        float c = 1.0f;
        if (s > m) {
            c = expf(m - s);
            m = s;
        }
        const float p = expf(s - m);
        l = l * c + p;
        const T* vr = v + (i64)(base + j) * stride_v + (i64)kvh * hv;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; i++) {
            const int d = lane + i * EG_WARP;
            if (d < hv) acc[i] = acc[i] * c + p * att_load(vr, d);
        }
    }
    // merge: out = sum_w acc_w e^(m_w - M) / (sum_w l_w e^(m_w - M) [+ e^(sink - M)])
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][ATT_MAX_PER_LANE * EG_WARP];
    if (lane == 0) {
        wm[w] = m;
        wl[w] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; i++) {
        const int d = lane + i * EG_WARP;
        if (d < hv) wacc[w][d] = acc[i];
    }
    __syncthreads();
    float mx = sinks ? sinks[h] : neg_inf;
    for (int i = 0; i < ATT_WARPS; i++) mx = fmaxf(mx, wm[i]);
    float wsc[ATT_WARPS];
    float total = (sinks && mx != neg_inf) ? expf(sinks[h] - mx) : 0.0f;
    for (int i = 0; i < ATT_WARPS; i++) {
        wsc[i] = wm[i] == neg_inf ? 0.0f : expf(wm[i] - mx);
        total += wl[i] * wsc[i];
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    float* o = out + ((i64)qi * n_head + h) * hv;
    for (int d = threadIdx.x; d < hv; d += blockDim.x) {
        float t = 0.0f;
        for (int i = 0; i < ATT_WARPS; i++) t += wacc[i][d] * wsc[i];
        o[d] = t * inv;
    }
}

#define EG_ATT_KERNEL(name, T)                                                                  \
    EG_KERNEL void attention_##name(const float* q, const T* k, const T* v, float* out,         \
                                    const u32* qpos, const float* sinks, int n_head,            \
                                    int n_kv_head, int hd, int hv, float scale, float softcap,  \
                                    u32 window, i64 stride_k, i64 stride_v) {                   \
        attention_impl<T>(q, k, v, out, qpos, sinks, n_head, n_kv_head, hd, hv, scale, softcap, \
                          window, stride_k, stride_v);                                          \
    }

EG_ATT_KERNEL(f32, float)
EG_ATT_KERNEL(f16, u16)
