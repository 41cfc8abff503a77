//! Decode speed of mixture-of-experts models against dense models with the same active
//! parameters: `cargo bench -p engine-models --bench moe_decode`.
//!
//! Each MoE model is paired with a dense twin built from it: the same attention, norms and
//! embeddings, and one feed-forward block whose gate/up rows and down columns are the first
//! `k` experts side by side (byte for byte, in the same quantization), so a decode step of
//! the dense twin reads exactly as many weight bytes as a step of the MoE model that routes
//! every token to `k` experts (less the router and the other experts' biases). Pairs: the qwen3moe (F32, Q4_K_M) and gpt-oss (MXFP4)
//! fixtures, and a larger synthetic qwen3moe (32 experts, top 4, Q8_0) where expert weights
//! dominate the model. Each timing is the fastest of 7 interleaved rounds (the least
//! disturbed by other work on the machine) and the median is printed beside it; `ENGINE_BENCH_THREADS`
//! sets the threads (default 2), `ENGINE_BENCH_ONLY` keeps the cases whose name contains it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::{keep, rewrite_gguf, temp_dir};
use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::{GgufModel, GgufWriter, Value};
use engine_models::{Batch, ContextOptions, Model};

type NewTensor = (String, DType, Vec<usize>, Vec<u8>);

/// Bytes of the first `k` experts of a stacked `[E, rows, cols]` tensor as one `[k*rows, cols]`
/// matrix (gate/up: experts' rows one after another).
fn stack_rows(g: &GgufModel, name: &str, k: usize) -> (DType, Vec<usize>, Vec<u8>) {
    let t = g.tensor(name).unwrap();
    let s = t.shape();
    let per = t.size / s[0];
    let data = g.tensor_data(t).as_slice()[..k * per].to_vec();
    (t.dtype, vec![k * s[1], s[2]], data)
}

/// The first `k` experts of a stacked down projection `[E, n_embd, ff]` as one
/// `[n_embd, k*ff]` matrix: each output row is the experts' rows side by side.
fn stack_cols(g: &GgufModel, name: &str, k: usize) -> (DType, Vec<usize>, Vec<u8>) {
    let t = g.tensor(name).unwrap();
    let s = t.shape();
    let (rows, cols) = (s[1], s[2]);
    let rb = t.dtype.row_bytes(cols).unwrap();
    let src = g.tensor_data(t);
    let src = src.as_slice();
    let mut data = Vec::with_capacity(k * rows * rb);
    for r in 0..rows {
        for e in 0..k {
            let at = (e * rows + r) * rb;
            data.extend_from_slice(&src[at..at + rb]);
        }
    }
    (t.dtype, vec![rows, k * cols], data)
}

/// Writes the dense twin of the MoE model at `src` as architecture `dense_arch`.
fn dense_twin(src: &Path, dst: &Path, dense_arch: &str) {
    let g = GgufModel::open(src, false).unwrap();
    let arch = g
        .get_str("general.architecture")
        .unwrap()
        .unwrap()
        .to_string();
    let k = g
        .get_usize(&format!("{arch}.expert_used_count"))
        .unwrap()
        .unwrap();
    let ff = g
        .get_usize(&format!("{arch}.expert_feed_forward_length"))
        .unwrap()
        .unwrap();
    let prefix = format!("{arch}.");
    rewrite_gguf(
        src,
        dst,
        |key, v| {
            if key == "general.architecture" {
                return Some((key.to_string(), Value::String(dense_arch.into())));
            }
            match key.strip_prefix(&prefix) {
                Some(rest)
                    if rest.starts_with("expert_")
                        || rest == "feed_forward_length"
                        || rest.starts_with("attention.sliding_window") =>
                {
                    None
                }
                Some(rest) => Some((format!("{dense_arch}.{rest}"), v.clone())),
                None => Some((key.to_string(), v.clone())),
            }
        },
        |g, name| -> Vec<NewTensor> {
            if name.ends_with("ffn_gate_inp.weight") || name.ends_with("ffn_gate_inp.bias") {
                return vec![];
            }
            for p in ["gate", "up"] {
                if let Some(l) = name.strip_suffix(&format!("ffn_{p}_exps.weight")) {
                    let (dt, shape, data) = stack_rows(g, name, k);
                    return vec![(format!("{l}ffn_{p}.weight"), dt, shape, data)];
                }
                if let Some(l) = name.strip_suffix(&format!("ffn_{p}_exps.bias")) {
                    let t = g.tensor(name).unwrap();
                    let per = t.size / t.shape()[0];
                    let data = g.tensor_data(t).as_slice()[..k * per].to_vec();
                    return vec![(format!("{l}ffn_{p}.bias"), t.dtype, vec![k * ff], data)];
                }
            }
            if let Some(l) = name.strip_suffix("ffn_down_exps.weight") {
                let (dt, shape, data) = stack_cols(g, name, k);
                return vec![(format!("{l}ffn_down.weight"), dt, shape, data)];
            }
            if let Some(l) = name.strip_suffix("ffn_down_exps.bias") {
                let t = g.tensor(name).unwrap();
                let per = t.size / t.shape()[0];
                let data = g.tensor_data(t).as_slice()[..per].to_vec();
                return vec![(format!("{l}ffn_down.bias"), t.dtype, vec![per / 4], data)];
            }
            // the FFN input norm of gpt-oss is called post_attention_norm
            if dense_arch == "llama" {
                if let Some(l) = name.strip_suffix("post_attention_norm.weight") {
                    let mut t = keep(g, name);
                    t[0].0 = format!("{l}ffn_norm.weight");
                    return t;
                }
            }
            keep(g, name)
        },
        &[(
            &format!("{dense_arch}.feed_forward_length"),
            Value::U32((k * ff) as u32),
        )],
    );
}

/// A qwen3moe model large enough for expert weights to dominate: `n_layer` blocks of width
/// 1024, 8/4 heads of 128, 32 experts of width 512, top 4, Q8_0 matrices; the tokenizer and
/// vocabulary of the qwen3moe fixture.
fn synthetic_qwen3moe(fixture: &Path, dst: &Path) {
    let (e, nh, nkv, hd, ne, k, ff, n_layer) = (1024usize, 8, 4, 128, 32, 4, 512, 4);
    let g = GgufModel::open(fixture, false).unwrap();
    let mut w = GgufWriter::new();
    for (key, v) in g.metadata() {
        if key.starts_with("tokenizer.") || key == "general.name" {
            w.set(key, v.clone());
        }
    }
    let a = "qwen3moe";
    w.set("general.architecture", Value::String(a.into()));
    for (key, v) in [
        ("context_length", 4096u32),
        ("embedding_length", e as u32),
        ("block_count", n_layer as u32),
        ("feed_forward_length", (k * ff) as u32),
        ("expert_feed_forward_length", ff as u32),
        ("expert_count", ne as u32),
        ("expert_used_count", k as u32),
        ("attention.head_count", nh as u32),
        ("attention.head_count_kv", nkv as u32),
        ("attention.key_length", hd as u32),
        ("attention.value_length", hd as u32),
    ] {
        w.set(&format!("{a}.{key}"), Value::U32(v));
    }
    w.set(&format!("{a}.rope.freq_base"), Value::F32(1e6));
    w.set(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(1e-6),
    );
    let n_vocab = g.tensor("token_embd.weight").unwrap().shape()[0];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut matrix = |rows: usize, cols: usize, dtype: DType| -> Vec<u8> {
        let scale = 1.7 / (cols as f32).sqrt();
        let mut row = vec![0f32; cols];
        let rb = dtype.row_bytes(cols).unwrap();
        let mut out = vec![0u8; rows * rb];
        for r in 0..rows {
            for v in row.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale;
            }
            engine_core::quant::quantize(dtype, &row, &mut out[r * rb..(r + 1) * rb]).unwrap();
        }
        out
    };
    let ones = |n: usize| common::f32_bytes(&vec![1.0f32; n]);
    let q = DType::Q8_0;
    let mut add = |name: String, dt: DType, shape: Vec<usize>, data: Vec<u8>| {
        w.add_tensor(&name, dt, &shape, data).unwrap();
    };
    add(
        "token_embd.weight".into(),
        q,
        vec![n_vocab, e],
        matrix(n_vocab, e, q),
    );
    add("output_norm.weight".into(), DType::F32, vec![e], ones(e));
    for l in 0..n_layer {
        let t = |s: &str| format!("blk.{l}.{s}");
        add(t("attn_norm.weight"), DType::F32, vec![e], ones(e));
        add(t("ffn_norm.weight"), DType::F32, vec![e], ones(e));
        add(t("attn_q_norm.weight"), DType::F32, vec![hd], ones(hd));
        add(t("attn_k_norm.weight"), DType::F32, vec![hd], ones(hd));
        add(
            t("attn_q.weight"),
            q,
            vec![nh * hd, e],
            matrix(nh * hd, e, q),
        );
        add(
            t("attn_k.weight"),
            q,
            vec![nkv * hd, e],
            matrix(nkv * hd, e, q),
        );
        add(
            t("attn_v.weight"),
            q,
            vec![nkv * hd, e],
            matrix(nkv * hd, e, q),
        );
        add(
            t("attn_output.weight"),
            q,
            vec![e, nh * hd],
            matrix(e, nh * hd, q),
        );
        add(
            t("ffn_gate_inp.weight"),
            DType::F32,
            vec![ne, e],
            matrix(ne, e, DType::F32),
        );
        add(
            t("ffn_gate_exps.weight"),
            q,
            vec![ne, ff, e],
            matrix(ne * ff, e, q),
        );
        add(
            t("ffn_up_exps.weight"),
            q,
            vec![ne, ff, e],
            matrix(ne * ff, e, q),
        );
        add(
            t("ffn_down_exps.weight"),
            q,
            vec![ne, e, ff],
            matrix(ne * e, ff, q),
        );
    }
    w.write_to(dst).unwrap();
}

/// Weight bytes a decode step reads: everything but the token embedding (one row), unless
/// it doubles as the output; experts at `k / n_expert`.
fn bytes_per_token(path: &Path) -> (u64, u64) {
    let g = GgufModel::open(path, false).unwrap();
    let arch = g
        .get_str("general.architecture")
        .unwrap()
        .unwrap()
        .to_string();
    let ne = g
        .get_usize(&format!("{arch}.expert_count"))
        .unwrap()
        .unwrap_or(0);
    let k = g
        .get_usize(&format!("{arch}.expert_used_count"))
        .unwrap()
        .unwrap_or(0);
    let tied = g.tensor("output.weight").is_none();
    let (mut active, mut total) = (0u64, 0u64);
    for t in g.tensors() {
        let size = t.size as u64;
        total += size;
        active += if t.name == "token_embd.weight" && !tied {
            0
        } else if t.name.contains("_exps.") {
            size * k as u64 / ne as u64
        } else {
            size
        };
    }
    (active, total)
}

fn load(path: &Path, threads: usize) -> Box<dyn Model> {
    let g = GgufModel::open(path, true).unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(threads));
    engine_models::load(&g, be).unwrap()
}

/// Milliseconds per decoded token over `steps` single-token steps after a 16-token prompt.
fn decode_ms(model: &dyn Model, steps: usize) -> f64 {
    let n_vocab = model.info().n_vocab as u32;
    let mut ctx = model
        .new_context(ContextOptions {
            n_ctx: 512,
            n_seq: 1,
            n_batch: 512,
            kv_type: DType::F16,
        })
        .unwrap();
    let prompt: Vec<u32> = (0..16).map(|i| (i * 37 + 5) % n_vocab).collect();
    let mut b = Batch::default();
    b.push_seq(&prompt, 0, 0, false);
    let mut logits = Vec::with_capacity(n_vocab as usize);
    model.forward(&mut ctx, &b, &mut logits).unwrap();
    let t0 = Instant::now();
    for i in 0..steps {
        b.clear();
        b.push(((i * 101 + 7) as u32) % n_vocab, (16 + i) as u32, 0, true);
        model.forward(&mut ctx, &b, &mut logits).unwrap();
    }
    t0.elapsed().as_secs_f64() * 1e3 / steps as f64
}

/// (fastest, median).
fn best_and_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn main() {
    let threads: usize = std::env::var("ENGINE_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let only = std::env::var("ENGINE_BENCH_ONLY").unwrap_or_default();
    let fx = engine_testdata::fixtures_dir().join("arch");
    let dir = temp_dir("moe-bench");
    let synth = dir.join("qwen3moe-32x-Q8_0.gguf");
    let cases: Vec<(&str, PathBuf, &str, usize)> = vec![
        (
            "qwen3moe F32 (fixture)",
            fx.join("qwen3moe/qwen3moe-F32.gguf"),
            "qwen3",
            256,
        ),
        (
            "qwen3moe Q4_K_M (fixture)",
            fx.join("qwen3moe/qwen3moe-Q4_K_M.gguf"),
            "qwen3",
            256,
        ),
        (
            "gpt-oss MXFP4 (fixture)",
            fx.join("gpt-oss/gpt-oss-MXFP4.gguf"),
            "llama",
            256,
        ),
        (
            "qwen3moe 32 experts top-4 Q8_0 (synthetic)",
            synth.clone(),
            "qwen3",
            64,
        ),
    ];
    println!(
        "threads: {threads}; ms per decoded token: fastest of 7 interleaved rounds (median)\n"
    );
    println!(
        "| model | weights (MB) | MoE reads per token (MB) | dense twin reads (MB) | MoE ms/token | dense twin ms/token | MoE / dense |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, path, dense_arch, steps) in cases {
        if !name.contains(&only) {
            continue;
        }
        if path == synth {
            synthetic_qwen3moe(&fx.join("qwen3moe/qwen3moe-F32.gguf"), &synth);
        }
        let twin = dir.join(format!(
            "dense-{}.gguf",
            path.file_stem().unwrap().to_string_lossy()
        ));
        dense_twin(&path, &twin, dense_arch);
        let (active, total) = bytes_per_token(&path);
        let (dense_active, _) = bytes_per_token(&twin);
        let moe = load(&path, threads);
        let dense = load(&twin, threads);
        decode_ms(&*moe, 8);
        decode_ms(&*dense, 8);
        let (mut a, mut b) = (vec![], vec![]);
        for _ in 0..7 {
            a.push(decode_ms(&*moe, steps));
            b.push(decode_ms(&*dense, steps));
        }
        let ((ma, ma_med), (mb, mb_med)) = (best_and_median(a), best_and_median(b));
        println!(
            "| {name} | {:.2} | {:.3} | {:.3} | {ma:.3} ({ma_med:.3}) | {mb:.3} ({mb_med:.3}) | {:.2}x |",
            total as f64 / 1e6,
            active as f64 / 1e6,
            dense_active as f64 / 1e6,
            ma / mb
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
