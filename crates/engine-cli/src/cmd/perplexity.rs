//! `engine perplexity`: perplexity of a model over a text, and KL-divergence against a base
//! model's saved distributions, with llama-perplexity's flags and chunking.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use engine::perplexity::{
    self, BaseReader, BaseWriter, Event, KldStats, PerplexityOptions, PplStats,
};

use super::ModelArgs;

/// Arguments of `engine perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (not needed with --kl-divergence: the base file holds the tokens).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    pub chunks: Option<usize>,
    /// With --kl-divergence: the base file to compare against; without: where to save this
    /// model's distributions as the base.
    #[arg(long = "kl-divergence-base")]
    pub kl_base: Option<PathBuf>,
    /// Compare against --kl-divergence-base instead of writing it.
    #[arg(long = "kl-divergence", requires = "kl_base")]
    pub kl: bool,
    /// Print a JSON summary on stdout instead of text.
    #[arg(long = "json")]
    pub json: bool,
}

/// Runs `engine perplexity`.
pub fn run(mut a: PerplexityArgs) -> Result<()> {
    // llama-perplexity's default chunk is 512 tokens; -c sets it.
    if a.model.ctx_size == 0 {
        a.model.ctx_size = 512;
    }
    let base = if a.kl {
        let path = a.kl_base.as_ref().expect("clap requires it");
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open the base file {}", path.display()))?;
        let r = BaseReader::new(std::io::BufReader::new(f))
            .with_context(|| format!("cannot read {}", path.display()))?;
        // The base decides the chunking.
        a.model.ctx_size = r.n_ctx;
        Some(r)
    } else {
        None
    };
    let n_ctx = a.model.ctx_size;
    let opts = PerplexityOptions {
        n_ctx,
        n_batch: (a.model.batch_size as usize).min(n_ctx),
        max_chunks: a.chunks,
    };
    let model = a.model.load()?;
    let n_vocab = model.info().n_vocab;
    let tokens = match &base {
        Some(b) => {
            if b.n_vocab != n_vocab {
                bail!(
                    "the base file is for a vocabulary of {} tokens, this model has {n_vocab}",
                    b.n_vocab
                );
            }
            b.tokens.clone()
        }
        None => {
            let Some(path) = &a.file else {
                bail!("give the text to score with -f FILE");
            };
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            model.tokenize(&text, true, false)?
        }
    };
    let n_chunks = perplexity::chunk_count(tokens.len(), &opts)?;
    if !a.json {
        eprintln!(
            "perplexity: {} tokens, {n_chunks} chunks of {n_ctx} (scoring {} per chunk), batch {}",
            tokens.len(),
            perplexity::scored_per_chunk(n_ctx),
            opts.n_batch
        );
    }
    let t0 = Instant::now();
    let mut ppl = PplStats::default();
    let mut kld = KldStats::default();
    let mut writer = match (&a.kl_base, a.kl) {
        (Some(path), false) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Some(BaseWriter::new(
                std::io::BufWriter::new(f),
                n_ctx,
                n_vocab,
                n_chunks,
                &tokens,
            )?)
        }
        _ => None,
    };
    let mut base = base;
    let json = a.json;
    perplexity::evaluate(&model, &tokens, &opts, |ev| {
        match ev {
            Event::Position {
                log_probs: lp,
                target,
                ..
            } => {
                ppl.push(lp[target as usize] as f64);
                if let Some(w) = &mut writer {
                    w.push(lp, target)?;
                }
                if let Some(b) = &mut base {
                    let pos = b.next_position()?;
                    kld.push(&pos, lp, target);
                }
            }
            Event::ChunkDone(c) if !json => {
                eprint!("[{}]{:.4},", c + 1, ppl.ppl());
                if c + 1 == n_chunks {
                    eprintln!();
                }
            }
            Event::ChunkDone(_) => {}
        }
        Ok(())
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    if let Some(w) = writer {
        w.finish()?;
    }
    if a.json {
        let mut v = serde_json::json!({
            "model": model.path().display().to_string(),
            "n_ctx": n_ctx,
            "chunks": n_chunks,
            "tokens_scored": ppl.count(),
            "ppl": ppl.ppl(),
            "ppl_err": ppl.ppl_err(),
            "seconds": seconds,
        });
        if base.is_some() {
            let s = kld.summary();
            v["kld"] = serde_json::json!({
                "mean": s.mean_kld, "mean_err": s.mean_kld_err, "median": s.median_kld,
                "p99": s.p99_kld, "max": s.max_kld, "same_top": s.same_top,
                "same_top_err": s.same_top_err, "ppl_base": s.ppl_base,
                "mean_tail_mass": s.mean_tail_mass,
            });
        }
        println!("{v}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}  ({} tokens scored in {seconds:.1} s)",
        ppl.ppl(),
        ppl.ppl_err(),
        ppl.count()
    )?;
    if let (Some(path), false) = (&a.kl_base, a.kl) {
        writeln!(out, "saved the base distributions to {}", path.display())?;
    }
    if base.is_some() {
        let s = kld.summary();
        writeln!(out, "====== KL divergence vs the base ======")?;
        writeln!(out, "Mean PPL(Q)     : {:10.4}", s.ppl)?;
        writeln!(out, "Mean PPL(base)  : {:10.4}", s.ppl_base)?;
        writeln!(out, "PPL(Q)/PPL(base): {:10.4}", s.ppl / s.ppl_base)?;
        writeln!(
            out,
            "Mean    KLD     : {:10.6} +/- {:.6}",
            s.mean_kld, s.mean_kld_err
        )?;
        writeln!(out, "Median  KLD     : {:10.6}", s.median_kld)?;
        writeln!(out, "99.0%   KLD     : {:10.6}", s.p99_kld)?;
        writeln!(out, "Maximum KLD     : {:10.6}", s.max_kld)?;
        writeln!(
            out,
            "Same top p      : {:7.3} +/- {:.3} %",
            100.0 * s.same_top,
            100.0 * s.same_top_err
        )?;
        writeln!(
            out,
            "(base tail mass outside the saved tokens: {:.2e} on average)",
            s.mean_tail_mass
        )?;
    }
    Ok(())
}
