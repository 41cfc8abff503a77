//! `engine bench --spec-type ...`: the speculative mode of `engine bench`. For each model it
//! generates `-n` tokens greedily from a real prompt (drafting needs text, not random ids),
//! plainly and speculatively, repetitions interleaved, and reports both generation speeds,
//! the speedup and the acceptance rate. The default prompt is a "repeat and edit this
//! text" task, the case prompt lookup is made for; `--spec-prompt FILE` replaces it.

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use engine::bench::run_spec_test;
use engine::{LoadOptions, Model};

use super::bench::BenchArgs;

/// The built-in prompt: a passage and the instruction to repeat it with two edits.
pub const EDIT_PROMPT: &str = include_str!("../../../../benches/data/edit_prompt.txt");

const MD_HEADER: &str = "| model | drafter | threads | test | plain t/s | speculative t/s | speedup | acceptance | drafted/pass | identical |\n| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | :---: |";

/// Runs the speculative benchmark.
pub fn run(a: &BenchArgs) -> Result<()> {
    let json = match a.output.as_str() {
        "md" => false,
        "json" | "jsonl" => true,
        o => bail!("the speculative mode prints md, json or jsonl, not '{o}'"),
    };
    let cfg = a.spec.config()?;
    let Some(kind) = cfg.kind() else {
        bail!("no drafter: give --spec-type, --model-draft or --draft-remote");
    };
    let n_gen = super::bench::parse_int_list("-n", &a.n_gen)?
        .into_iter()
        .find(|&n| n > 0)
        .unwrap_or(128);
    let thread_counts: Vec<usize> = if a.threads.is_empty() {
        vec![engine::default_threads()]
    } else {
        super::bench::parse_int_list("-t", &a.threads)?
            .into_iter()
            .map(|t| t.max(1))
            .collect()
    };
    let text = match &a.spec_prompt {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        None => EDIT_PROMPT.to_string(),
    };
    let drafter_label = match &cfg.source {
        engine_server::draft::DraftSource::Model(p) => format!(
            "draft {}",
            p.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ),
        engine_server::draft::DraftSource::Remote(r) => format!("remote {}", r.url),
        _ => kind.name().to_string(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !json {
        writeln!(out, "{MD_HEADER}")?;
    }
    let models = a
        .model
        .iter()
        .flat_map(|m| m.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty());
    for (spec, &threads) in models.flat_map(|m| thread_counts.iter().map(move |t| (m, t))) {
        let path = super::resolve_model(spec)?;
        let opts = LoadOptions {
            threads,
            n_ctx: 4096,
            device: a.device.parse()?,
            gpu_memory: super::parse_gpu_memory(&a.gpu_memory)?,
            ..Default::default()
        };
        let model =
            Model::load(&path, &opts).with_context(|| format!("cannot load {}", path.display()))?;
        let prompt = model.tokenize(&text, true, false)?;
        if prompt.len() + n_gen >= model.context_options().n_ctx {
            bail!(
                "the prompt ({} tokens) and -n {n_gen} do not fit the context",
                prompt.len()
            );
        }
        let mut drafter = engine_server::draft::build(&cfg, &model, &opts)
            .map_err(anyhow::Error::msg)?
            .expect("a drafter was configured");
        if a.progress {
            eprintln!(
                "engine bench: {} with {drafter_label}, tg{n_gen}",
                path.display()
            );
        }
        let r = run_spec_test(
            &model,
            &prompt,
            n_gen,
            a.reps as usize,
            &mut *drafter,
            &cfg.params,
        )?;
        let (pt, psd) = r.plain_ts();
        let (st, ssd) = r.spec_ts();
        let per_pass = r.stats.drafted as f64 / r.stats.steps.max(1) as f64;
        let fname = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if json {
            let v = serde_json::json!({
                "model_filename": path.display().to_string(),
                "drafter": drafter_label,
                "n_prompt": prompt.len(),
                "n_gen": n_gen,
                "n_threads": threads,
                "draft_max": cfg.params.draft_max,
                "plain_ts": pt, "plain_stddev_ts": psd,
                "spec_ts": st, "spec_stddev_ts": ssd,
                "speedup": r.speedup(),
                "drafted": r.stats.drafted,
                "accepted": r.stats.accepted,
                "acceptance": r.stats.acceptance(),
                "verify_passes": r.stats.steps,
                "fallbacks": r.stats.fallbacks,
                "identical": r.identical,
                "plain_ns": r.plain_ns,
                "spec_ns": r.spec_ns,
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "| {fname} | {drafter_label} | {threads} | tg{n_gen} (prompt {}) | {pt:.2} ± {psd:.2} | {st:.2} ± {ssd:.2} | {:.2}x | {:.1}% | {per_pass:.2} | {} |",
                prompt.len(),
                r.speedup(),
                100.0 * r.stats.acceptance(),
                if r.identical { "yes" } else { "NO" },
            )?;
        }
        out.flush()?;
    }
    if !json {
        writeln!(
            out,
            "\nrepetitions: {} (interleaved with plain runs), greedy; build: engine {}",
            a.reps,
            env!("CARGO_PKG_VERSION")
        )?;
    }
    Ok(())
}
