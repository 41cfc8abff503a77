//! Decode throughput of the model alone with 1..N sequences per forward pass (no HTTP), to
//! tell the batched forward pass's scaling apart from the server's overheads.
//!
//! `cargo run --release -p engine-server --example batch_decode -- MODEL.gguf [STEPS] [THREADS] [1,2,4,8]`

use std::time::Instant;

use engine::{Batch, ContextOptions, LoadOptions, Model};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: batch_decode MODEL.gguf [STEPS] [THREADS]");
    let steps: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(64);
    let threads: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(0);
    let model = Model::load(
        &path,
        &LoadOptions {
            threads,
            n_ctx: 512,
            ..Default::default()
        },
    )
    .expect("load");
    let prompt = model.tokenize("The history of", true, true).unwrap();
    let n_vocab = model.info().n_vocab;
    let counts: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,2,4,8".into())
        .split(',')
        .map(|s| s.parse().expect("sequence counts like 1,4"))
        .collect();
    for n_seq in counts {
        let mut ctx = model
            .inner()
            .new_context(ContextOptions {
                n_ctx: 512,
                n_seq,
                n_batch: 512,
                kv_type: engine::DType::F16,
            })
            .unwrap();
        let mut b = Batch::default();
        for s in 0..n_seq {
            b.push_seq(&prompt, 0, s as u32, false);
        }
        let mut logits = Vec::new();
        model.inner().forward(&mut ctx, &b, &mut logits).unwrap();
        let t0 = Instant::now();
        let mut fwd = 0.0;
        for i in 0..steps {
            b.clear();
            for s in 0..n_seq {
                let row = &logits[s * n_vocab..(s + 1) * n_vocab];
                let next = engine::sampling::argmax(row);
                b.push(next, (prompt.len() + i) as u32, s as u32, true);
            }
            let f0 = Instant::now();
            model.inner().forward(&mut ctx, &b, &mut logits).unwrap();
            fwd += f0.elapsed().as_secs_f64();
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{n_seq} sequences: {:.1} tokens/s total, {:.1} ms per step ({:.1} ms in forward)",
            (steps * n_seq) as f64 / secs,
            secs * 1e3 / steps as f64,
            fwd * 1e3 / steps as f64
        );
    }
}
