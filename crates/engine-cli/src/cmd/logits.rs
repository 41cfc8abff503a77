//! `engine logits`: evaluate token ids in one pass and write every position's logits as raw
//! little-endian f32, `[n_tokens][n_vocab]` (the layout of the architecture fixtures).

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::ModelArgs;

/// Arguments of `engine logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated (e.g. 2,17,300).
    #[arg(long = "ids", value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: std::path::PathBuf,
}

/// Runs `engine logits`.
pub fn run(mut a: LogitsArgs) -> Result<()> {
    if a.ids.is_empty() {
        bail!("--ids is empty");
    }
    // One pass over all ids, with the context just large enough unless -c says otherwise.
    if a.model.ctx_size == 0 {
        a.model.ctx_size = a.ids.len().max(16);
    }
    a.model.batch_size = a.model.batch_size.max(a.ids.len() as u32);
    // A reference tool: an exact f32 cache unless asked otherwise (the fixtures' settings).
    if a.model.cache_type_k.is_none() {
        a.model.cache_type_k = Some("f32".into());
        a.model.cache_type_v = a.model.cache_type_v.take().or(Some("f32".into()));
    }
    let model = a.model.load()?;
    let mut session = model.session()?;
    let logits = session.logits_all(&a.ids)?;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&a.output)
            .with_context(|| format!("cannot create {}", a.output.display()))?,
    );
    for v in &logits {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "wrote {} x {} logits to {}",
        a.ids.len(),
        model.info().n_vocab,
        a.output.display()
    );
    Ok(())
}
