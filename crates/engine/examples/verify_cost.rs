//! What a speculative verification pass costs: the time of one forward pass verifying `n`
//! tokens (`Batch::push_verify`, one-token kernels per row) relative to a one-token decoding
//! step, at a context of a few hundred tokens, next to the same rows evaluated with the
//! batched (prefill) kernels. The marginal cost per extra row is the `VERIFY_ROW_COST` the
//! adaptive draft length assumes (see docs/speculative.md).
//!
//! ```sh
//! cargo run --release --example verify_cost -- MODEL.gguf [THREADS]
//! ```

use std::time::Instant;

use engine::{Batch, LoadOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: verify_cost MODEL.gguf [THREADS]")?;
    let threads = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let model = Model::load(
        &path,
        &LoadOptions {
            threads,
            n_ctx: 1024,
            ..Default::default()
        },
    )?;
    let inner = model.inner();
    let mut ctx = model.new_context()?;
    let n_vocab = model.info().n_vocab as u32;
    let ctx_tokens: Vec<u32> = (0..300u32)
        .map(|i| 2 + (i * 7919) % (n_vocab - 2))
        .collect();
    let mut b = Batch::default();
    let mut logits = Vec::new();
    b.push_seq(&ctx_tokens, 0, 0, false);
    inner.forward(&mut ctx, &b, &mut logits)?;
    let base = ctx.seq_len(0);
    let reps = 20;
    let mut time = |n: usize, exact: bool| -> Result<f64, Box<dyn std::error::Error>> {
        // warm-up, then the median of `reps` passes
        let mut ms = Vec::with_capacity(reps);
        for r in 0..=reps {
            b.clear();
            if exact {
                b.push_verify(&ctx_tokens[..n], base as u32, 0);
            } else {
                b.push_seq(&ctx_tokens[..n], base as u32, 0, true);
            }
            let t0 = Instant::now();
            inner.forward(&mut ctx, &b, &mut logits)?;
            if r > 0 {
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            ctx.truncate_seq(0, base)?;
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    };
    let one = time(1, true)?;
    println!(
        "| rows | verify ms (median of {reps}) | x one-token step | marginal per extra row | batched-kernel rows ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!("| 1 | {one:.2} | 1.00 | | |");
    for n in [2, 3, 5, 9, 17] {
        let t = time(n, true)?;
        let p = time(n, false)?;
        println!(
            "| {n} | {t:.2} | {:.2} | {:.3} | {p:.2} |",
            t / one,
            (t / one - 1.0) / (n - 1) as f64
        );
    }
    Ok(())
}
