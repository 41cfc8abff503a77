//! `engine run`: stream a completion to stdout, timings to stderr (or one JSON object).

use std::io::{Read, Write};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine::{GenerateParams, Prompt, SamplingParams};
use serde_json::json;

use super::ModelArgs;

/// Arguments of `engine run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text (read from standard input when neither -p nor -f is given).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<std::path::PathBuf>,
    /// Tokens to generate (-1: until end of generation or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    pub n_predict: i64,
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back at (-1 = whole context).
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    pub repeat_last_n: i32,
    /// Presence penalty.
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty.
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (-1 = random).
    #[arg(short = 's', long = "seed", default_value_t = -1, allow_negative_numbers = true)]
    pub seed: i64,
    /// Stop at this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Treat control-token text in the prompt (e.g. `<start_of_turn>`) as plain text.
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
    /// Print one JSON object (prompt_ids, ids, text, timings) instead of streaming.
    #[arg(long = "json")]
    pub json: bool,
    /// With --json: the top-K log-probabilities at each generated position.
    #[arg(long = "logprobs", default_value_t = 0)]
    pub logprobs: usize,
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
}

fn read_prompt(a: &RunArgs) -> Result<String> {
    if let Some(p) = &a.prompt {
        return Ok(p.clone());
    }
    if let Some(f) = &a.file {
        return std::fs::read_to_string(f)
            .with_context(|| format!("cannot read prompt file {}", f.display()));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read the prompt from standard input")?;
    Ok(s)
}

/// Runs `engine run`.
pub fn run(a: RunArgs) -> Result<()> {
    if a.logprobs > 0 && !a.json {
        bail!("--logprobs needs --json");
    }
    let prompt = read_prompt(&a)?;
    if prompt.is_empty() {
        bail!("the prompt is empty (use -p, -f or standard input)");
    }
    let model = a.model.load()?;
    let spec_cfg = a.spec.config()?;
    let mut drafter = engine_server::draft::build(&spec_cfg, &model, &a.model.load_options()?)
        .map_err(anyhow::Error::msg)?;
    let params = GenerateParams {
        max_tokens: if a.n_predict < 0 {
            None
        } else {
            Some(a.n_predict as usize)
        },
        sampling: SamplingParams {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: a.repeat_last_n,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: if a.seed < 0 {
                None
            } else {
                Some(a.seed as u64)
            },
        },
        stop: a.stop.clone(),
        add_special: true,
        parse_special: !a.no_parse_special,
        logprobs: a.logprobs,
        ignore_eos: a.ignore_eos,
    };
    let mut session = model.session()?;
    let stdout = std::io::stdout();
    let prompt = Prompt::Text(prompt);
    let mut generate = |on_token: &mut dyn FnMut(&engine::TokenEvent) -> bool| match drafter
        .as_deref_mut()
    {
        Some(d) => session.generate_speculative(&prompt, &params, d, &spec_cfg.params, on_token),
        None => session.generate(&prompt, &params, on_token),
    };
    let gen = if a.json {
        generate(&mut |_| true)?
    } else {
        let mut out = stdout.lock();
        let g = generate(&mut |ev| {
            // A closed pipe stops generation quietly.
            out.write_all(ev.text.as_bytes())
                .and_then(|_| out.flush())
                .is_ok()
        })?;
        let _ = writeln!(out);
        g
    };
    let t = gen.timings;
    if a.json {
        let mut v = json!({
            "prompt_ids": gen.prompt_ids,
            "ids": gen.ids,
            "text": gen.text,
            "stop_reason": format!("{:?}", gen.stop_reason).to_lowercase(),
            "timings": {
                "prompt_n": t.prompt_n,
                "prompt_ms": t.prompt_ms,
                "prompt_per_second": t.prompt_per_second(),
                "predicted_n": t.predicted_n,
                "predicted_ms": t.predicted_ms,
                "predicted_per_second": t.predicted_per_second(),
            },
        });
        if let Some(st) = gen.speculative {
            v["speculative"] = json!({
                "drafter": spec_cfg.kind().map(|k| k.name()),
                "steps": st.steps,
                "drafted": st.drafted,
                "accepted": st.accepted,
                "acceptance": st.acceptance(),
                "fallbacks": st.fallbacks,
            });
        }
        if a.logprobs > 0 {
            v["logprobs"] = json!(gen
                .logprobs
                .iter()
                .map(|pos| pos
                    .iter()
                    .map(|(id, lp)| json!([id, lp]))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>());
        }
        println!("{v}");
    }
    let per_tok = |ms: f64, n: usize| if n > 0 { ms / n as f64 } else { 0.0 };
    eprintln!(
        "prompt: {} tokens in {:.1} ms ({:.1} t/s, {:.2} ms/token) | generation: {} tokens in {:.1} ms ({:.1} t/s, {:.2} ms/token) | {}",
        t.prompt_n,
        t.prompt_ms,
        t.prompt_per_second(),
        per_tok(t.prompt_ms, t.prompt_n),
        t.predicted_n,
        t.predicted_ms,
        t.predicted_per_second(),
        per_tok(t.predicted_ms, t.predicted_n),
        model.backend().describe()
    );
    if let Some(st) = gen.speculative {
        eprintln!(
            "speculative ({}): {} drafted, {} accepted ({:.1}%) in {} verification passes{}",
            spec_cfg.kind().map(|k| k.name()).unwrap_or(""),
            st.drafted,
            st.accepted,
            100.0 * st.acceptance(),
            st.steps,
            if st.fallbacks > 0 {
                format!(", {} steps without the drafter", st.fallbacks)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
