//! `engine tokenize`: print the token ids of a text, as llama-tokenize does.

use std::io::Read;

use anyhow::{Context as _, Result};
use clap::Args;
use engine::Tokenizer;
use engine_gguf::GgufModel;

/// Arguments of `engine tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Model: a GGUF path or a store name.
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// Do not add the BOS token (or other special tokens the model adds).
    #[arg(long = "no-bos")]
    pub no_bos: bool,
    /// Treat control-token text as plain text.
    #[arg(long = "no-parse-special")]
    pub no_parse_special: bool,
    /// Print a JSON array of ids.
    #[arg(long = "json")]
    pub json: bool,
    /// Print only the ids, as a list (llama-tokenize --ids).
    #[arg(long = "ids")]
    pub ids: bool,
    /// Text to tokenize (standard input when absent).
    pub text: Option<String>,
}

/// Runs `engine tokenize`.
pub fn run(a: TokenizeArgs) -> Result<()> {
    let text = match &a.text {
        Some(t) => t.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read text from standard input")?;
            s
        }
    };
    let path = super::resolve_model(&a.model)?;
    let g = GgufModel::open(&path, true)?;
    let tok = Tokenizer::from_gguf(&g)?;
    let ids = tok.encode(&text, !a.no_bos, !a.no_parse_special)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else if a.ids {
        println!("{ids:?}");
    } else {
        for id in ids {
            let piece = String::from_utf8_lossy(tok.token_to_piece(id, true)).into_owned();
            println!("{id:>6} -> '{piece}'");
        }
    }
    Ok(())
}
