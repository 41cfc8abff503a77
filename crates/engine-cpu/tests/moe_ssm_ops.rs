//! The CPU backend's operators for MoE and hybrid models: the expert matmul against
//! one matmul per expert (bit for bit), row scatter, per-row scaling, weighted row sums,
//! grouped RMS norm, and the recurrent convolution and scan across runs and slots.

use engine_core::{Backend, DType, ExpertSpan, HostBytes, SeqRun, SsmScanSpec, Tensor, Weight};
use engine_cpu::CpuBackend;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// A weight of `dtype` from `v`: encoded where engine-core has an encoder, else (Q4_K, Q6_K)
/// random blocks with small scales, made from `v`'s bits so they vary.
fn weight(be: &CpuBackend, name: &str, dtype: DType, shape: &[usize], v: &[f32]) -> Weight {
    let n: usize = shape.iter().product();
    let mut b = vec![0u8; dtype.row_bytes(n).unwrap()];
    if engine_core::quant::quant_fn(dtype).is_some() {
        engine_core::quant::quantize(dtype, &v[..n], &mut b).unwrap();
    } else {
        for (i, x) in b.iter_mut().enumerate() {
            *x = (v[i % n].to_bits() >> 7) as u8 ^ i as u8;
        }
        let scale = |blk: &mut [u8], at: usize, s: f32| {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(s).to_bits().to_le_bytes())
        };
        for blk in b.chunks_exact_mut(dtype.type_size()) {
            match dtype {
                DType::Q4_K => {
                    scale(blk, 0, 0.01);
                    scale(blk, 2, 0.005);
                }
                DType::Q6_K => scale(blk, 208, 0.01),
                other => panic!("no encoder for {other}"),
            }
        }
    }
    be.load_weight(name, dtype, shape, HostBytes::from_vec(b))
        .unwrap()
}

fn tensor(be: &CpuBackend, shape: &[usize], v: &[f32]) -> Tensor {
    let mut t = be.alloc(DType::F32, shape).unwrap();
    be.write_f32(&mut t, v).unwrap();
    t
}

fn read(be: &CpuBackend, t: &Tensor) -> Vec<f32> {
    let mut v = vec![0.0; t.shape().numel()];
    be.read_f32(t, &mut v).unwrap();
    v
}

#[test]
fn expert_matmul_equals_one_matmul_per_expert() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (k, m, ne) = (256, 48, 5);
    for threads in [1, 2, 3] {
        let be = CpuBackend::new(threads);
        for dtype in [
            DType::F32,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
            DType::MXFP4,
        ] {
            let experts: Vec<Weight> = (0..ne)
                .map(|e| {
                    weight(
                        &be,
                        &format!("w{e}"),
                        dtype,
                        &[m, k],
                        &rand_vec(&mut rng, m * k),
                    )
                })
                .collect();
            let biases: Vec<Weight> = (0..ne)
                .map(|e| {
                    weight(
                        &be,
                        &format!("b{e}"),
                        DType::F32,
                        &[m],
                        &rand_vec(&mut rng, m),
                    )
                })
                .collect();
            // spans of 1, 9 (two sequence runs: 6 + 3) and 2 rows; expert 1 and 3 unused
            let spans = [
                ExpertSpan { expert: 4, rows: 1 },
                ExpertSpan { expert: 0, rows: 9 },
                ExpertSpan { expert: 2, rows: 2 },
            ];
            let groups = [1u32, 6, 3, 2];
            let n = 12;
            let xv = rand_vec(&mut rng, n * k);
            let x = tensor(&be, &[n, k], &xv);
            for with_bias in [false, true] {
                let mut out = be.alloc(DType::F32, &[n, m]).unwrap();
                let b = with_bias.then_some(&biases[..]);
                be.matmul_experts(&x, &experts, b, &spans, &groups, &mut out)
                    .unwrap();
                let got = read(&be, &out);
                // reference: each span alone through matmul_groups with its own groups
                let (mut row, mut g) = (0usize, 0usize);
                for s in &spans {
                    let r = s.rows as usize;
                    let xs = tensor(&be, &[r, k], &xv[row * k..(row + r) * k]);
                    let mut sub_groups = vec![];
                    let mut covered = 0;
                    while covered < r {
                        sub_groups.push(groups[g]);
                        covered += groups[g] as usize;
                        g += 1;
                    }
                    let mut o = be.alloc(DType::F32, &[r, m]).unwrap();
                    let w = &experts[s.expert as usize];
                    be.matmul_groups(&xs, w, &mut o, &sub_groups).unwrap();
                    if with_bias {
                        be.add_bias(&mut o, &biases[s.expert as usize]).unwrap();
                    }
                    let want = read(&be, &o);
                    assert!(
                        got[row * m..(row + r) * m] == want[..],
                        "{dtype} threads {threads} bias {with_bias} expert {}",
                        s.expert
                    );
                    row += r;
                }
            }
        }
    }
}

#[test]
fn expert_matmul_rejects_bad_spans_and_groups() {
    let be = CpuBackend::new(2);
    let (k, m) = (32, 8);
    let w: Vec<Weight> = (0..2)
        .map(|e| weight(&be, &format!("w{e}"), DType::F32, &[m, k], &[0.5; 256]))
        .collect();
    let x = tensor(&be, &[3, k], &[1.0; 96]);
    let mut out = be.alloc(DType::F32, &[3, m]).unwrap();
    let span = |expert, rows| ExpertSpan { expert, rows };
    // rows not covered, unknown expert, a group across two spans
    assert!(be
        .matmul_experts(&x, &w, None, &[span(0, 2)], &[2], &mut out)
        .is_err());
    assert!(be
        .matmul_experts(&x, &w, None, &[span(0, 1), span(5, 2)], &[1, 2], &mut out)
        .is_err());
    assert!(be
        .matmul_experts(&x, &w, None, &[span(0, 1), span(1, 2)], &[2, 1], &mut out)
        .is_err());
    be.matmul_experts(&x, &w, None, &[span(0, 1), span(1, 2)], &[1, 2], &mut out)
        .unwrap();
    assert_eq!(read(&be, &out), vec![16.0; 3 * m]);
}

#[test]
fn rows_scatter_scale_and_weighted_sum() {
    let be = CpuBackend::new(2);
    let src = tensor(&be, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut dst = tensor(&be, &[4, 3], &[0.0; 12]);
    be.scatter_rows(&src, &[3, 1], &mut dst).unwrap();
    assert_eq!(
        read(&be, &dst),
        [0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    );
    assert!(be.scatter_rows(&src, &[4, 0], &mut dst).is_err());
    be.scale_rows(&mut dst, &[1.0, 2.0, 3.0, 0.5]).unwrap();
    assert_eq!(read(&be, &dst)[3..6], [8.0, 10.0, 12.0]);
    assert!(be.scale_rows(&mut dst, &[1.0]).is_err());
    // two tokens, k = 2: [r0*0.25 + r1*0.75, r2*1 + r3*-1]
    let mut out = be.alloc(DType::F32, &[2, 3]).unwrap();
    be.weighted_row_sum(&dst, &[0.25, 0.75, 1.0, -1.0], 2, &mut out)
        .unwrap();
    assert_eq!(read(&be, &out), [6.0, 7.5, 9.0, -0.5, -1.0, -1.5]);
    assert!(be.weighted_row_sum(&dst, &[1.0; 3], 2, &mut out).is_err());
}

#[test]
fn grouped_rms_norm_normalises_each_group_with_its_weights() {
    let be = CpuBackend::new(2);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (rows, cols, group) = (3, 12, 4);
    let xv = rand_vec(&mut rng, rows * cols);
    let wv = rand_vec(&mut rng, cols);
    let mut x = tensor(&be, &[rows, cols], &xv);
    let w = weight(&be, "n", DType::F32, &[cols / group, group], &wv);
    be.rms_norm_groups_inplace(&mut x, Some(&w), group, 1e-5)
        .unwrap();
    let got = read(&be, &x);
    for r in 0..rows {
        for g in 0..cols / group {
            let s = &xv[r * cols + g * group..r * cols + (g + 1) * group];
            let ms = s.iter().map(|v| (v * v) as f64).sum::<f64>() / group as f64;
            for (i, v) in s.iter().enumerate() {
                let want = *v as f64 / (ms + 1e-5).sqrt() * wv[g * group + i] as f64;
                let have = got[r * cols + g * group + i] as f64;
                assert!((want - have).abs() < 1e-5, "{want} {have}");
            }
        }
    }
    assert!(be.rms_norm_groups_inplace(&mut x, None, 5, 1e-5).is_err());
}

/// Two sequences in one call (runs in slots 1 and 0) give what each gives alone, and a
/// sequence fed in two calls gives what it gives in one.
#[test]
fn conv_and_scan_runs_are_independent_and_resumable() {
    let (nh, hd, ds, ng, dc) = (4, 8, 16, 2, 4);
    let d_inner = nh * hd;
    let ch = d_inner + 2 * ng * ds;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for threads in [1, 3] {
        let be = CpuBackend::new(threads);
        let cw = weight(
            &be,
            "conv",
            DType::F32,
            &[ch, dc],
            &rand_vec(&mut rng, ch * dc),
        );
        let cb = weight(&be, "cb", DType::F32, &[ch], &rand_vec(&mut rng, ch));
        let a: Vec<f32> = (0..nh).map(|i| -0.5 - i as f32 * 0.3).collect();
        let a = weight(&be, "a", DType::F32, &[nh, 1], &a);
        let d = weight(&be, "d", DType::F32, &[nh, 1], &rand_vec(&mut rng, nh));
        let dtb = weight(&be, "dtb", DType::F32, &[nh], &rand_vec(&mut rng, nh));
        let (la, lb) = (7usize, 5usize);
        let xa = rand_vec(&mut rng, la * ch);
        let xb = rand_vec(&mut rng, lb * ch);
        let dta = rand_vec(&mut rng, la * nh);
        let dtb_in = rand_vec(&mut rng, lb * nh);
        // Runs a list of (slot, x rows, dt rows, fresh) through conv then scan in one call.
        let run = |states: &mut (Tensor, Tensor), parts: &[(u32, &[f32], &[f32], bool)]| {
            let n: usize = parts.iter().map(|p| p.1.len() / ch).sum();
            let xv: Vec<f32> = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
            let dv: Vec<f32> = parts.iter().flat_map(|p| p.2.iter().copied()).collect();
            let runs: Vec<SeqRun> = parts
                .iter()
                .map(|p| SeqRun {
                    slot: p.0,
                    len: (p.1.len() / ch) as u32,
                    fresh: p.3,
                })
                .collect();
            let x = tensor(&be, &[n, ch], &xv);
            let mut xbc = be.alloc(DType::F32, &[n, ch]).unwrap();
            be.ssm_conv(&x, &cw, Some(&cb), &mut states.0, &runs, &mut xbc)
                .unwrap();
            let dt = tensor(&be, &[n, nh], &dv);
            let mut y = be.alloc(DType::F32, &[n, d_inner]).unwrap();
            let spec = SsmScanSpec {
                n_head: nh,
                head_dim: hd,
                d_state: ds,
                n_group: ng,
                a: &a,
                d: &d,
                dt_bias: &dtb,
                runs: &runs,
            };
            be.ssm_scan(&xbc, &dt, &mut states.1, &spec, &mut y)
                .unwrap();
            read(&be, &y)
        };
        let states = || {
            (
                be.alloc(DType::F32, &[2, (dc - 1) * ch]).unwrap(),
                be.alloc(DType::F32, &[2, d_inner * ds]).unwrap(),
            )
        };
        let mut s1 = states();
        let alone_a = run(&mut s1, &[(0, &xa, &dta, true)]);
        let mut s2 = states();
        let alone_b = run(&mut s2, &[(1, &xb, &dtb_in, true)]);
        let mut s3 = states();
        let both = run(&mut s3, &[(1, &xb, &dtb_in, true), (0, &xa, &dta, true)]);
        assert!(both[..lb * d_inner] == alone_b[..], "threads {threads}");
        assert!(both[lb * d_inner..] == alone_a[..], "threads {threads}");
        // a in two calls, the second not fresh; and the same slot twice in one call
        let mut s4 = states();
        let first = run(&mut s4, &[(0, &xa[..3 * ch], &dta[..3 * nh], true)]);
        let rest = run(&mut s4, &[(0, &xa[3 * ch..], &dta[3 * nh..], false)]);
        assert!([first, rest].concat() == alone_a);
        let mut s5 = states();
        let twice = run(
            &mut s5,
            &[
                (0, &xa[..3 * ch], &dta[..3 * nh], true),
                (0, &xa[3 * ch..], &dta[3 * nh..], false),
            ],
        );
        assert!(twice == alone_a);
        // a fresh run ignores whatever the slot held
        let again = run(&mut s5, &[(0, &xa, &dta, true)]);
        assert!(again == alone_a);
    }
}
