//! Speculative verification's numerics: drafted tokens evaluated in one pass with
//! [`Batch::push_verify`] must get, row for row and bit for bit, the logits that decoding
//! them one token at a time gives, whatever else shares the batch. And a sequence rewound to
//! a checkpoint ([`Context::checkpoint_seq`], [`Context::restore_seq`]) must continue exactly
//! as if the rejected tokens had never been evaluated, recurrent (Mamba) state included.
//!
//! Runs on every tiny architecture fixture (F16 cache, as the server uses) and on the real
//! Gemma 3 270M Q4_K_M, whose K-quant weights have batched kernels (repacked GEMM, tiled)
//! that differ from the one-row kernels in their last bits, at positions past 256 where a
//! lone query's attention is split across threads.

use std::sync::Arc;

use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::GgufModel;
use engine_models::{Batch, Context, ContextOptions, Model};
use engine_testdata::logits::arch_fixtures;

fn opts(n_ctx: usize) -> ContextOptions {
    ContextOptions {
        n_ctx,
        n_seq: 3,
        n_batch: 512,
        kv_type: DType::F16,
    }
}

fn forward(model: &dyn Model, ctx: &mut Context, b: &Batch) -> Vec<f32> {
    let mut out = vec![];
    model.forward(ctx, b, &mut out).unwrap();
    out
}

/// Checks one model on `tokens`, the first `p` of them being the prompt. Returns a
/// description of the first mismatch.
fn check(model: &dyn Model, tokens: &[u32], p: usize, n_ctx: usize) -> Result<(), String> {
    let nv = model.info().n_vocab;
    let n = tokens.len();
    let mut ctx = model.new_context(opts(n_ctx)).unwrap();
    let mut b = Batch::default();
    // Reference: sequence 0, prompt then one token per step.
    b.push_seq(&tokens[..p], 0, 0, false);
    forward(model, &mut ctx, &b);
    let mut reference = vec![];
    for (i, &t) in tokens.iter().enumerate().take(n).skip(p) {
        b.clear();
        b.push(t, i as u32, 0, true);
        reference.extend(forward(model, &mut ctx, &b));
    }
    let row = |i: usize| &reference[(i - p) * nv..(i - p + 1) * nv];
    let same = |what: &str, got: &[f32], first: usize| -> Result<(), String> {
        for (j, g) in got.chunks_exact(nv).enumerate() {
            if g.iter()
                .zip(row(first + j))
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                let d = g
                    .iter()
                    .zip(row(first + j))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                return Err(format!(
                    "{what}: position {} differs from one-token decoding (max |d| {d:e})",
                    first + j
                ));
            }
        }
        Ok(())
    };

    // Sequence 1 verifies 8 drafted tokens in one pass, batched with sequence 2's prompt.
    b.clear();
    b.push_seq(&tokens[..p], 0, 1, false);
    forward(model, &mut ctx, &b);
    ctx.checkpoint_seq(1).unwrap();
    let k = 8.min(n - p);
    b.clear();
    b.push_verify(&tokens[p..p + k], p as u32, 1);
    b.push_seq(&tokens[..p], 0, 2, false);
    let out = forward(model, &mut ctx, &b);
    same("verify 8 batched with a prompt", &out[..k * nv], p)?;

    // Three drafts were accepted: rewind to the checkpoint, evaluate them again (no
    // logits), then verify the rest in one pass.
    let keep = 3.min(k);
    assert_eq!(ctx.restore_seq(1).unwrap(), p);
    b.clear();
    for (i, &t) in tokens.iter().enumerate().take(p + keep).skip(p) {
        b.push_single(t, i as u32, 1, false);
    }
    forward(model, &mut ctx, &b);
    b.clear();
    b.push_verify(&tokens[p + keep..], (p + keep) as u32, 1);
    b.push(tokens[p], p as u32, 2, true);
    let out = forward(model, &mut ctx, &b);
    same(
        "rewind then verify the rest",
        &out[..(n - p - keep) * nv],
        p + keep,
    )?;
    // Sequence 2 decoded its first token beside them: the same as sequence 0's.
    same("a decoding neighbour", &out[(n - p - keep) * nv..], p)
}

#[test]
fn verified_rows_equal_one_token_decoding_on_every_fixture() {
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(2));
    let mut failures = vec![];
    let mut n = 0;
    for f in arch_fixtures(None) {
        let g = GgufModel::open(&f.model, true).unwrap();
        let model = engine_models::load(&g, backend.clone()).unwrap();
        if let Err(e) = check(&*model, &f.tokens, 16, 512) {
            failures.push(format!("{} {}: {e}", f.arch, f.label));
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} fixtures found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn verified_rows_equal_one_token_decoding_on_gemma3() {
    let path = engine_testdata::gemma3_model().expect("the default model is needed");
    let g = GgufModel::open(&path, true).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(2));
    let model = engine_models::load(&g, backend).unwrap();
    // A prompt long enough that one-token attention takes the split-KV path.
    let tokens: Vec<u32> = (0..300u32).map(|i| 2 + (i * 7919 + 13) % 20000).collect();
    check(&*model, &tokens, 280, 512).unwrap();
}

#[test]
fn a_checkpoint_is_forgotten_when_the_sequence_is_cut_below_it() {
    let fx = arch_fixtures(None);
    let f = fx.iter().find(|f| f.arch == "nemotron_h").expect("fixture");
    let g = GgufModel::open(&f.model, true).unwrap();
    let model = engine_models::load(&g, Arc::new(CpuBackend::new(1))).unwrap();
    let mut ctx = model.new_context(opts(64)).unwrap();
    assert!(ctx.restore_seq(0).is_err(), "no checkpoint yet");
    let mut b = Batch::default();
    b.push_seq(&f.tokens[..8], 0, 0, false);
    forward(&*model, &mut ctx, &b);
    ctx.checkpoint_seq(0).unwrap();
    b.clear();
    b.push_seq(&f.tokens[8..12], 8, 0, false);
    forward(&*model, &mut ctx, &b);
    assert_eq!(ctx.restore_seq(0).unwrap(), 8);
    ctx.clear_seq(0);
    assert!(ctx.restore_seq(0).is_err(), "cleared below the checkpoint");
    assert!(ctx.checkpoint_seq(5).is_err(), "no such slot");
}
