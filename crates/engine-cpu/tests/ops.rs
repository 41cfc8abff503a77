//! The CPU backend's operators against naive f64 implementations.

use engine_core::{AttentionSpec, Backend, DType, HostBytes, QueryPos, RopeMode, RopeSpec};
use engine_cpu::CpuBackend;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn f32_weight(be: &CpuBackend, name: &str, shape: &[usize], v: &[f32]) -> engine_core::Weight {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    be.load_weight(name, DType::F32, shape, HostBytes::from_vec(bytes))
        .unwrap()
}

#[test]
fn matmul_matches_dequantized_reference_for_every_type_and_thread_count() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (k, m) = (512, 67);
    for threads in [1, 2, 3] {
        let be = CpuBackend::new(threads);
        for &t in engine_cpu::kernels::SUPPORTED {
            let wf = rand_vec(&mut rng, m * k);
            let mut wb = vec![0u8; t.row_bytes(k).unwrap() * m];
            // encode with the reference encoder where one exists, else use K-quant-free path
            if engine_core::quant::quant_fn(t).is_some() {
                engine_core::quant::quantize(t, &wf, &mut wb).unwrap();
            } else {
                for b in wb.iter_mut() {
                    *b = rng.gen();
                }
                // sane f16 scales for K-quants: zero the scale bytes then set small values
                let ts = t.type_size();
                let off = match t {
                    DType::Q2_K => 80,
                    DType::Q3_K => 108,
                    DType::Q4_K | DType::Q5_K | DType::IQ4_XS => 0,
                    DType::Q6_K => 208,
                    _ => 0,
                };
                for blk in wb.chunks_exact_mut(ts) {
                    blk[off..off + 2]
                        .copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
                    if matches!(t, DType::Q2_K | DType::Q4_K | DType::Q5_K) {
                        let o2 = if t == DType::Q2_K { 82 } else { 2 };
                        blk[o2..o2 + 2]
                            .copy_from_slice(&half::f16::from_f32(0.005).to_bits().to_le_bytes());
                    }
                }
            }
            let w = be
                .load_weight("w", t, &[m, k], HostBytes::from_vec(wb.clone()))
                .unwrap();
            let wd = engine_core::quant::dequantize_to_vec(t, &wb, m * k).unwrap();
            for n in [1usize, 5] {
                let xv = rand_vec(&mut rng, n * k);
                let mut x = be.alloc(DType::F32, &[n, k]).unwrap();
                be.write_f32(&mut x, &xv).unwrap();
                let mut out = be.alloc(DType::F32, &[n, m]).unwrap();
                be.matmul(&x, &w, &mut out).unwrap();
                let mut got = vec![0.0; n * m];
                be.read_f32(&out, &mut got).unwrap();
                // reference: dequantized weights times the activations as the kernel sees them
                let act = engine_cpu::kernels::act_type(t).unwrap();
                for r in 0..n {
                    let mut a = vec![0u8; act.row_bytes(k).unwrap()];
                    engine_cpu::kernels::act::quantize_row(act, &xv[r * k..(r + 1) * k], &mut a);
                    let ad = engine_core::quant::dequantize_to_vec(act, &a, k).unwrap();
                    for c in 0..m {
                        let want: f64 = (0..k).map(|i| wd[c * k + i] as f64 * ad[i] as f64).sum();
                        let mag: f64 = (0..k).map(|i| (wd[c * k + i] * ad[i]).abs() as f64).sum();
                        // Q8_1 carries d*sum(q) rounded to f16, which the kernel uses for the
                        // weight minimum's term (as ggml does): allow 2^-11 of |m * s| per block.
                        let min_term: f64 = if act == DType::Q8_1 {
                            let wrow = &wb[c * t.row_bytes(k).unwrap()..];
                            (0..k / 32)
                                .map(|b| {
                                    let mw = engine_core::quant::f16_at(wrow, b * t.type_size() + 2)
                                        as f64;
                                    let sy = engine_core::quant::f16_at(&a, b * 36 + 2) as f64;
                                    (mw * sy).abs() / 2048.0
                                })
                                .sum()
                        } else {
                            0.0
                        };
                        let g = got[r * m + c] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * mag + min_term + 1e-6,
                            "{t} threads {threads} n {n}: out[{r},{c}] = {g}, want {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rms_norm_and_rope_match_naive() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let be = CpuBackend::new(2);
    let (n, heads, hd) = (3, 2, 16);
    let xv = rand_vec(&mut rng, n * heads * hd);
    let wv = rand_vec(&mut rng, heads * hd);
    let w = f32_weight(&be, "norm", &[heads * hd], &wv);
    let mut x = be.alloc(DType::F32, &[n, heads * hd]).unwrap();
    be.write_f32(&mut x, &xv).unwrap();
    let mut y = be.alloc(DType::F32, &[n, heads * hd]).unwrap();
    be.rms_norm(&x, Some(&w), 1e-6, &mut y).unwrap();
    let mut got = vec![0.0; xv.len()];
    be.read_f32(&y, &mut got).unwrap();
    for r in 0..n {
        let row = &xv[r * heads * hd..(r + 1) * heads * hd];
        let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / row.len() as f64;
        for i in 0..row.len() {
            let want = row[i] as f64 / (ms + 1e-6).sqrt() * wv[i] as f64;
            assert!((got[r * heads * hd + i] as f64 - want).abs() < 1e-5);
        }
    }

    for mode in [RopeMode::Norm, RopeMode::Neox] {
        let mut t = be.alloc(DType::F32, &[n, heads * hd]).unwrap();
        be.write_f32(&mut t, &xv).unwrap();
        let pos = [0u32, 7, 1000];
        let spec = RopeSpec {
            n_rot: 12,
            ..RopeSpec::plain(mode, heads, hd, 10000.0)
        };
        be.rope(&mut t, &pos, &spec).unwrap();
        let mut got = vec![0.0; xv.len()];
        be.read_f32(&t, &mut got).unwrap();
        for (ti, &p) in pos.iter().enumerate() {
            for h in 0..heads {
                let base = ti * heads * hd + h * hd;
                let x = &xv[base..base + hd];
                let g = &got[base..base + hd];
                for i in 0..6 {
                    let theta = p as f64 * 10000f64.powf(-2.0 * i as f64 / 12.0);
                    let (i0, i1) = match mode {
                        RopeMode::Norm => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + 6),
                    };
                    let (c, s) = (theta.cos(), theta.sin());
                    let w0 = x[i0] as f64 * c - x[i1] as f64 * s;
                    let w1 = x[i0] as f64 * s + x[i1] as f64 * c;
                    assert!(
                        (g[i0] as f64 - w0).abs() < 2e-4,
                        "{mode:?} pos {p} pair {i}"
                    );
                    assert!((g[i1] as f64 - w1).abs() < 2e-4);
                }
                for i in 12..hd {
                    assert_eq!(g[i], x[i], "unrotated dims pass through");
                }
            }
        }
    }
}

/// Checks the attention op against a naive float64 softmax for every path: an f32 cache, an
/// f16 cache with few queries (f16 accumulator), many queries (f32 tiles) and a single
/// query over a long cache (split across threads). The f16-accumulating paths round the
/// running output to f16 after every key (relative 2^-11 per step over up to ~300 keys of
/// values in [-1, 1]), so they get a 2e-2 tolerance; the f32 paths 1e-4.
#[test]
fn attention_matches_naive_softmax_with_windows_gqa_and_sinks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let be = CpuBackend::new(2);
    let (nh, nkv, hd) = (4, 2, 32);
    let rows = 300;
    let kv_f = rand_vec(&mut rng, rows * nkv * hd);
    let vv_f = rand_vec(&mut rng, rows * nkv * hd);
    let sinks_v = rand_vec(&mut rng, nh);
    let sinks = f32_weight(&be, "sinks", &[nh], &sinks_v);
    for cache_type in [DType::F32, DType::F16] {
        let mut k = be.alloc(cache_type, &[rows, nkv * hd]).unwrap();
        let mut v = be.alloc(cache_type, &[rows, nkv * hd]).unwrap();
        let mut src = be.alloc(DType::F32, &[rows, nkv * hd]).unwrap();
        let all: Vec<u32> = (0..rows as u32).collect();
        be.write_f32(&mut src, &kv_f).unwrap();
        be.kv_store(&mut k, &src, &all).unwrap();
        be.write_f32(&mut src, &vv_f).unwrap();
        be.kv_store(&mut v, &src, &all).unwrap();
        // what the cache holds
        let round = |x: f32| {
            if cache_type == DType::F16 {
                half::f16::from_f32(x).to_f32()
            } else {
                x
            }
        };
        let few = vec![
            QueryPos { kv_base: 0, pos: 0 },
            QueryPos {
                kv_base: 0,
                pos: 150,
            },
            QueryPos {
                kv_base: 100,
                pos: 199,
            },
        ];
        let many: Vec<QueryPos> = (0..70)
            .map(|i| QueryPos {
                kv_base: 2, // one sequence of 70 queries: the tiled path (paths are per sequence)
                pos: (i * 4 % 290) as u32,
            })
            .collect();
        let long_single = vec![QueryPos {
            kv_base: 0,
            pos: 290,
        }];
        for (queries, f16_accum) in [(few, true), (many, false), (long_single, true)] {
            let tol = if cache_type == DType::F16 && f16_accum {
                2e-2
            } else {
                1e-4
            };
            for (window, use_sinks) in [
                (None, false),
                (Some(16), false),
                (None, true),
                (Some(5), true),
            ] {
                let qv = rand_vec(&mut rng, queries.len() * nh * hd);
                let mut q = be.alloc(DType::F32, &[queries.len(), nh * hd]).unwrap();
                be.write_f32(&mut q, &qv).unwrap();
                let mut out = be.alloc(DType::F32, &[queries.len(), nh * hd]).unwrap();
                let spec = AttentionSpec {
                    n_head: nh,
                    n_kv_head: nkv,
                    head_dim: hd,
                    head_dim_v: hd,
                    scale: 0.3,
                    softcap: 0.0,
                    window,
                    sinks: if use_sinks { Some(&sinks) } else { None },
                    queries: &queries,
                    groups: None,
                };
                be.attention(&q, &k, &v, &spec, &mut out).unwrap();
                let mut got = vec![0.0; qv.len()];
                be.read_f32(&out, &mut got).unwrap();
                for (t, qp) in queries.iter().enumerate() {
                    for h in 0..nh {
                        let kvh = h / (nh / nkv);
                        let qh: Vec<f64> = (0..hd)
                            .map(|i| {
                                let x = qv[t * nh * hd + h * hd + i];
                                // the f16-accumulating paths convert the query to f16 too
                                (if f16_accum { round(x) } else { x }) as f64
                            })
                            .collect();
                        let lo =
                            window.map_or(0, |w| (qp.pos as i64 + 1 - w as i64).max(0) as usize);
                        let mut scores = vec![];
                        for j in lo..=qp.pos as usize {
                            let r = qp.kv_base as usize + j;
                            let s: f64 = (0..hd)
                                .map(|i| qh[i] * round(kv_f[r * nkv * hd + kvh * hd + i]) as f64)
                                .sum();
                            scores.push((r, s * 0.3));
                        }
                        let mut mx = scores.iter().map(|s| s.1).fold(f64::MIN, f64::max);
                        if use_sinks {
                            mx = mx.max(sinks_v[h] as f64);
                        }
                        let mut den: f64 = scores.iter().map(|s| (s.1 - mx).exp()).sum();
                        if use_sinks {
                            den += (sinks_v[h] as f64 - mx).exp();
                        }
                        for i in 0..hd {
                            let want: f64 = scores
                                .iter()
                                .map(|(r, s)| {
                                    (s - mx).exp() / den
                                        * round(vv_f[r * nkv * hd + kvh * hd + i]) as f64
                                })
                                .sum();
                            let g = got[t * nh * hd + h * hd + i] as f64;
                            assert!((g - want).abs() < tol, "{cache_type} window {window:?} sinks {use_sinks}: q{t} h{h} [{i}] {g} vs {want}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_and_ids_are_errors() {
    let be = CpuBackend::new(1);
    let table = f32_weight(&be, "emb", &[4, 8], &[0.0; 32]);
    let mut out = be.alloc(DType::F32, &[1, 8]).unwrap();
    assert!(be.embed(&table, &[4], &mut out).is_err());
    let x = be.alloc(DType::F32, &[1, 7]).unwrap();
    assert!(be.matmul(&x, &table, &mut out).is_err());
    assert!(be
        .load_weight(
            "w",
            DType::IQ2_XXS,
            &[1, 256],
            HostBytes::from_vec(vec![0; 66])
        )
        .is_err());
    assert!(be
        .load_weight("w", DType::Q4_0, &[1, 32], HostBytes::from_vec(vec![0; 17]))
        .is_err());
}

/// Repacking (on by default) must not change a single bit: for every repacked type, the
/// same weights give identical matmul outputs with and without it, for batch sizes that
/// select every routine (pair, many-row panels, the tiled variant), with row groups, and
/// identical embeddings; the repacked blocks dequantize to the same values.
#[test]
fn repacked_weights_are_bit_identical() {
    use engine_cpu::kernels::{repack, Isa};
    let isa = Isa::detect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (k, m) = (640, 72);
    let mut checked = 0;
    for &t in engine_cpu::kernels::SUPPORTED {
        let Some(layout) = repack::repacked_layout(t, isa) else {
            continue;
        };
        let wf = rand_vec(&mut rng, m * k);
        let mut wb = vec![0u8; t.row_bytes(k).unwrap() * m];
        engine_core::quant::quantize(t, &wf, &mut wb).unwrap();
        let mut packed = vec![0u8; layout.row_bytes(k).unwrap() * m];
        assert!(repack::repack(t, layout, &wb, &mut packed));
        let a = engine_core::quant::dequantize_to_vec(t, &wb, m * k).unwrap();
        let b = engine_core::quant::dequantize_to_vec(layout, &packed, m * k).unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{t} as {layout}: dequantized values differ"
        );
        for threads in [1, 2] {
            let on = CpuBackend::new(threads);
            let off = CpuBackend::new(threads).with_repack(false);
            assert_eq!(
                on.weight_bytes(t, &[m, k]).unwrap(),
                packed.len(),
                "the estimate counts the repacked size"
            );
            let w_on = on
                .load_weight("w", t, &[m, k], HostBytes::from_vec(wb.clone()))
                .unwrap();
            let w_off = off
                .load_weight("w", t, &[m, k], HostBytes::from_vec(wb.clone()))
                .unwrap();
            for (n, groups) in [
                (1usize, vec![1u32]),
                (3, vec![3]),
                (8, vec![8]),
                (17, vec![17]),
                (20, vec![9, 1, 10]),
            ] {
                let xv = rand_vec(&mut rng, n * k);
                let run = |be: &CpuBackend, w: &engine_core::Weight| {
                    let mut x = be.alloc(DType::F32, &[n, k]).unwrap();
                    be.write_f32(&mut x, &xv).unwrap();
                    let mut out = be.alloc(DType::F32, &[n, m]).unwrap();
                    be.matmul_groups(&x, w, &mut out, &groups).unwrap();
                    let mut got = vec![0.0f32; n * m];
                    be.read_f32(&out, &mut got).unwrap();
                    got
                };
                let (p, q) = (run(&on, &w_on), run(&off, &w_off));
                assert!(
                    p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{t} repacked as {layout}, n {n}, threads {threads}: outputs differ"
                );
            }
            let ids = [0u32, 5, 71, 5];
            let emb = |be: &CpuBackend, w: &engine_core::Weight| {
                let mut out = be.alloc(DType::F32, &[ids.len(), k]).unwrap();
                be.embed(w, &ids, &mut out).unwrap();
                let mut got = vec![0.0f32; ids.len() * k];
                be.read_f32(&out, &mut got).unwrap();
                got
            };
            assert_eq!(emb(&on, &w_on), emb(&off, &w_off), "{t}: embeddings differ");
            checked += 1;
        }
    }
    if checked == 0 {
        eprintln!("SKIPPED: no weight type is repacked on {isa:?}; nothing to compare");
    }
}
