//! Fused tensors are split into row views: a qwen2 file rewritten with a fused QKV projection
//! (weights and biases, as Phi-3 and others store it) and gate|up fused into one `ffn_up`
//! (Phi-3's layout) gives exactly the logits of the original file.

mod common;

use std::sync::Arc;

use common::{keep, rewrite_gguf, temp_dir, tensor_f32};
use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::GgufModel;
use engine_models::{Batch, ContextOptions};
use engine_testdata::logits::arch_fixtures;

fn logits(path: &std::path::Path, tokens: &[u32]) -> Vec<f32> {
    let g = GgufModel::open(path, true).unwrap();
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new(2));
    let model = engine_models::load(&g, be).unwrap();
    let mut ctx = model
        .new_context(ContextOptions {
            n_ctx: 64,
            n_seq: 1,
            n_batch: 64,
            kv_type: DType::F32,
        })
        .unwrap();
    let mut b = Batch::default();
    b.push_seq(tokens, 0, 0, true);
    let mut out = vec![];
    model.forward(&mut ctx, &b, &mut out).unwrap();
    out
}

#[test]
fn fused_qkv_and_gate_up_equal_separate_tensors() {
    let f = arch_fixtures(None)
        .into_iter()
        .find(|f| f.arch == "qwen2" && f.label == "F32")
        .unwrap();
    let dir = temp_dir("fused");
    let dst = dir.join("qwen2-fused.gguf");
    let concat = |g: &GgufModel, names: &[String]| -> (Vec<f32>, Vec<usize>) {
        let mut data = vec![];
        let mut shape = vec![0, 0];
        for n in names {
            let (v, s) = tensor_f32(g, n);
            shape[0] += s[0];
            if s.len() > 1 {
                shape[1] = s[1];
            }
            data.extend(v);
        }
        if shape[1] == 0 {
            shape.pop();
        }
        (data, shape)
    };
    rewrite_gguf(
        &f.model,
        &dst,
        |k, v| Some((k.to_string(), v.clone())),
        |g, name| {
            let Some(rest) = name.strip_prefix("blk.") else {
                return keep(g, name);
            };
            let (l, part) = rest.split_once('.').unwrap();
            let fuse = |parts: &[&str], out: &str| {
                let names: Vec<String> = parts.iter().map(|p| format!("blk.{l}.{p}")).collect();
                let (v, shape) = concat(g, &names);
                vec![(
                    format!("blk.{l}.{out}"),
                    DType::F32,
                    shape,
                    common::f32_bytes(&v),
                )]
            };
            match part {
                "attn_q.weight" => fuse(
                    &["attn_q.weight", "attn_k.weight", "attn_v.weight"],
                    "attn_qkv.weight",
                ),
                "attn_q.bias" => fuse(
                    &["attn_q.bias", "attn_k.bias", "attn_v.bias"],
                    "attn_qkv.bias",
                ),
                "ffn_gate.weight" => fuse(&["ffn_gate.weight", "ffn_up.weight"], "ffn_up.weight"),
                "attn_k.weight" | "attn_v.weight" | "attn_k.bias" | "attn_v.bias"
                | "ffn_up.weight" => vec![],
                _ => keep(g, name),
            }
        },
        &[],
    );
    let g = GgufModel::open(&dst, false).unwrap();
    assert!(
        g.tensor("blk.0.attn_qkv.bias").is_some() && g.tensor("blk.0.ffn_gate.weight").is_none()
    );
    let want = logits(&f.model, &f.tokens);
    let got = logits(&dst, &f.tokens);
    assert!(got == want, "fused tensors changed the logits");
    std::fs::remove_dir_all(dir).ok();
}
