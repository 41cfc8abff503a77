//! Batching must not change results: eight Gemma 3 270M sequences whose prompts are evaluated
//! together in one batch and which then decode together (one token each per step) give
//! bit-identical logits and greedy tokens to each sequence evaluated alone. This holds with
//! the f16 cache and llama.cpp-compatible kernels because kernel and attention paths are
//! chosen per sequence run, never from the whole batch's shape.

use std::sync::Arc;

use engine_core::{Backend, DType};
use engine_cpu::CpuBackend;
use engine_gguf::GgufModel;
use engine_models::{Batch, ContextOptions};

const STEPS: usize = 12;

fn prompts() -> Vec<Vec<u32>> {
    let path = engine_testdata::fixtures_dir().join("gemma3-270m/greedy.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(8)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

#[test]
fn eight_sequences_together_equal_each_alone() {
    let path = engine_testdata::gemma3_model().unwrap();
    let g = GgufModel::open(&path, true).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(2));
    let model = engine_models::load(&g, backend).unwrap();
    let n_vocab = model.info().n_vocab;
    let prompts = prompts();
    let opts = |n_seq| ContextOptions {
        n_ctx: 256,
        n_seq,
        n_batch: 512,
        kv_type: DType::F16,
    };

    // Alone: each prompt in its own context, then greedy steps.
    let mut alone: Vec<Vec<Vec<f32>>> = vec![];
    for p in &prompts {
        let mut ctx = model.new_context(opts(1)).unwrap();
        let mut b = Batch::default();
        b.push_seq(p, 0, 0, false);
        let mut logits = vec![];
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        let mut steps = vec![logits.clone()];
        for i in 0..STEPS {
            let next = engine_testdata::argmax(&logits);
            b.clear();
            b.push(next, (p.len() + i) as u32, 0, true);
            model.forward(&mut ctx, &b, &mut logits).unwrap();
            steps.push(logits.clone());
        }
        alone.push(steps);
    }

    // Together: all prompts in one batch, then one token per sequence per step.
    let mut ctx = model.new_context(opts(prompts.len())).unwrap();
    let mut b = Batch::default();
    for (s, p) in prompts.iter().enumerate() {
        b.push_seq(p, 0, s as u32, false);
    }
    let mut logits = vec![];
    model.forward(&mut ctx, &b, &mut logits).unwrap();
    let mut last: Vec<Vec<f32>> = (0..prompts.len())
        .map(|s| logits[s * n_vocab..(s + 1) * n_vocab].to_vec())
        .collect();
    for s in 0..prompts.len() {
        assert_eq!(
            last[s], alone[s][0],
            "sequence {s}: prompt logits differ when batched"
        );
    }
    for i in 0..STEPS {
        b.clear();
        for (s, p) in prompts.iter().enumerate() {
            b.push(
                engine_testdata::argmax(&last[s]),
                (p.len() + i) as u32,
                s as u32,
                true,
            );
        }
        model.forward(&mut ctx, &b, &mut logits).unwrap();
        for s in 0..prompts.len() {
            last[s] = logits[s * n_vocab..(s + 1) * n_vocab].to_vec();
            assert_eq!(
                last[s],
                alone[s][i + 1],
                "sequence {s}: step {i} logits differ when batched"
            );
        }
    }
}
