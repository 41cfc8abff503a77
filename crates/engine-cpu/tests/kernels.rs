//! Every SIMD dot product against the scalar reference, on random blocks.
//!
//! Both sides compute the same exact integer sums per block and differ only in the order
//! of f32 additions, so the difference is bounded by a few ulps of the largest partial
//! sum: we allow `8 * eps * n_blocks * sum(|w_i| * |a_i|)` (the magnitude bound of every
//! partial sum, from the dequantized operands), which is far below any real error (a wrong
//! nibble or scale changes the result by O(|w||a|)).

use engine_core::quant::{dequantize_to_vec, float::quant_f16};
use engine_core::DType;
use engine_cpu::kernels::{self, act, Isa};
use rand::{Rng, SeedableRng};

fn random_weights(rng: &mut impl Rng, t: DType, n: usize, rows: usize) -> Vec<u8> {
    let rb = t.row_bytes(n).unwrap();
    match t {
        DType::F32 => (0..n * rows)
            .flat_map(|_| rng.gen_range(-2.0f32..2.0).to_le_bytes())
            .collect(),
        DType::F16 => {
            let v: Vec<f32> = (0..n * rows).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let mut b = vec![0u8; v.len() * 2];
            quant_f16(&v, &mut b);
            b
        }
        DType::BF16 => (0..n * rows)
            .flat_map(|_| ((rng.gen_range(-2.0f32..2.0).to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        _ => {
            let mut b: Vec<u8> = (0..rb * rows).map(|_| rng.gen()).collect();
            // keep the f16 scale fields finite and moderate
            let fields = engine_testdata::f16_scale_fields(t);
            let ts = t.type_size();
            for blk in b.chunks_exact_mut(ts) {
                for &f in fields {
                    let v = half::f16::from_f32(rng.gen_range(-0.05f32..0.05));
                    blk[f..f + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
                if t == DType::MXFP4 {
                    blk[0] = rng.gen_range(110..140);
                }
            }
            b
        }
    }
}

#[test]
fn simd_dot_products_match_scalar() {
    let isa = Isa::detect();
    if isa == Isa::Scalar {
        eprintln!(
            "SKIPPED: no SIMD instruction set on this CPU; only the scalar kernels were checked"
        );
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let n = 2048;
    for &t in kernels::SUPPORTED {
        let simd = kernels::kernel(t, isa).unwrap();
        let reference = kernels::kernel(t, Isa::Scalar).unwrap();
        let at = simd.act;
        for trial in 0..20 {
            let w = random_weights(&mut rng, t, n, 1);
            let scale = if trial % 5 == 0 { 100.0 } else { 1.0 };
            let x: Vec<f32> = (0..n)
                .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
                .collect();
            let mut a = vec![0u8; at.row_bytes(n).unwrap()];
            act::quantize_row(at, &x, &mut a);
            let got = (simd.dot())(n, &w, &a);
            let want = (reference.dot())(n, &w, &a);
            let wd = dequantize_to_vec(t, &w, n).unwrap();
            let ad = dequantize_to_vec(at, &a, n).unwrap();
            let mag: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(p, q)| (p.abs() * q.abs()) as f64)
                .sum();
            let blocks = (n / t.block_size().max(32)) as f64;
            let tol = 8.0 * f32::EPSILON as f64 * blocks * mag + 1e-6;
            assert!(
                ((got - want) as f64).abs() <= tol,
                "{t} ({}): simd {got} vs scalar {want} (tol {tol:e}, trial {trial})",
                simd.isa
            );
            // and the reference agrees with the plain dequantized dot product
            let plain: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(p, q)| (*p as f64) * (*q as f64))
                .sum();
            assert!(
                (want as f64 - plain).abs() <= tol,
                "{t}: scalar kernel {want} vs dequantized dot {plain} (tol {tol:e})"
            );
        }
    }
}

#[test]
fn q8_activation_encoding_matches_reference_within_rounding() {
    // The activation encoder follows ggml's x86 SIMD path (127/amax multiplier, half-even
    // rounding); the reference codec uses 1/d and rounds half away. They may differ by one
    // step on exact ties only.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let x: Vec<f32> = (0..4096).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut a = vec![0u8; DType::Q8_0.row_bytes(x.len()).unwrap()];
    act::quantize_row(DType::Q8_0, &x, &mut a);
    let mut b = vec![0u8; a.len()];
    engine_core::quant::quantize(DType::Q8_0, &x, &mut b).unwrap();
    let diffs = a.iter().zip(&b).filter(|(p, q)| p != q).count();
    assert!(
        diffs * 1000 < a.len(),
        "{diffs} bytes differ out of {}",
        a.len()
    );
    for (p, q) in a.iter().zip(&b) {
        assert!((*p as i8 as i32 - *q as i8 as i32).abs() <= 1);
    }
}

/// Every routine of every kernel (the default and llama.cpp's variants).
fn routines(k: &kernels::Kernel) -> Vec<(&'static str, kernels::Routine)> {
    let v = &k.variants;
    let mut out = vec![("vec_dot", k.base)];
    for (name, r) in [
        ("repack_gemv", v.repack_gemv),
        ("repack_gemm", v.repack_gemm),
        ("tiled", v.tiled),
    ] {
        if let Some(r) = r {
            out.push((name, r));
        }
    }
    out
}

#[test]
fn many_row_routines_are_bit_identical_to_their_pair_routine() {
    // The tiled routines share unpacked weights and loaded activations between pairs but run
    // each pair through the same block steps as the pair routine, so results must be equal
    // bit for bit, for every tile shape, edge and panel size.
    let isa = Isa::detect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut checked = 0;
    for &t in kernels::SUPPORTED {
        let kern = kernels::kernel(t, isa).unwrap();
        // float rows may be any length: one length of whole blocks, one with a tail
        let lengths: &[usize] = match t.block_size() {
            1 => &[96, 100, 4200],
            b if b >= 256 => &[512],
            _ => &[96],
        };
        for &k in lengths {
            let w_row = t.row_bytes(k).unwrap();
            let a_row = kern.act.row_bytes(k).unwrap();
            for (name, r) in routines(&kern) {
                let Some(gemm) = r.gemm else { continue };
                for (nr, nc) in [
                    (1, 1),
                    (4, 1),
                    (7, 1),
                    (9, 2),
                    (5, 3),
                    (13, 6),
                    (8, 9),
                    (17, 11),
                    (10, 40),
                ] {
                    let w = random_weights(&mut rng, t, k, nr);
                    let x: Vec<f32> = (0..nc * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                    let mut a = vec![0u8; nc * a_row];
                    for c in 0..nc {
                        act::quantize_row(
                            kern.act,
                            &x[c * k..(c + 1) * k],
                            &mut a[c * a_row..(c + 1) * a_row],
                        );
                    }
                    // a padded output to catch writes out of place
                    let ldo = nr + 3;
                    let mut out = vec![f32::NAN; nc * ldo];
                    // SAFETY: out holds nc columns of ldo >= nr values; the kernel is for this CPU.
                    unsafe { gemm(k, &w, nr, &a, a_row, nc, out.as_mut_ptr(), ldo) };
                    for c in 0..nc {
                        for rr in 0..ldo {
                            let got = out[c * ldo + rr];
                            if rr >= nr {
                                assert!(got.is_nan(), "{t} {name}: wrote outside the tile");
                                continue;
                            }
                            let want = (r.dot)(
                                k,
                                &w[rr * w_row..(rr + 1) * w_row],
                                &a[c * a_row..(c + 1) * a_row],
                            );
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{t} {name} {nr}x{nc} k {k}: row {rr} col {c}: {got} vs {want}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    if checked == 0 {
        eprintln!("SKIPPED: no many-row routines for {isa:?} on this CPU");
    }
}
