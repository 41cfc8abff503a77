// Portability layer shared by every kernel: the same sources compile with NVRTC/nvcc
// (CUDA), hiprtc/hipcc (ROCm) and, for the block decoders only, a host C++ compiler (the
// decoder tests). Nothing here includes a system header, so NVRTC needs no include path.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;

#if defined(__HIPCC__) || defined(__HIPCC_RTC__) || defined(__HIP_DEVICE_COMPILE__) || defined(__HIP_PLATFORM_AMD__)
#define EG_HIP 1
#define EG_DEVICE 1
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define EG_CUDA 1
#define EG_DEVICE 1
#endif

#ifdef EG_DEVICE
#define EG_FN __device__ __forceinline__
#define EG_KERNEL extern "C" __global__
#else
#define EG_FN inline
#endif

// Lanes in a warp (CUDA) or wavefront. RDNA runs wave32 kernels; the host passes
// -DEG_WARP=64 only for a wave64 target (GCN/CDNA).
#ifndef EG_WARP
#define EG_WARP 32
#endif
// The host launches EG_WARP-lane warps: a target compiled for another wavefront size would
// give wrong reductions, so it does not build.
#if defined(EG_HIP) && defined(__AMDGCN_WAVEFRONT_SIZE)
#if __AMDGCN_WAVEFRONT_SIZE != EG_WARP
#error "EG_WARP differs from the target's wavefront size"
#endif
#endif

EG_FN float eg_f16_to_f32(u16 h) {
#if defined(EG_CUDA)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#elif defined(EG_HIP)
    return (float)__builtin_bit_cast(_Float16, h);
#else
    // Host reference: exact binary16 -> binary32.
    u32 sign = (u32)(h & 0x8000) << 16;
    u32 exp = (h >> 10) & 0x1f;
    u32 man = h & 0x3ff;
    u32 bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            exp = 127 - 15 + 1;
            while ((man & 0x400) == 0) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union { u32 u; float f; } v;
    v.u = bits;
    return v.f;
#endif
}

EG_FN float eg_bits_to_f32(u32 bits) {
#ifdef EG_DEVICE
    return __uint_as_float(bits);
#else
    union { u32 u; float f; } v;
    v.u = bits;
    return v.f;
#endif
}

#ifdef EG_DEVICE
// Round to nearest even f32 -> f16 bits.
EG_FN u16 eg_f32_to_f16(float f) {
#if defined(EG_CUDA)
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    return __builtin_bit_cast(u16, (_Float16)f);
#endif
}

EG_FN float eg_warp_sum(float v) {
#pragma unroll
    for (int o = EG_WARP / 2; o > 0; o >>= 1) {
#if defined(EG_CUDA)
        v += __shfl_xor_sync(0xffffffffu, v, o);
#else
        v += __shfl_xor(v, o);
#endif
    }
    return v;
}

EG_FN float eg_warp_max(float v) {
#pragma unroll
    for (int o = EG_WARP / 2; o > 0; o >>= 1) {
#if defined(EG_CUDA)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
#else
        v = fmaxf(v, __shfl_xor(v, o));
#endif
    }
    return v;
}

// Sum over a whole thread block (blockDim.x a multiple of the warp size, at most 1024).
// Every thread gets the result.
EG_FN float eg_block_sum(float v) {
    __shared__ float part[1024 / 32];
    const int lane = threadIdx.x % EG_WARP;
    const int warp = threadIdx.x / EG_WARP;
    v = eg_warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const int n_warps = blockDim.x / EG_WARP;
    float t = 0.0f;
    for (int i = 0; i < n_warps; i++) t += part[i];
    return t;
}
#endif
