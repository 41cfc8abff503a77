//! The GPU conformance check, shared by the CUDA and ROCm test crates (included with
//! `#[path]`): every GPU operation against the CPU backend on random data. Tolerance:
//! max |gpu - cpu| <= 2e-3 * (1 + max |cpu|) per output tensor (f32 accumulation order
//! differs; the CPU's attention emulates ggml's f16 accumulation).
//!
//! Matrix products are held to an exact reference instead: the weights decoded by the
//! reference codecs and multiplied in f64 with the f32 activations, within
//! 2e-4 * (1 + max |exact|). The CPU backend is no exact reference there: like ggml it rounds
//! the activations to f16/bf16 or quantizes them to 8 bits before a block product (0.3-0.6%
//! of the output's scale on random data), which the GPU kernels do not; its distance from
//! the exact product is printed beside.

use engine_core::backend::{Activation, AttentionSpec, QueryPos, RopeMode, RopeSpec};
use engine_core::{Backend, DType, HostBytes, Tensor, Weight};
use engine_cpu::CpuBackend;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// The mismatches found so far (the run goes on past the first).
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Pair {
    gpu: Box<dyn Backend>,
    cpu: CpuBackend,
    rng: rand::rngs::StdRng,
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    close_within(what, got, want, 2e-3);
}

/// Max |got - want| against the scale of `want`; the error printed, a mismatch recorded.
fn max_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
    (err, scale)
}

fn close_within(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let (err, scale) = max_error(got, want);
    if err <= rel * (1.0 + scale) && got.iter().all(|v| v.is_finite()) {
        eprintln!("{what}: max error {err:.2e} (scale {scale:.2})");
    } else {
        let line = format!("FAIL {what}: max error {err} at scale {scale}");
        eprintln!("{line}");
        FAILURES.lock().unwrap().push(line);
    }
}

impl Pair {
    fn vals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.gen_range(-1.0f32..1.0)).collect()
    }

    fn tensor(&self, b: &dyn Backend, shape: &[usize], v: &[f32]) -> Tensor {
        let mut t = b.alloc(DType::F32, shape).unwrap();
        b.write_f32(&mut t, v).unwrap();
        t
    }

    fn both(&self, shape: &[usize], v: &[f32]) -> (Tensor, Tensor) {
        (
            self.tensor(self.gpu.as_ref(), shape, v),
            self.tensor(&self.cpu, shape, v),
        )
    }

    fn read(b: &dyn Backend, t: &Tensor) -> Vec<f32> {
        let mut v = vec![0.0; t.shape().numel()];
        b.read_f32(t, &mut v).unwrap();
        v
    }

    fn check(&self, what: &str, g: &Tensor, c: &Tensor) {
        close(
            what,
            &Self::read(self.gpu.as_ref(), g),
            &Self::read(&self.cpu, c),
        );
    }

    /// Random weight bytes of `dt` with sane scales, loaded on both backends, and their values
    /// as the reference codec decodes them.
    fn weight(&mut self, dt: DType, rows: usize, cols: usize) -> (Weight, Weight, Vec<f32>) {
        let bytes = dt.row_bytes(cols).unwrap() * rows;
        let data = match dt {
            DType::F32 | DType::F16 | DType::BF16 => {
                let v = self.vals(rows * cols);
                let mut b = vec![0u8; bytes];
                engine_core::quant::quantize(dt, &v, &mut b).unwrap();
                b
            }
            _ => {
                let mut b = vec![0u8; bytes];
                self.rng.fill(&mut b[..]);
                let bb = dt.row_bytes(dt.block_size()).unwrap();
                for blk in b.chunks_exact_mut(bb) {
                    if dt == DType::MXFP4 {
                        blk[0] = 120 + (blk[0] % 8);
                    }
                    for &o in engine_testdata::f16_scale_fields(dt) {
                        let s = half::f16::from_f32(self.rng.gen_range(0.001f32..0.02));
                        blk[o..o + 2].copy_from_slice(&s.to_le_bytes());
                    }
                }
                b
            }
        };
        let values = engine_core::quant::dequantize_to_vec(dt, &data, rows * cols).unwrap();
        let host = HostBytes::from_vec(data);
        (
            self.gpu
                .load_weight("w", dt, &[rows, cols], host.clone())
                .unwrap(),
            self.cpu.load_weight("w", dt, &[rows, cols], host).unwrap(),
            values,
        )
    }

    fn vector(&mut self, n: usize) -> (Weight, Weight) {
        let v: Vec<f32> = self.vals(n).iter().map(|x| 1.0 + 0.5 * x).collect();
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let host = HostBytes::from_vec(b);
        (
            self.gpu
                .load_weight("v", DType::F32, &[n], host.clone())
                .unwrap(),
            self.cpu.load_weight("v", DType::F32, &[n], host).unwrap(),
        )
    }
}

/// Runs every op on `gpu` and on the CPU backend and compares them.
pub fn every_op_matches_the_cpu_backend(gpu: Box<dyn Backend>) {
    eprintln!("{}", gpu.describe());
    let mut p = Pair {
        gpu,
        cpu: CpuBackend::new(2).with_repack(false),
        rng: rand::rngs::StdRng::seed_from_u64(11),
    };

    // matmul and embed, every format, one row and a batch.
    for &(dt, name) in engine_gpu::backend::FORMATS {
        let (k, m) = (512, 96);
        let (wg, wc, wv) = p.weight(dt, m, k);
        for n in [1usize, 9] {
            let xv = p.vals(n * k);
            let (xg, xc) = p.both(&[n, k], &xv);
            let mut og = p.gpu.alloc(DType::F32, &[n, m]).unwrap();
            let mut oc = p.cpu.alloc(DType::F32, &[n, m]).unwrap();
            p.gpu.matmul(&xg, &wg, &mut og).unwrap();
            p.cpu.matmul(&xc, &wc, &mut oc).unwrap();
            let want: Vec<f32> = (0..n * m)
                .map(|i| {
                    let (x, w) = (&xv[i / m * k..][..k], &wv[i % m * k..][..k]);
                    x.iter()
                        .zip(w)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let gpu = Pair::read(p.gpu.as_ref(), &og);
            close_within(&format!("matmul {name} n={n} vs exact"), &gpu, &want, 2e-4);
            let (cpu_err, _) = max_error(&Pair::read(&p.cpu, &oc), &want);
            eprintln!("  (the CPU backend's max error against exact: {cpu_err:.2e})");
        }
        let ids = [3u32, 0, 95, 3];
        let mut eg = p.gpu.alloc(DType::F32, &[4, k]).unwrap();
        let mut ec = p.cpu.alloc(DType::F32, &[4, k]).unwrap();
        p.gpu.embed(&wg, &ids, &mut eg).unwrap();
        p.cpu.embed(&wc, &ids, &mut ec).unwrap();
        p.check(&format!("embed {name}"), &eg, &ec);
    }

    // norms and elementwise ops
    let (n, c) = (5, 256);
    let xv = p.vals(n * c);
    let (wg, wc) = p.vector(c);
    let (xg, xc) = p.both(&[n, c], &xv);
    let mut og = p.gpu.alloc(DType::F32, &[n, c]).unwrap();
    let mut oc = p.cpu.alloc(DType::F32, &[n, c]).unwrap();
    p.gpu.rms_norm(&xg, Some(&wg), 1e-6, &mut og).unwrap();
    p.cpu.rms_norm(&xc, Some(&wc), 1e-6, &mut oc).unwrap();
    p.check("rms_norm", &og, &oc);
    let (mut ag, mut ac) = p.both(&[n, c], &xv);
    p.gpu
        .rms_norm_groups_inplace(&mut ag, Some(&wg), 64, 1e-5)
        .unwrap();
    p.cpu
        .rms_norm_groups_inplace(&mut ac, Some(&wc), 64, 1e-5)
        .unwrap();
    p.check("rms_norm_groups", &ag, &ac);
    p.gpu.add(&mut ag, &xg).unwrap();
    p.cpu.add(&mut ac, &xc).unwrap();
    p.gpu.scale(&mut ag, 0.7).unwrap();
    p.cpu.scale(&mut ac, 0.7).unwrap();
    p.gpu.add_bias(&mut ag, &wg).unwrap();
    p.cpu.add_bias(&mut ac, &wc).unwrap();
    let sc = p.vals(n);
    p.gpu.scale_rows(&mut ag, &sc).unwrap();
    p.cpu.scale_rows(&mut ac, &sc).unwrap();
    p.check("add/scale/add_bias/scale_rows", &ag, &ac);
    for act in [
        Activation::Silu,
        Activation::GeluTanh,
        Activation::ReluSquared,
        Activation::SwigluOai {
            alpha: 1.702,
            limit: 7.0,
        },
    ] {
        let gv: Vec<f32> = p.vals(n * c).iter().map(|v| v * 6.0).collect();
        let (mut gg, mut gc) = p.both(&[n, c], &gv);
        p.gpu.glu(act, &mut gg, &xg).unwrap();
        p.cpu.glu(act, &mut gc, &xc).unwrap();
        p.check(&format!("glu {act:?}"), &gg, &gc);
    }

    // rope: both pairings, partial rotation, YaRN
    let (nh, hd) = (4, 64);
    let pos = [0u32, 1, 7, 300, 4095];
    for (mode, n_rot, ext) in [
        (RopeMode::Neox, 64, 0.0),
        (RopeMode::Norm, 32, 0.0),
        (RopeMode::Neox, 64, 1.0),
    ] {
        let mut spec = RopeSpec::plain(mode, nh, hd, 10000.0);
        spec.n_rot = n_rot;
        if ext != 0.0 {
            spec.ext_factor = ext;
            spec.freq_scale = 0.25;
            spec.n_ctx_orig = 4096;
        }
        let v = p.vals(pos.len() * nh * hd);
        let (mut rg, mut rc) = p.both(&[pos.len(), nh * hd], &v);
        p.gpu.rope(&mut rg, &pos, &spec).unwrap();
        p.cpu.rope(&mut rc, &pos, &spec).unwrap();
        p.check(&format!("rope {mode:?} n_rot={n_rot} yarn={ext}"), &rg, &rc);
    }

    // KV cache (f16) + attention: GQA, sliding window, soft-cap, sinks, two sequences
    let (nh, nkv, hd, ctx) = (4, 2, 64, 64);
    let (sg, scp) = p.vector(nh);
    for (window, softcap, sinks) in [(None, 0.0, false), (Some(5), 30.0, true)] {
        let mut kg = p.gpu.alloc(DType::F16, &[2 * ctx, nkv * hd]).unwrap();
        let mut kc = p.cpu.alloc(DType::F16, &[2 * ctx, nkv * hd]).unwrap();
        let mut vg = p.gpu.alloc(DType::F16, &[2 * ctx, nkv * hd]).unwrap();
        let mut vc = p.cpu.alloc(DType::F16, &[2 * ctx, nkv * hd]).unwrap();
        let rows: Vec<u32> = (0..20).chain(ctx as u32..ctx as u32 + 12).collect();
        let kv = p.vals(rows.len() * nkv * hd);
        let vv = p.vals(rows.len() * nkv * hd);
        let (ksg, ksc) = p.both(&[rows.len(), nkv * hd], &kv);
        let (vsg, vsc) = p.both(&[rows.len(), nkv * hd], &vv);
        p.gpu.kv_store(&mut kg, &ksg, &rows).unwrap();
        p.cpu.kv_store(&mut kc, &ksc, &rows).unwrap();
        p.gpu.kv_store(&mut vg, &vsg, &rows).unwrap();
        p.cpu.kv_store(&mut vc, &vsc, &rows).unwrap();
        let queries = [
            QueryPos { kv_base: 0, pos: 0 },
            QueryPos {
                kv_base: 0,
                pos: 19,
            },
            QueryPos {
                kv_base: ctx as u32,
                pos: 11,
            },
        ];
        let qv = p.vals(queries.len() * nh * hd);
        let (qg, qc) = p.both(&[queries.len(), nh * hd], &qv);
        let (s_g, s_c) = if sinks {
            (Some(&sg), Some(&scp))
        } else {
            (None, None)
        };
        let spec_g = AttentionSpec {
            n_head: nh,
            n_kv_head: nkv,
            head_dim: hd,
            head_dim_v: hd,
            scale: 0.125,
            softcap,
            window,
            sinks: s_g,
            queries: &queries,
            groups: None,
        };
        let spec_c = AttentionSpec {
            sinks: s_c,
            ..spec_g
        };
        let mut og = p.gpu.alloc(DType::F32, &[queries.len(), nh * hd]).unwrap();
        let mut oc = p.cpu.alloc(DType::F32, &[queries.len(), nh * hd]).unwrap();
        p.gpu.attention(&qg, &kg, &vg, &spec_g, &mut og).unwrap();
        p.cpu.attention(&qc, &kc, &vc, &spec_c, &mut oc).unwrap();
        p.check(
            &format!("attention window={window:?} softcap={softcap} sinks={sinks}"),
            &og,
            &oc,
        );
    }

    // row moves and expert mixing
    let src = p.vals(6 * 32);
    let (srg, src_c) = p.both(&[6, 32], &src);
    let mut dg = p.gpu.alloc(DType::F32, &[3, 32]).unwrap();
    let mut dc = p.cpu.alloc(DType::F32, &[3, 32]).unwrap();
    p.gpu.gather_rows(&srg, &[5, 0, 2], &mut dg).unwrap();
    p.cpu.gather_rows(&src_c, &[5, 0, 2], &mut dc).unwrap();
    p.check("gather_rows", &dg, &dc);
    let w = p.vals(6);
    p.gpu.weighted_row_sum(&srg, &w, 2, &mut dg).unwrap();
    p.cpu.weighted_row_sum(&src_c, &w, 2, &mut dc).unwrap();
    p.check("weighted_row_sum", &dg, &dc);

    let failures = FAILURES.lock().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
