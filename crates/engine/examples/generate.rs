//! Embedding the engine: load a model and stream a greedy completion.
//!
//! `cargo run --release -p engine --example generate -- MODEL.gguf "Once upon a time"`

use std::io::Write;

use engine::{GenerateParams, LoadOptions, Model, SamplingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: generate MODEL.gguf [PROMPT]")?;
    let prompt = args
        .next()
        .unwrap_or_else(|| "Once upon a time".to_string());

    let model = Model::load(&path, &LoadOptions::default())?;
    let params = GenerateParams {
        max_tokens: Some(48),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    print!("{prompt}");
    let out = model.generate(&prompt, &params, |ev| {
        print!("{}", ev.text);
        let _ = std::io::stdout().flush();
        true
    })?;
    println!();
    eprintln!(
        "prompt: {} tokens at {:.1} t/s; generation: {} tokens at {:.1} t/s ({:?})",
        out.timings.prompt_n,
        out.timings.prompt_per_second(),
        out.timings.predicted_n,
        out.timings.predicted_per_second(),
        out.stop_reason
    );
    Ok(())
}
