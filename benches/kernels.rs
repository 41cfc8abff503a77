//! Criterion benches of the CPU kernels, one per kernel × weight type, so a regression in any
//! of them shows: `cargo bench -p engine-cpu --bench kernels [-- FILTER]`.
//!
//! * `gemv/TYPE`: one activation row against 512 weight rows of 2048 (decode), through the
//!   routine the matmul driver picks for a one-row batch; throughput in weight bytes.
//! * `gemm/TYPE`: 64 activation rows against 64 weight rows (a prefill tile), through the
//!   routine the matmul driver picks for a 64-row batch; throughput in multiply-adds.
//! * `gemm-decode4/TYPE`: 4 activation rows against the 512 gemv rows (a decode step of four
//!   sequences, or a short speculative verification); throughput in multiply-adds.
//! * `floor/avx2/Q8_0-pair-step`: the instruction-throughput floor of one Q8_0 block pair in
//!   llama.cpp's arithmetic (operands in registers); multiply-adds per second.
//! * `scalar-gemv/TYPE`: the portable reference on the same data, for the SIMD speed-up.
//! * `act/TYPE`: converting one f32 row of 2048 to an activation format.
//!
//! Weights are random values quantized with the project's own encoders, so scales and codes
//! are realistic; types without an encoder (the K-quants, IQ4_XS) get random codes under
//! small finite block scales (their kernels' work does not depend on the values).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine_core::DType;
use engine_cpu::kernels::{self, act, Isa, Kernel};
use rand::{Rng, SeedableRng};

const K: usize = 2048;
const GEMV_ROWS: usize = 512;
const GEMM_ROWS: usize = 64;
const GEMM_COLS: usize = 64;
/// Columns of a decode batch (four parallel sequences, or a speculative verification).
const DECODE_COLS: usize = 4;

const TYPES: &[DType] = &[
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::MXFP4,
];

/// `rows` random rows of `K` encoded as `t`, or random codes with small block scales for a
/// type the project has no encoder for (None when neither applies).
fn weights(rng: &mut impl Rng, t: DType, rows: usize) -> Option<Vec<u8>> {
    let src: Vec<f32> = (0..rows * K).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let mut out = vec![0u8; t.row_bytes(K)? * rows];
    if engine_core::quant::quantize(t, &src, &mut out).is_ok() {
        return Some(out);
    }
    let offsets = engine_testdata::f16_scale_fields(t);
    if offsets.is_empty() {
        return None;
    }
    rng.fill(&mut out[..]);
    for b in out.chunks_exact_mut(t.type_size()) {
        for &o in offsets {
            let d = half::f16::from_f32(rng.gen_range(0.001f32..0.01));
            b[o..o + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    Some(out)
}

/// `cols` random activation rows converted to `kern.act`.
fn activations(rng: &mut impl Rng, kern: &Kernel, cols: usize) -> (Vec<u8>, usize) {
    let a_row = kern.act.row_bytes(K).expect("whole blocks");
    let mut a = vec![0u8; a_row * cols];
    for c in 0..cols {
        let x: Vec<f32> = (0..K).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        act::quantize_row(kern.act, &x, &mut a[c * a_row..(c + 1) * a_row]);
    }
    (a, a_row)
}

fn gemv(kern: &Kernel, w: &[u8], a: &[u8], out: &mut [f32]) {
    let rows = out.len();
    gemm(kern, w, rows, a, a.len(), 1, out);
}

/// `out[c * rows + r] = dot(w row r, a row c)` through the routine the matmul driver picks
/// for a batch of `cols` rows.
fn gemm(
    kern: &Kernel,
    w: &[u8],
    rows: usize,
    a: &[u8],
    a_row: usize,
    cols: usize,
    out: &mut [f32],
) {
    assert!(out.len() >= rows * cols && a.len() >= a_row * cols);
    let routine = kern.select(rows, cols, 0);
    let w_row = w.len() / rows;
    match routine.gemm {
        // SAFETY: `out` holds `cols` columns of `rows` (ldo = rows), `a` `cols` rows of
        // `a_row` bytes, `w` `rows` weight rows of K (asserted above).
        Some(gemm) => unsafe { gemm(K, w, rows, a, a_row, cols, out.as_mut_ptr(), rows) },
        None => {
            for j in 0..cols {
                for r in 0..rows {
                    out[j * rows + r] = (routine.dot)(
                        K,
                        &w[r * w_row..(r + 1) * w_row],
                        &a[j * a_row..(j + 1) * a_row],
                    );
                }
            }
        }
    }
}

/// The arithmetic floor of a Q8_0 × Q8_0 block pair in llama.cpp's order (sign trick,
/// `vpmaddubsw`, `vpmaddwd`, convert, scale, FMA), with every operand already in registers
/// and four independent accumulators, so nothing but instruction throughput limits it. A
/// many-column kernel cannot beat this per pair without changing the arithmetic (and so
/// the results); compare its Gelem/s with `gemm-decode4/avx2/Q8_0`.
#[cfg(target_arch = "x86_64")]
mod floor {
    use std::arch::x86_64::*;

    pub const COLS: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_0_pair_steps(iters: usize) -> f32 {
        let mut w = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let a: [__m256i; COLS] = std::array::from_fn(|c| _mm256_set1_epi8(c as i8 + 1));
        let d: [__m256; COLS] = std::array::from_fn(|c| _mm256_set1_ps(0.001 * (c + 1) as f32));
        let mut acc = [_mm256_setzero_ps(); COLS];
        for _ in 0..iters {
            let w_abs = _mm256_sign_epi8(w, w);
            for c in 0..COLS {
                let sy = _mm256_sign_epi8(a[c], w);
                let s = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, sy), ones);
                acc[c] = _mm256_fmadd_ps(d[c], _mm256_cvtepi32_ps(s), acc[c]);
            }
            // a new weight block each iteration, as far as the compiler knows
            w = std::hint::black_box(w);
        }
        let mut sum = [0f32; 8];
        for v in acc {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            for (s, l) in sum.iter_mut().zip(lanes) {
                *s += l;
            }
        }
        sum.iter().sum()
    }
}

fn bench_kernels(c: &mut Criterion) {
    let isa = Isa::detect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for &t in TYPES {
        let (Some(kern), Some(scalar)) = (kernels::kernel(t, isa), kernels::kernel(t, Isa::Scalar))
        else {
            continue;
        };
        let Some(w) = weights(&mut rng, t, GEMV_ROWS) else {
            eprintln!("{t}: no encoder, not benched");
            continue;
        };
        let (a, a_row) = activations(&mut rng, &kern, GEMM_COLS);
        let mut out = vec![0f32; GEMV_ROWS * GEMM_COLS];

        let mut g = c.benchmark_group("gemv");
        g.throughput(Throughput::Bytes(w.len() as u64));
        g.bench_function(BenchmarkId::new(kern.isa, t), |b| {
            b.iter(|| gemv(&kern, &w, &a[..a_row], &mut out[..GEMV_ROWS]))
        });
        g.finish();

        let mut g = c.benchmark_group("scalar-gemv");
        g.throughput(Throughput::Bytes(w.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(t), |b| {
            b.iter(|| gemv(&scalar, &w, &a[..a_row], &mut out[..GEMV_ROWS]))
        });
        g.finish();

        let w_tile = &w[..t.row_bytes(K).unwrap() * GEMM_ROWS];
        let mut g = c.benchmark_group("gemm");
        g.throughput(Throughput::Elements((GEMM_ROWS * GEMM_COLS * K) as u64));
        g.bench_function(BenchmarkId::new(kern.isa, t), |b| {
            b.iter(|| gemm(&kern, w_tile, GEMM_ROWS, &a, a_row, GEMM_COLS, &mut out))
        });
        g.finish();

        let mut g = c.benchmark_group("gemm-decode4");
        g.throughput(Throughput::Elements((GEMV_ROWS * DECODE_COLS * K) as u64));
        g.bench_function(BenchmarkId::new(kern.isa, t), |b| {
            b.iter(|| gemm(&kern, &w, GEMV_ROWS, &a, a_row, DECODE_COLS, &mut out))
        });
        g.finish();
    }

    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        const ITERS: usize = 4096;
        let mut g = c.benchmark_group("floor");
        g.throughput(Throughput::Elements((ITERS * floor::COLS * 32) as u64));
        g.bench_function("avx2/Q8_0-pair-step", |b| {
            // SAFETY: Isa::Avx2 means avx2 and fma were detected.
            b.iter(|| unsafe { floor::q8_0_pair_steps(ITERS) })
        });
        g.finish();
    }

    let x: Vec<f32> = (0..K).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
    let mut g = c.benchmark_group("act");
    g.throughput(Throughput::Elements(K as u64));
    for t in [DType::Q8_0, DType::Q8_K, DType::F16] {
        let Some(bytes) = t.row_bytes(K) else {
            continue;
        };
        let mut dst = vec![0u8; bytes];
        g.bench_function(BenchmarkId::from_parameter(t), |b| {
            b.iter(|| act::quantize_row(t, &x, &mut dst))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = bench_kernels
}
criterion_main!(benches);
