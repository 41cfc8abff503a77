//! The `engine` command line. Each subcommand lives in its own module under `cmd/`; this
//! file parses arguments, sets up logging, and turns every failure (and any panic) into a
//! one-line error and a non-zero exit status.

mod cmd;
mod progress;

use clap::{Parser, Subcommand};

/// Native LLM inference: run GGUF models locally.
#[derive(Parser)]
#[command(name = "engine", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Run(cmd::run::RunArgs),
    /// Print a model's metadata and tensor table.
    Inspect(cmd::inspect::InspectArgs),
    /// Print the token ids of a text.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Evaluate token ids and write the logits of every position (raw little-endian f32).
    Logits(cmd::logits::LogitsArgs),
    /// Install a model into the local store.
    Pull(cmd::store::PullArgs),
    /// List installed models.
    List(cmd::store::ListArgs),
    /// Remove an installed model.
    Rm(cmd::store::RmArgs),
    /// Measure prompt-processing and generation speed (llama-bench's flags and tables).
    Bench(cmd::bench::BenchArgs),
}

/// llama.cpp's tools spell some long options with one dash (`-pg`, `-ub`, `-ctk`); accept
/// those spellings by rewriting them to the `--` form before parsing.
fn llama_style_args(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG_WITH_ONE_DASH: &[&str] = &["-pg", "-ub", "-ctk", "-ctv"];
    args.map(|a| match a.to_str() {
        Some(s) if LONG_WITH_ONE_DASH.contains(&s) => format!("-{s}").into(),
        _ => a,
    })
    .collect()
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (this is a bug, please report it): {info}");
    }));
    let cli = match Cli::try_parse_from(llama_style_args(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error of this command.
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim_end());
            std::process::exit(2);
        }
    };
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Pull(a) => cmd::store::pull(a),
        Command::List(a) => cmd::store::list(a),
        Command::Rm(a) => cmd::store::rm(a),
        Command::Bench(a) => cmd::bench::run(a),
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}
